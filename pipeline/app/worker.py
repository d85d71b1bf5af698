"""The Faust app: topics, the customer-state table, the touchpoint agent, and their sinks.

Thin wiring only. Per batch of input records the agent calls :class:`processors.ingest.Ingestor`,
then writes the results to the Kafka sink (enriched events, dead letters, the state changelog) and
the ClickHouse sink. Input records are acked only after both sinks have flushed, so an offset is
committed only once everything it produced is durable: at-least-once, made exact by the sinks.

Per touchpoint the worker also scores sentiment and churn risk with the latest published models
and runs the alert rules; alerts are shipped to ``cem.alerts`` at the end of their batch (not at the
next flush), and a flush acks them before it writes the state changelog, so a state that says "alert
fired" is never durable without the alert. The examples for training go, once per batch, to the
single-partition training topic, whose owner runs :class:`pipeline.app.models.TrainerRuntime`.

Why batches and a hand-written changelog: Faust's per-event table writes go through its producer
buffer one record at a time (~190 µs each here); Faust tables can only be set from per-event
iteration. We keep the table as Faust's recoverable store (its ``data`` and its changelog topic,
which Faust replays on start), and write the changelog ourselves once per customer per batch.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from pathlib import Path
from collections import Counter as Tally
from collections import deque
from typing import Any, Iterable

import faust
from mode.utils.queues import FlowControlEvent
from faust.sensors import Monitor
import orjson

from pipeline.app.metrics import KafkaObserver, Metrics
from pipeline.app.models import ModelFeed, TrainerRuntime, alert_engine_key, model_record, training_record
from pipeline.settings import Settings
from processors.alerts import Alert, AlertConfig, AlertEngine
from processors.churn import MODEL_NAME as CHURN_MODEL_NAME
from processors.customer import CustomerState
from processors.training import ModelTrainer
from processors.ingest import DeadLetter, Ingestor, Kind, Result, SourceRecord
from processors.kpi import csat_satisfied, nps_category, signed_revenue
from processors.profile import ProfileRejected, parse_profile
from processors.scoring import TouchpointScoring, TrainingBatch, alert_state
from processors.sentiment import MODEL_NAME as SENTIMENT_MODEL_NAME
from schemas.codec import AvroCodec, EnrichedEncoder, RecordEncoder, SchemaRegistry
from schemas.contract import (
    HEADER_DETAIL,
    MODEL_CHURN,
    MODEL_SENTIMENT,
    HEADER_REASON,
    HEADER_SOURCE_OFFSET,
    HEADER_SOURCE_PARTITION,
    HEADER_SOURCE_TOPIC,
    HEADER_STAGE,
    TOPIC_ALERTS,
    TOPIC_CUSTOMERS,
    TOPIC_DLQ,
    TOPIC_ENRICHED,
    TOPIC_MODELS,
    TOPIC_TOUCHPOINTS,
    TOPIC_TRAINING,
    Stage,
)
from sinks.clickhouse import ClickHouseSink, TableRow, connect
from pipeline.app.rows import COLUMNS, alert_row, customer_state_row, dead_letter_row, enriched_row
from sinks.kafka import KafkaRecord, KafkaSink

log = logging.getLogger("cem.worker")

STATE_TABLE = "customer_state"


class CustomerStates:
    """The customer-state table seen as ``customer_id -> CustomerState``.

    Values recovered by Faust from the changelog are dicts; they become objects on first use.
    """

    def __init__(self, table: Any):
        self._table = table

    @property
    def _partitions(self) -> dict:
        # Faust's memory store keeps key -> partition for what it recovered, and drops the keys of
        # partitions this worker no longer owns; we keep it up to date for what we write.
        return self._table.data._key_partition

    @property
    def changelog_topic(self) -> str:
        return self._table.changelog_topic.get_topic_name()

    def get(self, customer_id: str) -> CustomerState:
        state = self.peek(customer_id)
        if state is None:
            state = self._table.data[customer_id.encode()] = CustomerState(customer_id)
        return state

    def peek(self, customer_id: str) -> CustomerState | None:
        """The customer's state if this worker holds it (never creates one)."""
        data = self._table.data
        key = customer_id.encode()
        state = data.get(key)
        if isinstance(state, dict):
            state = data[key] = _from_changelog(state)
        return state

    def all(self) -> Iterable[CustomerState]:
        return [self.peek(key.decode()) for key in list(self._table.data)]

    def place(self, customer_id: str, partition: int) -> None:
        """The customer's state lives in (and is changelogged to) ``partition``."""
        self._partitions[customer_id.encode()] = partition

    def changelog(self, state: CustomerState) -> KafkaRecord:
        key = state.customer_id.encode()
        value = orjson.dumps(state)  # plain JSON (Faust's json codec reads it back on recovery)
        return KafkaRecord(self.changelog_topic, key, value, self._partitions.get(key))


