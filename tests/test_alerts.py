"""Alert rules: each type fires on its trigger and not on its near miss; replays are idempotent."""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from dataclasses import replace

import fastavro
import pytest

from processors.alerts import (
    ALERT_TYPES,
    CHANNEL_ANOMALY,
    CHURN_RISK,
    COMPLAINT_SLA_BREACH,
    DAY_MS,
    DETRACTOR,
    HIGH_EFFORT,
    HOUR_MS,
    MINUTE_MS,
    NEGATIVE_FEEDBACK,
    SEVERITIES,
    VIP_AT_RISK,
    Alert,
    AlertConfig,
    AlertEngine,
    CustomerAlertState,
    example_enriched,
)
from processors.customer import CustomerState, Enriched, Outcome, apply
from processors.snapshot import from_snapshot, to_snapshot
from processors.synthetic import DEFAULT_START_MS as T0  # 2026-01-01T00:00:00Z
from processors.touchpoint import Touchpoint
from schemas.codec import RecordEncoder
from schemas.contract import schema_json

MIN = MINUTE_MS


def ev(
    eid: str,
    cid: str = "c1",
    at: int = 0,
    channel: str = "web",
    type_: str = "page_view",
    *,
    sentiment: float | None = None,
    risk: float | None = None,
    revenue: float = 0.0,
    versions: dict[str, str] | None = None,
    **tp_fields,
) -> Enriched:
    """An enriched event ``at`` ms after T0."""
    tp = Touchpoint(eid, cid, T0 + at, channel, type_, **tp_fields)
    return example_enriched(
        tp, sentiment=sentiment, churn_risk=risk, revenue_to_date=revenue, model_versions=versions or {},
    )


class Harness:
    """An engine plus the customer alert states the pipeline would keep in its table."""

    def __init__(self, config: AlertConfig | None = None):
        self.engine = AlertEngine(config)
        self.states: dict[str, CustomerAlertState] = {}

    def feed(self, e: Enriched, contributions: dict[str, float] | None = None, replay: bool = False) -> list[Alert]:
        cid = e.touchpoint.customer_id
        state = self.states.setdefault(cid, CustomerAlertState(cid))
        return self.engine.on_event(e, state, contributions, replay=replay)

    def sweep(self, watermark: int | None = None) -> list[Alert]:
        return self.engine.sweep(self.engine.watermark_ms if watermark is None else watermark, self.states.get)

    def run(self, events: Iterable[Enriched], sweep_every: int = 1, replay: bool = False) -> list[Alert]:
        alerts: list[Alert] = []
        for i, e in enumerate(events, 1):
            alerts += self.feed(e, replay=replay)
            if i % sweep_every == 0:
                alerts += self.sweep()
        return alerts + self.sweep()


def types(alerts: Iterable[Alert]) -> list[str]:
    return [a.type for a in alerts]


def of(alerts: Iterable[Alert], alert_type: str) -> list[Alert]:
    return [a for a in alerts if a.type == alert_type]


# -- detractor ---------------------------------------------------------------------------------


def test_detractor_closes_the_loop_with_the_comment_as_evidence():
    h = Harness()
    [alert] = h.feed(ev("e1", channel="survey", type_="survey_response", nps=6, text="Delivery took three weeks"))
    assert alert.type == DETRACTOR and alert.severity == "medium"
    assert alert.customer_id == "c1" and alert.channel == "survey" and alert.occurred_at == T0
    assert alert.evidence["nps"] == "6" and alert.evidence["comment"] == "Delivery took three weeks"
    assert alert.trigger_event_ids == ("e1",) and "close the loop" in alert.recommended_action


@pytest.mark.parametrize(
    "scores, fires",
    [({"nps": 6}, True), ({"nps": 0}, True), ({"nps": 7}, False), ({"csat": 2}, True), ({"csat": 3}, False), ({}, False)],
)
def test_detractor_thresholds(scores, fires):
    alerts = Harness().feed(ev("e1", channel="survey", type_="survey_response", **scores))
    assert types(alerts) == ([DETRACTOR] if fires else [])


def test_second_detractor_within_the_cooldown_does_not_alert():
    h = Harness()
    assert types(h.feed(ev("e1", nps=2))) == [DETRACTOR]
    assert h.feed(ev("e2", at=3 * DAY_MS, nps=1)) == []  # same unhappy week
    assert types(h.feed(ev("e3", at=8 * DAY_MS, nps=1))) == [DETRACTOR]  # a new week, a new alert


