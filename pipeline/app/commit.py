"""The one owner of the commit protocol: how processed input becomes durable, then acked.

:class:`Commit` holds every output sink of the touchpoint path and what has been staged since the
last commit: the batches' shipped outputs (already added to the sinks), the customer states they
changed, the alerts shipped, and the input to ack. :meth:`Commit.commit` is the whole protocol.
Processing goes on while a commit runs; what it stages meanwhile belongs to the next commit.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from pipeline.app.delivery import BatchDelivery, Fetch
from pipeline.app.metrics import Metrics, observe_many
from pipeline.app.outputs import AlertOutputs, Shipped
from pipeline.app.rows import customer_state_row
from processors.alerts import Alert
from processors.customer import CustomerState, mark_written
from processors.plan import BatchPlan
from processors.stitching import is_forwarder
from schemas.contract import TOPIC_ALERTS
from sinks.base import BufferedSink, PrioritySink
from sinks.clickhouse import TableRow
from sinks.kafka import KafkaRecord

Changelog = Callable[[CustomerState], KafkaRecord]


class Commit:
    """Stages outputs, ships alerts at once, and commits (see :meth:`commit`)."""

    def __init__(self, kafka: PrioritySink[KafkaRecord], clickhouse: BufferedSink[TableRow], delivery: BatchDelivery, changelog: Changelog,
                 metrics: Metrics, alerts: AlertOutputs, checkpoint: Callable[[], KafkaRecord | None],
                 interval_s: float = 1.0, clock: Callable[[], float] = time.monotonic):
        self.kafka = kafka
        self.clickhouse = clickhouse
        self.delivery = delivery
        self._changelog = changelog
        self._metrics = metrics
        self._alerts = alerts
        self._checkpoint = checkpoint
        self._changed: dict[str, CustomerState] = {}
        self._fetches: list[Fetch] = []
        self._events: list[tuple[list[Any], float]] = []  # Faust events of the per-message agents
        self._alert_deliveries: list[asyncio.Future] = []
        self._void: set[Any] = set()  # partitions whose staged acks belong to a log that is gone
        self._lock = asyncio.Lock()
        self._interval_s = interval_s
        self._clock = clock
        self._began = clock()  # when the last commit took what was staged
        self._staged_at = self._began  # when input was last staged
        self.latencies: deque[float] = deque(maxlen=20_000)  # receipt -> committed, seconds
        self.alert_latencies: deque[float] = deque(maxlen=20_000)  # receipt -> alert acked, seconds
        self.committed_records = 0
        self.last_committed: float | None = None

    # -- staging (synchronous: called between batches) -------------------------------------------
    def stage(self, plan: BatchPlan[Shipped], fetch: Fetch, training: KafkaRecord | None) -> None:
        kafka_add, clickhouse_add = self.kafka.add, self.clickhouse.add
        for shipped in plan.outputs:
            kafka_add(shipped.record)
            if shipped.row is not None:
                clickhouse_add(shipped.row)
        if training is not None:
            kafka_add(training)
        self._changed.update(plan.changed)
        self._fetches.append(fetch)
        self._staged_at = self._clock()

    def stage_events(self, events: list[Any], changed: Iterable[CustomerState]) -> None:
        """Input of the per-message agents (CRM profiles): acked by the next commit like the rest."""
        for state in changed:
            self._changed[state.customer_id] = state
        self._events.append((events, time.time()))
        self._staged_at = self._clock()

    def forget(self, customer_id: str) -> None:
        """An erased customer: its state is not to be written again."""
        self._changed.pop(customer_id, None)

    def void(self, partition: Any) -> None:
        """The partition's log started over: acks staged for it name offsets of the old log."""
        self._void.add(partition)

    @property
    def waiting(self) -> bool:
        """Whether staged input awaits its commit."""
        return bool(self._fetches or self._events)

    def due(self) -> bool:
        """Whether to commit now: the sink holds a block's worth of rows; or input is staged and the
        last commit *began* an interval ago (counted from the sink's last flush, late in that
        commit, a record staged just after the commit began would wait for all of it, then the
        interval, then its own commit); or the input went quiet a quarter interval ago, half an
        interval after the last commit began: the end of a burst is not kept waiting for the
        interval, and a trickle of input still makes at most two commits an interval."""
        if not self.waiting:
            return self.clickhouse.due(waiting=False)
        now = self._clock()
        since_began, interval = now - self._began, self._interval_s
        return self.clickhouse.due(waiting=True) or since_began >= interval or (
            since_began >= interval / 2 and now - self._staged_at >= interval / 4)

    async def ship_alerts(self, alerts: list[Alert], received: float) -> None:
        """Send a batch's alerts now, not at the next commit; time them when the broker acks."""
        emitted_ms = int(time.time() * 1000)
        for alert in alerts:
            shipped = self._alerts.ship(alert, emitted_ms)
            self.kafka.add(shipped.record)
            self.clickhouse.add(shipped.row)  # type: ignore[arg-type]  # an alert has its row
        deliveries = await self.kafka.ship(TOPIC_ALERTS)
        for future in deliveries:
            future.add_done_callback(lambda f: self._alert_acked(f, received))
        self._alert_deliveries += deliveries
        # Let the producer put them on the wire now: under a backlog the next fetch is planned
        # without the loop ever suspending, and the alerts would wait for it in the accumulator.
        await asyncio.sleep(0)

    def _alert_acked(self, future: asyncio.Future, received: float) -> None:
        if not future.cancelled() and future.exception() is None:
            latency = time.time() - received
            self._metrics.alert_latency.observe(latency)
            self.alert_latencies.append(latency)

    # -- the protocol ------------------------------------------------------------------------------
    async def commit(self) -> None:
        """Make everything staged so far durable, then ack its input.

        0. Take what is staged, at once (no await before): the input to ack, the alerts shipped,
           each changed customer state serialised once (its changelog record and its
           ``customer_state`` row) and the alert engine's checkpoint, all as of the last batch.
        1. Wait for the broker's acks of those alerts: a state that says an alert fired is never
           durable without the alert.
        2. Flush Kafka (enriched touchpoints, dead letters, training examples, the changelogs, the
           checkpoint) and wait for the broker's acks.
        3. Flush ClickHouse: one block per table; rows it refuses for good become dead letters,
           written before the rest of their table.
        4. Ack the input: Faust commits the acked offsets (its commit interval).
        """
        async with self._lock:
            self._began = self._clock()
            fetches, self._fetches = self._fetches, []
            events, self._events = self._events, []
            alerts, self._alert_deliveries = self._alert_deliveries, []
            void, self._void = self._void, set()
            changed, self._changed = self._changed, {}
            changelogs = [self._changelog(state) for state in changed.values()]
            rows = [customer_state_row(state) for state in changed.values() if not is_forwarder(state.customer_id)]
            for state in changed.values():
                mark_written(state)
            checkpoint = self._checkpoint()

            await asyncio.gather(*alerts)  # 1. (a failed alert send raises: nothing after it is sent)
            for record in changelogs:  # 2.
                self.kafka.add(record)
            if checkpoint is not None:
                self.kafka.add(checkpoint)
            await self.kafka.flush()
            for row in rows:  # 3.
                self.clickhouse.add(row)
            await self.clickhouse.flush()
            self._ack(fetches, events, void)  # 4.

    def _ack(self, fetches: list[Fetch], events: list[tuple[list[Any], float]], void: set[Any]) -> None:
        committed = time.time()
        histogram = self._metrics.latency.labels("committed")
        for fetch in fetches:
            spans = {tp: span for tp, span in fetch.spans.items() if tp not in void}
            self.delivery.ack(spans, fetch.generation)
            self._record(committed - fetch.received, len(fetch.records), histogram)
        for batch, received in events:
            for event in batch:
                event.ack()
            self._record(committed - received, len(batch), histogram)
        if fetches or events:
            self.last_committed = committed
            self._metrics.last_commit.set(committed)

    def _record(self, latency: float, n: int, histogram: Any) -> None:
        observe_many(histogram, latency, n)
        self.latencies.extend([latency] * n)
        self.committed_records += n
