"""Alert rules: pure, synchronous and deterministic, all in event time.

:class:`AlertEngine` turns enriched touchpoints into :class:`Alert` records for ``cem.alerts``:

* per customer, on each enriched event (:meth:`AlertEngine.on_event`): ``detractor``,
  ``negative_feedback``, ``high_effort``, ``churn_risk`` (with hysteresis), ``vip_at_risk`` and
  ``complaint_sla_breach`` found on the customer's next event after a deadline;
* on a periodic event-time sweep (:meth:`AlertEngine.sweep`): ``complaint_sla_breach`` from the
  SLA timer index, and ``channel_anomaly`` from per-channel minutes closed by the watermark.

Nothing here reads the wall clock: every time is an event time (``occurred_at``) or a watermark
derived from event times, so replaying a stream gives the same alerts with the same ids. The ids
are hashes of the trigger (customer + event, customer + case, channel + metric + minute), and the
per-customer :class:`CustomerAlertState` remembers cooldowns, fired ids and case status, so feeding
an event twice never yields a second alert.

State lives in two places:

* :class:`~processors.alert_state.CustomerAlertState`, one per customer, inside its
  ``CustomerState`` (and so in the customer-state changelog): cooldowns, fired alert ids, churn
  hysteresis, the customer's complaint cases and their SLA deadlines.
* the engine itself (a snapshot, :mod:`processors.snapshot`): the SLA timer heap (an index over the
  cases above, rebuildable with :meth:`AlertEngine.track`), the channel-minute aggregates and their
  detectors, the customer-value quantile, and the watermark.

>>> from processors.touchpoint import Touchpoint
>>> engine, state = AlertEngine(), CustomerAlertState("c1")
>>> tp = Touchpoint("e1", "c1", 1_767_225_600_000, "survey", "survey_response", nps=3, text="Never again")
>>> [(a.type, a.severity) for a in engine.on_event(example_enriched(tp), state)]
[('detractor', 'high')]
>>> engine.on_event(example_enriched(tp), state)   # the same event again: no second alert
[]
"""

from __future__ import annotations

import bisect
import hashlib
import heapq
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, cast

from river import stats

from processors.alert_state import CustomerAlertState
from processors.customer import Enriched
from processors.kpi import is_detractor, is_promoter
from processors.touchpoint import Touchpoint
from schemas.contract import DAY_MS, DETRACTOR_MAX, HOUR_MS, MINUTE_MS, MODEL_CHURN, MODEL_SENTIMENT

DETRACTOR = "detractor"
NEGATIVE_FEEDBACK = "negative_feedback"
COMPLAINT_SLA_BREACH = "complaint_sla_breach"
CHURN_RISK = "churn_risk"
HIGH_EFFORT = "high_effort"
VIP_AT_RISK = "vip_at_risk"
CHANNEL_ANOMALY = "channel_anomaly"
ALERT_TYPES: tuple[str, ...] = (
    DETRACTOR, NEGATIVE_FEEDBACK, COMPLAINT_SLA_BREACH, CHURN_RISK, HIGH_EFFORT, VIP_AT_RISK, CHANNEL_ANOMALY,
)
SEVERITIES: tuple[str, ...] = ("low", "medium", "high", "critical")


