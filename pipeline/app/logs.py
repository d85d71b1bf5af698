"""Offsets belong to one incarnation of a log: the source-log book.

A Kafka partition's offsets say nothing once its log starts over: the embedded broker restarted
empty, a production topic deleted and re-created, a cluster migrated. Offset 4,000 of the new log
is a different record from offset 4,000 of the old one, and a high-water mark of the old log would
drop the new log's records as replays. So every position the pipeline keeps (the sink's marks,
the replay detection in the customer states) is qualified by an *epoch*: the incarnation of the
log it came from.

:class:`LogBook` knows, per source partition, the current epoch and an *anchor*: one record of that
incarnation (its offset and a digest of its timestamp, key and value), kept in ``cem.source_logs``.
The first time a worker reads a partition after an assignment, and again whenever the partition's
stream was interrupted since its last fetch (a broker connection broke, or a poll brought nothing
of the batch topics: a broker that restarts, or a topic re-created, always makes one of those; see
``BatchDelivery.interruptions``), the book reads the record at the anchor's offset from the broker
(:func:`same_log` decides):

* the same record is there: the same log, carry on (the epoch stays);
* the offset is past the log's end, or another record is there: the log started over. That is
  logged and counted, the epoch goes up by one, and the partition is read again from the start of
  the new log (every record of it is new to the pipeline, whatever the group's committed offset
  says);
* the offset is before the log's start (retention removed it): the same log, anchored anew.

A consumer positioned past a log's end gets no records, so the fetch path would never check it. Kafka
answers such a fetch OFFSET_OUT_OF_RANGE and the consumer resets; Tansu answers it with nothing, for
ever, and a group offset past the end is what a worker leaves when it commits to a broker that
restarted empty; and the old log's offset can be exactly the new log's end. So each partition also
gets its verdict once per assignment without waiting for a fetch, and again whenever its position is
past the log's end (``BatchDelivery.overruns``): it is then read again from the log's start.

The first record read in each assignment becomes the epoch's anchor, written to ClickHouse before
anything of that record is (so a crash never leaves rows of an epoch nobody can recognise).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import OffsetOutOfRangeError

from pipeline.app.rows import source_log_row
from sinks.base import ReplayGuard, Sink
from sinks.clickhouse import Connection, TableRow, quote

log = logging.getLogger("cem.logs")

Key = tuple[str, int]  # (topic, partition)


@dataclass(frozen=True, slots=True)
class Anchor:
    epoch: int
    offset: int
    digest: int


@dataclass(frozen=True, slots=True)
class Probe:
    """What the broker holds at an anchor's offset now."""

    log_start: int
    digest: int | None  # the record's digest; None: no record there (past the end of the log)


def digest(timestamp_ms: int, key: bytes | None, value: bytes | None) -> int:
    """What a record is recognised by: a 64-bit digest of its timestamp, key and value.

    >>> digest(1, b"k", b"v") == digest(1, b"k", b"v") != digest(2, b"k", b"v")
    True
    """
    h = hashlib.blake2b(digest_size=8)
    h.update(timestamp_ms.to_bytes(8, "big", signed=True))
    for part in (key, value):
        h.update(b"\x00" if part is None else b"\x01" + len(part).to_bytes(4, "big") + part)
    return int.from_bytes(h.digest(), "big") >> 1  # fits ClickHouse's UInt64 and Python's int the same


def same_log(anchor: Anchor, probe: Probe) -> bool:
    """Whether the broker's log is the incarnation ``anchor`` was taken from.

    >>> a = Anchor(epoch=1, offset=40, digest=7)
    >>> same_log(a, Probe(log_start=0, digest=7)), same_log(a, Probe(0, 8)), same_log(a, Probe(0, None))
    (True, False, False)
    >>> same_log(a, Probe(log_start=41, digest=None))   # retention removed the anchor: still that log
    True
    """
    if anchor.offset < probe.log_start:
        return True
    return probe.digest == anchor.digest


@dataclass(frozen=True, slots=True)
class Verdict:
    epoch: int
    restart_at: int | None = None  # a new log: read the partition again from this offset (its start)


class AnchorSink(Sink[TableRow], ReplayGuard, Protocol):
    """Where the book writes anchors, and whose marks show the epochs that have rows."""


