"""The synthetic journey generator: deterministic, valid, ordered, realistic enough, and fast."""

from __future__ import annotations

import json
import time
from collections import Counter
from decimal import Decimal

import pytest

from processors.customer import CustomerState
from processors.ingest import Ingestor, Kind, SourceRecord
from processors.synthetic import (
    DAY_MS,
    DEFAULT_START_MS,
    KPI_COLUMNS,
    JourneyGenerator,
    inject_bad_records,
    kpi_totals,
    write_jsonl,
)
from processors.touchpoint import validate
from schemas.codec import AvroCodec
from schemas.contract import CHANNELS, INPUT_REASONS, TOUCHPOINT_TYPES

TERMINAL = ("subscription_cancelled", "account_closed")


@pytest.fixture(scope="module")
def run() -> tuple[JourneyGenerator, list[dict]]:
    """One mid-size run shared by the read-only tests: ~45 simulated days, every churner churned."""
    gen = JourneyGenerator(customers=300, seed=11, label_text=True)
    return gen, list(gen.events(40_000))


def _dump(events) -> bytes:
    return "\n".join(json.dumps(e, ensure_ascii=False, separators=(",", ":")) for e in events).encode()


# -- determinism ---------------------------------------------------------------------------------

def test_same_seed_gives_byte_identical_output():
    a = JourneyGenerator(customers=50, seed=5).events(3000)
    b = JourneyGenerator(customers=50, seed=5).events(3000)
    assert _dump(a) == _dump(b)
    assert list(JourneyGenerator(customers=50, seed=5).profiles()) == list(JourneyGenerator(customers=50, seed=5).profiles())


def test_different_seed_gives_different_output():
    a = _dump(JourneyGenerator(customers=50, seed=5).events(500))
    b = _dump(JourneyGenerator(customers=50, seed=6).events(500))
    assert a != b


def test_generation_continues_across_calls():
    whole = list(JourneyGenerator(customers=30, seed=2).events(1000))
    gen = JourneyGenerator(customers=30, seed=2)
    parts = list(gen.events(400)) + list(gen.events(600))
    assert _dump(parts) == _dump(whole)
    assert gen.ground_truth()["events"] == 1000


def test_write_jsonl_round_trips(tmp_path):
    events = list(JourneyGenerator(customers=10, seed=4).events(200))
    path = tmp_path / "events.jsonl"
    assert write_jsonl(path, events) == 200
    assert [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] == events


# -- contract and ordering -------------------------------------------------------------------------

def test_every_event_validates_and_ids_are_unique(run):
    _, events = run
    for e in events:
        validate(e, reference_ms=e["occurred_at"])
    assert len({e["event_id"] for e in events}) == len(events)
    assert events[0]["event_id"] == "11-0" and events[-1]["event_id"] == f"11-{len(events) - 1}"
    assert all(e["customer_id"].startswith("cust-") and len(e["customer_id"]) == 11 for e in events)


def test_event_time_is_non_decreasing(run):
    _, events = run
    times = [e["occurred_at"] for e in events]
    assert times == sorted(times)
    assert times[0] >= DEFAULT_START_MS


def test_the_mix_is_multi_channel(run):
    _, events = run
    channels = Counter(e["channel"] for e in events)
    types = Counter(e["type"] for e in events)
    assert set(channels) <= set(CHANNELS) and len(channels) >= 9
    assert set(types) <= set(TOUCHPOINT_TYPES)
    for needed in ("page_view", "search", "add_to_cart", "purchase", "refund", "login", "complaint_opened",
                   "complaint_resolved", "survey_response", "feedback", "chat_message", "call", "email_open",
                   "email_click", "subscription_cancelled", "account_closed"):
        assert types[needed] > 0, needed
    purchases = [e for e in events if e["type"] == "purchase"]
    assert all(e["currency"] == "EUR" and round(e["amount"], 2) == e["amount"] > 0 for e in purchases)
    assert any(e["channel"] == "in_store" for e in purchases)


def test_sessions_sometimes_switch_channel(run):
    _, events = run
    channels_by_session: dict[str, set[str]] = {}
    for e in events:
        if "session_id" in e:
            channels_by_session.setdefault(e["session_id"], set()).add(e["channel"])
    switched = sum(len(v) > 1 for v in channels_by_session.values())
    assert 0 < switched < 0.2 * len(channels_by_session)


def test_surveys_carry_scores_and_mostly_text(run):
    _, events = run
    surveys = [e for e in events if e["type"] == "survey_response"]
    assert surveys and all(e["channel"] in ("survey", "email") for e in surveys)
    assert all(any(k in e for k in ("nps", "csat", "ces")) for e in surveys)
    with_text = sum("text" in e for e in surveys) / len(surveys)
    assert 0.6 < with_text < 0.9
    # Comments agree with scores (label_text tells which tone a comment was written in).
    promoters = Counter(e["attributes"]["synthetic_tone"] for e in surveys if e.get("nps", -1) >= 9 and "text" in e)
    detractors = Counter(e["attributes"]["synthetic_tone"] for e in surveys if e.get("nps", 99) <= 4 and "text" in e)
    assert promoters["negative"] < 0.05 * sum(promoters.values()) and promoters["positive"] > promoters["neutral"]
    assert detractors["negative"] > 0.7 * sum(detractors.values())
    assert detractors["positive"] < 0.07 * sum(detractors.values())  # mixed answers (NPS 4, CSAT 5) happen


