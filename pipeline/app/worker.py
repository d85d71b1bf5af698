"""The touchpoint worker: each fetch planned by the pure batch planner, shipped, committed.

Thin wiring only. Per fetch (``pipeline.app.delivery``) the worker makes sure it knows which
incarnation of each partition's log the records come from (``pipeline.app.logs``), resolves Confluent
schema ids it has not seen (``pipeline.app.registry``), lets :class:`processors.plan.BatchPlanner`
compute every output, stages them with :class:`pipeline.app.commit.Commit`, ships the batch's
alerts at once, and commits in the background. Input is acked only once everything it produced is
durable: at-least-once, made exact by the sinks.

The customer-state table stays Faust's recoverable store (its ``data`` and its changelog topic,
which Faust replays on start); the worker writes the changelog itself, once per customer per commit.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import operator
import time
from collections.abc import Iterable
from typing import Any

import orjson

from pipeline.app.commit import Commit
from pipeline.app.delivery import BatchDelivery, Fetch
from pipeline.app.erasure import ClickHouseErasure, ErasureList, ErasureRequest, erase_in_clickhouse
from pipeline.app.health import Health
from pipeline.app.kafka_security import client_options
from pipeline.app.logs import BrokerProbe, LogBook, LogProbeError, digest
from pipeline.app.metrics import KafkaObserver, Metrics, observe_many
from pipeline.app.models import ModelFeed, TrainerRuntime, alert_engine_key, model_record, training_record
from pipeline.app.outputs import AlertOutputs, Shipped, ShippedOutputs
from pipeline.app.registry import SchemaRegistryClient
from pipeline.app.rows import storage_rejected
from pipeline.settings import Settings
from processors.alerts import AlertConfig, AlertEngine
from processors.customer import CustomerState
from processors.identity import IdentityRules
from processors.ingest import DeadLetter, Ingestor, Kind, SourceRecord
from processors.plan import BatchPlanner, Tallies
from processors.privacy import Redactor
from processors.profile import parse_profile
from processors.pseudonym import Pseudonymizer
from processors.pseudonym import from_settings as pseudonymizer_from_settings
from processors.scoring import TouchpointScoring, TrainingBatch
from processors.snapshot import from_snapshot, to_snapshot
from processors.stitching import Stitching
from schemas.codec import AvroCodec, SchemaRegistry, confluent_schema_id
from schemas.contract import (
    MODEL_CHURN,
    MODEL_SENTIMENT,
    TOPIC_ALERTS,
    TOPIC_DLQ,
    TOPIC_ENRICHED,
    TOPIC_ERASURES,
    TOPIC_MODELS,
    TOPIC_TRAINING,
    Reason,
    Rejected,
    Stage,
)
from schemas.tables import TABLES
from sinks.clickhouse import ClickHouseSink, connect
from sinks.kafka import KafkaRecord, KafkaSink

log = logging.getLogger("cem.worker")


class CustomerStates:
    """The customer-state table seen as ``customer_id -> CustomerState`` (a ``StateStore``).

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

    @property
    def _states(self) -> dict:
        # The memory store's own dict (Faust's ``memory://`` store is a FastUserDict over it): its
        # Mapping methods are three Python calls a lookup, on every touchpoint.
        return self._table.data.data

    def get(self, customer_id: str) -> CustomerState:
        state = self.peek(customer_id)
        if state is None:
            state = self._states[customer_id.encode()] = CustomerState(customer_id)
        return state

    def peek(self, customer_id: str) -> CustomerState | None:
        data = self._states
        key = customer_id.encode()
        state = data.get(key)
        if isinstance(state, dict):
            state = data[key] = CustomerState.from_dict(state)
        return state

    def __len__(self) -> int:
        # Read from the status thread: ``table.data`` would create the store there if Faust has not
        # yet (a mode service bound to the wrong thread), so only a store that exists is counted.
        store = self._table._data
        return 0 if store is None else len(store)

    def all(self) -> Iterable[CustomerState]:
        return [state for key in list(self._table.data) if (state := self.peek(key.decode())) is not None]

    def delete(self, customer_id: str) -> None:
        """Gone from the table (an erased customer; its changelog tombstone is written apart)."""
        key = customer_id.encode()
        self._table.data.pop(key, None)
        self._partitions.pop(key, None)

    def place(self, customer_id: str, partition: int) -> None:
        """The customer's state lives in (and is changelogged to) ``partition``."""
        self._partitions[customer_id.encode()] = partition

    def changelog(self, state: CustomerState) -> KafkaRecord:
        key = state.customer_id.encode()
        value = orjson.dumps(state)  # plain JSON (Faust's json codec reads it back on recovery)
        return KafkaRecord(self.changelog_topic, key, value, self._partitions.get(key))