@dataclass(frozen=True)
class AlertConfig:
    """Every threshold of the rules. Times are event-time milliseconds."""

    # Survey scores and text
    detractor_nps_max: int = DETRACTOR_MAX  # NPS 0-6 is a detractor
    detractor_csat_max: int = 2  # CSAT 1-2 of 5
    negative_sentiment_max: float = -0.6  # sentiment in [-1, 1]
    high_effort_ces_min: int = 5  # CES 5-7 of 7
    # Churn risk: alert on crossing churn_threshold upward; re-arm only below churn_rearm_below
    churn_threshold: float = 0.7
    churn_rearm_below: float = 0.5
    top_features: int = 3  # contributions shown as evidence
    # VIP: top (1 - vip_quantile) of customers by revenue to date
    vip_quantile: float = 0.9
    vip_min_samples: int = 100  # value updates before the quantile estimate is trusted
    vip_risk_rise: float = 0.15  # churn-risk rise since the customer's previous score
    # Complaint SLAs by the channel the complaint was opened on
    sla_ms: Mapping[str, int] = field(default_factory=lambda: {"phone": 24 * HOUR_MS, "chat": 4 * HOUR_MS, "email": 48 * HOUR_MS})
    sla_default_ms: int = 72 * HOUR_MS
    # One unhappy week is one alert: cooldown per customer and type (SLA breaches: once per case)
    cooldown_ms: int = 7 * DAY_MS
    cooldown_ms_by_type: Mapping[str, int] = field(default_factory=dict)
    channel_cooldown_ms: int = 30 * MINUTE_MS  # per channel and metric
    memory_ms: int = 30 * DAY_MS  # how long fired ids and closed cases are remembered per customer
    # Watermark: events later than this behind the watermark miss their minute / SLA sweep
    allowed_lateness_ms: int = 2 * MINUTE_MS
    watermark_max_skew_ms: int = 5 * MINUTE_MS  # occurred_at beyond record timestamp + this does not move it
    idle_partition_ms: int = 30 * MINUTE_MS  # a partition this far behind the leader does not hold the watermark
    # Channel anomalies: EWMA z-score per channel and metric on closed minutes
    anomaly_z: float = 4.5  # ~0.5 false alarms a day over 6 channels x 4 metrics of simulated Poisson traffic
    anomaly_fading: float = 0.1  # EWMean fading factor: ~10-20 minutes of memory for the level
    anomaly_var_fading: float = 0.03  # EWVar: a slower spread, so a few calm minutes do not shrink it
    anomaly_warmup_minutes: int = 30  # minutes fed to a detector before it may alert
    anomaly_min_responses: int = 5  # scores in a minute before its NPS/CSAT/sentiment counts
    anomaly_std_floor: Mapping[str, float] = field(
        default_factory=lambda: {"volume": 1.0, "nps": 5.0, "csat": 0.1, "sentiment": 0.05}
    )
    anomaly_two_sided: frozenset[str] = frozenset({"volume"})  # scores alert on drops only
    anomaly_max_gap_minutes: int = 120  # a channel silent this long is dormant: detectors restart

    def __post_init__(self) -> None:
        if not self.churn_rearm_below <= self.churn_threshold:
            raise ValueError("churn_rearm_below must not exceed churn_threshold (hysteresis)")
        if not 0 < self.vip_quantile < 1:
            raise ValueError("vip_quantile must be in (0, 1)")
        if self.allowed_lateness_ms < 0 or self.cooldown_ms < 0:
            raise ValueError("allowed_lateness_ms and cooldown_ms must be >= 0")

    @classmethod
    def from_spec(cls, spec: str) -> AlertConfig:
        """Overrides as ``name=value`` pairs, comma-separated (``CEM_ALERT_RULES``); ``sla_ms.<channel>``
        sets one channel's SLA.

        >>> c = AlertConfig.from_spec("churn_threshold=0.8, cooldown_ms=3600000, sla_ms.chat=60000")
        >>> c.churn_threshold, c.cooldown_ms, c.sla_for("chat"), c.sla_for("phone") // HOUR_MS
        (0.8, 3600000, 60000, 24)
        >>> AlertConfig.from_spec("no_such=1")
        Traceback (most recent call last):
        ...
        ValueError: unknown alert setting 'no_such'
        """
        defaults = cls()
        changes: dict[str, Any] = {}
        sla = dict(defaults.sla_ms)
        for pair in filter(None, (p.strip() for p in spec.split(","))):
            name, _, raw = pair.partition("=")
            name = name.strip()
            if name.startswith("sla_ms."):
                sla[name.removeprefix("sla_ms.")] = int(raw)
                continue
            current = getattr(defaults, name, None)
            if name.startswith("_") or not isinstance(current, (int, float)) or isinstance(current, bool):
                raise ValueError(f"unknown alert setting {name!r}")
            changes[name] = type(current)(raw)
        return cls(sla_ms=sla, **changes)

    def sla_for(self, channel: str) -> int:
        """The SLA of a complaint opened on ``channel``.

        >>> AlertConfig().sla_for("chat") // HOUR_MS, AlertConfig().sla_for("web") // HOUR_MS
        (4, 72)
        """
        return self.sla_ms.get(channel, self.sla_default_ms)

    def cooldown_for(self, alert_type: str) -> int:
        return self.cooldown_ms_by_type.get(alert_type, self.cooldown_ms)


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert; :meth:`to_record` is the ``cem.Alert`` Avro record."""

    alert_id: str
    type: str
    severity: str
    customer_id: str | None
    channel: str | None
    occurred_at: int
    reason: str
    evidence: dict[str, str]
    recommended_action: str
    trigger_event_ids: tuple[str, ...] = ()
    model_version: str | None = None

    def to_record(self, emitted_at_ms: int = 0) -> dict[str, Any]:
        """The record for ``schemas/alert.avsc``; ``emitted_at_ms`` is the pipeline's wall clock."""
        return {
            "alert_id": self.alert_id,
            "type": self.type,
            "severity": self.severity,
            "customer_id": self.customer_id,
            "channel": self.channel,
            "occurred_at": self.occurred_at,
            "emitted_at": emitted_at_ms,
            "reason": self.reason,
            "evidence": dict(self.evidence),
            "recommended_action": self.recommended_action,
            "model_version": self.model_version,
            "trigger_event_ids": list(self.trigger_event_ids),
        }


def alert_id(alert_type: str, *keys: str) -> str:
    """Deterministic id: sha1 of the type and the trigger's keys (a unit separator between them).

    >>> alert_id("detractor", "c1", "e1") == alert_id("detractor", "c1", "e1")
    True
    >>> alert_id("detractor", "c1", "e1") == alert_id("detractor", "c1e", "1")
    False
    """
    return hashlib.sha1("\x1f".join((alert_type, *keys)).encode()).hexdigest()


