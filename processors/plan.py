"""The batch planner: a batch of input records in, every output of the batch out, without an await.

:class:`BatchPlanner` runs the whole per-record path (:class:`~processors.ingest.Ingestor`, then the
models and alert rules of :class:`~processors.scoring.TouchpointScoring`, then the record's shipped
form from an :class:`Outputs`), then the batch's event-time sweep, and returns a :class:`BatchPlan`:
the shipped outputs in input order, the states that changed, the alerts, the training examples and
the tallies for the metrics. The worker only ships what the plan holds.

The per-record path is total: whatever a record does to any step, it ends as exactly one output,
processed or dead-lettered (``processing_error`` with the stage and the exception), and the batch
goes on. That is Kafka Streams' processing exception handler, as data.

>>> from processors.ingest import Ingestor
>>> from schemas.codec import AvroCodec
>>> planner = BatchPlanner(Ingestor(AvroCodec()), TouchpointScoring(), RecordingOutputs())
>>> value = b'{"event_id":"e1","customer_id":"c1","occurred_at":1767225600000,"channel":"web","type":"login"}'
>>> records = [SourceRecord("cem.touchpoints", 0, i, 1767225600000, b"c1", v) for i, v in enumerate([value, value, b"?"])]
>>> plan = planner.plan(records, DictStates())
>>> plan.outputs, sorted(plan.changed), plan.tallies.outcomes()
([('enriched', 0), ('dead_letter', 2)], ['c1'], {'processed': 1, 'duplicate': 1, 'dead_letter': 1})
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from processors.alerts import Alert
from processors.customer import CustomerState, Enriched, log_position
from processors.ingest import DeadLetter, Ingestor, Kind, Result, SourceRecord, describe
from processors.kpi import csat_satisfied, nps_category, signed_revenue
from processors.scoring import TouchpointScoring, TrainingBatch
from processors.stitching import Claim, Forward, Merge, Stitching, claim, merge, parse
from schemas.contract import HEADER_IDENTITY, TOPIC_IDENTITY, Reason, Rejected, Stage

Out = TypeVar("Out")
Out_co = TypeVar("Out_co", covariant=True)  # a protocol's return-only type variable


# Read on every record, as module globals: on Python 3.11 every ``Kind.X`` goes through the enum
# metaclass's ``__getattr__`` hook, several times the cost of a global.
_PROCESSED, _DEAD_LETTER = Kind.PROCESSED, Kind.DEAD_LETTER
_SCORE, _ENCODE = Stage.SCORE, Stage.ENCODE


class Outputs(Protocol[Out_co]):
    """How one record's outputs are shipped (Kafka records, ClickHouse rows): built by the wiring.

    Either method may raise; the planner turns that into the record's dead letter.
    """

    def enriched(self, record: SourceRecord, enriched: Enriched, rewritten: bool) -> Out_co: ...

    def dead_letter(self, dead: DeadLetter) -> Out_co: ...

    def forward(self, record: SourceRecord, forward: Forward) -> Out_co: ...

    def claim(self, claim: Claim, partition: int) -> Out_co: ...

    def merge(self, merge: Merge, partition: int) -> Out_co: ...


class StateStore(Protocol):
    """The customer states a worker holds: ``get`` creates one, ``peek`` never does."""

    def get(self, customer_id: str) -> CustomerState: ...

    def peek(self, customer_id: str) -> CustomerState | None: ...


@dataclass
class Tallies:
    """Per-batch counts for the metrics (published once per batch, not once per record)."""

    received: Counter[str] = field(default_factory=Counter)  # channel -> records
    by_kind: dict[Kind, Counter[str]] = field(default_factory=lambda: {kind: Counter() for kind in Kind})
    dead: Counter[tuple[str, str]] = field(default_factory=Counter)  # (reason, stage) -> records
    nps: Counter[tuple[str, str]] = field(default_factory=Counter)  # (channel, category)
    csat: Counter[tuple[str, str]] = field(default_factory=Counter)  # (channel, "true" | "false")
    # channel -> net revenue: a Counter of floats, which typeshed's Counter (int counts) cannot express
    revenue: dict[str, float] = field(default_factory=Counter)  # type: ignore[arg-type]
    alerts: Counter[tuple[str, str]] = field(default_factory=Counter)  # (type, severity)
    sentiments: list[float] = field(default_factory=list)
    churn_risks: list[float] = field(default_factory=list)
    identity: Counter[str] = field(default_factory=Counter)  # claims by verdict, merges, their failures

    def add(self, result: Result) -> None:
        channel, kind = result.channel, result.kind
        self.received[channel] += 1
        self.by_kind[kind][channel] += 1
        if kind is _PROCESSED:
            assert result.enriched is not None
            tp = result.enriched.touchpoint
            if tp.nps is not None:
                self.nps[(channel, nps_category(tp.nps))] += 1
            if tp.csat is not None:
                self.csat[(channel, "true" if csat_satisfied(tp.csat) else "false")] += 1
            self.revenue[channel] += signed_revenue(tp.type, tp.amount)
        elif kind is _DEAD_LETTER:
            assert result.dead_letter is not None
            self.dead[(result.dead_letter.reason.value, result.dead_letter.stage.value)] += 1

    def reclassify(self, result: Result, dead: DeadLetter) -> None:
        """A record counted as processed or replayed failed in a later step: count it dead instead."""
        self.by_kind[result.kind][result.channel] -= 1
        self.by_kind[Kind.DEAD_LETTER][result.channel] += 1
        self.dead[(dead.reason.value, dead.stage.value)] += 1

    def outcomes(self) -> dict[str, int]:
        """Records per outcome, for summaries and doctests."""
        return {kind.value: n for kind, counts in self.by_kind.items() if (n := sum(counts.values()))}


@dataclass
class BatchPlan(Generic[Out]):
    """Everything one batch produces; the worker ships it (see ``pipeline.app.commit``)."""

    outputs: list[Out] = field(default_factory=list)  # one per processed, replayed or dead-lettered record
    changed: dict[str, CustomerState] = field(default_factory=dict)  # states to write to the changelog
    placed: dict[str, int] = field(default_factory=dict)  # customer -> the source partition its state lives in
    alerts: list[Alert] = field(default_factory=list)
    training: TrainingBatch = field(default_factory=TrainingBatch)
    tallies: Tallies = field(default_factory=Tallies)
    sweep_error: str | None = None  # the event-time sweep failed (counted; the next batch sweeps again)


class BatchPlanner(Generic[Out]):
    """Plans batches with one ingestor, one set of scorers and one way of shipping outputs."""

    def __init__(self, ingestor: Ingestor, scoring: TouchpointScoring, outputs: Outputs[Out]):
        self.ingestor = ingestor
        self.stitching = ingestor.stitching or Stitching(str)  # claims come only when it is configured
        self.scoring = scoring
        self.outputs = outputs

    def plan(self, records: Sequence[SourceRecord], states: StateStore) -> BatchPlan[Out]:
        plan: BatchPlan[Out] = BatchPlan()
        for record in records:
            if record.topic == TOPIC_IDENTITY and record.header(HEADER_IDENTITY) is not None:
                self._identity(record, states, plan)
            else:
                self._one(record, states, plan)
        self._sweep(states, plan)
        plan.training.watermark_ms = self.scoring.alerts.watermark_ms
        return plan

    def _one(self, record: SourceRecord, states: StateStore, plan: BatchPlan[Out]) -> None:
        result = self.ingestor.handle(record, states.get)
        plan.tallies.add(result)
        if record.forwarded:
            plan.tallies.identity["arrived"] += 1  # one fewer on its way
        kind = result.kind
        if kind is not _PROCESSED:
            self._other(record, result, plan)
            return
        self._enriched(record, result, True, plan)

    def _other(self, record: SourceRecord, result: Result, plan: BatchPlan[Out]) -> None:
        """A record that is not a new touchpoint: replayed, forwarded, dead-lettered, or dropped."""
        kind = result.kind
        if kind is Kind.DUPLICATE or kind is Kind.SUPPRESSED:
            return
        if kind is Kind.FORWARDED:
            assert result.forward is not None
            self._ship(plan, record, Stage.ENCODE, self.outputs.forward, record, result.forward)
            if result.state is not None:
                self._changed(plan, result.state, record)  # a linked identifier's read position moved on
            return
        if kind is Kind.DEAD_LETTER:
            assert result.dead_letter is not None
            plan.outputs.append(self._dead_letter(result.dead_letter))
            return
        if result.enriched is not None:  # a replay whose outputs may have died with the crash
            self._enriched(record, result, False, plan)
        # else settled before a restart: nothing to output again

    def _enriched(self, record: SourceRecord, result: Result, new: bool, plan: BatchPlan[Out]) -> None:
        """A touchpoint the state took (``new``) or a replay of one: scored, shipped, its state changed."""
        enriched, state = result.enriched, result.state
        assert enriched is not None and state is not None
        stage = _SCORE
        try:
            alerts = self.scoring.score(enriched, state, new, plan.training)
            stage = _ENCODE
            shipped = self.outputs.enriched(record, enriched, result.rewritten)
        except Exception as exc:  # this record's problem, not the batch's: a dead letter, and on we go
            dead = DeadLetter(record, Reason.PROCESSING_ERROR, stage, describe(exc))
            plan.tallies.reclassify(result, dead)
            plan.outputs.append(self._dead_letter(dead))
            if new:
                self._changed(plan, state, record)  # the touchpoint is in the state already
            return
        plan.outputs.append(shipped)
        for sent in result.claims:
            self._ship(plan, record, Stage.IDENTITY, self.outputs.claim, sent, self.stitching.home(sent.subject))
        plan.alerts.extend(alerts)
        # A replay re-writes its state too: the crash that made it may have taken the state's
        # customer_state row with it, though its changelog record was written.
        self._changed(plan, state, record)
        if enriched.sentiment is not None:
            plan.tallies.sentiments.append(enriched.sentiment)
        if enriched.churn_risk is not None and "churn" in enriched.model_versions:
            plan.tallies.churn_risks.append(enriched.churn_risk)

    def _identity(self, record: SourceRecord, states: StateStore, plan: BatchPlan[Out]) -> None:
        """A claim or a merge of identity stitching (see processors.stitching, steps 3 and 4)."""
        try:
            request = parse(record.value)
            if isinstance(request, Merge):
                customer = states.get(request.customer_id)
                if merge(customer, request):
                    self._changed(plan, customer, record)
                    plan.tallies.identity["merged"] += 1
                return
            subject = states.get(request.subject)
            verdict = claim(subject, request, record.partition, log_position(record.epoch, record.offset), self.stitching.rules)
        except Rejected as exc:
            plan.tallies.identity["undecodable"] += 1
            plan.outputs.append(self._dead_letter(DeadLetter(record, exc.reason, Stage.IDENTITY, exc.detail)))
            return
        except Exception as exc:
            plan.tallies.identity["failed"] += 1
            plan.outputs.append(self._dead_letter(DeadLetter(record, Reason.PROCESSING_ERROR, Stage.IDENTITY, describe(exc))))
            return
        plan.tallies.identity[verdict.outcome] += 1
        if verdict.outcome != "settled":
            self._changed(plan, subject, record)
        if verdict.merge is not None:
            self._ship(plan, record, Stage.IDENTITY, self.outputs.merge, verdict.merge, request.partition)
        if verdict.outcome == "refused":
            detail = f"{request.subject} is linked to another customer; {request.customer_id} did not get it"
            plan.outputs.append(self._dead_letter(DeadLetter(record, Reason.IDENTITY_CONFLICT, Stage.IDENTITY, detail)))

    def _ship(self, plan: BatchPlan[Out], record: SourceRecord, stage: Stage, make: Callable[..., Out], *args: Any) -> None:
        """One more output of ``record``; a failure to build it is the record's dead letter."""
        try:
            plan.outputs.append(make(*args))
        except Exception as exc:
            plan.tallies.identity["failed"] += 1
            plan.outputs.append(self._dead_letter(DeadLetter(record, Reason.PROCESSING_ERROR, stage, describe(exc))))

    @staticmethod
    def _changed(plan: BatchPlan[Out], state: CustomerState, record: SourceRecord) -> None:
        plan.changed[state.customer_id] = state
        plan.placed[state.customer_id] = record.partition

    def _dead_letter(self, dead: DeadLetter) -> Out:
        try:
            return self.outputs.dead_letter(dead)
        except Exception as exc:  # even the detail could not be shipped: ship the fact, not the detail
            return self.outputs.dead_letter(DeadLetter(dead.source, dead.reason, dead.stage, describe(exc)[:200]))

    def _sweep(self, states: StateStore, plan: BatchPlan[Out]) -> None:
        """Event-time timers (SLA deadlines, closed channel minutes) up to the watermark."""
        try:
            swept = self.scoring.sweep(states.peek)
        except Exception as exc:
            plan.sweep_error = describe(exc)
            return
        for alert in swept:
            plan.alerts.append(alert)
            customer_id = alert.customer_id
            if customer_id is not None and customer_id not in plan.changed:  # the case is now marked breached
                state = states.peek(customer_id)
                if state is not None:
                    plan.changed[customer_id] = state