class LogBook:
    """Epochs and anchors of the source partitions this worker reads."""

    def __init__(self, connection: Connection, sink: AnchorSink, database: str,
                 probe: Callable[[Key, int], Awaitable[Probe]], on_new_log: Callable[[Key, int, str], None]):
        self._connection = connection
        self._sink = sink
        self._db = database
        self._probe = probe
        self._on_new_log = on_new_log
        self._epochs: dict[Key, int] = {}
        self._verified: dict[Key, int] = {}  # key -> consumer generation it was verified in
        self._anchored: set[Key] = set()  # anchored in the current assignment
        self._unanchored: dict[Key, int] = {}  # a new log found (in that generation), its anchor not written yet
        # The latest anchor per partition while this worker owns it: it wrote or read it, and no one
        # else writes one meanwhile. Spares a ClickHouse read (behind the inserts) on every verdict.
        self._anchors: dict[Key, Anchor] = {}
        self._last_fetch: dict[Key, int] = {}  # key -> the interruptions counted when a fetch last held it

    def epoch(self, key: Key) -> int:
        return self._epochs.get(key, 1)

    def needs_verdict(self, key: Key, generation: int, interruptions: int) -> bool:
        """Whether the partition's log must be checked before its records are processed: the first
        fetch of an assignment, or the first after an interruption of the stream (``interruptions``:
        the delivery's count when the fetch was made). A partition merely absent from fetches full
        of other partitions' records (a backlog) is not checked again.

        >>> logs = LogBook(None, None, "cem", None, None)  # type: ignore[arg-type]
        >>> [logs.needs_verdict(("t", 0), 1, n) for n in (0, 0)], logs.verified_in(("t", 0), 1)
        ([True, True], False)
        >>> logs._verified[("t", 0)] = 1  # what verdict() records
        >>> [logs.needs_verdict(("t", 0), 1, n) for n in (0, 0, 1, 1)]
        [False, False, True, False]
        """
        last, self._last_fetch[key] = self._last_fetch.get(key), interruptions
        return self._verified.get(key) != generation or last != interruptions

    def verified_in(self, key: Key, generation: int) -> bool:
        """Whether the partition's log has had its verdict in this assignment."""
        return self._verified.get(key) == generation

    def forget(self, keys: Any) -> None:
        """Partitions revoked: verify them again when they come back."""
        for key in keys:
            self._verified.pop(key, None)
            self._anchored.discard(key)
            self._anchors.pop(key, None)  # its next owner may anchor it anew
            self._unanchored.pop(key, None)

    async def verdict(self, key: Key, generation: int, overrun: bool = False) -> Verdict:
        """Verify the partition's log against its anchor (see the module docstring). ``overrun``:
        the consumer's position is past the log's end, so whatever the anchor says, the position is
        not one of this log's: it is read again from its start.

        The partition counts as verified only once a verdict is reached: a probe that fails (the
        broker away, restarting) raises :class:`LogProbeError` and leaves it to be checked again, or
        its next records would pass unchecked, the new log's among them."""
        if self._verified.get(key) != generation:
            self._anchored.discard(key)  # a new assignment anchors anew; a quiet spell's check does not
        try:
            verdict = await self._judge(key, generation, overrun)
        except LogProbeError:
            raise
        except Exception as exc:  # the broker or ClickHouse not answering: no verdict yet
            raise LogProbeError(f"{key[0]}/{key[1]}: no verdict: {type(exc).__name__}: {exc}") from exc
        self._verified[key] = generation
        return verdict

    async def _judge(self, key: Key, generation: int, overrun: bool) -> Verdict:
        found = self._unanchored.get(key)
        if found is not None:  # a new log found before, nothing of it read yet
            if found == generation and not overrun:
                return Verdict(self._epochs[key])  # it is being read from its start
            # An assignment since moved the position to the group's offset, which is the old log's.
            return await self._from_start(key, f"nothing of its new log (epoch {self._epochs[key]}) read yet")
        anchor = await self._latest_anchor(key)
        if anchor is None:
            self._epochs[key] = max(1, self._highest_epoch(key))
            return await self._from_start(key, "read past the end of its log") if overrun else Verdict(self._epochs[key])
        probe = await self._probe(key, anchor.offset)
        if same_log(anchor, probe):
            self._epochs[key] = anchor.epoch
            return await self._from_start(key, "read past the end of its log", probe) if overrun else Verdict(anchor.epoch)
        epoch = max(anchor.epoch, self._highest_epoch(key)) + 1
        self._epochs[key] = epoch
        self._anchored.discard(key)  # the new log gets its own anchor
        self._unanchored[key] = generation
        why = "past the end of the log" if probe.digest is None else "a different record there"
        log.warning("%s/%d started over (anchor offset %d of epoch %d: %s): epoch %d, reading it from offset %d",
                    key[0], key[1], anchor.offset, anchor.epoch, why, epoch, probe.log_start)
        self._on_new_log(key, epoch, why)
        return Verdict(epoch, restart_at=probe.log_start)

    async def _from_start(self, key: Key, why: str, probe: Probe | None = None) -> Verdict:
        log_start = (probe or await self._probe(key, 0)).log_start
        log.warning("%s/%d: %s: reading it again from offset %d", key[0], key[1], why, log_start)
        return Verdict(self._epochs[key], restart_at=log_start)

    async def anchor(self, key: Key, offset: int, record_digest: int) -> None:
        """Make the record at ``offset`` the epoch's anchor (once per assignment), durably."""
        if key in self._anchored:
            return
        await self._sink.write([source_log_row(key[0], key[1], self.epoch(key), offset, record_digest)])
        self._anchors[key] = Anchor(self.epoch(key), offset, record_digest)
        self._anchored.add(key)
        self._unanchored.pop(key, None)

    async def _latest_anchor(self, key: Key) -> Anchor | None:
        if key in self._anchors:
            return self._anchors[key]
        rows = await asyncio.to_thread(
            self._connection.rows,
            f"SELECT epoch, argMax(anchor_offset, recorded_at), argMax(anchor_digest, recorded_at) "
            f"FROM {self._db}.source_logs WHERE topic = {quote(key[0])} AND partition = {int(key[1])} "
            f"GROUP BY epoch ORDER BY epoch DESC LIMIT 1",
        )
        if not rows:
            return None
        self._anchors[key] = Anchor(int(rows[0][0]), int(rows[0][1]), int(rows[0][2]))
        return self._anchors[key]

    def _highest_epoch(self, key: Key) -> int:
        """The highest epoch the offset-tracked tables hold rows of for this partition (0: none)."""
        return max((epoch for table in ("touchpoints_enriched", "dead_letters")
                    for (topic, partition, epoch) in self._sink.marks(table) if (topic, partition) == key), default=0)