def test_texts_are_varied_and_labelled_when_asked(run):
    _, events = run
    texts = [e for e in events if "text" in e and e["type"] in ("feedback", "survey_response", "chat_message")]
    assert len({e["text"] for e in texts}) > 150
    assert all(e["attributes"]["synthetic_tone"] in ("positive", "neutral", "negative")
               for e in texts if "attributes" in e and e["type"] == "feedback")
    joined = " ".join(e["text"] for e in texts)
    for phrase in ("Never again", "Not happy", "Wasn't bad"):
        assert phrase in joined, phrase
    unlabelled = JourneyGenerator(customers=20, seed=11).events(2000)
    assert not any("synthetic_tone" in e.get("attributes", {}) for e in unlabelled)


def test_complaints_are_resolved_with_their_case_id_some_late_some_never(run):
    gen, events = run
    opened = {e["case_id"]: e for e in events if e["type"] == "complaint_opened"}
    resolved = [e for e in events if e["type"] == "complaint_resolved"]
    assert opened and all(e["channel"] in ("phone", "chat", "email") for e in opened.values())
    assert all(e["case_id"] in opened for e in resolved)
    assert all(e["occurred_at"] > opened[e["case_id"]]["occurred_at"] for e in resolved)
    cases = gen.ground_truth()["cases"]
    assert set(cases) == set(opened)
    assert any(c["resolved_at"] is None for c in cases.values())  # never resolved (so far)
    sla_h = {"chat": 4, "phone": 24, "email": 48}
    late = [c for c in cases.values() if c["resolved_at"] and (c["resolved_at"] - c["opened_at"]) / 3.6e6 > sla_h[c["channel"]]]
    assert 0 < len(late) < 0.5 * len(cases)


# -- churn ---------------------------------------------------------------------------------------

def test_churners_end_with_cancellation_and_then_stay_silent(run):
    gen, events = run
    truth = gen.ground_truth()
    churned = truth["churned"]
    assert len(truth["churners"]) == 45  # round(300 * 0.15)
    assert set(churned) == set(truth["churners"])  # 45 days is past every planned churn
    last: dict[str, dict] = {}
    for e in events:
        if e["type"] in TERMINAL:
            assert e["customer_id"] in churned and e["occurred_at"] == churned[e["customer_id"]]
        last[e["customer_id"]] = e
    for cid, at in churned.items():
        assert last[cid]["type"] in TERMINAL and last[cid]["occurred_at"] == at
    assert sum(e["type"] in TERMINAL for e in events) == len(churned)


def test_churners_complain_more_and_score_lower(run):
    gen, events = run
    churners = set(gen.ground_truth()["churners"])
    stats = {True: Counter(), False: Counter()}
    for e in events:
        s = stats[e["customer_id"] in churners]
        s["events"] += 1
        s["complaints"] += e["type"] == "complaint_opened"
        if "nps" in e:
            s["nps_n"] += 1
            s["nps_sum"] += e["nps"]
            s["detractors"] += e["nps"] <= 6
    churn, other = stats[True], stats[False]
    # Per event, because churners are around for fewer days than everyone else.
    assert churn["complaints"] / churn["events"] > 1.5 * other["complaints"] / other["events"]
    assert churn["nps_sum"] / churn["nps_n"] < other["nps_sum"] / other["nps_n"]
    assert churn["detractors"] / churn["nps_n"] > other["detractors"] / other["nps_n"]
    sat = gen.ground_truth()["satisfaction"]
    assert sat["churners_mean"] < sat["non_churners_mean"]


def test_churner_engagement_falls_before_churn(run):
    gen, events = run
    # Late churners only, so their first week is before the decline starts (at most 14 days before).
    late = {cid: at for cid, at in gen.ground_truth()["churned"].items() if at - DEFAULT_START_MS >= 21 * DAY_MS}
    assert len(late) >= 5
    first_week = sum(e["customer_id"] in late and e["occurred_at"] < DEFAULT_START_MS + 7 * DAY_MS for e in events)
    last_week = sum(
        e["customer_id"] in late and late[e["customer_id"]] - 7 * DAY_MS <= e["occurred_at"] < late[e["customer_id"]]
        for e in events
    )
    assert last_week < 0.75 * first_week


def test_no_churn_means_nobody_leaves():
    gen = JourneyGenerator(customers=40, seed=3, churn_rate=0.0)
    events = list(gen.events(5000))
    assert not any(e["type"] in TERMINAL for e in events)
    assert gen.ground_truth()["churned"] == {}