# -- per-customer state ------------------------------------------------------------------------

# A case of CustomerAlertState.cases is a list (compact in the JSON changelog): [opened_at, deadline,
# channel, open_event_id, status, closed_at, vip_at_open]
_OPENED, _DEADLINE, _CHANNEL, _OPEN_EVENT, _STATUS, _CLOSED, _VIP = range(7)
CASE_OPEN, CASE_RESOLVED, CASE_BREACHED = 0, 1, 2


def _prune(state: CustomerAlertState, memory_ms: int) -> None:
    """Forget fired ids and closed cases older than ``memory_ms`` before the customer's latest event."""
    cutoff = state.last_event_at - memory_ms
    state.fired = {k: t for k, t in state.fired.items() if t >= cutoff}
    state.cases = {k: c for k, c in state.cases.items() if c[_STATUS] == CASE_OPEN or c[_CLOSED] >= cutoff}


# -- channel minutes and their detectors -------------------------------------------------------

# A minute aggregate: [events, nps_n, promoters, detractors, csat_n, csat_sum, sentiment_n, sentiment_sum]
_EVENTS, _NPS_N, _PROMOTERS, _DETRACTORS, _CSAT_N, _CSAT_SUM, _SENT_N, _SENT_SUM = range(8)


@dataclass(slots=True)
class _Detector:
    """EWMA z-score of one channel metric (River ``EWMean``/``EWVar``); deterministic."""

    mean: stats.EWMean
    var: stats.EWVar
    n: int = 0

    @classmethod
    def new(cls, fading: float, var_fading: float) -> _Detector:
        return cls(stats.EWMean(fading), stats.EWVar(var_fading))

    def std(self, floor: float) -> float:
        return max(math.sqrt(max(self.var.get(), 0.0)), floor)

    def update(self, x: float) -> None:
        self.mean.update(x)
        self.var.update(x)
        self.n += 1


@dataclass(slots=True)
class _ChannelState:
    closed_through: int  # last closed minute index (epoch minutes)
    minutes: dict[int, list[float]] = field(default_factory=dict)  # open minute -> aggregate
    detectors: dict[str, _Detector] = field(default_factory=dict)
    last_alert: dict[str, int] = field(default_factory=dict)  # metric -> minute start of its last alert
    quiet_minutes: int = 0  # consecutive empty minutes closed


def anscombe(count: float) -> float:
    """Variance-stabilised count, 2·sqrt(x + 3/8): Poisson noise becomes ~N(·, 1) at any volume.

    >>> round(anscombe(0), 3), round(anscombe(100), 3)
    (1.225, 20.037)
    """
    return 2.0 * math.sqrt(count + 0.375)


def _from_anscombe(y: float) -> float:
    return max(0.0, (y / 2.0) ** 2 - 0.375)


def _minute_values(agg: list[float], min_responses: int) -> dict[str, float]:
    """The metrics of one closed minute; scores only with enough responses to mean something."""
    values = {"volume": anscombe(agg[_EVENTS])}
    if agg[_NPS_N] >= min_responses:
        values["nps"] = 100.0 * (agg[_PROMOTERS] - agg[_DETRACTORS]) / agg[_NPS_N]
    if agg[_CSAT_N] >= min_responses:
        values["csat"] = agg[_CSAT_SUM] / agg[_CSAT_N]
    if agg[_SENT_N] >= min_responses:
        values["sentiment"] = agg[_SENT_SUM] / agg[_SENT_N]
    return values


# -- the engine --------------------------------------------------------------------------------

StateLookup = Callable[[str], "CustomerAlertState | None"]