async def log_ends(consumer: AIOKafkaConsumer, partitions: list[TopicPartition], timeout_ms: int = 15_000) -> dict[TopicPartition, int]:
    """The offset after the last record of each partition. It moves the consumer's positions of
    ``partitions``: seek them afterwards (``read_to_end`` does).

    Kafka's ListOffsets answers exactly that. Tansu (0.6) answers less: the last record batch's base
    offset + 1. So every answer, 0 included, is checked by a fetch from the offset before it (from 0
    for an answer of 0): a fetch returns whole batches, and its answer carries the partition's
    high-water mark, which Tansu gives right. A reader that stopped at the
    short answer missed the rest of the last batch, or the whole partition, and Faust's table
    recovery did: customer states a commit had written came back old, or not at all.
    (No ``position()`` here: it waits for ever on a partition whose fetch went out of range.)

    A fetch that has not answered is asked again until ``timeout_ms``; only then is the broker's
    ListOffsets answer taken as it is, with a warning.
    """
    ends = {tp: int(end) for tp, end in (await consumer.end_offsets(partitions)).items()}
    for tp, end in ends.items():
        consumer.seek(tp, max(end - 1, 0))
    pending = set(ends)  # all at once: an empty partition's answer takes the broker's fetch wait
    deadline = time.monotonic() + timeout_ms / 1000
    while pending:
        try:
            batches = await consumer.getmany(*pending, timeout_ms=200)
        except OffsetOutOfRangeError as exc:  # retention or a restarted log moved it meanwhile: nothing to add
            gone = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else pending
            pending -= set(gone)
            continue
        for tp in list(pending):
            records = batches.get(tp, [])
            highwater = consumer.highwater(tp)  # from the answer of a fetch at this position, if one came
            if records or highwater is not None:
                ends[tp] = max(ends[tp], highwater or 0, records[-1].offset + 1 if records else 0)
                pending.discard(tp)
        if pending and time.monotonic() > deadline:
            log.warning("no answer to fetches of %s within %d ms: taking the ends the broker gave",
                        ", ".join(f"{tp.topic}/{tp.partition}" for tp in sorted(pending)), timeout_ms)
            break
    return ends


async def read_to_end(consumer: AIOKafkaConsumer, partitions: list[TopicPartition], poll_ms: int = 300) -> list[Any]:
    """Every record from the consumer's positions to the end of ``partitions`` (see ``log_ends``)."""
    start = {p: await consumer.position(p) for p in partitions}
    end = await log_ends(consumer, partitions)
    for p, offset in start.items():
        consumer.seek(p, offset)
    records: list[Any] = []
    while [p for p in partitions if await consumer.position(p) < end[p]]:
        records += [r for batch in (await consumer.getmany(*partitions, timeout_ms=poll_ms)).values() for r in batch]
    return records


