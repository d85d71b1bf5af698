"""Offsets belong to one incarnation of a log: the source-log book.

A Kafka partition's offsets say nothing once its log starts over: the embedded broker restarted
empty, a production topic deleted and re-created, a cluster migrated. Offset 4,000 of the new log
is a different record from offset 4,000 of the old one, and a high-water mark of the old log would
drop the new log's records as replays. So every position the pipeline keeps (the sink's marks,
the replay detection in the customer states) is qualified by an *epoch*: the incarnation of the
log it came from.

:class:`LogBook` knows, per source partition, the current epoch and an *anchor*: one record of that
incarnation (its offset and a digest of its timestamp, key and value), kept in ``cem.source_logs``.
The first time a worker reads a partition after an assignment, and again whenever the partition
comes back after a quiet spell (a broker that restarts, or a topic re-created, always makes one: the
consumer has to reconnect), the book reads the record at the anchor's offset from the broker
(:func:`same_log` decides):

* the same record is there: the same log, carry on (the epoch stays);
* the offset is past the log's end, or another record is there: the log started over. That is
  logged and counted, the epoch goes up by one, and the partition is read again from the start of
  the new log (every record of it is new to the pipeline, whatever the group's committed offset
  says);
* the offset is before the log's start (retention removed it): the same log, anchored anew.

The first record read in each assignment becomes the epoch's anchor, written to ClickHouse before
anything of that record is (so a crash never leaves rows of an epoch nobody can recognise).
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Mapping

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import OffsetOutOfRangeError

from pipeline.app.rows import source_log_row
from sinks.clickhouse import ClickHouseSink, Connection

log = logging.getLogger("cem.logs")

Key = tuple[str, int]  # (topic, partition)
QUIET_S = 0.25  # a partition absent from fetches this long is verified again when it returns


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


class LogBook:
    """Epochs and anchors of the source partitions this worker reads."""

    def __init__(self, connection: Connection, sink: ClickHouseSink, database: str,
                 probe: Callable[[Key, int], Awaitable[Probe]], on_new_log: Callable[[Key, int, str], None],
                 clock: Callable[[], float] = time.monotonic):
        self._connection = connection
        self._sink = sink
        self._db = database
        self._probe = probe
        self._on_new_log = on_new_log
        self._epochs: dict[Key, int] = {}
        self._verified: dict[Key, int] = {}  # key -> consumer generation it was verified in
        self._anchored: set[Key] = set()  # anchored in the current assignment
        self._clock = clock
        self._last_fetch: dict[Key, float] = {}  # key -> when a fetch last held it

    def epoch(self, key: Key) -> int:
        return self._epochs.get(key, 1)

    def needs_verdict(self, key: Key, generation: int) -> bool:
        """Whether the partition's log must be checked before its records are processed: the first
        fetch of an assignment, or the first after a quiet spell."""
        now = self._clock()
        last, self._last_fetch[key] = self._last_fetch.get(key), now
        return self._verified.get(key) != generation or last is None or now - last > QUIET_S

    def forget(self, keys: Any) -> None:
        """Partitions revoked: verify them again when they come back."""
        for key in keys:
            self._verified.pop(key, None)
            self._anchored.discard(key)

    async def verdict(self, key: Key, generation: int, log_start: int) -> Verdict:
        """Verify the partition's log against its anchor (see the module docstring)."""
        anchor = await self._latest_anchor(key)
        self._verified[key] = generation
        self._anchored.discard(key)
        if anchor is None:
            self._epochs[key] = max(1, self._highest_epoch(key))
            return Verdict(self._epochs[key])
        probe = await self._probe(key, anchor.offset)
        if same_log(anchor, probe):
            self._epochs[key] = anchor.epoch
            return Verdict(anchor.epoch)
        epoch = max(anchor.epoch, self._highest_epoch(key)) + 1
        self._epochs[key] = epoch
        why = "past the end of the log" if probe.digest is None else "a different record there"
        log.warning("%s/%d started over (anchor offset %d of epoch %d: %s): epoch %d, reading it from offset %d",
                    key[0], key[1], anchor.offset, anchor.epoch, why, epoch, probe.log_start)
        self._on_new_log(key, epoch, why)
        return Verdict(epoch, restart_at=probe.log_start)

    async def anchor(self, key: Key, offset: int, record_digest: int) -> None:
        """Make the record at ``offset`` the epoch's anchor (once per assignment), durably."""
        if key in self._anchored:
            return
        await self._sink.write([source_log_row(key[0], key[1], self.epoch(key), offset, record_digest)])
        self._anchored.add(key)

    async def _latest_anchor(self, key: Key) -> Anchor | None:
        import asyncio

        rows = await asyncio.to_thread(
            self._connection.rows,
            f"SELECT epoch, argMax(anchor_offset, recorded_at), argMax(anchor_digest, recorded_at) "
            f"FROM {self._db}.source_logs WHERE topic = '{_quote(key[0])}' AND partition = {int(key[1])} "
            f"GROUP BY epoch ORDER BY epoch DESC LIMIT 1",
        )
        return Anchor(int(rows[0][0]), int(rows[0][1]), int(rows[0][2])) if rows else None

    def _highest_epoch(self, key: Key) -> int:
        """The highest epoch the offset-tracked tables hold rows of for this partition (0: none)."""
        return max((epoch for table in ("touchpoints_enriched", "dead_letters")
                    for (topic, partition, epoch) in self._sink.marks(table) if (topic, partition) == key), default=0)


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'")


class BrokerProbe:
    """Reads the record at an offset of a partition: a plain consumer, no group, no auto reset."""

    def __init__(self, bootstrap: str, client_options: Mapping[str, Any] | None = None, timeout_ms: int = 5000):
        self._bootstrap = bootstrap
        self._options = dict(client_options or {})
        self._timeout_ms = timeout_ms
        self._consumer: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap, group_id=None, enable_auto_commit=False,
            auto_offset_reset="none", **self._options,
        )
        await self._consumer.start()

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()

    async def log_start(self, key: Key) -> int:
        assert self._consumer is not None
        tp = TopicPartition(*key)
        return int((await self._consumer.beginning_offsets([tp]))[tp])

    async def __call__(self, key: Key, offset: int) -> Probe:
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
        end = int((await self._consumer.end_offsets([tp]))[tp])
        if offset >= end:
            return Probe(start, None)
        # Nothing came back from a log that says it holds the offset: guessing either way could lose
        # or double records, so the caller asks again with the next fetch.
        raise LogProbeError(f"{key[0]}/{key[1]}: no answer for offset {offset} (log {start}..{end})")


class LogProbeError(RuntimeError):
    pass
