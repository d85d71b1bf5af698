"""Alerts end to end on the real broker and chDB: crafted streams, their near misses, redelivery, replay.

The expected alerts are derived twice: by intent (which customer should alert, which near miss must
not) and by running the same records through the processors in-process (the worker's own steps);
the worker's ``cem.alerts`` must match both.
"""

from __future__ import annotations

import orjson
import pytest
from conftest import read_topic, run

from pipeline.runtime.embedded import publish
from processors.alerts import AlertConfig, AlertEngine
from processors.customer import CustomerState
from processors.ingest import Ingestor, Kind, SourceRecord
from processors.scoring import TouchpointScoring, TrainingBatch
from processors.synthetic import DEFAULT_START_MS as T0  # 2026-01-01T00:00:00Z
from processors.synthetic import JourneyGenerator
from schemas.codec import AvroCodec, RecordEncoder
from schemas.contract import MODEL_CHURN, MODEL_SENTIMENT, TOPIC_ALERTS, TOPIC_TOUCHPOINTS

pytestmark = pytest.mark.integration

MIN = 60_000
HOUR = 60 * MIN
# The churn threshold suits the cold-start prior (processors.churn.prior_risk): six open
# complaints cross 0.55 at the fourth (~0.63); three do not (~0.40), nor does a detractor's angry comment (~0.17).
# VIP needs 20 customers' values, not 100, in a short stream.
RULES = "churn_threshold=0.55,churn_rearm_below=0.35,vip_min_samples=20"


def tp(eid: str, cid: str, at: int, channel: str = "web", type_: str = "page_view", **fields) -> dict:
    return {"event_id": eid, "customer_id": cid, "occurred_at": T0 + at, "channel": channel, "type": type_, **fields}


def three_alert_stream() -> list[dict]:
    """One detractor, one complaint left open past its SLA, one customer whose risk crosses the threshold;
    and a near miss of each: a passive, a complaint resolved in time, a customer with three complaints."""
    events = [
        tp("a1", "ann", 0, "survey", "survey_response", nps=8),  # passive
        tp("a2", "ann", 10 * MIN, "survey", "survey_response", nps=3, text="Never again"),
        tp("b1", "bob", MIN, "chat", "complaint_opened", case_id="B-1"),  # 4 h chat SLA, never resolved
        tp("d1", "dan", 11 * MIN, "phone", "complaint_opened", case_id="D-1"),
        tp("d2", "dan", 2 * HOUR, "phone", "complaint_resolved", case_id="D-1"),  # within its 24 h
        tp("c0", "cat", 0, "web", "purchase", amount=5.0, currency="EUR"),  # small: never a VIP
        tp("y0", "cy", 0, "web", "purchase", amount=5.0, currency="EUR"),
    ]
    for cid, n in (("cat", 6), ("cy", 3)):
        for i in range(n):
            channel = ("web", "email")[i % 2]  # 72 h and 48 h SLAs: all resolved in time
            events.append(tp(f"{cid}-open{i}", cid, HOUR + i * MIN, channel, "complaint_opened", case_id=f"{cid}-{i}"))
            events.append(tp(f"{cid}-done{i}", cid, 3 * HOUR + i * MIN, channel, "complaint_resolved", case_id=f"{cid}-{i}"))
    # Move the watermark past bob's deadline (two records: one alone never moves it). Everything stays
    # within the 24 h dedupe horizon, so the second delivery is all duplicates.
    events += [tp("z1", "zed", 6 * HOUR), tp("z2", "zed", 6 * HOUR + MIN)]
    return sorted(events, key=lambda e: e["occurred_at"])


