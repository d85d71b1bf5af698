"""Batch-native delivery for Faust: a whole fetch reaches the touchpoint agent at once.

Faust delivers every record on its own: ``Consumer._drain_messages`` awaits
``wait_first(callback(message), suspend_flow.wait())`` per record (tasks per record), then the
conductor, the stream's queue and its iterator. For a topic of tens of thousands of records a
second that machinery is most of the worker's CPU. This module is the one place cem patches it:

* :class:`BatchConsumer` is Faust's aiokafka consumer with ``_drain_messages`` replaced. For the
  *batch topics* it hands each fetch (``tp -> records``), converted to
  :class:`~processors.ingest.SourceRecord`, to a :class:`BatchDelivery` queue in one step; records of
  every other topic (CRM profiles, training, changelogs) take Faust's own per-message path as before.
  Flow control is Faust's: the queue is a ``FlowControlQueue`` managed by ``app.flow_control``, so a
  rebalance suspends it and clears it, and a fetch that arrives while flow is stopped is dropped and
  the partitions seek back to their committed offsets, as ``Consumer.getmany`` does.
* Offsets are Faust's too: :meth:`BatchDelivery.ack` records acked offset ranges in the consumer's
  ``_acked`` / ``_acked_index``, exactly what ``Consumer.ack`` does per message, so Faust's commit
  loop commits them (gaps included: a range acks every offset the fetch covered). Acks of a fetch
  from an earlier consumer generation are dropped: after a rebalance the partition's owner reads
  from the committed offset again.
* End offsets are confirmed by a read (:meth:`BatchConsumer.highwaters`): some Kafka-protocol
  brokers (Tansu) answer ListOffsets with the last record batch's base offset + 1, and Faust's table
  recovery, which stops there, would restore states without the rest of that batch.
* :meth:`BatchDelivery.overruns` finds partitions whose position is past their log's end, which
  some brokers (Tansu) answer with nothing at all, for the worker to read them again.
* :attr:`BatchDelivery.interruptions` counts the moments the stream may have been cut (a poll with
  nothing of the batch topics, a broker connection closed), for the log book to check a partition's
  log after one (``pipeline.app.logs``) and not merely because a backlog kept it out of a few fetches.
* :meth:`BatchDelivery.restart` resets Faust's bookkeeping of one partition and seeks it, for a log
  that started over (``pipeline.app.logs``): Faust assumes offsets only grow, and would otherwise
  drop the new log's records as already read (``DROPPED MESSAGE``) and ignore their acks.
* Every seek of a partition (ours, and Faust's to the committed offsets at each assignment) makes
  the records fetched before it *stale*: they come again from the new position. Processed as well,
  they would be processed twice, and out of order: a sink that keeps a high-water mark per partition
  would then drop the lower offsets read again as already stored. So the consumer thread counts
  the seeks of each partition where they happen (:class:`FetchWaitThread`), each poll's records
  carry the counts they were drained under, and :meth:`BatchDelivery.current` tells the worker
  whether a fetch's records of a partition are still the ones to process.

Registered through Faust's own extension point: :class:`CemApp` builds its transport with
:class:`BatchTransport`, whose ``Consumer`` is :class:`BatchConsumer`. Tested by the SIGKILL,
replay, rebalance and flow-control tests of the worker. Written as it could be offered upstream:
nothing here knows about touchpoints.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import faust
from aiokafka.conn import CloseReason
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from mode.utils.queues import FlowControlQueue

from processors.ingest import SourceRecord

log = logging.getLogger("cem.delivery")


@dataclass(slots=True)
class Fetch:
    """One fetch of the batch topics: records in offset order per partition, and what to ack."""

    records: list[SourceRecord]
    spans: dict[Any, tuple[int, int]]  # TP -> (first offset to ack, last offset): every offset in between
    generation: int  # BatchDelivery.generation when fetched
    received: float = field(default_factory=time.time)
    regressed: set[Any] = field(default_factory=set)  # partitions whose offsets went back: the log started over
    interruptions: int = 0  # BatchDelivery.interruptions when fetched
    seeks: dict[Any, int] = field(default_factory=dict)  # TP -> its seeks counted when its records were drained

    @property
    def partitions(self) -> list[Any]:
        return list(self.spans)


class BatchDelivery:
    """Where the consumer puts fetches of the batch topics and the agent takes them."""

    def __init__(self, app: faust.App, topics: Iterable[str], maxsize: int = 4, fetch_max_wait_ms: int = 100):
        self.app = app
        self.topics = frozenset(topics)
        self.fetch_max_wait_ms = fetch_max_wait_ms  # see FetchWaitThread
        self._queue: FlowControlQueue | None = None
        self._maxsize = maxsize
        self.regressions = 0
        # (topic, partition) -> reported end offset  ->  the end a read confirms; see highwaters
        self.log_ends: Callable[[Mapping[Any, int]], Awaitable[Mapping[Any, int]]] | None = None
        # Bumped at every revocation and assignment. (Faust's consumer_generation_id stays 0 on
        # brokers whose JoinGroup answers generation 0, so it cannot tell one assignment from the next.)
        self.generation = 0
        # Bumped whenever the stream of records may have been cut: a poll that brought nothing of
        # the batch topics, or a broker connection of the consumer closed. A log that started over
        # lies behind one of these, so a partition whose fetches straddle one has its log checked
        # again (pipeline.app.logs); a backlog, whose polls are never empty, is not checked again.
        self.interruptions = 0

    def interrupted(self) -> None:
        self.interruptions += 1

    def rebalanced(self) -> None:
        """A revocation or an assignment: fetches from before it are not to be acked any more."""
        self.generation += 1

    @property
    def queue(self) -> FlowControlQueue:
        if self._queue is None:  # needs the app's flow control, which needs the loop
            self._queue = FlowControlQueue(self._maxsize, flow_control=self.app.flow_control, clear_on_resume=True)
        return self._queue

    async def fetches(self) -> Any:
        """The agent's input: one :class:`Fetch` after another."""
        while True:
            yield await self.queue.get()

    def ack(self, spans: dict[Any, tuple[int, int]], generation: int) -> int:
        """Ack every offset of ``spans`` (from a fetch of ``generation``); returns how many were new."""
        consumer = cast("BatchConsumer", self.app.consumer)  # ConsumerT lacks Faust's offset bookkeeping
        if generation != self.generation:
            return 0  # a rebalance since: the owner reads these again from the committed offset
        assignment = consumer.assignment()
        acked = 0
        for tp, (first, last) in spans.items():
            if tp not in assignment:
                continue
            committed = consumer._committed_offset[tp]
            index = consumer._acked_index[tp]
            new = [o for o in range(max(first, committed or 0), last + 1) if o not in index]
            if new:
                index.update(new)
                consumer._acked[tp].extend(new)
                acked += len(new)
        consumer._n_acked += acked
        return acked

    def current(self, tp: Any, seeks: int | None) -> bool:
        """Whether records of ``tp`` drained under ``seeks`` (its count then) are still to be
        processed: no seek of ``tp`` since, which would bring them again."""
        return seeks == cast("BatchConsumer", self.app.consumer).thread_seeks(tp)

    async def restart(self, tp: Any, offset: int | None) -> None:
        """Forget Faust's bookkeeping of ``tp`` (its committed, read and acked offsets belong to a log
        that started over) and, if ``offset`` is given, read the partition again from there."""
        consumer = cast("BatchConsumer", self.app.consumer)  # as in ack
        consumer._committed_offset[tp] = None
        consumer._acked.pop(tp, None)
        consumer._acked_index.pop(tp, None)
        consumer._gap.pop(tp, None)
        if offset is not None:
            await consumer.seek_in_thread(tp, offset)
            consumer._read_offset[tp] = None  # any first offset is right

    def assigned(self) -> list[Any]:
        """The assigned partitions of the batch topics."""
        return [tp for tp in self.app.consumer.assignment() if tp.topic in self.topics]

    def overruns(self) -> list[Any]:
        """Assigned partitions of the batch topics whose fetch position is past the end of their log
        (the high-water mark of the last fetch answer). Kafka answers such a fetch OFFSET_OUT_OF_RANGE
        and the consumer resets; Tansu answers it with no records and no error, so the partition would
        wait for ever. Plain reads of the consumer thread's state, as Faust's ``highwater()`` does."""
        thread = cast("BatchConsumer", self.app.consumer)._thread
        client = getattr(thread, "_consumer", None)
        subscription = client._subscription.subscription if client is not None else None
        assignment = subscription.assignment if subscription is not None else None
        if assignment is None:
            return []
        found = []
        for tp in list(assignment.tps):
            state = assignment.state_value(tp) if tp.topic in self.topics else None
            if state is not None and state.has_valid_position and state.highwater is not None \
                    and state.position > state.highwater:
                found.append(TP(tp.topic, tp.partition))
        return found