class AlertEngine:
    """The alert rules plus the state they share across customers (see the module docstring).

    Its snapshot (:func:`processors.snapshot.to_snapshot`) holds the engine whole, not the customers'
    states. The config in it is the one it ran with: a restored engine takes the rules as
    configured now (``engine.config = ...``).

    >>> from processors.snapshot import from_snapshot, to_snapshot
    >>> engine = AlertEngine()
    >>> engine.late_events = 3
    >>> from_snapshot(to_snapshot(engine), AlertEngine).late_events
    3
    """

    SNAPSHOT_KIND = "alerts"
    SNAPSHOT_VERSION = 3  # 3: the whole engine in a snapshot; 2 was a pickled dict of its state
    SNAPSHOT_COMPRESSED = False  # checkpointed with every commit: small, and zlib would be on the hot path

    def __init__(self, config: AlertConfig | None = None):
        self.config = config or AlertConfig()
        self._max_seen = 0  # the watermark (see watermark_ms)
        # source partition -> its two highest event times (highest, second): the second is what counts
        self._partition_top: dict[int, tuple[int, int | None]] = {}
        self._timers: list[tuple[int, str, str]] = []  # min-heap of (deadline, customer_id, case_id)
        self._channels: dict[str, _ChannelState] = {}
        self._value = stats.Quantile(self.config.vip_quantile)  # P² estimate: deterministic
        self._value_n = 0
        self.late_events = 0  # events too late for their channel minute (not counted there)

    # -- state ---------------------------------------------------------------------------------
    def track(self, states: Iterable[CustomerAlertState]) -> int:
        """Put the open cases of ``states`` on the SLA timer index (after a rebalance, or a restart
        without the engine's snapshot); returns how many. Entries already there are harmless duplicates."""
        pushed = 0
        for state in states:
            for case_id, case in state.cases.items():
                if case[_STATUS] == CASE_OPEN:
                    heapq.heappush(self._timers, (case[_DEADLINE], state.customer_id, case_id))
                    pushed += 1
        return pushed

    @property
    def watermark_ms(self) -> int:
        """Pass it to :meth:`sweep`. Per source partition, the second-highest event time seen (each
        capped by its record timestamp + skew: the second, so one outlier cannot move it); the
        watermark is the lowest of those, because a worker reads its partitions batch by batch and
        one may be minutes of event time behind another. Partitions more than ``idle_partition_ms``
        behind the leader count as idle and do not hold it back."""
        return self._max_seen

    # -- per event -----------------------------------------------------------------------------
    def on_event(
        self,
        enriched: Enriched,
        state: CustomerAlertState,
        contributions: Mapping[str, float] | None = None,
        *,
        replay: bool = False,
    ) -> list[Alert]:
        """Alerts triggered by one valid, non-duplicate enriched event; mutates ``state``.

        ``replay=True`` for a record re-processed after a restart (``Kind.REPLAYED``): it moves the
        watermark only. Its alerts were acked before the state holding it was written, and what the
        rules remember of it is in that state; run again against the state as it is now, the rules
        could fire what they did not fire then. ``contributions`` are the churn model's per-feature
        contributions, if any.
        """
        tp = enriched.touchpoint
        t = tp.occurred_at
        cfg = self.config
        if not replay:
            self._observe_channel(tp, enriched.sentiment)
            self._observe_value(enriched)
        received = enriched.received_at
        horizon = t if received <= 0 else min(t, received + cfg.watermark_max_skew_ms)
        if self._observe_partition(enriched.source_partition, horizon):
            self._advance_watermark()
        if replay:
            return []

        alerts: list[Alert] = []
        if state.cases:
            self._breach_due(state, t, alerts)
        if t > state.last_event_at:
            state.last_event_at = t
        kind = tp.type
        if kind == "complaint_opened":
            self._open_case(tp, enriched, state)
        elif kind == "complaint_resolved":
            self._resolve_case(tp, state)

        nps, csat = tp.nps, tp.csat
        detractor = (nps is not None and nps <= cfg.detractor_nps_max) or (
            csat is not None and csat <= cfg.detractor_csat_max
        )
        if detractor:
            if not self._cooling(state, DETRACTOR, t):
                self._emit(state, alerts, detractor_alert(enriched, cfg))
        elif enriched.sentiment is not None and enriched.sentiment <= cfg.negative_sentiment_max:
            # A detractor's comment is already in its detractor alert: one event, one alert.
            if not self._cooling(state, NEGATIVE_FEEDBACK, t):
                self._emit(state, alerts, negative_feedback_alert(enriched, cfg))
        if tp.ces is not None and tp.ces >= cfg.high_effort_ces_min and not self._cooling(state, HIGH_EFFORT, t):
            self._emit(state, alerts, high_effort_alert(enriched, cfg))

        risk = enriched.churn_risk
        if risk is not None:
            if state.churn_armed:
                if risk >= cfg.churn_threshold:
                    state.churn_armed = False  # disarm even when cooling: no flapping either way
                    if not self._cooling(state, CHURN_RISK, t):
                        self._emit(state, alerts, churn_alert(enriched, cfg, contributions))
            elif risk < cfg.churn_rearm_below:
                state.churn_armed = True
        previous = state.last_risk
        rising = risk is not None and previous is not None and risk - previous >= cfg.vip_risk_rise
        if (rising or kind == "complaint_opened") and self.is_vip(enriched.revenue_to_date):
            if not self._cooling(state, VIP_AT_RISK, t):
                p90 = cast(float, self._value.get())  # not None: is_vip checked it
                self._emit(state, alerts, vip_alert(enriched, cfg, previous, p90, rising))
        if risk is not None:
            state.last_risk = risk
        return alerts

    def _observe_partition(self, partition: int, horizon: int) -> bool:
        """Keep the partition's two highest event times; whether the second moved (the one that counts,
        so that one record with an extreme time cannot close every minute and breach every SLA)."""
        top = self._partition_top.get(partition)
        if top is None:
            self._partition_top[partition] = (horizon, None)
            return False
        highest, second = top
        if horizon > highest:
            self._partition_top[partition] = (horizon, highest)
            return True
        if horizon < highest and (second is None or horizon > second):
            self._partition_top[partition] = (highest, horizon)
            return True
        return False

    def _advance_watermark(self) -> None:
        marks = [second for _, second in self._partition_top.values() if second is not None]
        marks.sort()
        # The lowest mark of the partitions not idle (within idle_partition_ms of the leader's).
        watermark = marks[bisect.bisect_left(marks, marks[-1] - self.config.idle_partition_ms)]
        if watermark > self._max_seen:  # never moves back
            self._max_seen = watermark

    def is_vip(self, revenue_to_date: float) -> bool:
        """In the top decile of customer value (once the quantile has seen enough customers)."""
        return (
            self._value_n >= self.config.vip_min_samples
            and revenue_to_date > 0
            and (threshold := self._value.get()) is not None  # None until the first update
            and revenue_to_date >= threshold
        )

    def _cooling(self, state: CustomerAlertState, alert_type: str, t: int) -> bool:
        last = state.last_alert_at.get(alert_type)
        return last is not None and abs(t - last) < self.config.cooldown_for(alert_type)

    def _emit(self, state: CustomerAlertState, alerts: list[Alert], alert: Alert) -> None:
        if alert.alert_id in state.fired:  # the same trigger seen again, outside any cooldown
            return
        state.fired[alert.alert_id] = alert.occurred_at
        last = state.last_alert_at.get(alert.type)
        state.last_alert_at[alert.type] = alert.occurred_at if last is None else max(last, alert.occurred_at)
        alerts.append(alert)
        if len(state.fired) > 32:
            _prune(state, self.config.memory_ms)

    def _observe_value(self, enriched: Enriched) -> None:
        # Once per change of a customer's value (and at first sight, at 0): the quantile is over
        # customers' values, not over page views.
        kind = enriched.touchpoint.type
        if kind == "purchase" or kind == "refund" or enriched.events_total == 1:
            self._value.update(enriched.revenue_to_date)
            self._value_n += 1

    # -- complaint cases and SLA timers ----------------------------------------------------------
    def _open_case(self, tp: Touchpoint, enriched: Enriched, state: CustomerAlertState) -> None:
        case_id = tp.case_key  # as processors.customer does
        case = state.cases.get(case_id)
        if case is not None and (
            case[_STATUS] == CASE_OPEN or case[_OPEN_EVENT] == tp.event_id or tp.occurred_at < case[_CLOSED]
        ):
            return  # the same opening again, or an opening that arrived after its resolution
        deadline = tp.occurred_at + self.config.sla_for(tp.channel)
        vip = int(self.is_vip(enriched.revenue_to_date))
        state.cases[case_id] = [tp.occurred_at, deadline, tp.channel, tp.event_id, CASE_OPEN, 0, vip]
        heapq.heappush(self._timers, (deadline, state.customer_id, case_id))
        if len(state.cases) > 16:
            _prune(state, self.config.memory_ms)

    def _resolve_case(self, tp: Touchpoint, state: CustomerAlertState) -> None:
        case_id = tp.case_key
        case = state.cases.get(case_id)
        t = tp.occurred_at
        if case is None:  # resolution before its opening (out of order): remember, start no timer
            state.cases[case_id] = [t, t, tp.channel, "", CASE_RESOLVED, t, 0]
        elif case[_STATUS] == CASE_OPEN:
            case[_STATUS] = CASE_RESOLVED  # its heap entry is now stale: skipped when popped
            case[_CLOSED] = t

    def _breach_due(self, state: CustomerAlertState, t: int, alerts: list[Alert]) -> None:
        """The customer's own event at ``t`` proves their open cases with earlier deadlines breached."""
        for case_id, case in state.cases.items():
            if case[_STATUS] == CASE_OPEN and case[_DEADLINE] < t:
                alerts.append(self._breach(state, case_id, case))

    def _breach(self, state: CustomerAlertState, case_id: str, case: list[Any]) -> Alert:
        case[_STATUS] = CASE_BREACHED  # fires once per case, whichever path finds it first
        case[_CLOSED] = case[_DEADLINE]
        return sla_alert(state.customer_id, case_id, case, self.config)

    # -- channel minutes -----------------------------------------------------------------------
    def _observe_channel(self, tp: Touchpoint, sentiment: float | None) -> None:
        minute = tp.occurred_at // MINUTE_MS
        channel = self._channels.get(tp.channel)
        if channel is None:
            channel = self._channels[tp.channel] = _ChannelState(minute - 1)
        # Late by the watermark as of the events before this one, not as of the last sweep, so the
        # minutes' contents do not depend on when the pipeline happens to sweep.
        if minute <= channel.closed_through or (minute + 1) * MINUTE_MS + self.config.allowed_lateness_ms <= self._max_seen:
            self.late_events += 1
            return
        agg = channel.minutes.get(minute)
        if agg is None:
            agg = channel.minutes[minute] = [0, 0, 0, 0, 0, 0.0, 0, 0.0]
        agg[_EVENTS] += 1
        if tp.nps is not None:
            agg[_NPS_N] += 1
            if is_promoter(tp.nps):
                agg[_PROMOTERS] += 1
            elif is_detractor(tp.nps):
                agg[_DETRACTORS] += 1
        if tp.csat is not None:
            agg[_CSAT_N] += 1
            agg[_CSAT_SUM] += tp.csat
        if sentiment is not None:
            agg[_SENT_N] += 1
            agg[_SENT_SUM] += sentiment

    # -- the sweep -----------------------------------------------------------------------------
    def sweep(self, watermark_ms: int, states: StateLookup) -> list[Alert]:
        """Event-time timers up to ``watermark_ms`` (normally :attr:`watermark_ms`).

        Fires SLA breaches of cases still open ``allowed_lateness_ms`` past their deadline (marking
        them in the customer's state, which ``states(customer_id)`` returns, or None if this worker
        no longer owns it), and closes channel minutes ending ``allowed_lateness_ms`` before the
        watermark, feeding them to the anomaly detectors. The pipeline must persist the
        ``CustomerAlertState`` of every customer in a returned ``complaint_sla_breach``.
        """
        alerts: list[Alert] = []
        self._sweep_timers(watermark_ms - self.config.allowed_lateness_ms, states, alerts)
        last_closable = (watermark_ms - self.config.allowed_lateness_ms) // MINUTE_MS - 1
        for name, channel in self._channels.items():
            if last_closable > channel.closed_through:
                self._close_minutes(name, channel, last_closable, alerts)
        return alerts

    def _sweep_timers(self, limit_ms: int, states: StateLookup, alerts: list[Alert]) -> None:
        timers = self._timers
        while timers and timers[0][0] < limit_ms:
            deadline, customer_id, case_id = heapq.heappop(timers)
            state = states(customer_id)
            if state is None:
                continue  # moved to another worker with its partition
            case = state.cases.get(case_id)
            if case is None or case[_STATUS] != CASE_OPEN or case[_DEADLINE] != deadline:
                continue  # resolved, already breached, or a stale duplicate entry
            alerts.append(self._breach(state, case_id, case))

    def _close_minutes(self, name: str, channel: _ChannelState, last: int, alerts: list[Alert]) -> None:
        cfg = self.config
        minute = channel.closed_through + 1
        while minute <= last:
            agg = channel.minutes.pop(minute, None)
            if agg is None:
                if channel.quiet_minutes >= cfg.anomaly_max_gap_minutes:
                    # Dormant: skip straight to the next minute with traffic instead of feeding zeros.
                    pending = [m for m in channel.minutes if m <= last]
                    minute = min(pending) if pending else last + 1
                    continue
                channel.quiet_minutes += 1
                agg = [0, 0, 0, 0, 0, 0.0, 0, 0.0]
            else:
                if channel.quiet_minutes >= cfg.anomaly_max_gap_minutes:
                    channel.detectors.clear()  # its old behaviour is not "recent": warm up again
                channel.quiet_minutes = 0
            self._score_minute(name, channel, minute, agg, alerts)
            minute += 1
        channel.closed_through = last

    def _score_minute(self, name: str, channel: _ChannelState, minute: int, agg: list[float], alerts: list[Alert]) -> None:
        cfg = self.config
        start = minute * MINUTE_MS
        for metric, value in _minute_values(agg, cfg.anomaly_min_responses).items():
            detector = channel.detectors.get(metric)
            if detector is None:
                detector = channel.detectors[metric] = _Detector.new(cfg.anomaly_fading, cfg.anomaly_var_fading)
            if detector.n < cfg.anomaly_warmup_minutes:
                detector.update(value)
                continue
            mean, std = detector.mean.get(), detector.std(cfg.anomaly_std_floor.get(metric, 0.0) or 1e-9)
            z = (value - mean) / std
            anomalous = z <= -cfg.anomaly_z or (metric in cfg.anomaly_two_sided and z >= cfg.anomaly_z)
            if not anomalous:
                detector.update(value)
                continue
            last = channel.last_alert.get(metric)
            if last is None or abs(start - last) >= cfg.channel_cooldown_ms:
                channel.last_alert[metric] = start
                alerts.append(channel_alert(name, metric, start, value, mean, std, z, agg, cfg))
            # Winsorised update: an outage must not become the new normal within minutes.
            detector.update(mean + math.copysign(cfg.anomaly_z * std, z))


