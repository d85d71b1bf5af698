"""Per-customer state: deduplication and enrichment, in event time.

:class:`CustomerState` is what the Faust table holds per ``customer_id``. :func:`apply` folds one
valid touchpoint into it and returns what happened:

* ``NEW``: first sight of this ``event_id``; the state moved on and an :class:`Enriched` event is out.
* ``REPLAY``: the same Kafka record seen again after a worker restart (same log position: the
  incarnation of the source log and the offset in it), applied since the state's previous changelog
  write. The state already holds it, so it is not applied twice, but its outputs are produced again,
  because the crash may have come before they were written; the sinks make that idempotent.
* ``SETTLED``: a record the state decided before a restart that needs nothing again: at or behind
  the state's previous write (whose commit made every output of it durable), or a record with no
  outputs. Decided by position, not by the dedupe horizon: the state has moved on in event time
  since, and measured from where it is now a redelivery of an old record would look new.
* ``DUPLICATE``: a redelivery by a channel system (same ``event_id``, another position) within the
  dedupe horizon: dropped and counted.

Everything is keyed on ``occurred_at``, never the wall clock, so replays give identical results. The
dedupe horizon is measured back from the customer's *second*-latest event time, so that one record
with an extreme ``occurred_at`` cannot push every event id the customer has out of the horizon.
"""

from __future__ import annotations

import enum
import math
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from processors.alert_state import CustomerAlertState
from processors.kpi import is_promoter
from processors.touchpoint import Touchpoint
from schemas.contract import DAY_MS

DEFAULT_DEDUPE_HORIZON_MS = DAY_MS


def log_position(epoch: int, offset: int) -> int:
    """One int for where a record sits: the incarnation (epoch) of its source log and its offset.

    A log that starts over (a broker that lost it, a topic re-created) reuses offsets; the epoch
    tells its records from the old log's (see ``pipeline.app.logs``).

    >>> log_position(2, 7) > log_position(1, 10**9), log_position(1, 5) == log_position(1, 5)
    (True, True)
    """
    return epoch << 40 | offset


class Outcome(str, enum.Enum):
    NEW = "new"
    REPLAY = "replay"
    SETTLED = "settled"
    DUPLICATE = "duplicate"


# Touchpoint types that end the relationship: they set ``churned_at`` and label churn.
CHURN_TYPES = frozenset({"subscription_cancelled", "account_closed"})

# Which stage a touchpoint type puts the customer in when the event does not say.
_STAGE_BY_TYPE = {
    "page_view": "awareness",
    "search": "consideration",
    "add_to_cart": "consideration",
    "purchase": "purchase",
    "refund": "service",
    "support_contact": "service",
    "complaint_opened": "service",
    "complaint_resolved": "service",
    "call": "service",
    **dict.fromkeys(CHURN_TYPES, "churned"),
}


_BROWSING = frozenset({"awareness", "consideration"})  # once a customer has ordered, browsing is retention

# What a customer did *lately*: counts that decay exponentially in event time, each with its own time
# constant, held as of ``state.last_seen``. Counts since first sight grow with how long the pipeline has
# watched the customer, which says nothing about churn; these compare customers of any age.
RECENT_WINDOWS_MS = {
    "events_7d": 7 * DAY_MS,
    "events_28d": 28 * DAY_MS,
    "purchases_28d": 28 * DAY_MS,
    "refunds_28d": 28 * DAY_MS,
    "complaints_28d": 28 * DAY_MS,
    "contacts_14d": 14 * DAY_MS,  # support contacts, calls and complaints: friction
    "carts_28d": 28 * DAY_MS,  # add-to-carts: with purchases_28d, how often a cart is abandoned
}
_RECENT_BY_TYPE = {
    "purchase": ("purchases_28d",),
    "refund": ("refunds_28d",),
    "complaint_opened": ("complaints_28d", "contacts_14d"),
    "support_contact": ("contacts_14d",),
    "call": ("contacts_14d",),
    "add_to_cart": ("carts_28d",),
}
_COUNTED_ALWAYS = ("events_7d", "events_28d")
_COUNTED_BY_TYPE = {kind: (*_COUNTED_ALWAYS, *names) for kind, names in _RECENT_BY_TYPE.items()}  # all a type counts in
_MIN_WATCHED_MS = 7 * DAY_MS  # see CustomerState.recent_rates
_NO_RATES = dict.fromkeys(RECENT_WINDOWS_MS, 0.0)
_GAP_ALPHA = 0.2  # weight of the newest gap in the moving average of gaps between touchpoints