def to_source(record: Any) -> SourceRecord:
    return SourceRecord(record.topic, record.partition, record.offset, record.timestamp, record.key, record.value,
                        headers=record.headers or ())


class Drained(dict[Any, list[Any]]):
    """A poll's records (``tp -> records``) and, per partition, the seeks counted when they were drained."""

    seeks: dict[Any, int]


class FetchWaitThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's consumer thread, with the fetch wait of :attr:`BatchDelivery.fetch_max_wait_ms`, and
    the seeks of each partition counted.

    Faust fixes ``fetch_max_wait_ms`` at 1,500. Some brokers (Tansu) hold a fetch for that long even
    when records are there, so fetches came every ~0.75 s with ~1,500 records each, and an alert
    waited for its whole fetch to arrive and be planned. Kafka answers as soon as it has records,
    so a short wait costs it only more empty fetches when the topic is idle.

    Seeks are counted by the fetcher's ``seek_to``, which every seek of the consumer goes through,
    and a poll's records are stamped with the counts as soon as the fetcher hands them out. Both run
    on this thread's loop without an await between the step and its count, so a record drained
    before a seek always carries the count from before it. (A seek from another thread would race
    with the drain: cem's own seeks come here with :meth:`seek_counted`.)
    """

    seeks: dict[Any, int]

    async def on_start(self) -> None:
        self.seeks = {}
        await super().on_start()
        fetcher = self._ensure_consumer()._fetcher
        seek_to, seeks = fetcher.seek_to, self.seeks

        def counted(tp: Any, offset: int) -> None:
            seek_to(tp, offset)
            seeks[tp] = seeks.get(tp, 0) + 1

        fetcher.seek_to = counted

    async def seek_counted(self, tp: Any, offset: int) -> None:
        """``seek``, on this thread's loop (run with ``call_thread``)."""
        self._ensure_consumer().seek(tp, offset)

    async def _fetch_records(self, consumer: Any, active_partitions: Any, timeout: float | None = None,
                             max_records: int | None = None) -> Drained:
        records = Drained(await super()._fetch_records(consumer, active_partitions, timeout, max_records))
        seeks = self.seeks
        records.seeks = {tp: seeks.get(tp, 0) for tp in records}  # no await since the drain
        return records

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        delivery = cast("BatchConsumer", self.consumer).delivery
        if delivery is not None:
            consumer._fetch_max_wait_ms = delivery.fetch_max_wait_ms  # read by the fetcher at start()
            _count_closed_connections(consumer._client, delivery)
        return consumer


def _count_closed_connections(client: Any, delivery: BatchDelivery) -> None:
    """Every broker connection the client loses (a broker restarting among them) is an
    interruption. The client hands its ``_on_connection_closed`` to each connection it creates, so
    this wraps it before the first one."""
    closed = client._on_connection_closed

    def on_closed(conn: Any, reason: Any) -> None:
        if reason != CloseReason.SHUTDOWN:
            delivery.interrupted()  # an int bumped from the consumer's thread: read as a whole
        closed(conn, reason)

    client._on_connection_closed = on_closed


def _holds_any(records: Mapping[Any, list[Any]] | None, topics: frozenset[str]) -> bool:
    """Whether a poll brought records of ``topics``."""
    return records is not None and any(tp_records and tp.topic in topics for tp, tp_records in records.items())


class BatchConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer, delivering fetches of the batch topics in one piece."""

    delivery: BatchDelivery | None = None  # set by CemApp before the consumer starts fetching

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return FetchWaitThread(self, loop=self.loop, beacon=self.beacon)

    def thread_seeks(self, tp: Any) -> int:
        """The seeks of ``tp`` so far (read from this loop: an int from the thread's dict)."""
        return cast(FetchWaitThread, self._thread).seeks.get(tp, 0)

    async def seek_in_thread(self, tp: Any, offset: int) -> None:
        thread = cast(FetchWaitThread, self._thread)
        await thread.call_thread(thread.seek_counted, tp, offset)

    async def highwaters(self, *partitions: Any) -> Any:
        """End offsets, confirmed by ``BatchDelivery.log_ends`` when set: table recovery reads the
        changelogs up to these, and must not stop inside their last record batch."""
        reported = await super().highwaters(*partitions)
        confirm = self.delivery.log_ends if self.delivery is not None else None
        if confirm is None or not reported:
            return reported
        return {**reported, **(await confirm(reported))}  # every answer, 0 included: none is taken on trust

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - exercised end to end
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                records, active = await self._wait_next_records(timeout=1.0)
                await self.sleep(0)
                if self.delivery is not None and not _holds_any(records, self.delivery.topics):
                    self.delivery.interrupted()  # a poll with nothing of the batch topics
                if records is None or self.should_stop:
                    continue
                if not self.flow_active:
                    await self._seek_back()
                    continue
                await self._deliver(records, active)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise

    async def _seek_back(self) -> None:
        # As Consumer.getmany does when records arrive while flow is stopped.
        try:
            await self.perform_seek()
        except Exception as exc:
            self.log.warning(f"exception performing seek when flow not active {exc}")

    async def _deliver(self, records: Mapping[Any, list[Any]], active: set[Any] | None) -> None:
        delivery = self.delivery
        generation = delivery.generation if delivery is not None else 0
        batch: dict = {}
        for tp, tp_records in records.items():
            if not tp_records or not (active is None or tp in active or tp in self._buffered_partitions):
                continue
            if delivery is not None and tp.topic in delivery.topics:
                batch[tp] = tp_records
            else:
                await self._deliver_one_by_one(tp, tp_records)
        if batch:
            assert delivery is not None  # the batch holds only the delivery's topics
            fetch = self._fetch(batch, generation, records.seeks if isinstance(records, Drained) else None)
            if fetch.spans:
                await self.wait_first(delivery.queue.put(fetch), self.suspend_flow.wait())

    def _fetch(self, batch: dict, generation: int, drained: Mapping[Any, int] | None) -> Fetch:
        read_offset = self._read_offset
        sources: list[SourceRecord] = []
        spans: dict = {}
        seeks: dict = {}
        regressed = set()
        for tp, tp_records in batch.items():
            seeks[tp] = self.thread_seeks(tp) if drained is None else drained.get(tp, 0)
            if seeks[tp] != self.thread_seeks(tp):
                continue  # sought since it was drained: these come again from the new position
            first, last = tp_records[0].offset, tp_records[-1].offset
            previous = read_offset[tp]
            if previous is not None and first < previous:
                regressed.add(tp)  # offsets went back without a seek: the log started over
                start = first
            else:
                start = first if previous is None else min(first, previous + 1)
            spans[tp] = (start, last)
            read_offset[tp] = last
            sources.extend(map(to_source, tp_records))
        if regressed and self.delivery is not None:
            self.delivery.regressions += len(regressed)
        interruptions = self.delivery.interruptions if self.delivery is not None else 0
        return Fetch(sources, spans, generation, regressed=regressed, interruptions=interruptions, seeks=seeks)

    async def _deliver_one_by_one(self, tp: Any, tp_records: list) -> None:
        """Faust's own path, as in ``Consumer._drain_messages``, for the topics not delivered in batches."""
        callback = self.callback
        to_message = self._to_message
        acks_enabled = self.app.topics.acks_enabled_for(tp.topic)
        for record in tp_records:
            if not self.flow_active:
                return
            offset = record.offset
            r_offset = self._read_offset[tp]
            if r_offset is None or offset >= r_offset:
                gap = offset - (r_offset or 0)
                if gap > 1 and r_offset and acks_enabled:
                    await self._add_gap(tp, r_offset + 1, offset)
                if self._commit_every is not None and self._n_acked >= self._commit_every:
                    self._n_acked = 0
                    await self.commit()
                await self.wait_first(callback(to_message(tp, record)), self.suspend_flow.wait())
                self._read_offset[tp] = offset


class BatchTransport(faust_aiokafka.Transport):
    Consumer = BatchConsumer


class CemApp(faust.App):
    """A Faust app whose consumer delivers the ``batch_topics`` in fetches (see the module docstring)."""

    def __init__(self, *args: Any, batch_topics: Iterable[str] = (), fetch_max_wait_ms: int = 100, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.delivery = BatchDelivery(self, batch_topics, fetch_max_wait_ms=fetch_max_wait_ms)

    def _new_transport(self) -> Any:
        return BatchTransport(self.conf.broker_consumer, self)

    def _new_consumer(self) -> Any:
        consumer = cast(BatchConsumer, super()._new_consumer())  # our transport's Consumer
        consumer.delivery = self.delivery
        return consumer