def every_type_stream() -> list[dict]:
    """Each alert type once, beside its near miss (named *_near); channel traffic for the anomaly."""
    events = three_alert_stream()
    events += [
        tp("n1", "nat", 20 * MIN, "chat", "chat_message", text="Useless, awful service, I am furious"),
        tp("n2", "nat_near", 20 * MIN, "chat", "chat_message", text="The parcel arrived on Tuesday"),
        tp("e1", "eve", 21 * MIN, "web", "survey_response", ces=6),
        tp("e2", "eve_near", 21 * MIN, "web", "survey_response", ces=4),
    ]
    for i in range(25):  # customer values for the top-decile estimate
        events.append(tp(f"p{i}", f"buyer{i}", i * MIN, "web", "purchase", amount=10.0 * (i + 1), currency="EUR"))
    events += [
        tp("v1", "vip", 30 * MIN, "web", "purchase", amount=5000.0, currency="EUR"),
        tp("v2", "vip", 31 * MIN, "email", "complaint_opened", case_id="V-1"),
        tp("v3", "vip", 40 * MIN, "email", "complaint_resolved", case_id="V-1"),
        tp("w1", "vip_near", 31 * MIN, "email", "complaint_opened", case_id="W-1"),  # an ordinary customer
        tp("w2", "vip_near", 40 * MIN, "email", "complaint_resolved", case_id="W-1"),
    ]
    # social: 6 events a minute for 40 minutes, then 60 in one minute (a spike); sms: 6, then 9 (noise).
    for channel, last in (("social", 60), ("sms", 9)):
        for minute in range(41):
            for k in range(last if minute == 40 else 6):
                events.append(tp(f"{channel}-{minute}-{k}", f"{channel}-fan{k}", minute * MIN + k * 500, channel, "other"))
    return sorted(events, key=lambda e: e["occurred_at"])


def in_process_alerts(events: list[dict]) -> list[dict]:
    """The same records through the worker's processors, in-process (batches of 50, as a worker might)."""
    ingest, states = Ingestor(AvroCodec()), {}
    scoring = TouchpointScoring(alerts=AlertEngine(AlertConfig.from_spec(RULES)))
    alerts = []
    for offset, event in enumerate(events):
        record = SourceRecord(TOPIC_TOUCHPOINTS, 0, offset, event["occurred_at"], event["customer_id"].encode(), orjson.dumps(event))
        result = ingest.handle(record, lambda cid: states.setdefault(cid, CustomerState(cid)))
        assert result.kind is Kind.PROCESSED
        alerts += scoring.score(result.enriched, result.state, True, TrainingBatch())
        if offset % 50 == 49:
            alerts += scoring.sweep(states.get)
    alerts += scoring.sweep(states.get)
    return [a.to_record() for a in alerts]


async def read_alerts(bootstrap: str) -> list[dict]:
    """Every record on cem.alerts, decoded (the worker acks input only after its alerts are durable)."""
    decoder = RecordEncoder("alert")
    return [decoder.decode(r.value) for r in await read_topic(bootstrap, TOPIC_ALERTS)]


def summary(records: list[dict]) -> list[tuple[str, str]]:
    return sorted((r["type"], r["customer_id"] or r["channel"]) for r in records)