@dataclass(slots=True)
class CustomerState:
    """Everything the pipeline knows about one customer, as of the latest event time it has seen."""

    customer_id: str
    first_seen: int = 0
    last_seen: int = 0
    prior_seen: int | None = None  # the second-latest distinct event time: the dedupe clock
    events_total: int = 0
    channel_events: dict[str, int] = field(default_factory=dict)
    revenue: float = 0.0
    orders: int = 0
    refunds: float = 0.0
    last_purchase_at: int | None = None
    open_cases: dict[str, int] = field(default_factory=dict)  # case_id -> opened at
    complaints_opened: int = 0
    complaints_resolved: int = 0
    resolve_s_total: float = 0.0
    last_csat: int | None = None
    last_nps: int | None = None
    last_ces: int | None = None
    journey_stage: str = "awareness"
    last_session_id: str | None = None
    last_session_channel: str | None = None
    channel_switches: int = 0
    sentiment_n: int = 0
    sentiment_mean: float = 0.0  # exponentially weighted, see processors.sentiment.fold_sentiment
    sentiment_last: float | None = None
    recent: dict[str, float] = field(default_factory=dict)  # RECENT_WINDOWS_MS name -> count at last_seen
    gap_ms_avg: float | None = None  # moving average of the event-time gaps between touchpoints
    last_gap_ms: int | None = None  # the gap the latest touchpoint ended
    churn_risk: float | None = None
    churn_scored_at: int | None = None  # event time of the latest churn score
    churn_example_at: int | None = None  # event time of the latest churn example sent to training
    churned_at: int | None = None
    profile: dict[str, str] = field(default_factory=dict)  # CRM attributes from cem.customers
    seen: dict[str, Sequence[int]] = field(default_factory=dict)  # event_id -> (occurred_at, log_position, ...)
    seen_live: int = 0  # entries left by the last prune: the next prune is due at twice as many
    position: int = 0  # the highest log position applied (the version of this state)
    partition: int = -1  # the source partition of ``position`` (-1: a state written before it was kept)
    # The position as of the state's last changelog write. Dedupe entries after it are kept whatever
    # their age: a crash before the input is acked replays them into the written state, which must
    # recognise them (see mark_written).
    written_position: int = 0
    # The highest position whose outputs this process has staged: what the next write makes durable.
    # A state read back from its changelog has staged nothing yet (see from_dict).
    staged_position: int = field(default=0, compare=False)
    alerting: CustomerAlertState | None = None  # what the alert rules remember (created by them)
    # Identity (processors.stitching). A customer: the identifiers it has claimed, and those whose
    # link succeeded with the event time their anonymous history was merged in. An identifier's own
    # state (its anonymous history, keyed "kind:pseudonym"): its links, and while it is linked, the
    # log positions (on its own partition) from which on, and until which, it attributes its
    # touchpoints to ``links``' owner on ``owner_partition``.
    claimed: list[str] = field(default_factory=list)
    merged: dict[str, int] = field(default_factory=dict)
    links: dict[str, Any] | None = None
    owner_partition: int = -1
    linked_position: int = 0  # 0: never linked
    unlinked_position: int = 0  # 0: not unlinked

    def to_dict(self) -> dict[str, Any]:
        """The state as JSON-ready values (the changelog's form; the worker has orjson encode the
        dataclass itself, which gives the same JSON)."""
        # Shallow on purpose: dataclasses.asdict deep-copies, which costs more than the JSON encoding.
        values = {name: getattr(self, name) for name in _STATE_FIELDS}
        if self.alerting is not None:
            values["alerting"] = self.alerting.to_dict()
        return values

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CustomerState:
        """The state back from its changelog JSON, every field of its own type again.

        >>> import orjson
        >>> s = CustomerState("c1", seen={"e1": (5, 7)}, alerting=CustomerAlertState("c1", fired={"a1": 5}))
        >>> again = CustomerState.from_dict(orjson.loads(orjson.dumps(s)))
        >>> again == s, type(again.alerting).__name__, again.seen["e1"]
        (True, 'CustomerAlertState', (5, 7))
        """
        values = {k: v for k, v in data.items() if k in _STATE_FIELDS}
        alerting = values.pop("alerting", None)
        state = cls(**values)
        state.seen = {event_id: tuple(seen) for event_id, seen in state.seen.items()}  # JSON gave lists
        # The outputs of what the state applied since its previous write may be lost with the crash
        # that ended its writer: replays re-stage them (apply), and until then nothing more is durable.
        state.staged_position = state.written_position
        if alerting is not None:
            state.alerting = CustomerAlertState.from_dict(alerting)  # JSON gave its dict
        if _EXAMPLE_AT_BEFORE in data:  # a record written before the field had its name
            state.churn_example_at = data[_EXAMPLE_AT_BEFORE]
        return state

    @property
    def dedupe_clock(self) -> int:
        """The event time the dedupe horizon is measured back from: the second-latest, not the
        latest, so one outlier cannot move it."""
        return self.last_seen if self.prior_seen is None else self.prior_seen

    @property
    def mean_resolve_s(self) -> float | None:
        return self.resolve_s_total / self.complaints_resolved if self.complaints_resolved else None

    def recent_rates(self, now_ms: int) -> dict[str, float]:
        """The decayed counts (see ``RECENT_WINDOWS_MS``) as of event time ``now_ms``, each scaled to
        what a full window would hold: a customer watched for two days has had two days' worth of
        chances to act, not 28 (bias correction, as in Adam's moments). Observation shorter than a
        week counts as a week, so one early event is not a torrent.

        >>> s = CustomerState("c1")
        >>> _ = apply(s, Touchpoint("e1", "c1", 0, "web", "purchase", amount=1.0), 0, 1, 0)
        >>> _ = apply(s, Touchpoint("e2", "c1", 9 * DAY_MS, "web", "purchase", amount=1.0), 0, 2, 0)
        >>> round(s.recent["purchases_28d"], 2), round(s.recent_rates(9 * DAY_MS)["purchases_28d"], 2)
        (1.73, 6.28)
        >>> round(s.recent_rates(37 * DAY_MS)["purchases_28d"], 2)   # a silent month later
        0.87
        """
        watched = max(_MIN_WATCHED_MS, now_ms - self.first_seen) if self.events_total else _MIN_WATCHED_MS
        idle = max(0, now_ms - self.last_seen)
        rates = dict(_NO_RATES)  # every name, in its order; most customers have counted in a few
        for name, value in self.recent.items():
            window = RECENT_WINDOWS_MS.get(name)
            if value and window is not None:
                value /= -math.expm1(-watched / window)
                if idle:
                    value *= math.exp(-idle / window)
                rates[name] = value
        return rates