# -- alert builders: one small pure function per type ------------------------------------------


def _iso(ms: int) -> str:
    """Event time as ISO-8601 UTC (formatting only: no clock is read).

    >>> _iso(1_767_225_600_000)
    '2026-01-01T00:00:00Z'
    """
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _num(x: float) -> str:
    return f"{x:.3f}"


def _customer_alert(
    alert_type: str, severity: str, tp: Touchpoint, reason: str, evidence: dict[str, str], action: str,
    model_version: str | None = None,
) -> Alert:
    evidence.setdefault("event_type", tp.type)
    return Alert(
        alert_id(alert_type, tp.customer_id, tp.event_id), alert_type, severity, tp.customer_id, tp.channel,
        tp.occurred_at, reason, evidence, action, (tp.event_id,), model_version,
    )


def _with_text(evidence: dict[str, str], tp: Touchpoint, sentiment: float | None) -> dict[str, str]:
    if tp.text:
        evidence["comment"] = tp.text[:500]
    if sentiment is not None:
        evidence["sentiment"] = _num(sentiment)
    return evidence


def detractor_alert(enriched: Enriched, cfg: AlertConfig) -> Alert:
    """NPS 0-6 or CSAT 1-2: close the loop with the customer."""
    tp = enriched.touchpoint
    evidence: dict[str, str] = {}
    scores = []
    if tp.nps is not None:
        evidence["nps"], evidence["nps_threshold"] = str(tp.nps), f"<= {cfg.detractor_nps_max}"
        scores.append(f"NPS {tp.nps}/10")
    if tp.csat is not None:
        evidence["csat"], evidence["csat_threshold"] = str(tp.csat), f"<= {cfg.detractor_csat_max}"
        scores.append(f"CSAT {tp.csat}/5")
    _with_text(evidence, tp, enriched.sentiment)
    severe = (tp.nps is not None and tp.nps <= 3) or tp.csat == 1
    comment = f': "{tp.text[:120]}"' if tp.text else ""
    reason = f"Customer {tp.customer_id} is a detractor ({', '.join(scores)}) on {tp.channel}{comment}."
    action = "close the loop: call the customer back within 24 h" if severe else "close the loop: contact the customer within 48 h"
    return _customer_alert(DETRACTOR, "high" if severe else "medium", tp, reason, evidence, action)