def _from_changelog(data: dict) -> CustomerState:
    state = CustomerState.from_dict(data)
    if state.alerting is not None:
        alert_state(state)  # the dict becomes a CustomerAlertState again
    return state


class TouchpointWorker:
    """Per-batch processing and the flush/ack protocol; owns the sinks."""

    def __init__(self, settings: Settings, metrics: Metrics, states: CustomerStates):
        self.settings = settings
        self.metrics = metrics
        metrics.start_at_zero(COLUMNS, (TOPIC_ENRICHED, TOPIC_DLQ, TOPIC_ALERTS, TOPIC_TRAINING, TOPIC_MODELS),
                              (CHURN_MODEL_NAME, SENTIMENT_MODEL_NAME))
        self.states = states
        registry = SchemaRegistry.from_config(_paths(settings.schema_files), _confluent_ids(settings.confluent_ids))
        self.codec = AvroCodec(registry)
        self.ingestor = Ingestor(self.codec, int(settings.dedupe_horizon_s * 1000))
        self.enriched_encoder = EnrichedEncoder()
        self.scoring = TouchpointScoring(alerts=AlertEngine(AlertConfig.from_spec(settings.alert_rules)))
        self.alert_encoder = RecordEncoder("alert") if settings.alert_format == "avro" else None
        self.alert_latencies: deque[float] = deque(maxlen=20_000)  # receipt -> alert acked, seconds
        self.kafka = KafkaSink(settings.kafka_bootstrap, KafkaObserver(metrics), client_id=f"{settings.app_id}-sink",
                               priority_topics=frozenset({TOPIC_ALERTS}))
        client = connect(settings.clickhouse_url, settings.clickhouse_user, settings.clickhouse_password)
        self.clickhouse = ClickHouseSink(
            client, settings.clickhouse_database, COLUMNS, metrics,
            settings.sink_flush_rows, settings.sink_flush_interval_s,
        )
        self.models = ModelFeed(settings.kafka_bootstrap, self._swap_model)
        self.trainer = TrainerRuntime(
            self.models, self.kafka, self.clickhouse, metrics, settings.model_publish_interval_s,
            functools.partial(ModelTrainer.for_horizon, int(settings.churn_horizon_s * 1000)),
            settings.trainer_checkpoint_interval_s,
        )
        self._pending: list[tuple[list[Any], float]] = []  # (events, received wall time) awaiting ack
        self._lock = asyncio.Lock()
        self.latencies: deque[float] = deque(maxlen=20_000)  # receipt -> committed, seconds (for /status, bench)
        self.first_received: float | None = None  # wall clock, for `cem bench`
        self.last_committed: float | None = None
        self.committed_records = 0
        self._flushing: asyncio.Future | None = None
        self.engine_key: str | None = None  # set at start
        self._engine_checkpoint: bytes | None = None  # the alert engine after the last processed batch
        self.started = False

    async def start(self, partitions: Iterable[int] = ()) -> None:
        """``partitions``: the touchpoint partitions this worker reads, which name its alert engine."""
        await self.kafka.start()
        await self.clickhouse.start()
        await self.models.start()  # the last published models, before the first score
        self.engine_key = alert_engine_key(partitions)
        checkpoint = self.models.alert_engine(self.engine_key)
        if checkpoint is not None:  # the same partitions as before a restart: carry on where it was
            self.scoring.alerts = AlertEngine.from_bytes(checkpoint, self.scoring.alerts.config)
        self.scoring.alerts.track(s.alerting for s in self.states.all() if s.alerting is not None)
        self.started = True

    def model_versions(self) -> dict[str, Any]:
        """The versions this worker scores with, and the trainer's progress if it hosts it."""
        trainer = self.trainer.trainer
        return {
            MODEL_SENTIMENT: self.scoring.sentiment.model.version,
            MODEL_CHURN: self.scoring.churn.model.version,
            "snapshots_loaded": self.models.loaded,
            "trained_through": trainer.trained_through if trainer is not None else None,
            "snapshots_published": self.trainer.published,
        }

    def _swap_model(self, key: str, model: Any) -> None:
        scorer = self.scoring.sentiment if key == MODEL_SENTIMENT else self.scoring.churn
        scorer.model = model  # one reference swap: a batch in progress scores with one model or the next

    async def process(self, events: list[Any]) -> None:
        """Handle one batch of Faust events (the agent's body)."""
        received = time.time()
        if self.first_received is None:
            self.first_received = received
        outputs: list[KafkaRecord] = []
        rows: list[TableRow] = []
        changed: dict[str, CustomerState] = {}
        tallies = _Tallies()
        training = TrainingBatch()
        alerts: list[Alert] = []
        for event in events:
            record = _source_record(event.message)
            result = self.ingestor.handle(record, self.states.get)
            tallies.add(result)
            self._route(result, record, outputs, rows, changed, training, alerts)
        self._sweep(alerts, changed)
        for state in changed.values():
            outputs.append(self.states.changelog(state))
            rows.append(customer_state_row(state))
        training.watermark_ms = self.scoring.alerts.watermark_ms
        if training:
            outputs.append(training_record(training))
        if alerts:  # first, and at once: the changelog written next is sent only after their acks
            await self.kafka.write(self._alert_outputs(alerts, rows, tallies))
            self._time_alerts(await self.kafka.ship(TOPIC_ALERTS), received)
        await self.kafka.write(outputs)
        await self.clickhouse.write(rows)
        tallies.publish(self.metrics)
        enriched_at = time.time()
        self.metrics.latency.labels("enriched").observe(enriched_at - received)
        self.metrics.last_batch.set(enriched_at)
        # The engine as of this batch, whose outputs are all written: what the next flush checkpoints.
        self._engine_checkpoint = self.scoring.alerts.to_bytes()
        self._pending.append((events, received))
        await self._maybe_flush()

    async def _maybe_flush(self) -> None:
        """Flush in the background so processing goes on during inserts; bound what is buffered."""
        running = self._flushing is not None and not self._flushing.done()
        if running and self.clickhouse.pending_rows >= 3 * self.settings.sink_flush_rows:
            await self._flushing  # backpressure: at most one flush in flight plus one buffer
            running = False
        if self._flushing is not None and self._flushing.done() and self._flushing.exception():
            raise self._flushing.exception()  # a sink failed for good: let the worker crash and replay
        # Input waiting for its ack is reason enough: a batch of pure duplicates writes no rows.
        if not running and self.clickhouse.due(waiting=bool(self._pending)):
            self._flushing = asyncio.ensure_future(self.flush())

    def _route(
        self, result: Result, record: SourceRecord, outputs: list[KafkaRecord], rows: list[TableRow], changed: dict,
        training: TrainingBatch, alerts: list[Alert],
    ) -> None:
        if result.kind is Kind.DUPLICATE:
            return
        if result.kind is Kind.DEAD_LETTER:
            outputs.append(_dead_letter_record(result.dead_letter))
            rows.append(dead_letter_row(result.dead_letter))
            return
        enriched = result.enriched
        state = result.state
        new = result.kind is Kind.PROCESSED
        alerts.extend(self.scoring.score(enriched, state, new, training))
        if enriched.sentiment is not None:
            self.metrics.sentiment.observe(enriched.sentiment)
        if MODEL_CHURN in enriched.model_versions:  # rescored by this touchpoint
            self.metrics.churn_risk.observe(enriched.churn_risk)
        body = self.codec.current_body(record.value)
        value = self.enriched_encoder.encode(
            enriched.tail_record(), None if body is not None else enriched.touchpoint.to_record(), body,
        )
        outputs.append(KafkaRecord(TOPIC_ENRICHED, record.key, value, enriched.source_partition))
        rows.append(enriched_row(enriched, TOPIC_TOUCHPOINTS))
        if new:
            customer_id = enriched.touchpoint.customer_id
            self.states.place(customer_id, enriched.source_partition)
            changed[customer_id] = state

    def _sweep(self, alerts: list[Alert], changed: dict) -> None:
        """Event-time timers (SLA deadlines, closed channel minutes) up to the watermark."""
        for alert in self.scoring.sweep(self.states.peek):
            alerts.append(alert)
            customer_id = alert.customer_id
            if customer_id is not None and customer_id not in changed:  # the case is now marked breached
                changed[customer_id] = self.states.peek(customer_id)

    def _alert_outputs(self, alerts: list[Alert], rows: list[TableRow], tallies: "_Tallies") -> list[KafkaRecord]:
        emitted_ms = int(time.time() * 1000)
        records = []
        for alert in alerts:
            record = alert.to_record(emitted_ms)
            value = self.alert_encoder.encode(record) if self.alert_encoder else orjson.dumps(record)
            records.append(KafkaRecord(TOPIC_ALERTS, (alert.customer_id or alert.channel or "").encode(), value))
            rows.append(alert_row(record))
            tallies.alerts[(alert.type, alert.severity)] += 1
        return records

    def _time_alerts(self, deliveries: list[asyncio.Future], received: float) -> None:
        def delivered(future: asyncio.Future) -> None:
            if not future.cancelled() and future.exception() is None:
                latency = time.time() - received
                self.metrics.alert_latency.observe(latency)
                self.alert_latencies.append(latency)

        for future in deliveries:
            future.add_done_callback(delivered)

    async def flush(self) -> None:
        """Make all outputs durable, then ack their inputs (so Faust may commit the offsets).

        The alert engine is checkpointed with every flush after touchpoints, as of the last batch
        whose outputs (state changelogs included) this flush sends: a restart resumes the channel
        minutes and detectors that match the customer states, so a replay neither misses a channel
        alert nor makes a new one.
        """
        async with self._lock:
            pending, self._pending = self._pending, []
            checkpoint, self._engine_checkpoint = self._engine_checkpoint, None
            if checkpoint is not None and self.engine_key is not None:
                await self.kafka.write([model_record(self.engine_key, checkpoint)])
            await self.kafka.flush()
            await self.clickhouse.flush()
            committed = time.time()
            observe = self.metrics.latency.labels("committed").observe
            for events, received in pending:
                latency = committed - received
                for event in events:
                    event.ack()
                    observe(latency)
                self.latencies.extend([latency] * len(events))
                self.committed_records += len(events)
            if pending:
                self.last_committed = committed

    async def flush_if_due(self) -> None:
        await self._maybe_flush()

    async def process_profiles(self, events: list[Any]) -> None:
        """CRM profiles from ``cem.customers`` join the customer's state (a churn model input)."""
        outputs: list[KafkaRecord] = []
        changed: dict[str, CustomerState] = {}
        for event in events:
            message = event.message
            try:
                profile = parse_profile(message.key, message.value)
            except ProfileRejected as exc:
                dead = DeadLetter(_source_record(message), exc.reason, Stage.VALIDATE, exc.detail)
                outputs.append(_dead_letter_record(dead))
                self.metrics.dead_lettered.labels(exc.reason.value, Stage.VALIDATE.value).inc()
                continue
            state = self.states.get(profile.customer_id)
            state.profile = profile.attributes
            self.states.place(profile.customer_id, message.partition)
            changed[profile.customer_id] = state
        outputs.extend(self.states.changelog(state) for state in changed.values())
        await self.kafka.write(outputs)
        self.metrics.profiles.inc(len(changed))
        self._pending.append((events, time.time()))
        await self._maybe_flush()

    async def close(self) -> None:
        if self.started:
            await self.trainer.release()
            await self.flush()
            await self.kafka.close()
            await self.models.stop()
            self.started = False