# -- negative feedback -------------------------------------------------------------------------


def test_negative_feedback_on_strongly_negative_text_names_its_model():
    h = Harness()
    [alert] = h.feed(ev("e1", channel="chat", type_="chat_message", text="useless", sentiment=-0.7,
                        versions={"sentiment": "vader-1.2"}))
    assert alert.type == NEGATIVE_FEEDBACK and alert.model_version == "vader-1.2"
    assert alert.evidence["sentiment"] == "-0.700" and alert.evidence["comment"] == "useless"


def test_mildly_negative_text_is_not_negative_feedback():
    assert Harness().feed(ev("e1", type_="feedback", text="meh", sentiment=-0.5)) == []


def test_a_detractor_with_a_negative_comment_is_one_alert():
    alerts = Harness().feed(ev("e1", type_="survey_response", nps=1, text="awful", sentiment=-0.9))
    assert types(alerts) == [DETRACTOR] and alerts[0].evidence["sentiment"] == "-0.900"


# -- high effort -------------------------------------------------------------------------------


@pytest.mark.parametrize("ces, fires", [(5, True), (7, True), (4, False)])
def test_high_effort(ces, fires):
    alerts = Harness().feed(ev("e1", channel="web", type_="survey_response", ces=ces))
    assert types(alerts) == ([HIGH_EFFORT] if fires else [])


# -- complaint SLA breach ----------------------------------------------------------------------


def test_open_complaint_breaches_its_sla_once_by_the_sweep():
    h = Harness()
    h.feed(ev("open", channel="chat", type_="complaint_opened", case_id="k1"))
    lateness = h.engine.config.allowed_lateness_ms
    assert h.sweep(T0 + 4 * HOUR_MS + lateness) == []  # the deadline itself is still in time
    [alert] = h.sweep(T0 + 4 * HOUR_MS + lateness + 1)
    assert alert.type == COMPLAINT_SLA_BREACH and alert.occurred_at == T0 + 4 * HOUR_MS
    assert alert.evidence["case_id"] == "k1" and alert.evidence["sla_hours"] == "4"
    assert alert.trigger_event_ids == ("open",) and "escalate" in alert.recommended_action
    assert h.sweep(T0 + 10 * DAY_MS) == []  # once per case
    assert h.feed(ev("later", at=5 * HOUR_MS)) == []  # the next event does not re-fire it


def test_complaint_resolved_a_minute_before_its_sla_does_not_breach():
    h = Harness()
    h.feed(ev("open", channel="chat", type_="complaint_opened", case_id="k1"))
    h.feed(ev("done", at=4 * HOUR_MS - MIN, channel="chat", type_="complaint_resolved", case_id="k1"))
    assert h.sweep(T0 + 10 * DAY_MS) == []
    assert h.feed(ev("later", at=9 * DAY_MS)) == []


def test_breach_found_on_the_customers_next_event_before_any_sweep():
    h = Harness()
    h.feed(ev("open", channel="phone", type_="complaint_opened", case_id="k1"))
    assert h.feed(ev("e2", at=23 * HOUR_MS)) == []
    [alert] = h.feed(ev("e3", at=25 * HOUR_MS))
    assert alert.type == COMPLAINT_SLA_BREACH and alert.evidence["sla_hours"] == "24"
    assert h.sweep(T0 + 10 * DAY_MS) == []


def test_resolution_after_the_deadline_is_a_breach():
    h = Harness()
    h.feed(ev("open", channel="email", type_="complaint_opened", case_id="k1"))
    alerts = h.feed(ev("done", at=50 * HOUR_MS, channel="email", type_="complaint_resolved", case_id="k1"))
    assert types(alerts) == [COMPLAINT_SLA_BREACH] and h.sweep(T0 + 10 * DAY_MS) == []


def test_replayed_opening_after_a_breach_starts_no_new_timer():
    h = Harness()
    opening = ev("open", channel="chat", type_="complaint_opened", case_id="k1")
    h.feed(opening)
    assert types(h.sweep(T0 + 5 * HOUR_MS)) == [COMPLAINT_SLA_BREACH]
    assert h.feed(opening) == [] and h.sweep(T0 + 10 * DAY_MS) == []