def negative_feedback_alert(enriched: Enriched, cfg: AlertConfig) -> Alert:
    """Text scored strongly negative on any channel."""
    tp = enriched.touchpoint
    s = float(enriched.sentiment)  # type: ignore[arg-type]
    evidence = _with_text({"sentiment_threshold": _num(cfg.negative_sentiment_max)}, tp, s)
    severe = s <= -0.85
    reason = f"Strongly negative {tp.type.replace('_', ' ')} from customer {tp.customer_id} on {tp.channel} (sentiment {s:.2f} <= {cfg.negative_sentiment_max:.2f})."
    action = "review the message and reach out to the customer within 24 h" if severe else "review the message and follow up with the customer"
    return _customer_alert(
        NEGATIVE_FEEDBACK, "high" if severe else "medium", tp, reason, evidence, action,
        enriched.model_versions.get(MODEL_SENTIMENT),
    )


def high_effort_alert(enriched: Enriched, cfg: AlertConfig) -> Alert:
    """CES 5-7: the customer had to work too hard."""
    tp = enriched.touchpoint
    evidence = _with_text({"ces": str(tp.ces), "ces_threshold": f">= {cfg.high_effort_ces_min}"}, tp, enriched.sentiment)
    reason = f"Customer {tp.customer_id} reported high effort (CES {tp.ces}/7) on {tp.channel}."
    action = "follow up to finish the customer's task and log the friction point for the journey owner"
    return _customer_alert(HIGH_EFFORT, "medium" if tp.ces == 7 else "low", tp, reason, evidence, action)