_STATE_FIELDS = tuple(f.name for f in fields(CustomerState))
_EXAMPLE_AT_BEFORE = "churn_snapshot_at"  # churn_example_at's name in older changelog records


@dataclass(slots=True)
class Enriched:
    """A touchpoint with the customer's state as of that event: ``cem.EnrichedTouchpoint``."""

    touchpoint: Touchpoint
    source_partition: int
    source_offset: int
    received_at: int
    journey_stage: str
    first_seen: int
    recency_s: float | None
    events_total: int
    channel_events: int
    revenue_to_date: float
    orders: int
    open_complaints: int
    resolve_s: float | None
    last_csat: int | None
    last_nps: int | None
    last_ces: int | None
    channel_switch: bool
    sentiment: float | None = None
    churn_risk: float | None = None
    model_versions: dict[str, str] = field(default_factory=dict)
    identified_by: str | None = None  # the identifier that attributed it (processors.stitching)

    def to_record(self) -> dict[str, Any]:
        """The ``cem.EnrichedTouchpoint`` Avro record."""
        record = self.tail_record()
        record["event"] = self.touchpoint.to_record()
        return record

    def tail_record(self) -> dict[str, Any]:
        """Every field but the touchpoint itself (see ``schemas.codec.EnrichedEncoder``)."""
        return {name: getattr(self, name) for name in _ENRICHED_FIELDS}

    def tail_values(self) -> tuple[Any, ...]:
        """The same, as values in the schema's order (the fields are declared in it)."""
        return _tail_values(self)