class DictStates:
    """A :class:`StateStore` over a plain dict (tests, benchmarks, docs)."""

    def __init__(self) -> None:
        self.states: dict[str, CustomerState] = {}

    def get(self, customer_id: str) -> CustomerState:
        state = self.states.get(customer_id)
        if state is None:
            state = self.states[customer_id] = CustomerState(customer_id)
        return state

    def peek(self, customer_id: str) -> CustomerState | None:
        return self.states.get(customer_id)


class RecordingOutputs:
    """An :class:`Outputs` that ships ``(kind, offset)`` pairs (tests and docs)."""

    def enriched(self, record: SourceRecord, enriched: Enriched, rewritten: bool) -> tuple[str, int]:
        return ("enriched", record.offset)

    def dead_letter(self, dead: DeadLetter) -> tuple[str, int]:
        return ("dead_letter", dead.source.offset)

    def forward(self, record: SourceRecord, forward: Forward) -> tuple[str, int]:
        return (f"forward:{forward.topic}/{forward.partition}", record.offset)

    def claim(self, claim: Claim, partition: int) -> tuple[str, int]:
        return (f"claim:{partition}", claim.at)

    def merge(self, merge: Merge, partition: int) -> tuple[str, int]:
        return (f"merge:{partition}", merge.at)