class TouchpointWorker:
    """Per-fetch processing; owns the planner, the commit protocol and the model lifecycle."""

    def __init__(self, settings: Settings, metrics: Metrics, states: CustomerStates, delivery: BatchDelivery):
        self.settings = settings
        self.metrics = metrics
        self.states = states
        self.delivery = delivery
        self.health = Health(settings.stall_timeout_s)
        metrics.start_at_zero(TABLES, (TOPIC_ENRICHED, TOPIC_DLQ, TOPIC_ALERTS, TOPIC_TRAINING, TOPIC_MODELS),
                              (MODEL_CHURN, MODEL_SENTIMENT))
        registry = _registry(settings)
        self.codec = AvroCodec(registry)
        self.registry_client = (
            SchemaRegistryClient(settings.schema_registry_url, settings.schema_registry_user,
                                 settings.schema_registry_password, hold_s=settings.schema_registry_hold_s)
            if settings.schema_registry_url else None
        )
        options = client_options(settings)
        redactor = Redactor.from_spec(settings.pii_patterns)
        pseudonymize = pseudonymizer_from_settings(settings.pseudonymize, settings.pseudonym_key)
        self.erasures = ErasureList(settings.kafka_bootstrap, options)
        ingestor = Ingestor(self.codec, int(settings.dedupe_horizon_s * 1000), redact=redactor.redact,
                            pseudonymize=pseudonymize, erased=self.erasures.ids, stitching=stitching_from(settings))
        self.scoring = TouchpointScoring(alerts=AlertEngine(AlertConfig.from_spec(settings.alert_rules)))
        self.planner: BatchPlanner[Shipped] = BatchPlanner(
            ingestor, self.scoring, ShippedOutputs(self.codec, redactor.redact_bytes, pseudonymize))
        self.kafka = KafkaSink(settings.kafka_bootstrap, KafkaObserver(metrics), client_id=f"{settings.app_id}-sink",
                               priority_topics=frozenset({TOPIC_ALERTS}), client_options=options)
        self.connection = connect(settings.clickhouse_url, settings.clickhouse_user, settings.clickhouse_password)
        self.clickhouse = ClickHouseSink(
            self.connection, settings.clickhouse_database, metrics, settings.sink_flush_rows,
            settings.sink_flush_interval_s, on_rejected=storage_rejected,
        )
        self.commit = Commit(self.kafka, self.clickhouse, delivery, states.changelog, metrics,
                             AlertOutputs(settings.alert_format), self._engine_checkpoint, settings.sink_flush_interval_s)
        self.probe = BrokerProbe(settings.kafka_bootstrap, options)
        self.clickhouse_erasure = ClickHouseErasure(self.connection, settings.clickhouse_database)
        self.logs = LogBook(self.connection, self.clickhouse, settings.clickhouse_database, self.probe, self._new_log)
        self.models = ModelFeed(settings.kafka_bootstrap, self._swap_model, options)
        self.trainer = TrainerRuntime.configured(settings, self.models, self.kafka, self.clickhouse, metrics)
        self._processing = asyncio.Lock()
        self._committing: asyncio.Future | None = None
        self.first_received: float | None = None  # wall clock, for `cem bench`
        self.engine_key: str | None = None  # set at start
        self.started = False

    # -- lifecycle ---------------------------------------------------------------------------------
    async def start(self, partitions: Iterable[int] = ()) -> None:
        """``partitions``: the touchpoint partitions this worker reads, which name its alert engine."""
        await self.kafka.start()
        await self.clickhouse.start(create_schema=self.settings.clickhouse_migrate)
        await self.probe.start()
        await self.erasures.start()  # the suppression list, before the first touchpoint
        await self.models.start()  # the last published models, before the first score
        self.engine_key = alert_engine_key(partitions)
        checkpoint = self.models.alert_engine(self.engine_key)
        if checkpoint is not None:  # the same partitions as before a restart: carry on where it was
            try:
                engine = from_snapshot(checkpoint, AlertEngine)  # SnapshotError is a ValueError
            except (ValueError, TypeError, AttributeError) as exc:  # another version's: warm up again
                log.warning("alert engine checkpoint %s not resumed (%s): starting fresh", self.engine_key, exc)
            else:
                engine.config = self.scoring.alerts.config  # the rules as configured now, not as saved
                self.scoring.alerts = engine
        self.scoring.alerts.track(s.alerting for s in self.states.all() if s.alerting is not None)
        self.started = self.health.started = True

    async def close(self) -> None:
        if self.started:
            await self.trainer.release()
            await self.flush()
            await self.kafka.close()
            await self.models.stop()
            await self.probe.stop()
            await self.erasures.stop()
            self.started = False

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

    async def churn_view(self, customer_id: str) -> dict[str, Any] | None:
        """The customer's churn risk and its drivers, if this worker holds the customer's state (on
        the event loop: the state and the model are the loop's)."""
        state = self.states.peek(customer_id)
        return self.scoring.churn.explain(state) if state is not None else None

    def _swap_model(self, key: str, model: Any) -> None:
        scorer = self.scoring.sentiment if key == MODEL_SENTIMENT else self.scoring.churn
        scorer.model = model  # one reference swap: a batch in progress scores with one model or the next

    def _engine_checkpoint(self) -> KafkaRecord | None:
        # The engine as of the last processed batch: a restart resumes the channel minutes and
        # detectors that match the customer states committed with it.
        if self.engine_key is None:
            return None
        return model_record(self.engine_key, to_snapshot(self.scoring.alerts))

    def _new_log(self, key: tuple[str, int], epoch: int, why: str) -> None:
        self.metrics.new_logs.labels(key[0]).inc()

    # -- the touchpoint path ----------------------------------------------------------------------
    async def process(self, fetch: Fetch) -> None:
        """Handle one fetch (the touchpoint agent's body)."""
        if self.first_received is None:
            self.first_received = fetch.received
        async with self._processing:
            records = fetch.records = await self._from_known_logs(fetch)
            unresolved = await self._resolve_schemas(records)
            plan = self.planner.plan(records, self.states)
            self.codec.registry.unavailable.clear()
        training = training_record(plan.training) if plan.training else None
        for customer_id, partition in plan.placed.items():
            self.states.place(customer_id, partition)
        self.commit.stage(plan, fetch, training)
        if plan.alerts:  # at once: the next commit writes their states only after their acks
            await self.commit.ship_alerts(plan.alerts, fetch.received)
            plan.tallies.alerts.update((a.type, a.severity) for a in plan.alerts)
        self._publish(plan.tallies, fetch.received, unresolved, plan.sweep_error)
        await self._maybe_commit()

    async def _from_known_logs(self, fetch: Fetch) -> list[SourceRecord]:
        """The fetch's records of partitions still assigned, each tagged with its log's epoch, the
        partitions merged by record time (as Kafka Streams picks the next record), so cross-customer
        rules see the stream in about the order it happened; a partition whose log started over is
        read again from the new log's start."""
        assignment = self.delivery.app.consumer.assignment()
        by_partition: dict[Any, list[SourceRecord]] = {}
        for record in fetch.records:
            by_partition.setdefault((record.topic, record.partition), []).append(record)
        ready: list[list[SourceRecord]] = []
        for tp in fetch.partitions:
            key = (tp.topic, tp.partition)
            mine = by_partition.get(key, [])
            if tp not in assignment or not mine:
                continue  # revoked since the fetch: its new owner reads it from the committed offset
            if tp in fetch.seeks and not self.delivery.current(tp, fetch.seeks[tp]):
                del fetch.spans[tp]  # sought since the fetch: these records come again, to be acked then
                continue
            if tp in fetch.regressed or self.logs.needs_verdict(key, fetch.generation, fetch.interruptions):
                if not await self._verify(tp, key, fetch):
                    continue
            await self.logs.anchor(key, mine[0].offset, digest(mine[0].timestamp_ms, mine[0].key, mine[0].value))
            epoch = self.logs.epoch(key)
            for record in mine:
                record.epoch = epoch
            ready.append(mine)
        return ready[0] if len(ready) == 1 else list(heapq.merge(*ready, key=_record_time))

    async def _verify(self, tp: Any, key: tuple[str, int], fetch: Fetch) -> bool:
        """Whether the fetch's records of ``tp`` may be processed as they are."""
        try:
            verdict = await self.logs.verdict(key, fetch.generation)
        except LogProbeError as exc:  # ask again with the next fetch, and read these again then
            log.warning("%s; reading %s/%d again", exc, *key)
            self.commit.void(tp)
            await self.delivery.restart(tp, fetch.spans[tp][0])
            self.logs.forget([key])
            return False
        if verdict.restart_at is None:
            return True
        # A new log: what is staged for this partition came from the old one (its acks are void),
        # and every record of the new log is new to us, from its start: this fetch, if it begins
        # there, else the partition read again from there.
        from_start = fetch.spans[tp][0] <= verdict.restart_at
        await self._read_again(tp, None if from_start else verdict.restart_at)
        return from_start

    async def verify_positions(self) -> None:
        """Give each assigned partition its log's verdict although no fetch brought records: once
        per assignment, and whenever its position is past the log's end (``BatchDelivery.overruns``).
        A log that started over can be exactly as long as the old one was where the worker reads
        (the group offset the old log left), or shorter: either way no record would ever come to
        show it, and the new log's records would wait unread."""
        def unverified(tp: Any) -> bool:
            return not self.logs.verified_in((tp.topic, tp.partition), self.delivery.generation)

        past_end = set(self.delivery.overruns())
        for tp in [tp for tp in self.delivery.assigned() if tp in past_end or unverified(tp)]:  # mostly none: no lock
            key = (tp.topic, tp.partition)
            async with self._processing:  # not while a fetch is planned: it may verify or move it first
                overrun = tp in self.delivery.overruns()
                if not overrun and not unverified(tp):
                    continue
                try:
                    verdict = await self.logs.verdict(key, self.delivery.generation, overrun=overrun)
                except LogProbeError as exc:  # ask again at the next check
                    log.warning("%s; checking %s/%d again", exc, *key)
                    self.logs.forget([key])
                    continue
                if verdict.restart_at is not None:
                    await self._read_again(tp, verdict.restart_at)

    async def _read_again(self, tp: Any, offset: int | None) -> None:
        """What is staged for ``tp`` came from the old log (its acks are void); read it from ``offset``
        (None: the fetch being planned starts there)."""
        self.commit.void(tp)
        await self.flush()
        await self.delivery.restart(tp, offset)

    async def _resolve_schemas(self, records: list[SourceRecord]) -> dict[int, str]:
        """Writer schemas of Confluent ids not seen before, from the Schema Registry (if configured)."""
        if self.registry_client is None:
            return {}
        ids = {i for r in records if r.value and (i := confluent_schema_id(r.value)) is not None}
        client = self.registry_client
        before = {name: getattr(client, name) for name in _REGISTRY_OUTCOMES}
        unresolved = await client.resolve(ids, self.codec.registry)
        for name, count in before.items():
            if getattr(client, name) > count:
                self.metrics.registry_fetches.labels(name).inc(getattr(client, name) - count)
        self.codec.registry.unavailable.update(unresolved)
        return unresolved

    def _publish(self, tallies: Tallies, received: float, unresolved: dict[int, str], sweep_error: str | None) -> None:
        m = self.metrics
        m.count(m.received, tallies.received)
        m.count(m.processed, tallies.by_kind[_PROCESSED])
        m.count(m.replayed, tallies.by_kind[_REPLAYED])
        m.count(m.deduplicated, tallies.by_kind[_DUPLICATE])
        m.count(m.suppressed, tallies.by_kind[Kind.SUPPRESSED])
        m.count(m.forwarded, tallies.by_kind[Kind.FORWARDED])
        m.count(m.identity, tallies.identity)
        m.count(m.dead_lettered, tallies.dead)
        m.count(m.nps, tallies.nps)
        m.count(m.csat, tallies.csat)
        m.count(m.alerts, tallies.alerts)
        for channel, amount in tallies.revenue.items():
            if amount > 0:  # Prometheus counters only go up; net refunds show in ClickHouse
                m.revenue.labels(channel).inc(amount)
        for score in tallies.sentiments:
            m.sentiment.observe(score)
        for risk in tallies.churn_risks:
            m.churn_risk.observe(risk)
        if sweep_error:
            log.error("event-time sweep failed (it runs again after the next batch): %s", sweep_error)
        now = time.time()
        observe_many(m.latency.labels("enriched"), now - received, sum(tallies.received.values()))
        m.last_batch.set(now)
        self.health.observe(waiting=True)

    async def _maybe_commit(self) -> None:
        """Commit in the background so processing goes on during inserts; bound what is buffered."""
        running = self._committing is not None and not self._committing.done()
        if running and self.clickhouse.pending_rows >= 3 * self.settings.sink_flush_rows:
            assert self._committing is not None  # running
            await self._committing  # backpressure: at most one commit in flight plus one buffer
            running = False
        if self._committing is not None and self._committing.done() and (error := self._committing.exception()):
            raise error  # a sink failed for good: let the worker crash and replay
        if not running and self.commit.due():
            self._committing = asyncio.ensure_future(self._commit())

    async def _commit(self) -> None:
        await self.commit.commit()
        self.health.progressed()
        self.health.observe(waiting=self.commit.waiting)

    async def flush(self) -> None:
        """Commit everything staged (revocation, shutdown)."""
        if self._committing is not None and not self._committing.done():
            await asyncio.gather(self._committing, return_exceptions=True)
        await self._commit()

    async def flush_if_due(self) -> None:
        await self._maybe_commit()

    # -- erasure ------------------------------------------------------------------------------------
    async def process_erasures(self, events: list[Any]) -> None:
        """Carry out erasure requests of this worker's partitions (see ``pipeline.app.erasure``)."""
        for event in events:
            message = event.message
            try:
                request = ErasureRequest.from_value(message.value)
            except (ValueError, TypeError) as exc:
                log.error("erasure request %s/%s ignored: %s", message.partition, message.offset, exc)
                event.ack()
                continue
            if self._erase_identifiers(request):
                async with self._processing:
                    pass
                await self.flush()  # (0) durable before the state that names the identifiers goes
            removed = self._forget(request.customer_id, message.partition)
            async with self._processing:  # a fetch being planned is staged before the commit
                pass
            await self.flush()  # (4) nothing of the customer left in the sinks' buffers
            await erase_in_clickhouse(self.clickhouse_erasure, self.clickhouse, request, removed)
            self.metrics.erasures.inc()
            event.ack()

    def _erase_identifiers(self, request: ErasureRequest) -> int:
        """Step (0): the identifiers linked to the customer are erased too, each where its own state
        (its anonymous history) lives, by a request of its own on ``cem.erasures``. Not those it
        claimed while they were another's: their histories are not this customer's."""
        state = self.states.peek(request.customer_id)
        linked = list(state.merged) if state is not None else []
        for subject in linked:
            follow = ErasureRequest(subject, request.requested_at, request.requested_by,
                                    f"linked to an erased customer; {request.reason}".rstrip("; "))
            self.kafka.add(KafkaRecord(TOPIC_ERASURES, subject.encode(), follow.to_value(),
                                       self.planner.stitching.home(subject)))
        return len(linked)

    def _forget(self, customer_id: str, partition: int) -> dict[str, int]:
        """Steps (1)-(3): suppressed from now on; the state deleted, with its tombstone; the
        trainer's pending examples forgotten."""
        self.erasures.ids.add(customer_id)
        state = self.states.peek(customer_id)
        if state is not None:
            self.states.delete(customer_id)
        self.commit.forget(customer_id)
        self.kafka.add(KafkaRecord(self.states.changelog_topic, customer_id.encode(), None, partition))
        self.kafka.add(training_record(TrainingBatch(erasures=[customer_id])))
        return {"state": int(state is not None)}

    # -- CRM profiles ------------------------------------------------------------------------------
    async def process_profiles(self, events: list[Any]) -> None:
        """CRM profiles from ``cem.customers`` join the customer's state (a churn model input)."""
        changed: dict[str, CustomerState] = {}
        for event in events:
            message = event.message
            try:
                profile = parse_profile(message.key, message.value)
            except Rejected as exc:
                self._dead_profile(message, exc.reason, exc.detail)
                continue
            pseudonymize = self.planner.ingestor.pseudonymize
            customer_id = pseudonymize(profile.customer_id) if pseudonymize else profile.customer_id
            if customer_id in self.erasures.ids:
                continue  # an erased customer's profile is not kept either
            state = self.states.get(customer_id)
            state.profile = profile.attributes
            self.states.place(customer_id, message.partition)
            changed[customer_id] = state
        self.metrics.profiles.inc(len(changed))
        self.commit.stage_events(events, changed.values())
        await self._maybe_commit()

    def _dead_profile(self, message: Any, reason: Reason, detail: str) -> None:
        source = SourceRecord(message.topic, message.partition, message.offset, int(message.timestamp * 1000),
                              message.key, message.value)
        shipped = self.planner.outputs.dead_letter(DeadLetter(source, reason, Stage.VALIDATE, detail))
        self.kafka.add(shipped.record)
        self.metrics.dead_lettered.labels(reason.value, Stage.VALIDATE.value).inc()