def test_the_crafted_stream_yields_exactly_three_alerts_once_each_through_delivery_twice_and_a_replay(broker, start_worker):
    events = three_alert_stream()
    expected = [("churn_risk", "cat"), ("complaint_sla_breach", "bob"), ("detractor", "ann")]
    assert summary(in_process_alerts(events)) == expected
    # No offset commit during the test: the SIGKILL at the end makes the next worker replay everything.
    worker = start_worker(alert_rules=RULES, commit_interval_s=3600.0)
    for delivery in (1, 2):  # the whole stream, then all of it again (the channel system retries)
        run(publish(broker.bootstrap, events, "avro", timestamp_from_event=True))
        status = worker.wait_drained(delivery * len(events))
        assert summary(run(read_alerts(broker.bootstrap))) == expected
    assert sum(status["totals"]["touchpoints_deduplicated"].values()) == len(events) and sum(status["totals"]["alerts"].values()) == 3
    by_type = {r["type"]: r for r in run(read_alerts(broker.bootstrap))}
    assert by_type["detractor"]["trigger_event_ids"] == ["a2"] and "Never again" in by_type["detractor"]["reason"]
    assert by_type["complaint_sla_breach"]["occurred_at"] == T0 + MIN + 4 * HOUR
    churn = by_type["churn_risk"]
    assert churn["trigger_event_ids"] == ["cat-open3"] and churn["model_version"].startswith("churn-v1")
    assert "open_complaints" in churn["evidence"]["top_features"] and float(churn["evidence"]["churn_risk"]) >= 0.55
    assert [tuple(r) for r in worker.query("SELECT type, customer_id FROM cem.alerts FINAL ORDER BY 1, 2")] == expected

    # Replay: a crash before any commit; the next worker re-reads from offset 0 with the recovered
    # state: no new alert ids. (Records whose state update Faust does not recover are applied again
    # as new: Tansu's ListOffsets ends Faust's changelog recovery at the last batch's first record.
    # Either way the alerts they trigger carry the same ids.)
    before = run(read_alerts(broker.bootstrap))
    ids = sorted(r["alert_id"] for r in before)
    worker.kill()
    again = start_worker(alert_rules=RULES, commit_interval_s=3600.0)
    status = again.wait_drained(2 * len(events))
    totals = status["totals"]
    replayed = sum(totals.get("touchpoints_replayed", {}).values()) + sum(totals.get("touchpoints_processed", {}).values())
    assert replayed == len(events) and sum(totals["touchpoints_deduplicated"].values()) == len(events)
    after = run(read_alerts(broker.bootstrap))
    assert sorted({r["alert_id"] for r in after}) == ids, [(r["type"], r["customer_id"], r["trigger_event_ids"], r["reason"]) for r in after]
    assert [tuple(r) for r in again.query("SELECT type, customer_id FROM cem.alerts FINAL ORDER BY 1, 2")] == expected


def test_every_alert_type_fires_on_its_crafted_stream_and_not_on_its_near_miss(broker, start_worker):
    events = every_type_stream()
    expected = in_process_alerts(events)
    fired = {(r["type"], r["customer_id"] or r["channel"]) for r in expected}
    assert fired == {
        ("detractor", "ann"), ("complaint_sla_breach", "bob"), ("churn_risk", "cat"), ("negative_feedback", "nat"),
        ("high_effort", "eve"), ("vip_at_risk", "vip"), ("channel_anomaly", "social"),
    }, "the crafted stream no longer tests what it says (near misses must stay silent)"
    worker = start_worker(alert_rules=RULES)
    run(publish(broker.bootstrap, events, "avro", timestamp_from_event=True))
    worker.wait_drained(len(events))
    live = run(read_alerts(broker.bootstrap))
    wanted = {r["alert_id"] for r in expected}
    got = {r["alert_id"] for r in live}
    extra = [(r["type"], r["customer_id"], r["channel"], r["reason"]) for r in live if r["alert_id"] not in wanted]
    extra += [("missing", r["type"], r["customer_id"], r["channel"], r["reason"]) for r in expected if r["alert_id"] not in got]
    assert sorted(r["alert_id"] for r in live) == sorted(r["alert_id"] for r in expected), extra
    assert all(r["reason"] and r["recommended_action"] and r["emitted_at"] > 0 for r in live)


