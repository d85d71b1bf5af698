"""Kafka output sink: enriched events, dead letters, table changelogs, alerts, model snapshots.

Uses aiokafka's batch API (``create_batch`` / ``send_batch``): appending to a batch costs a few
microseconds where ``send()`` per record costs far more. ``add`` only appends (a full batch waits for
the next send); ``flush`` sends everything and awaits the broker's acks, so a caller that acks its
input only after ``flush`` gets at-least-once delivery. A batch the broker refuses is sent again, in
new batches, with the later batches of its partition, before the flush returns (a broker
restarting, a leader moving); only after ``send_attempts`` the flush raises. Records of one key are
last seen in the order they were added. ``ship`` sends one topic's batches at once
(alerts must not wait for the next flush) and returns their delivery futures.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner

from sinks.base import NullObserver, SinkObserver

log = logging.getLogger("cem.sink.kafka")

Headers = Sequence[tuple[str, bytes]]
Slot = tuple[str, int]  # (topic, partition)


@dataclass(slots=True)
class KafkaRecord:
    topic: str
    key: bytes | None
    value: bytes | None
    partition: int | None = None  # None: the default (murmur2) partitioner on the key
    headers: Headers = ()
    timestamp_ms: int | None = None


class KafkaSink:
    """Buffers records per (topic, partition) in producer batches; ``flush`` sends and awaits acks.

    ``priority_topics`` (alerts) go out on a producer of their own: aiokafka keeps one request in
    flight per broker connection, so on the bulk producer an alert would wait behind a second's
    worth of enriched events and changelogs (or a model snapshot) being acked. One producer per
    topic, whichever path sends it, keeps each partition in order. ``client_options`` are the
    security settings every client gets (``pipeline.app.kafka_security``).
    """

    def __init__(self, bootstrap: str, observer: SinkObserver | None = None, client_id: str = "cem-sink",
                 priority_topics: frozenset[str] = frozenset(), client_options: Mapping[str, Any] | None = None,
                 send_attempts: int = 6, retry_backoff_s: float = 0.25):
        self._bootstrap = bootstrap
        self._priority_topics = priority_topics
        self._client_id = client_id
        self._options = dict(client_options or {})
        self._producer: AIOKafkaProducer | None = None  # created in start(): it needs the running loop
        self._priority: AIOKafkaProducer | None = None
        self._observer = observer or NullObserver()
        self._partitioner = DefaultPartitioner()
        self._partitions: dict[str, list[int]] = {}
        self._batches: dict[Slot, Any] = {}
        self._items: dict[Slot, list[KafkaRecord]] = {}  # the records of each open batch, to send again
        self._full: list[tuple[Slot, Any, list[KafkaRecord]]] = []  # batches that filled up, sent with the next send
        self._unplaced: list[KafkaRecord] = []  # keyed records of topics whose partitions are not known yet
        self._in_flight: list[tuple[Slot, list[KafkaRecord], asyncio.Future]] = []  # (slot, records, delivery)
        self._flush_lock = asyncio.Lock()
        self._send_attempts = send_attempts
        self._retry_backoff_s = retry_backoff_s  # doubled after each failed attempt: 0.25 .. 8 s, ~16 s in all
        self._started = False
        self._tracked: set[str] = set()  # topics added to their producer's metadata

    async def start(self) -> None:
        if not self._started:
            # Idempotent producers are refused by some Kafka-protocol brokers (Tansu); at-least-once
            # plus idempotent sinks downstream does not need them.
            self._producer = self._new_producer(self._client_id, linger_ms=5)
            self._priority = self._new_producer(f"{self._client_id}-priority", linger_ms=0)
            await self._producer.start()
            await self._priority.start()
            self._started = True

    def _producer_for(self, topic: str) -> AIOKafkaProducer:
        """The producer that builds and sends ``topic``'s batches: always the same one per topic."""
        producer = self._priority if topic in self._priority_topics else self._producer
        assert producer is not None, "KafkaSink.start() first"
        return producer

    def _new_producer(self, client_id: str, linger_ms: int) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            bootstrap_servers=self._bootstrap,
            client_id=client_id,
            acks="all",
            enable_idempotence=False,
            linger_ms=linger_ms,
            max_batch_size=1 << 20,
            max_request_size=64 << 20,  # model snapshots (cem.models allows as much)
            **self._options,
        )

    # -- the Sink protocol ----------------------------------------------------------------------
    def add(self, item: KafkaRecord) -> None:
        partition = item.partition
        if partition is None:
            partitions = self._partitions.get(item.topic)
            if partitions is None:
                self._unplaced.append(item)
                return
            partition = self._partitioner(item.key, partitions, partitions)
        slot = (item.topic, partition)
        batch = self._batches.get(slot)
        if batch is not None and not _append(batch, item):
            self._full.append((slot, self._batches.pop(slot), self._items.pop(slot)))
            batch = None
        if batch is None:
            batch = self._batches[slot] = self._producer_for(item.topic).create_batch()
            if not _append(batch, item):
                raise ValueError(f"record for {item.topic} is larger than the producer's max batch size")
        self._items.setdefault(slot, []).append(item)

    async def write(self, items: Sequence[KafkaRecord]) -> None:
        """Add ``items`` and make everything durable (a flush)."""
        for item in items:
            self.add(item)
        await self.flush()

    async def ship(self, topic: str) -> list[asyncio.Future]:
        """Send ``topic``'s buffered records now (alerts must not wait for the next flush); returns
        their delivery futures. The caller decides what may be sent only after they are acked."""
        await self._place()
        slots = [slot for slot in self._batches if slot[0] == topic]
        # Detach before the first await: a flush running meanwhile takes whatever is left.
        detached = [(slot, self._batches.pop(slot), self._items.pop(slot)) for slot in slots]
        detached += [entry for entry in self._full if entry[0][0] == topic]
        self._full = [entry for entry in self._full if entry[0][0] != topic]
        return [future for slot, batch, items in detached if (future := await self._send(slot, batch, items))]

    async def flush(self) -> None:
        """Send everything added so far and await the acks of everything sent, sending refused batches
        again (see the module docstring). One flush at a time; records added meanwhile go to the next."""
        async with self._flush_lock:
            await self._place()
            full, self._full = self._full, []
            batches, self._batches = self._batches, {}
            items, self._items = self._items, {}
            for slot, batch, records in full:
                await self._send(slot, batch, records)
            for slot, batch in batches.items():
                await self._send(slot, batch, items.get(slot, []))
            for attempt in range(1, self._send_attempts + 1):
                again, error = await self._acks()
                if error is None:
                    return
                if attempt == self._send_attempts or not isinstance(error, KafkaError):
                    raise error
                wait_s = self._retry_backoff_s * 2 ** (attempt - 1)
                log.warning("the broker refused batches (%r); sending %d again in %.2f s (attempt %d of %d)",
                            error, len(again), wait_s, attempt + 1, self._send_attempts)
                await asyncio.sleep(wait_s)
                for slot, records in again:
                    await self._send_again(slot, records)

    async def _acks(self) -> tuple[list[tuple[Slot, list[KafkaRecord]]], BaseException | None]:
        """Await every batch in flight: the records to send again, and the first error. After a
        refused batch, the later batches of its partition go again too, though taken: a record of a
        key is then last seen after the one before it, as it was sent (consumers see a duplicate)."""
        in_flight, self._in_flight = self._in_flight, []
        started = time.perf_counter()
        results = await asyncio.gather(*(future for _, _, future in in_flight), return_exceptions=True)
        seconds = time.perf_counter() - started
        again: list[tuple[Slot, list[KafkaRecord]]] = []
        refused: set[Slot] = set()  # partitions with a refused batch: what follows it goes again too
        error: BaseException | None = None
        for (slot, records, _), result in zip(in_flight, results, strict=True):
            failed = result if isinstance(result, BaseException) else None
            self._observer.on_write(slot[0], len(records), seconds, failed)
            error = error or failed
            if failed is not None:
                refused.add(slot)
            if slot in refused:
                again.append((slot, records))
        return again, error

    async def _send_again(self, slot: Slot, records: list[KafkaRecord]) -> None:
        """``records`` of a refused batch, in new batches of their own, in order."""
        producer = self._producer_for(slot[0])
        batch, pending = producer.create_batch(), list[KafkaRecord]()
        for record in records:
            if not _append(batch, record):
                await self._send(slot, batch, pending)
                batch, pending = producer.create_batch(), []
                _append(batch, record)
            pending.append(record)
        await self._send(slot, batch, pending)

    async def close(self) -> None:
        if self._started:
            try:
                await self.flush()
            finally:
                for producer in (self._producer, self._priority):
                    if producer is not None:
                        await producer.stop()
                self._started = False

    # -- internals --------------------------------------------------------------------------------
    async def _place(self) -> None:
        """Partition the keyed records whose topic's partitions were not known when they were added."""
        if not self._unplaced:
            return
        unplaced, self._unplaced = self._unplaced, []
        for topic in {record.topic for record in unplaced}:
            if topic not in self._partitions:
                found = await self._producer_for(topic).partitions_for(topic)
                self._partitions[topic] = sorted(found)
        for record in unplaced:
            self.add(record)

    async def _send(self, slot: Slot, batch: Any, records: list[KafkaRecord]) -> asyncio.Future | None:
        if not records:
            return None
        topic, partition = slot
        producer = self._producer_for(topic)
        if topic not in self._tracked:
            # aiokafka fetches metadata for *all* topics until one is tracked, then only for tracked
            # ones, dropping the rest from its view: batches for an untracked topic then wait
            # forever for a leader. Track every topic we write to, on the producer that writes it.
            await producer.client.add_topic(topic)
            self._tracked.add(topic)
        future = await producer.send_batch(batch, topic, partition=partition)
        self._in_flight.append((slot, records, future))
        return future


def _append(batch: Any, record: KafkaRecord) -> bool:
    """Add ``record`` to a producer batch; False if the batch is full."""
    metadata = batch.append(key=record.key, value=record.value, timestamp=record.timestamp_ms, headers=list(record.headers))
    return metadata is not None


def records_of(items: Iterable[KafkaRecord], topic: str) -> list[KafkaRecord]:
    """The records for ``topic`` among ``items`` (tests)."""
    return [item for item in items if item.topic == topic]