def test_resolution_seen_before_its_opening_starts_no_timer():
    h = Harness()
    h.feed(ev("done", at=HOUR_MS, channel="chat", type_="complaint_resolved", case_id="k1"))
    h.feed(ev("open", channel="chat", type_="complaint_opened", case_id="k1"))  # arrived late
    assert h.sweep(T0 + 10 * DAY_MS) == []


def test_sla_timers_can_be_rebuilt_from_customer_states():
    h = Harness()
    h.feed(ev("open", channel="chat", type_="complaint_opened", case_id="k1"))
    fresh = AlertEngine()  # e.g. the new owner of the partition, without a snapshot
    assert fresh.track(h.states.values()) == 1
    assert types(fresh.sweep(T0 + DAY_MS, h.states.get)) == [COMPLAINT_SLA_BREACH]


# -- churn risk --------------------------------------------------------------------------------


def test_churn_risk_crossing_upward_alerts_with_top_features():
    h = Harness()
    assert h.feed(ev("e1", risk=0.3)) == [] and h.feed(ev("e2", at=MIN, risk=0.5)) == []
    contributions = {"recency_days": 0.21, "open_complaints": 0.15, "tenure": -0.05, "nps": 0.3}
    [alert] = h.feed(ev("e3", at=2 * MIN, risk=0.71, versions={"churn": "arf-7"}), contributions)
    assert alert.type == CHURN_RISK and alert.model_version == "arf-7" and alert.severity == "high"
    assert alert.evidence["top_features"] == "nps, recency_days, open_complaints"
    assert alert.evidence["contribution.nps"] == "+0.300" and "contribution.tenure" not in alert.evidence


def test_churn_risk_just_below_the_threshold_does_not_alert():
    h = Harness()
    assert [a for i, r in enumerate((0.3, 0.6, 0.69)) for a in h.feed(ev(f"e{i}", at=i * MIN, risk=r))] == []


def test_churn_risk_hysteresis_prevents_flapping():
    h = Harness(AlertConfig(cooldown_ms=0))  # hysteresis alone, no cooldown
    risks = [0.71, 0.69, 0.71, 0.69, 0.72, 0.55, 0.74]
    alerts = [a for i, r in enumerate(risks) for a in h.feed(ev(f"e{i}", at=i * HOUR_MS, risk=r))]
    assert [a.trigger_event_ids for a in alerts] == [("e0",)]
    assert types(h.feed(ev("low", at=10 * HOUR_MS, risk=0.45))) == []  # re-arms below 0.5
    assert [a.trigger_event_ids for a in h.feed(ev("again", at=11 * HOUR_MS, risk=0.75))] == [("again",)]


# -- VIP at risk -------------------------------------------------------------------------------


def vip_harness(config: AlertConfig | None = None) -> Harness:
    """50 customers with values 10..500, plus 'vip' at 2000 and 'vip2' at 1500."""
    h = Harness(config or AlertConfig(vip_min_samples=20))
    for i in range(50):
        h.feed(ev(f"p{i}", f"v{i}", at=i * MIN, type_="purchase", revenue=10.0 * (i + 1), amount=10.0 * (i + 1)))
    h.feed(ev("big", "vip", at=50 * MIN, type_="purchase", revenue=2000.0, amount=2000.0))
    h.feed(ev("big2", "vip2", at=50 * MIN, type_="purchase", revenue=1500.0, amount=1500.0))
    return h


def test_vip_complaint_is_vip_at_risk():
    h = vip_harness()
    [alert] = h.feed(ev("k", "vip", at=60 * MIN, channel="email", type_="complaint_opened", revenue=2000.0))
    assert alert.type == VIP_AT_RISK and alert.severity == "critical"
    assert float(alert.evidence["value_threshold"]) < 2000.0 and alert.evidence["case_id"] == "k"


def test_ordinary_customer_complaint_is_not_vip_at_risk():
    h = vip_harness()
    assert h.feed(ev("k", "v3", at=60 * MIN, type_="complaint_opened", revenue=40.0)) == []