_ENRICHED_FIELDS = tuple(f.name for f in fields(Enriched) if f.name != "touchpoint")
_tail_values = operator.attrgetter(*_ENRICHED_FIELDS)  # one call for all of them


def derive_stage(state: CustomerState, tp: Touchpoint) -> str:
    """The journey stage for this touchpoint: the event's own, else derived from what it is.

    >>> s = CustomerState("c1", orders=2)
    >>> derive_stage(s, Touchpoint("e", "c1", 0, "web", "page_view"))
    'retention'
    >>> derive_stage(s, Touchpoint("e", "c1", 0, "survey", "survey_response", nps=10))
    'advocacy'
    """
    if tp.journey_stage:
        return tp.journey_stage
    if tp.nps is not None and is_promoter(tp.nps):
        return "advocacy"
    stage = _STAGE_BY_TYPE.get(tp.type)
    if stage is not None and (stage not in _BROWSING or not state.orders):
        return stage
    return "retention" if state.orders else state.journey_stage


def apply(
    state: CustomerState,
    tp: Touchpoint,
    source_partition: int,
    source_offset: int,
    received_at: int,
    dedupe_horizon_ms: int = DEFAULT_DEDUPE_HORIZON_MS,
    source_epoch: int = 1,
) -> tuple[Outcome, Enriched | None]:
    """Fold one touchpoint into ``state`` (in place) and say what happened.

    >>> s = CustomerState("c1")
    >>> tp = Touchpoint("e1", "c1", 60_000, "web", "purchase", amount=20.0)
    >>> apply(s, tp, 0, 7, 60_000)[0], s.revenue, s.orders
    (<Outcome.NEW: 'new'>, 20.0, 1)
    >>> apply(s, tp, 0, 7, 60_000)[0], s.orders      # the same record after a restart
    (<Outcome.REPLAY: 'replay'>, 1)
    >>> apply(s, tp, 0, 9, 60_000)[0], s.orders      # redelivered by the channel system
    (<Outcome.DUPLICATE: 'duplicate'>, 1)
    >>> apply(s, tp, 0, 7, 60_000, source_epoch=2)[0]  # offset 7 of a log that started over
    <Outcome.DUPLICATE: 'duplicate'>
    >>> for i in (10, 11):                            # three days later in event time
    ...     _ = apply(s, Touchpoint(f"e{i}", "c1", 3 * DAY_MS + i, "web", "page_view"), 0, i, 0)
    >>> apply(s, tp, 0, 9, 60_000)[0]                 # the redelivery read again after a restart
    <Outcome.DUPLICATE: 'duplicate'>
    >>> mark_written(s)                               # its changelog written and committed
    >>> apply(s, tp, 0, 7, 60_000)[0], s.orders       # ... before a restart: nothing to do again
    (<Outcome.SETTLED: 'settled'>, 1)
    """
    position = log_position(source_epoch, source_offset)
    seen = state.seen.get(tp.event_id)
    replay = seen is not None and (seen[1] == position or position in seen[2:])
    if read_before(state, source_partition, position):
        # Read again after a restart, the state being ahead of the committed offset: decided before,
        # against the state as it was then, not as it is now.
        if replay and position > state.written_position:
            state.staged_position = max(state.staged_position, position)
            return Outcome.REPLAY, _enriched(state, tp, source_partition, source_offset, received_at, None, None, False)
        return Outcome.SETTLED if seen is None or replay else Outcome.DUPLICATE, None
    if replay:  # a state written before it kept its partition
        return Outcome.REPLAY, _enriched(state, tp, source_partition, source_offset, received_at, None, None, False)
    if seen is not None and seen[0] >= state.dedupe_clock - dedupe_horizon_ms:
        return Outcome.DUPLICATE, None
    # Never seen, or beyond the horizon: decided by event time alone, never by when pruning last ran.
    previous_last_seen = state.last_seen if state.events_total else None
    recency_s = None if previous_last_seen is None else max(0, tp.occurred_at - previous_last_seen) / 1000.0
    resolve_s, switched = _fold(state, tp)
    # A tuple of ints (not tracked by the GC). An id new again beyond the horizon keeps its earlier
    # positions until they are written: a replay must still recognise them.
    state.seen[tp.event_id] = (tp.occurred_at, position) if seen is None else \
        (tp.occurred_at, position, *(p for p in seen[1:] if p > state.written_position))
    move_on(state, source_partition, position)
    if len(state.seen) >= max(_PRUNE_MIN, 2 * state.seen_live):  # amortised; frees memory, decides nothing
        prune_seen(state, dedupe_horizon_ms)
    return _NEW, _enriched(state, tp, source_partition, source_offset, received_at, recency_s, resolve_s, switched)