def top_contributions(contributions: Mapping[str, float] | None, k: int) -> list[tuple[str, float]]:
    """The ``k`` largest contributions by absolute value, ties by name (deterministic).

    >>> top_contributions({"tenure": -0.1, "complaints": 0.3, "recency": 0.1}, 2)
    [('complaints', 0.3), ('recency', 0.1)]
    """
    if not contributions:
        return []
    return sorted(contributions.items(), key=lambda kv: (-abs(kv[1]), kv[0]))[:k]


def churn_alert(enriched: Enriched, cfg: AlertConfig, contributions: Mapping[str, float] | None) -> Alert:
    """Churn risk crossed the threshold upward (the engine handles the hysteresis)."""
    tp = enriched.touchpoint
    risk = float(enriched.churn_risk)  # type: ignore[arg-type]
    evidence = {
        "churn_risk": _num(risk), "threshold": _num(cfg.churn_threshold), "rearm_below": _num(cfg.churn_rearm_below),
        "revenue_to_date": f"{enriched.revenue_to_date:.2f}", "open_complaints": str(enriched.open_complaints),
    }
    top = top_contributions(contributions, cfg.top_features)
    for name, value in top:
        evidence[f"contribution.{name}"] = f"{value:+.3f}"
    if top:
        evidence["top_features"] = ", ".join(name for name, _ in top)
    drivers = f", driven by {', '.join(name for name, _ in top)}" if top else ""
    reason = f"Churn risk of customer {tp.customer_id} rose to {risk:.2f} (threshold {cfg.churn_threshold:.2f}){drivers}."
    severity = "critical" if risk >= 0.9 else "high"
    return _customer_alert(
        CHURN_RISK, severity, tp, reason, evidence, "make a retention offer and have an agent call within 48 h",
        enriched.model_versions.get(MODEL_CHURN),
    )