def test_vip_with_rising_risk_is_vip_at_risk_and_a_small_rise_is_not():
    h = vip_harness()
    assert h.feed(ev("r1", "vip2", at=60 * MIN, risk=0.30, revenue=1500.0)) == []
    assert h.feed(ev("r2", "vip2", at=61 * MIN, risk=0.40, revenue=1500.0)) == []  # +0.10 < 0.15
    [alert] = h.feed(ev("r3", "vip2", at=62 * MIN, risk=0.60, revenue=1500.0))  # +0.20, still < 0.7
    assert alert.type == VIP_AT_RISK and alert.evidence["previous_churn_risk"] == "0.400"


def test_no_vip_alerts_before_the_value_quantile_has_warmed_up():
    h = vip_harness(AlertConfig())  # needs 100 value updates, has 52
    assert h.feed(ev("k", "vip", at=60 * MIN, type_="complaint_opened", revenue=2000.0)) == []


def test_vip_complaint_breach_is_critical():
    h = vip_harness()
    h.feed(ev("k", "vip", at=60 * MIN, channel="chat", type_="complaint_opened", case_id="k1", revenue=2000.0))
    [breach] = h.sweep(T0 + DAY_MS)
    assert breach.type == COMPLAINT_SLA_BREACH and breach.severity == "critical"


# -- channel anomaly ---------------------------------------------------------------------------


def steady(m: int) -> int:
    return (9, 10, 11, 10)[m % 4]