_NEW = Outcome.NEW  # a global: on Python 3.11 reading an enum member goes through a slow metaclass hook


def read_before(state: CustomerState, partition: int, position: int) -> bool:
    """Whether a record at ``position`` of ``partition`` is at or behind where the state has read its
    log to: read again after a restart, so decided before (every reader of a state's log asks this).

    >>> s = CustomerState("c1"); move_on(s, 2, 7)
    >>> read_before(s, 2, 7), read_before(s, 2, 8), read_before(s, 3, 1)
    (True, False, False)
    """
    return position <= state.position and partition == state.partition


def move_on(state: CustomerState, partition: int, position: int) -> None:
    """The state has read its log to ``position``, whose outputs this process stages now."""
    if position > state.position:
        state.position = position
    state.partition = partition
    if position > state.staged_position:
        state.staged_position = position


_PRUNE_MIN = 8  # a customer's dedupe memory is pruned when it doubles, and never below this size


def prune_seen(state: CustomerState, horizon_ms: int) -> None:
    """Forget event ids older than the horizon, measured back from the customer's dedupe clock,
    but for those applied since the state was last written (a replay may still bring them back)."""
    cutoff = state.dedupe_clock - horizon_ms
    written = state.written_position
    state.seen = {eid: v for eid, v in state.seen.items() if v[0] >= cutoff or v[1] > written}
    state.seen_live = len(state.seen)


def mark_written(state: CustomerState) -> None:
    """The state's changelog record is being written by a commit that makes the outputs staged so
    far durable: the positions up to them need nothing again after a crash.

    Until the next write, a crash replays the records after the last acked input into *this* state,
    so their dedupe entries must survive pruning meanwhile; those before it may go.

    >>> s = CustomerState("c1")
    >>> _ = apply(s, Touchpoint("e1", "c1", 0, "web", "purchase", amount=1.0), 0, 1, 0)
    >>> for i in range(2, 12):   # ten page views three days later prune e1, but e1 is not written yet
    ...     _ = apply(s, Touchpoint(f"e{i}", "c1", 3 * DAY_MS + i, "web", "page_view"), 0, i, 0)
    >>> "e1" in s.seen, apply(s, Touchpoint("e1", "c1", 0, "web", "purchase", amount=1.0), 0, 1, 0)[0].value
    (True, 'replay')
    >>> mark_written(s); prune_seen(s, DEFAULT_DEDUPE_HORIZON_MS); "e1" in s.seen
    False

    A state read back after a crash has staged nothing: e12's outputs are durable only once replayed.

    >>> _ = apply(s, Touchpoint("e12", "c1", 3 * DAY_MS + 12, "web", "page_view"), 0, 12, 0)
    >>> r = CustomerState.from_dict(s.to_dict()); mark_written(r); r.written_position == s.written_position
    True
    >>> apply(r, Touchpoint("e12", "c1", 3 * DAY_MS + 12, "web", "page_view"), 0, 12, 0)[0].value
    'replay'
    >>> mark_written(r); r.written_position == r.position
    True
    """
    state.written_position = state.staged_position