class _Tallies:
    """Per-batch counts, published to Prometheus once per batch."""

    def __init__(self) -> None:
        self.received: Tally = Tally()
        self.by_kind: dict[Kind, Tally] = {kind: Tally() for kind in Kind}
        self.dead: Tally = Tally()
        self.nps: Tally = Tally()
        self.csat: Tally = Tally()
        self.revenue: Tally = Tally()
        self.alerts: Tally = Tally()

    def add(self, result: Result) -> None:
        channel = result.channel
        self.received[channel] += 1
        self.by_kind[result.kind][channel] += 1
        if result.kind is Kind.DEAD_LETTER:
            self.dead[(result.dead_letter.reason.value, result.dead_letter.stage.value)] += 1
        elif result.kind is Kind.PROCESSED:
            tp = result.enriched.touchpoint
            if tp.nps is not None:
                self.nps[(channel, nps_category(tp.nps))] += 1
            if tp.csat is not None:
                self.csat[(channel, "true" if csat_satisfied(tp.csat) else "false")] += 1
            self.revenue[channel] += signed_revenue(tp.type, tp.amount)

    def publish(self, m: Metrics) -> None:
        m.count(m.received, self.received)
        m.count(m.processed, self.by_kind[Kind.PROCESSED])
        m.count(m.replayed, self.by_kind[Kind.REPLAYED])
        m.count(m.deduplicated, self.by_kind[Kind.DUPLICATE])
        m.count(m.dead_lettered, self.dead)
        m.count(m.nps, self.nps)
        m.count(m.csat, self.csat)
        m.count(m.alerts, self.alerts)
        for channel, amount in self.revenue.items():
            if amount > 0:  # Prometheus counters only go up; net refunds show in ClickHouse
                m.revenue.labels(channel).inc(amount)