def test_profiles_are_string_maps_for_every_customer():
    profiles = list(JourneyGenerator(customers=25, seed=1).profiles())
    assert [p["customer_id"] for p in profiles] == [f"cust-{i:06d}" for i in range(25)]
    for p in profiles:
        assert {"plan", "tenure_months", "region", "age_band"} <= set(p["attributes"])
        assert all(isinstance(v, str) for v in p["attributes"].values())


# -- KPI ground truth ----------------------------------------------------------------------------

def test_kpi_totals_matches_a_hand_count():
    events = [
        {"channel": "web", "type": "purchase", "amount": 19.99},
        {"channel": "web", "type": "purchase", "amount": 0.01},
        {"channel": "web", "type": "refund", "amount": 5.5},
        {"channel": "web", "type": "page_view"},
        {"channel": "survey", "type": "survey_response", "nps": 9, "csat": 4, "ces": 2},
        {"channel": "survey", "type": "survey_response", "nps": 6, "csat": 3},
        {"channel": "survey", "type": "survey_response", "nps": 7, "ces": 7},
        {"channel": "phone", "type": "complaint_opened", "case_id": "c1"},
        {"channel": "phone", "type": "complaint_resolved", "case_id": "c1", "csat": 5},
    ]
    totals = kpi_totals(events)
    assert list(totals) == ["phone", "survey", "web"]
    assert totals["web"] == {**dict.fromkeys(KPI_COLUMNS, 0), "events": 4, "revenue": 14.5, "refunds": 5.5}
    assert totals["survey"] == {**dict.fromkeys(KPI_COLUMNS, 0), "events": 3, "revenue": 0.0, "refunds": 0.0,
                                "csat_responses": 2, "csat_satisfied": 1, "nps_responses": 3, "promoters": 1,
                                "detractors": 1, "ces_responses": 2, "ces_sum": 9}
    assert totals["phone"] == {**dict.fromkeys(KPI_COLUMNS, 0), "events": 2, "revenue": 0.0, "refunds": 0.0,
                               "csat_responses": 1, "csat_satisfied": 1, "complaints_opened": 1,
                               "complaints_resolved": 1}
    assert kpi_totals(events, exact=True)["web"]["revenue"] == Decimal("14.50")


def test_money_sums_are_exact():
    events = [{"channel": "web", "type": "purchase", "amount": 0.1}] * 10 + [{"channel": "web", "type": "refund", "amount": 0.3}]
    assert kpi_totals(events, exact=True)["web"]["revenue"] == Decimal("0.7")  # floats would give 0.6999999999999998


def test_ground_truth_matches_kpi_totals_of_the_emitted_events(run):
    gen, events = run
    assert gen.ground_truth()["kpi"] == kpi_totals(events)


# -- bad records ---------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2, 7, 42])
def test_bad_records_cover_every_reason_and_are_rejected_with_it(seed):
    ingest = Ingestor(AvroCodec())
    states: dict[str, CustomerState] = {}
    records = inject_bad_records(DEFAULT_START_MS, seed=seed)
    assert sorted(r for _, _, r in records) == sorted(reason.value for reason in INPUT_REASONS)
    for offset, (key, value, expected) in enumerate(records):
        assert isinstance(value, bytes) and (key is None or isinstance(key, bytes))
        source = SourceRecord("cem.touchpoints", 0, offset, DEFAULT_START_MS, key, value)
        result = ingest.handle(source, lambda cid: states.setdefault(cid, CustomerState(cid)))
        assert result.kind is Kind.DEAD_LETTER, expected
        assert result.dead_letter.reason.value == expected
    assert states == {}  # nothing bad reached customer state


def test_bad_records_follow_the_reference_time():
    reference = DEFAULT_START_MS + 300 * 24 * 3_600_000  # e.g. "now" on a live broker
    ingest = Ingestor(AvroCodec())
    for offset, (key, value, expected) in enumerate(inject_bad_records(reference, seed=3)):
        result = ingest.handle(SourceRecord("cem.touchpoints", 0, offset, reference, key, value), CustomerState)
        assert result.dead_letter is not None and result.dead_letter.reason.value == expected


def test_generated_events_pass_the_ingestor_in_every_wire_format():
    ingest, codec = Ingestor(AvroCodec()), AvroCodec()
    states: dict[str, CustomerState] = {}
    events = list(JourneyGenerator(customers=20, seed=9).events(600))
    for offset, e in enumerate(events):
        value = codec.encode(e, ("avro", "confluent", "json")[offset % 3])
        source = SourceRecord("cem.touchpoints", 0, offset, e["occurred_at"], e["customer_id"].encode(), value)
        assert ingest.handle(source, lambda cid: states.setdefault(cid, CustomerState(cid))).kind is Kind.PROCESSED


# -- speed ---------------------------------------------------------------------------------------

def test_generation_is_fast_enough():
    gen = JourneyGenerator(customers=1000, seed=0)
    start = time.perf_counter()
    count = sum(1 for _ in gen.events(50_000))
    rate = count / (time.perf_counter() - start)
    # The target is >= 50k/s on a developer machine; the test only guards against gross regressions
    # (shared CI runners are slow and noisy).
    assert rate > 20_000, f"{rate:.0f} events/s"