def absorb(customer: CustomerState, history: CustomerState) -> None:
    """Merge an anonymous ``history`` (an identifier's own state, now linked) into ``customer``, in
    place: what a state counts is summed, what it remembers of the latest touchpoint comes from the
    later of the two, the decayed counts are added as of the later event time. Its event ids join the
    customer's dedupe memory (without a log position: they were read from another log), so a
    redelivery attributed to the customer now is still a duplicate.

    >>> c = CustomerState("c1"); _ = apply(c, Touchpoint("e2", "c1", DAY_MS, "app", "purchase", amount=5.0), 0, 1, 0)
    >>> a = CustomerState("anonymous_id:p:1")
    >>> _ = apply(a, Touchpoint("e1", "anonymous_id:p:1", 0, "web", "add_to_cart"), 1, 1, 0)
    >>> absorb(c, a); c.events_total, c.first_seen, c.channel_events, c.orders, sorted(c.seen)
    (2, 0, {'app': 1, 'web': 1}, 1, ['e1', 'e2'])
    >>> round(c.recent["carts_28d"], 3)   # decayed by the day between the two
    0.965
    """
    if not history.events_total:
        return
    if not customer.events_total:
        _take_latest(customer, history)
        customer.first_seen, customer.last_seen, customer.prior_seen = history.first_seen, history.last_seen, history.prior_seen
    else:
        if history.last_seen > customer.last_seen:
            _take_latest(customer, history)
        _merge_recent(customer, history)
        customer.first_seen = min(customer.first_seen, history.first_seen)
        times = sorted({customer.last_seen, history.last_seen, *(t for t in (customer.prior_seen, history.prior_seen) if t is not None)})
        customer.last_seen, customer.prior_seen = times[-1], (times[-2] if len(times) > 1 else None)
    for name in _SUMMED:
        setattr(customer, name, getattr(customer, name) + getattr(history, name))
    for channel, n in history.channel_events.items():
        customer.channel_events[channel] = customer.channel_events.get(channel, 0) + n
    for case, opened in history.open_cases.items():
        customer.open_cases.setdefault(case, opened)
    if history.last_purchase_at is not None:
        customer.last_purchase_at = max(customer.last_purchase_at or history.last_purchase_at, history.last_purchase_at)
    if history.sentiment_n:
        n = customer.sentiment_n + history.sentiment_n
        customer.sentiment_mean = (customer.sentiment_mean * customer.sentiment_n + history.sentiment_mean * history.sentiment_n) / n
        customer.sentiment_n = n
    for event_id, seen in history.seen.items():
        customer.seen.setdefault(event_id, (seen[0], -1))


# What a state counts (summed by absorb) and what it remembers of its latest touchpoint (taken from
# the later of two).
_SUMMED = ("events_total", "revenue", "orders", "refunds", "complaints_opened", "complaints_resolved",
           "resolve_s_total", "channel_switches")
_LATEST = ("last_csat", "last_nps", "last_ces", "journey_stage", "last_session_id", "last_session_channel",
           "sentiment_last", "gap_ms_avg", "last_gap_ms")


def _take_latest(customer: CustomerState, history: CustomerState) -> None:
    for name in _LATEST:
        value = getattr(history, name)
        if value is not None:
            setattr(customer, name, value)
    if not customer.events_total:
        customer.recent = dict(history.recent)


def _merge_recent(customer: CustomerState, history: CustomerState) -> None:
    """Both states' decayed counts as of the later of their latest event times, added."""
    now = max(customer.last_seen, history.last_seen)
    merged: dict[str, float] = {}
    for state in (customer, history):
        idle = now - state.last_seen
        for name, value in state.recent.items():
            merged[name] = merged.get(name, 0.0) + value * math.exp(-idle / RECENT_WINDOWS_MS[name])
    customer.recent = merged