def _source_record(message: Any) -> SourceRecord:
    return SourceRecord(
        message.topic, message.partition, message.offset, int(message.timestamp * 1000), message.key, message.value,
    )


def _dead_letter_record(dead: DeadLetter) -> KafkaRecord:
    """The original key and bytes, unchanged, with why and where from in the headers."""
    source = dead.source
    headers = [
        (HEADER_REASON, dead.reason.value.encode()),
        (HEADER_STAGE, dead.stage.value.encode()),
        (HEADER_DETAIL, dead.detail.encode()[:1000]),
        (HEADER_SOURCE_TOPIC, source.topic.encode()),
        (HEADER_SOURCE_PARTITION, str(source.partition).encode()),
        (HEADER_SOURCE_OFFSET, str(source.offset).encode()),
    ]
    return KafkaRecord(TOPIC_DLQ, source.key, source.value, None, headers, source.timestamp_ms)


def _paths(spec: str) -> list[str]:
    return [p for p in (s.strip() for s in spec.split(",")) if p]


def _confluent_ids(spec: str) -> dict[int, str] | None:
    """``"1=a.avsc,2=b.avsc"`` -> {1: 'a.avsc', 2: 'b.avsc'}; empty -> the default mapping."""
    pairs = _paths(spec)
    if not pairs:
        return None
    return {int(k): v for k, v in (p.split("=", 1) for p in pairs)}