_PROCESSED, _REPLAYED, _DUPLICATE = Kind.PROCESSED, Kind.REPLAYED, Kind.DUPLICATE
_record_time = operator.attrgetter("timestamp_ms")
_REGISTRY_OUTCOMES = ("fetched", "unknown", "retries", "failures")  # SchemaRegistryClient's counters


def stitching_from(settings: Settings) -> Stitching | None:
    """Identity stitching as configured: on with a pseudonym key (identifiers are never kept in clear)."""
    if not settings.pseudonym_key:
        return None
    rules = IdentityRules(settings.identity_conflict_policy, settings.identity_max_customers_per_identifier,
                          settings.identity_max_identifiers_per_customer)
    return Stitching(Pseudonymizer(settings.pseudonym_key.encode()), rules, settings.partitions,
                     settings.identity_default_country_code)


def _registry(settings: Settings) -> SchemaRegistry:
    files = [p for p in (s.strip() for s in settings.schema_files.split(",")) if p]
    pairs = [p for p in (s.strip() for s in settings.confluent_ids.split(",")) if p]
    ids: dict[int, str] | None = {int(k): v for k, v in (p.split("=", 1) for p in pairs)} if pairs else None
    if ids is None and settings.schema_registry_url:
        ids = {}  # ids come from the registry: none is mapped to a local file by default
    return SchemaRegistry.from_config(files, ids)