def _fold(state: CustomerState, tp: Touchpoint) -> tuple[float | None, bool]:
    """Move the state on by one touchpoint; returns (complaint resolve time, channel switch)."""
    t = tp.occurred_at
    _fold_recent(state, tp)
    if state.events_total == 0:
        state.first_seen = state.last_seen = t
    else:
        state.first_seen = min(state.first_seen, t)
        if t > state.last_seen:
            state.prior_seen, state.last_seen = state.last_seen, t
        elif t < state.last_seen and (state.prior_seen is None or t > state.prior_seen):
            state.prior_seen = t
    state.events_total += 1
    state.channel_events[tp.channel] = state.channel_events.get(tp.channel, 0) + 1

    if tp.type == "purchase":
        state.revenue += tp.amount or 0.0
        state.orders += 1
        state.last_purchase_at = t if state.last_purchase_at is None else max(state.last_purchase_at, t)
    elif tp.type == "refund":
        state.revenue -= tp.amount or 0.0
        state.refunds += tp.amount or 0.0
    elif tp.type in CHURN_TYPES:
        state.churned_at = t if state.churned_at is None else min(state.churned_at, t)

    resolve_s = _fold_complaint(state, tp)
    if tp.csat is not None:
        state.last_csat = tp.csat
    if tp.nps is not None:
        state.last_nps = tp.nps
    if tp.ces is not None:
        state.last_ces = tp.ces
    state.journey_stage = derive_stage(state, tp)
    return resolve_s, _fold_session(state, tp)


def _fold_recent(state: CustomerState, tp: Touchpoint) -> None:
    """Decay the recent counts to the new latest event time and count this touchpoint in them; a
    late touchpoint counts with the weight it has by now. Runs before ``last_seen`` moves."""
    t, recent = tp.occurred_at, state.recent
    if state.events_total:
        gap = t - state.last_seen
        if gap > 0:
            state.last_gap_ms = gap
            state.gap_ms_avg = gap if state.gap_ms_avg is None else state.gap_ms_avg + _GAP_ALPHA * (gap - state.gap_ms_avg)
            for name, value in recent.items():
                recent[name] = value * math.exp(-gap / RECENT_WINDOWS_MS[name])
    late = state.events_total and t < state.last_seen
    for name in _COUNTED_BY_TYPE.get(tp.type, _COUNTED_ALWAYS):
        weight = math.exp((t - state.last_seen) / RECENT_WINDOWS_MS[name]) if late else 1.0
        recent[name] = recent.get(name, 0.0) + weight


def _fold_complaint(state: CustomerState, tp: Touchpoint) -> float | None:
    case = tp.case_key
    if tp.type == "complaint_opened":
        state.complaints_opened += 1
        state.open_cases[case] = tp.occurred_at
    elif tp.type == "complaint_resolved":
        state.complaints_resolved += 1
        opened = state.open_cases.pop(case, None)
        if opened is not None:
            resolve_s = max(0, tp.occurred_at - opened) / 1000.0
            state.resolve_s_total += resolve_s
            return resolve_s
    return None


def _fold_session(state: CustomerState, tp: Touchpoint) -> bool:
    if tp.session_id is None:
        return False
    switched = tp.session_id == state.last_session_id and tp.channel != state.last_session_channel
    state.channel_switches += switched
    state.last_session_id, state.last_session_channel = tp.session_id, tp.channel
    return switched


def _enriched(
    state: CustomerState,
    tp: Touchpoint,
    partition: int,
    offset: int,
    received_at: int,
    recency_s: float | None,
    resolve_s: float | None,
    switched: bool,
) -> Enriched:
    # Positional, in the fields' order: on every touchpoint, and 18 keyword arguments would cost
    # more than the construction itself.
    return Enriched(
        tp,
        partition,
        offset,
        received_at,
        tp.journey_stage or state.journey_stage,
        state.first_seen,
        recency_s,
        state.events_total,
        state.channel_events.get(tp.channel, 0),  # channel_events
        state.revenue,  # revenue_to_date
        state.orders,
        len(state.open_cases),  # open_complaints
        resolve_s,
        state.last_csat,
        state.last_nps,
        state.last_ces,
        switched,  # channel_switch
        None,  # sentiment: scored later
        state.churn_risk,
    )