class TopicFollower:
    """Every record of ``topic`` (all partitions, no group: every worker reads them all), read to the
    end by ``start()`` before it returns, then followed; a subclass takes them (``_take``).

    A failure while following is logged and retried: what was taken stays, and what follows keeps
    coming (a lost suppression list or model feed would be worse than a late one).
    """

    topic = ""
    what = ""  # in the log

    def __init__(self, bootstrap: str, client_options: Mapping[str, Any] | None = None, **consumer_options: Any):
        self._bootstrap = bootstrap
        self._options = {**(client_options or {}), **consumer_options}
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(bootstrap_servers=self._bootstrap, group_id=None, enable_auto_commit=False,
                                          **self._options)
        await self._consumer.start()
        partitions = [TopicPartition(self.topic, p) for p in sorted(await self._partitions())]
        self._consumer.assign(partitions)
        await self._consumer.seek_to_beginning(*partitions)
        self._take(await read_to_end(self._consumer, partitions))
        self._task = asyncio.ensure_future(self._follow())

    async def _partitions(self) -> set[int]:
        assert self._consumer is not None
        for _ in range(50):  # the topic's metadata may take a moment on a fresh broker
            found = self._consumer.partitions_for_topic(self.topic)
            if found:
                return set(found)
            await self._consumer._client.force_metadata_update()
            await asyncio.sleep(0.1)
        return {0}

    async def _follow(self) -> None:
        consumer = self._consumer
        assert consumer is not None  # start() set it before starting this task
        while True:
            try:
                batches = await consumer.getmany(timeout_ms=500)
                self._take([r for records in batches.values() for r in records])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("%s: %s", self.what, exc)
                await asyncio.sleep(1.0)

    def _take(self, records: list[Any]) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._consumer is not None:
            await self._consumer.stop()


class BrokerProbe:
    """Reads the record at an offset of a partition: a plain consumer, no group, no auto reset."""

    def __init__(self, bootstrap: str, client_options: Mapping[str, Any] | None = None, timeout_ms: int = 5000):
        self._bootstrap = bootstrap
        self._options = dict(client_options or {})
        self._timeout_ms = timeout_ms
        self._consumer: AIOKafkaConsumer | None = None
        self._lock = asyncio.Lock()  # one question at a time: each one assigns and seeks

    async def start(self) -> None:
        if self._consumer is not None:
            return
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap, group_id=None, enable_auto_commit=False,
            auto_offset_reset="none", **self._options,
        )
        await self._consumer.start()

    async def stop(self) -> None:
        async with self._lock:  # not under a question being answered: it would lose its consumer mid-way
            if self._consumer is not None:
                consumer, self._consumer = self._consumer, None
                await consumer.stop()

    async def ends(self, partitions: Mapping[Any, int]) -> dict[Any, int]:
        """``log_ends`` of ``partitions`` (any ``(topic, partition)`` tuples, as keys)."""
        await self.start()
        assert self._consumer is not None
        tps = {TopicPartition(tp[0], tp[1]): tp for tp in partitions}
        async with self._lock:
            self._consumer.assign(list(tps))
            ends = await log_ends(self._consumer, list(tps))
        return {tps[tp]: end for tp, end in ends.items()}

    async def log_start(self, key: Key) -> int:
        assert self._consumer is not None
        tp = TopicPartition(*key)
        return int((await self._consumer.beginning_offsets([tp]))[tp])

    async def __call__(self, key: Key, offset: int) -> Probe:
        async with self._lock:
            return await self._probe(key, offset)

    async def _probe(self, key: Key, offset: int) -> Probe:
        assert self._consumer is not None
        tp = TopicPartition(*key)
        self._consumer.assign([tp])
        start = await self.log_start(key)
        if offset < start:
            return Probe(start, None)
        for _ in range(3):
            self._consumer.seek(tp, offset)
            try:
                batches = await self._consumer.getmany(tp, timeout_ms=self._timeout_ms, max_records=500)
            except OffsetOutOfRangeError:
                return Probe(start, None)  # past the end of this log
            records = batches.get(tp, [])
            for record in records:
                if record.offset == offset:
                    return Probe(start, digest(record.timestamp, record.key, record.value))
            if records:
                return Probe(start, None)  # the log has records around there, but not that one
        end = (await log_ends(self._consumer, [tp]))[tp]
        if offset >= end:
            return Probe(start, None)
        # Nothing came back from a log that says it holds the offset: guessing either way could lose
        # or double records, so the caller asks again with the next fetch.
        raise LogProbeError(f"{key[0]}/{key[1]}: no answer for offset {offset} (log {start}..{end})")


class LogProbeError(RuntimeError):
    pass