def traffic(channel: str, counts: dict[int, int] | None = None, minutes: range = range(70), **fields) -> list[Enriched]:
    """Per-minute events on ``channel``: ``steady`` unless ``counts`` says otherwise; one customer each."""
    events = []
    for m in minutes:
        n = (counts or {}).get(m, steady(m))
        for i in range(n):
            events.append(ev(f"{channel}-{m}-{i}", f"{channel}-c{m}-{i}", m * MIN + i * (MIN // n), channel, **fields))
    return events


def test_channel_outage_is_one_volume_anomaly():
    alerts = of(Harness().run(traffic("web", {60: 0, 61: 0})), CHANNEL_ANOMALY)
    assert len(alerts) == 1  # the second silent minute is within the cooldown
    [alert] = alerts
    assert alert.channel == "web" and alert.customer_id is None and alert.occurred_at == T0 + 60 * MIN
    assert alert.evidence["metric"] == "volume" and alert.evidence["events"] == "0" and alert.severity == "critical"
    assert "outage" in alert.recommended_action


def test_channel_dip_within_its_noise_is_not_an_anomaly():
    assert of(Harness().run(traffic("web", {60: 2})), CHANNEL_ANOMALY) == []


def test_channel_spike_is_an_anomaly_and_a_smaller_one_is_not():
    assert [a.evidence["metric"] for a in Harness().run(traffic("phone", {60: 40}))] == ["volume"]
    assert Harness().run(traffic("phone", {60: 25})) == []


def test_no_channel_anomaly_during_warm_up():
    assert Harness().run(traffic("web", {10: 0, 12: 60})) == []


def nps_traffic(drop_scores: list[int]) -> list[Enriched]:
    events = traffic("survey", {m: 10 for m in range(50)}, range(50), type_="survey_response", nps=10)
    drop = [e for e in events if e.touchpoint.occurred_at // MIN == T0 // MIN + 40]
    for e, score in zip(drop, drop_scores, strict=False):
        e.touchpoint.nps = score
    return events


def test_channel_nps_drop_is_an_anomaly():
    [alert] = of(Harness().run(nps_traffic([1] * 10)), CHANNEL_ANOMALY)
    assert alert.evidence["metric"] == "nps" and alert.evidence["value"] == "-100.000"
    assert alert.occurred_at == T0 + 40 * MIN and alert.channel == "survey"


def test_one_passive_in_a_minute_is_not_an_nps_anomaly():
    assert of(Harness().run(nps_traffic([7])), CHANNEL_ANOMALY) == []


def test_events_later_than_the_allowed_lateness_miss_their_minute():
    h = Harness()
    h.run(traffic("web", minutes=range(10)))
    h.feed(ev("late", "x", 2 * MIN, "web"))
    assert h.engine.late_events == 1


# -- idempotence and determinism ---------------------------------------------------------------


def mixed_stream() -> list[Enriched]:
    """All alert types, interleaved with channel traffic, in event time order."""
    events = traffic("web", {60: 0, 61: 0}, range(75))
    events += [
        ev("d1", "a", 5 * MIN, "survey", "survey_response", nps=2, text="rude agent"),
        ev("n1", "b", 6 * MIN, "chat", "chat_message", text="useless bot", sentiment=-0.8),
        ev("x1", "c", 7 * MIN, "web", "survey_response", ces=6),
        ev("o1", "d", 8 * MIN, "chat", "complaint_opened", case_id="K"),
        ev("r1", "e", 9 * MIN, risk=0.4),
        ev("r2", "e", 20 * MIN, risk=0.8),
        ev("o2", "f", 10 * MIN, "chat", "complaint_opened", case_id="L"),
        ev("s2", "f", 3 * HOUR_MS, "chat", "complaint_resolved", case_id="L"),
    ]
    for i in range(30):
        events.append(ev(f"p{i}", f"v{i}", i * MIN, type_="purchase", revenue=10.0 * (i + 1)))
    events.append(ev("vp", "vip", 30 * MIN, type_="purchase", revenue=5000.0))
    events.append(ev("vk", "vip", 31 * MIN, "email", "complaint_opened", revenue=5000.0))
    # Move the watermark past the chat SLA: it takes two records (one alone never moves it).
    events += [ev("tick", "z", 6 * HOUR_MS), ev("tock", "z", 6 * HOUR_MS + MIN)]
    return sorted(events, key=lambda e: e.touchpoint.occurred_at)


def records(alerts: Iterable[Alert]) -> list[dict]:
    return sorted((a.to_record(0) for a in alerts), key=lambda r: r["alert_id"])


def test_mixed_stream_raises_every_alert_type():
    alerts = Harness(AlertConfig(vip_min_samples=20)).run(mixed_stream())
    assert sorted(set(types(alerts))) == sorted(ALERT_TYPES)
    assert len({a.alert_id for a in alerts}) == len(alerts)


def test_replay_into_a_fresh_engine_gives_the_same_alerts_whatever_the_sweep_cadence():
    config = AlertConfig(vip_min_samples=20)
    first = Harness(config).run(mixed_stream(), sweep_every=1)
    second = Harness(config).run(mixed_stream(), sweep_every=37)
    assert records(first) == records(second) and len(first) > 5


@pytest.mark.parametrize("flagged", [True, False])
def test_stream_delivered_twice_yields_no_new_alert_ids(flagged):
    h = Harness(AlertConfig(vip_min_samples=20))
    first = h.run(mixed_stream())
    assert h.run(mixed_stream(), replay=flagged) == []
    assert len(first) > 5


def test_restart_from_snapshots_then_replay_of_the_tail_matches_an_uninterrupted_run():
    config = AlertConfig(vip_min_samples=20)
    stream = mixed_stream()
    uninterrupted = records(Harness(config).run(stream))

    h = Harness(config)
    cut = len(stream) // 2
    before = h.run(stream[:cut])
    engine_bytes = to_snapshot(h.engine)
    state_json = {cid: json.dumps(s.to_dict()) for cid, s in h.states.items()}

    restarted = Harness(config)
    restarted.engine = from_snapshot(engine_bytes, AlertEngine)
    restarted.states = {cid: CustomerAlertState.from_dict(json.loads(v)) for cid, v in state_json.items()}
    # The consumer resumes from an older committed offset: the last 20 records come again.
    again = restarted.run(stream[cut - 20:cut], replay=True)
    after = restarted.run(stream[cut:])
    assert again == [] and records(before + after) == uninterrupted


def enriched_via_customer_state(stream: list[tuple[Touchpoint, float | None]], states: dict[str, CustomerState]):
    """Fold touchpoints through processors.customer.apply (offsets = positions), as the worker does."""
    for offset, (tp, risk) in enumerate(stream):
        state = states.setdefault(tp.customer_id, CustomerState(tp.customer_id))
        outcome, enriched = apply(state, tp, 0, offset, tp.occurred_at)
        if outcome is Outcome.DUPLICATE:
            continue
        if risk is not None:  # what the churn model would have scored
            state.churn_risk = enriched.churn_risk = risk
        yield outcome, enriched


def three_alert_stream() -> list[tuple[Touchpoint, float | None]]:
    def tp(eid, cid, at, channel="web", type_="page_view", **kw):
        return Touchpoint(eid, cid, T0 + at, channel, type_, **kw)

    return [
        (tp("a1", "ann", 0, "survey", "survey_response", nps=8), None),  # passive: no alert
        (tp("b1", "bob", MIN, "chat", "complaint_opened", case_id="B-1"), None),
        (tp("c1", "cat", 2 * MIN, "web", "purchase", amount=50.0), 0.30),
        (tp("a2", "ann", 10 * MIN, "survey", "survey_response", nps=3, text="Never again"), None),
        (tp("d1", "dan", 11 * MIN, "phone", "complaint_opened", case_id="D-1"), None),
        (tp("c2", "cat", HOUR_MS, "web", "login"), 0.69),
        (tp("d2", "dan", 2 * HOUR_MS, "phone", "complaint_resolved", case_id="D-1"), None),  # within 24 h
        (tp("c3", "cat", 3 * HOUR_MS, "email", "email_open"), 0.74),  # crosses 0.7
        (tp("c4", "cat", 4 * HOUR_MS, "web", "login"), 0.71),  # hysteresis: no second alert
        (tp("e1", "eve", 5 * HOUR_MS, "survey", "survey_response", ces=4), None),  # not high effort
        (tp("z1", "zed", 6 * HOUR_MS, "web", "page_view"), None),  # watermark past bob's 4 h chat SLA
    ]


@pytest.mark.parametrize("sweep_every", [1, 4])
def test_crafted_stream_yields_exactly_three_alerts_even_when_delivered_twice(sweep_every):
    h = Harness()
    customer_states: dict[str, CustomerState] = {}
    alerts: list[Alert] = []
    for _delivery in range(2):
        for i, (outcome, enriched) in enumerate(enriched_via_customer_state(three_alert_stream(), customer_states), 1):
            alerts += h.feed(enriched, replay=outcome is Outcome.REPLAY)
            if i % sweep_every == 0:
                alerts += h.sweep()
        alerts += h.sweep()
    assert sorted((a.type, a.customer_id) for a in alerts) == [
        (CHURN_RISK, "cat"), (COMPLAINT_SLA_BREACH, "bob"), (DETRACTOR, "ann"),
    ]
    by_type = {a.type: a for a in alerts}
    assert by_type[DETRACTOR].trigger_event_ids == ("a2",) and by_type[CHURN_RISK].trigger_event_ids == ("c3",)
    assert by_type[COMPLAINT_SLA_BREACH].occurred_at == T0 + MIN + 4 * HOUR_MS


# -- records and state -------------------------------------------------------------------------


def test_alert_records_validate_against_the_avro_schema():
    schema = fastavro.parse_schema(schema_json("alert"))
    alerts = Harness(AlertConfig(vip_min_samples=20)).run(mixed_stream())
    assert sorted(set(types(alerts))) == sorted(ALERT_TYPES)
    encoder = RecordEncoder("alert")
    for alert in alerts:
        record = alert.to_record(emitted_at_ms=T0 + DAY_MS)
        assert fastavro.validate(record, schema, raise_errors=True)
        buffer = io.BytesIO()
        fastavro.schemaless_writer(buffer, schema, record)
        buffer.seek(0)
        back = fastavro.schemaless_reader(buffer, schema, schema)
        assert int(back.pop("occurred_at").timestamp() * 1000) == record.pop("occurred_at")
        assert int(back.pop("emitted_at").timestamp() * 1000) == record.pop("emitted_at")
        assert back == record
        assert encoder.decode(encoder.encode(alert.to_record(0)))["alert_id"] == alert.alert_id


def test_schema_enums_match_the_rules():
    fields = {f["name"]: f["type"] for f in schema_json("alert")["fields"]}
    assert tuple(fields["type"]["symbols"]) == ALERT_TYPES
    assert tuple(fields["severity"]["symbols"]) == SEVERITIES


def test_customer_alert_state_survives_a_json_changelog():
    h = Harness(AlertConfig(vip_min_samples=20))
    h.run(mixed_stream())
    for state in h.states.values():
        assert CustomerAlertState.from_dict(json.loads(json.dumps(state.to_dict()))) == state


def test_config_rejects_inverted_hysteresis():
    with pytest.raises(ValueError):
        replace(AlertConfig(), churn_rearm_below=0.8)
