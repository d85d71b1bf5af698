"""End to end on the real broker and real chDB: touchpoints -> Kafka -> Faust -> ClickHouse."""

from __future__ import annotations

import json

import pytest
from conftest import expected_kpis, kpi_by_channel, now_ms, read_topic, run

from pipeline.runtime.embedded import publish, publish_raw
from pipeline.views.client import received
from processors.synthetic import DEFAULT_START_MS, JourneyGenerator, inject_bad_records
from schemas.codec import RecordEncoder
from schemas.contract import HEADER_REASON, HEADER_SOURCE_OFFSET, HEADER_STAGE, INPUT_REASONS, TOPIC_DLQ, TOPIC_ENRICHED

pytestmark = pytest.mark.integration


def test_touchpoints_flow_into_exact_kpis_with_every_rejection_dead_lettered(broker, start_worker):
    events = list(JourneyGenerator(customers=150, seed=3, start_ms=now_ms() - 3_600_000).events(3000))
    redelivered = events[100:130]  # a channel system sends each again 10 events later (within the horizon)
    first_half = [e for i, e in enumerate(events[:1500]) for e in ([e, events[i - 10]] if 110 <= i < 140 else [e])]
    bad = inject_bad_records(now_ms())
    worker = start_worker()
    run(publish(broker.bootstrap, first_half, "avro", timestamp_from_event=True))
    run(publish(broker.bootstrap, events[1500:], "json", timestamp_from_event=True))
    run(publish_raw(broker.bootstrap, [(key, value) for key, value, _ in bad], timestamp_ms=now_ms()))
    total_in = len(events) + len(redelivered) + len(bad)
    status = worker.wait_drained(total_in)

    totals = status["totals"]
    processed = sum(totals["touchpoints_processed"].values())
    dead = {label.split(",")[0]: n for label, n in totals["touchpoints_dead_lettered"].items()}
    deduplicated = sum(totals["touchpoints_deduplicated"].values())
    assert received(status) == total_in == processed + sum(dead.values()) + deduplicated
    assert (processed, deduplicated) == (len(events), len(redelivered))
    assert dead == {reason: float(sum(1 for *_, r in bad if r == reason)) for reason in {r for *_, r in bad}}
    assert set(dead) == {r.value for r in INPUT_REASONS}, "every rejection reason is exercised"

    assert kpi_by_channel(worker) == expected_kpis(events)

    stored = dict(worker.query("SELECT reason, count() FROM cem.dead_letters GROUP BY reason"))
    assert stored == {reason: int(n) for reason, n in dead.items()}
    dlq = run(read_topic(broker.bootstrap, TOPIC_DLQ))
    originals = {value for _, value, _ in bad}
    assert {r.value for r in dlq} == originals, "dead letters keep the original bytes"
    headers = [dict(r.headers) for r in dlq]
    assert {h[HEADER_REASON].decode() for h in headers} == {r.value for r in INPUT_REASONS}
    assert all(HEADER_STAGE in h and HEADER_SOURCE_OFFSET in h for h in headers)

    enriched = run(read_topic(broker.bootstrap, TOPIC_ENRICHED))
    decoded = RecordEncoder("enriched").decode(enriched[0].value)
    assert decoded["event"]["customer_id"] == enriched[0].key.decode() and decoded["events_total"] >= 1

    n_customers = worker.query("SELECT uniqExact(customer_id) FROM cem.customer_state FINAL")[0][0]
    assert n_customers == len({e["customer_id"] for e in events})


def test_kpis_need_no_wall_clock_a_second_worker_on_the_same_input_agrees(broker, start_worker):
    """Event time only: processing the same stream later gives identical per-minute rows."""
    events = list(JourneyGenerator(customers=40, seed=11, start_ms=DEFAULT_START_MS).events(600))
    run(publish(broker.bootstrap, events, "avro", timestamp_from_event=True))
    worker = start_worker()
    worker.wait_drained(len(events))
    sql = "SELECT minute, channel, sum(events), sum(nps_responses), sum(revenue) FROM cem.kpi_minute GROUP BY minute, channel ORDER BY minute, channel"
    first = worker.query(sql)
    worker.kill()
    # a fresh app id = a new consumer group and new state: a full replay into a second database
    second = start_worker(app_id="cem-replay", clickhouse_database="cem_replay")
    second.wait_drained(len(events))
    assert second.query(sql.replace("cem.kpi_minute", "cem_replay.kpi_minute")) == first
    assert json.dumps(first)  # rows are plain JSON values