def test_models_learn_while_running_and_a_restarted_worker_resumes_from_the_last_snapshot(broker, start_worker):
    journeys = JourneyGenerator(customers=200, seed=5, start_ms=T0, churn_within_days=6)
    events = list(journeys.events(6000))
    # A 2-day churn horizon so that labels arrive within a short stream.
    settings = dict(model_publish_interval_s=0.5, churn_horizon_s=2 * 86400.0)
    worker = start_worker(**settings)
    run(publish(broker.bootstrap, events, "avro", timestamp_from_event=True))
    worker.wait_drained(len(events))
    status = worker.wait_until(
        lambda st: st["models"]["trained_through"] is not None and st["models"]["snapshots_loaded"] >= 2
        and st["models"]["churn"] != "churn-v1+0",
        60, "no churn labels learned or no snapshot loaded",
    )
    learned = status["models"]
    assert learned["sentiment"] != "sentiment-v1+0"
    quality = "SELECT model, max(version), argMax(value, version) FROM cem.model_metrics WHERE metric IN ('roc_auc', 'macro_f1') GROUP BY model ORDER BY model"
    # The scorers swap models when the publish is on cem.models; its metric rows reach ClickHouse with the next flush.
    worker.wait_until(lambda _: len(worker.query(quality)) == 2, 30, "no model_metrics rows for both models", interval_s=0.2)
    rows = worker.query(quality)
    assert [r[0] for r in rows] == [MODEL_CHURN, MODEL_SENTIMENT] and all(0.0 <= float(r[2]) <= 1.0 for r in rows)  # a short stream: present and sane, not good
    risk = worker.query("SELECT countIf(churn_risk IS NOT NULL), uniqExact(round(churn_risk, 3)) FROM cem.touchpoints_enriched")
    assert risk[0][0] > 1000 and risk[0][1] > 50  # every customer scored, and the scores move
    worker.stop()  # publishes a last snapshot
    published = run(last_snapshots(broker.bootstrap))
    assert published["churn"].n_labels >= int(learned["churn"].split("+")[1]) > 0
    again = start_worker(**settings)
    resumed = again.wait_until(lambda st: st["started"], 30, "the restarted worker did not start")["models"]
    assert resumed["churn"] == published["churn"].version and resumed["sentiment"] == published["sentiment"].version


async def last_snapshots(bootstrap: str) -> dict:
    """The latest model per key on cem.models, as a restarted worker would load it."""
    from pipeline.app.models import ModelFeed

    loaded: dict = {}
    feed = ModelFeed(bootstrap, loaded.__setitem__)
    await feed.start()
    await feed.stop()
    return loaded


def test_channel_detectors_survive_a_worker_restart(broker, start_worker):
    """Channel anomaly detectors need 30 closed minutes to learn what is normal. A worker stopped at
    minute 35 and restarted must resume them from its last flush (the alert engine is checkpointed
    on cem.models), or the spike at minute 40 would pass unnoticed by a detector still warming up."""
    social = [tp(f"s-{minute}-{k}", f"fan{k}", minute * MIN + k * 500, "social", "other")
              for minute in range(41) for k in range(60 if minute == 40 else 6)]
    before = [e for e in social if e["occurred_at"] < T0 + 35 * MIN]
    # Two later records close minute 40 (the watermark is each partition's second-latest event time).
    after = [e for e in social if e["occurred_at"] >= T0 + 35 * MIN] + [tp("late", "zed", 3 * HOUR), tp("later", "zed", 3 * HOUR + MIN)]
    expected = [r for r in in_process_alerts(before + after) if r["type"] == "channel_anomaly"]
    assert [(r["channel"], r["evidence"]["metric"]) for r in expected] == [("social", "volume")]

    worker = start_worker(alert_rules=RULES)
    run(publish(broker.bootstrap, before, "avro", timestamp_from_event=True))
    worker.wait_drained(len(before))
    assert not run(read_alerts(broker.bootstrap))
    worker.stop()  # a deploy: flush, commit, leave
    again = start_worker(alert_rules=RULES)
    run(publish(broker.bootstrap, after, "avro", timestamp_from_event=True))
    again.wait_drained(len(after))
    live = run(read_alerts(broker.bootstrap))
    assert [r["alert_id"] for r in live] == [r["alert_id"] for r in expected], [(r["type"], r["reason"]) for r in live]