class QuietMonitor(Monitor):
    """Faust's monitor keeps per-message statistics on four hooks per record that nothing here reads
    (the pipeline's metrics are its own); skipping them is a few percent of throughput."""

    def on_message_in(self, tp: Any, offset: int, message: Any) -> None:
        pass

    def on_stream_event_in(self, tp: Any, offset: int, stream: Any, event: Any) -> None:
        return None

    def on_stream_event_out(self, tp: Any, offset: int, stream: Any, event: Any, state: Any = None) -> None:
        pass

    def on_message_out(self, tp: Any, offset: int, message: Any) -> None:
        pass

    def on_send_initiated(self, producer: Any, topic: str, message: Any, keysize: int, valsize: int) -> None:
        return None

    def on_send_completed(self, producer: Any, state: Any, metadata: Any) -> None:
        pass

    def on_table_get(self, table: Any, key: Any) -> None:
        pass

    def on_table_set(self, table: Any, key: Any, value: Any) -> None:
        pass


class KeepQueuedOnResume(FlowControlEvent):
    """Faust's flow control, minus emptying the stream queues on resume.

    After table recovery Faust resumes partitions, seeks them to the committed offsets (a dozen
    broker round trips), then calls ``flow_control.resume()``, which in ``mode`` also clears every
    stream queue. Records fetched during the seeks are in the queue and the consumer's position is
    already past them, so the ones still queued at that moment were lost: never processed, never
    fetched again, and skipped for good by the next commit (a restart with nothing committed read
    51 of 52 records). Revocation still clears the queues explicitly (``suspend`` + ``clear``).
    """

    def resume(self) -> None:
        self._suspend.clear()
        self._resume.set()