def vip_alert(enriched: Enriched, cfg: AlertConfig, previous_risk: float | None, p90: float, rising: bool) -> Alert:
    """A top-decile customer with a complaint opened or a rising churn risk."""
    tp = enriched.touchpoint
    evidence = {
        "revenue_to_date": f"{enriched.revenue_to_date:.2f}", "value_quantile": str(cfg.vip_quantile),
        "value_threshold": f"{p90:.2f}",
    }
    why = []
    if tp.type == "complaint_opened":
        evidence["case_id"] = tp.case_key
        why.append(f"opened a complaint on {tp.channel}")
    if rising:
        evidence["churn_risk"], evidence["previous_churn_risk"] = _num(enriched.churn_risk), _num(previous_risk)  # type: ignore[arg-type]
        evidence["risk_rise_threshold"] = _num(cfg.vip_risk_rise)
        why.append(f"churn risk rose from {previous_risk:.2f} to {enriched.churn_risk:.2f}")
    reason = (
        f"Top-{round((1 - cfg.vip_quantile) * 100)}% customer {tp.customer_id} (revenue {enriched.revenue_to_date:.2f} "
        f">= {p90:.2f}) {' and '.join(why)}."
    )
    action = "assign a senior agent: call back within 24 h with a retention offer"
    version = enriched.model_versions.get(MODEL_CHURN) if rising else None
    return _customer_alert(VIP_AT_RISK, "critical", tp, reason, evidence, action, version)


def sla_alert(customer_id: str, case_id: str, case: list[Any], cfg: AlertConfig) -> Alert:
    """A complaint case still open past its channel's SLA; ``occurred_at`` is the deadline."""
    opened, deadline, channel, open_event = case[_OPENED], case[_DEADLINE], case[_CHANNEL], case[_OPEN_EVENT]
    sla_h = (deadline - opened) / HOUR_MS
    evidence = {
        "case_id": case_id, "opened_at": _iso(opened), "deadline": _iso(deadline), "sla_hours": f"{sla_h:g}",
        "vip_at_open": "true" if case[_VIP] else "false",
    }
    reason = f"Complaint case {case_id} of customer {customer_id}, opened on {channel} at {_iso(opened)}, was still open past its {sla_h:g} h SLA ({_iso(deadline)})."
    return Alert(
        alert_id(COMPLAINT_SLA_BREACH, customer_id, case_id, open_event), COMPLAINT_SLA_BREACH,
        "critical" if case[_VIP] else "high", customer_id, channel, deadline, reason, evidence,
        f"escalate case {case_id} to a team lead and contact the customer today", (open_event,),
    )


_METRIC_LABELS = {"volume": "volume", "nps": "NPS", "csat": "CSAT", "sentiment": "sentiment"}


def channel_alert(
    channel: str, metric: str, start: int, value: float, mean: float, std: float, z: float, agg: list[float], cfg: AlertConfig,
) -> Alert:
    """A channel's minute departed from its own recent behaviour (EWMA z-score)."""
    evidence = {
        "metric": metric, "minute": _iso(start), "z": f"{z:+.2f}", "z_threshold": _num(cfg.anomaly_z),
        "events": str(agg[_EVENTS]),
        "detector": f"ewma z-score (river EWMean {cfg.anomaly_fading:g} / EWVar {cfg.anomaly_var_fading:g})",
    }
    label = _METRIC_LABELS[metric]
    if metric == "volume":
        expected = _from_anscombe(mean)
        evidence["expected_events"] = f"{expected:.1f}"
        observed = f"{agg[_EVENTS]} events vs. about {expected:.0f} expected"
        if z < 0:
            action = f"check {channel} for an outage or a broken integration"
        else:
            action = f"check {channel} for an incident driving contacts (outage elsewhere, failed release, campaign)"
    else:
        responses = {"nps": agg[_NPS_N], "csat": agg[_CSAT_N], "sentiment": agg[_SENT_N]}[metric]
        evidence.update(value=_num(value), recent_mean=_num(mean), recent_std=_num(std), responses=str(responses))
        observed = f"{value:.2f} over {responses} responses vs. a recent {mean:.2f}"
        action = f"review recent {channel} interactions and open an incident if the {label} drop persists"
    direction = "dropped" if z < 0 else "spiked"
    reason = f"{channel} {label} {direction} in the minute from {_iso(start)}: {observed} (z = {z:+.1f})."
    outage = metric == "volume" and agg[_EVENTS] == 0
    severity = "critical" if outage else "high" if abs(z) >= 2 * cfg.anomaly_z else "medium"
    return Alert(
        alert_id(CHANNEL_ANOMALY, channel, metric, str(start)), CHANNEL_ANOMALY, severity, None, channel, start,
        reason, evidence, action, (),
    )


def example_enriched(tp: Touchpoint, **fields_: Any) -> Enriched:
    """An :class:`Enriched` around ``tp`` with neutral defaults (docs, tests, benchmarks)."""
    values: dict[str, Any] = dict(
        touchpoint=tp, source_partition=0, source_offset=0, received_at=tp.occurred_at, journey_stage="service",
        first_seen=tp.occurred_at, recency_s=None, events_total=2, channel_events=1, revenue_to_date=0.0, orders=0,
        open_complaints=0, resolve_s=None, last_csat=tp.csat, last_nps=tp.nps, last_ces=tp.ces, channel_switch=False,
    )
    values.update(fields_)
    return Enriched(**values)