def create_app(settings: Settings, metrics: Metrics | None = None) -> tuple[faust.App, TouchpointWorker]:
    """The Faust app and its worker runtime, wired together."""
    metrics = metrics or Metrics()
    app = faust.App(
        settings.app_id,
        monitor=QuietMonitor(),
        broker=f"kafka://{settings.kafka_bootstrap}",
        store="memory://",
        datadir=str(Path(settings.data_dir) / "faust"),  # not Faust's default ./<app_id>-data in the cwd
        topic_partitions=settings.partitions,
        web_enabled=False,
        producer_acks=-1,
        producer_linger=0.005,
        broker_commit_every=10_000,
        broker_commit_interval=settings.commit_interval_s,
        broker_max_poll_records=2000,
        stream_buffer_maxsize=8192,
        stream_wait_empty=False,
        broker_session_timeout=settings.session_timeout_s,
        broker_rebalance_timeout=settings.rebalance_timeout_s,
        broker_heartbeat_interval=settings.heartbeat_interval_s,
        table_cleanup_interval=3600.0,
        consumer_auto_offset_reset="earliest",
    )
    app.flow_control = KeepQueuedOnResume(loop=app.loop)  # before any stream or channel is created
    touchpoints = app.topic(
        TOPIC_TOUCHPOINTS, key_type=bytes, value_type=bytes,
        key_serializer="raw", value_serializer="raw", partitions=settings.partitions,
    )
    customers = app.topic(
        TOPIC_CUSTOMERS, key_type=bytes, value_type=bytes,
        key_serializer="raw", value_serializer="raw", partitions=settings.partitions,
    )
    training = app.topic(TOPIC_TRAINING, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw", partitions=1)
    # bytes keys use the raw codec; values use the app default (json): CustomerState.to_dict()
    table = app.Table(STATE_TABLE, partitions=settings.partitions, key_type=bytes)
    worker = TouchpointWorker(settings, metrics, CustomerStates(table))
    starting = asyncio.Lock()

    async def started() -> None:
        async with starting:  # three agents, one start
            if not worker.started:
                assigned = app.consumer.assignment()
                await worker.start(tp.partition for tp in assigned if tp.topic == TOPIC_TOUCHPOINTS)

    @app.agent(touchpoints, name="touchpoints")
    async def process_touchpoints(stream: faust.StreamT) -> None:
        await started()
        async for events in stream.noack_take(settings.take_max, settings.take_within_s):
            await worker.process(list(events))

    @app.agent(customers, name="customers")
    async def process_profiles(stream: faust.StreamT) -> None:
        await started()
        async for events in stream.noack_take(settings.take_max, settings.take_within_s):
            await worker.process_profiles(list(events))

    @app.agent(training, name="training")
    async def train_models(stream: faust.StreamT) -> None:
        await started()
        async for events in stream.noack_take(200, 0.2):
            await worker.trainer.process(list(events))

    @app.timer(interval=settings.model_publish_interval_s)
    async def publish_models() -> None:
        if worker.started:
            await worker.trainer.publish()

    @app.timer(interval=max(0.1, settings.sink_flush_interval_s / 4))
    async def flush_sinks() -> None:
        if worker.started:
            await worker.flush_if_due()

    @app.timer(interval=2.0)
    async def measure_lag() -> None:
        await _update_lag(app, metrics)

    @app.on_partitions_assigned.connect
    async def on_assigned(sender: Any, assigned: Iterable[Any], **_: Any) -> None:
        metrics.rebalances.inc()
        if worker.started:
            await worker.clickhouse.load_high_water()

    @app.on_partitions_revoked.connect
    async def on_revoked(sender: Any, revoked: Iterable[Any], **_: Any) -> None:
        if worker.started:  # the next owner reads our high-water marks: write everything first
            if any(tp.topic == TOPIC_TRAINING for tp in revoked):
                await worker.trainer.release()
            await worker.flush()

    @app.on_before_shutdown.connect
    async def on_shutdown(sender: Any, **_: Any) -> None:
        await worker.close()
        try:
            await app.consumer.commit()
        except Exception as exc:  # the group may already be gone; replays are idempotent
            log.info("final commit skipped: %s", exc)

    return app, worker


async def _update_lag(app: faust.App, metrics: Metrics) -> None:
    try:
        consumer = app.consumer
        for tp in consumer.assignment():
            if tp.topic != TOPIC_TOUCHPOINTS:
                continue
            position = await consumer.position(tp)
            if position is not None:
                metrics.lag.labels(tp.topic, str(tp.partition)).set(max(0, consumer.highwater(tp) - position))
    except Exception as exc:  # lag is best-effort observability; never stop the worker for it
        log.debug("lag update failed: %s", exc)
