"""Nothing a producer sends halts the pipeline: every poison class that once stopped every partition,
mixed into live traffic on the real broker and chDB.

Property: every good record reaches ``cem.kpi_minute`` exactly, every poison record is in
``cem.dead_letters`` with its reason, the valid-but-extreme ones are processed, and the worker keeps
committing (``/healthz`` live, nothing pending) throughout.
"""

from __future__ import annotations

import json
import urllib.request

import pytest
from conftest import expected_kpis, kpi_by_channel, now_ms, run

from pipeline.runtime.embedded import publish, publish_raw
from pipeline.views.client import received
from processors.synthetic import JourneyGenerator, poison_records
from schemas.codec import AvroCodec
from schemas.contract import DAY_MS, Reason

pytestmark = pytest.mark.integration


def avro_poisons(reference_ms: int) -> list[tuple[bytes, bytes, int, Reason]]:
    """The same classes in Avro, which carries doubles and longs the JSON checks never see."""
    codec = AvroCodec()
    base = {"channel": "web", "type": "purchase", "occurred_at": reference_ms}
    year_9999 = 253_370_764_800_000
    cases = [
        ("avro-amount-1e20", {**base, "amount": 1e20}, reference_ms, Reason.OUT_OF_RANGE),
        ("avro-amount-nan", {**base, "amount": float("nan")}, reference_ms, Reason.OUT_OF_RANGE),
        ("avro-amount-inf", {**base, "amount": float("inf")}, reference_ms, Reason.OUT_OF_RANGE),
        ("avro-year-9999", {**base, "occurred_at": year_9999}, year_9999, Reason.BAD_TIMESTAMP),
        ("avro-long-id", {**base, "session_id": "s" * 10_000}, reference_ms, Reason.TOO_LONG),
    ]
    return [(name.encode(), codec.encode({"event_id": name, "customer_id": name, **event}, "avro"), ts, reason)
            for name, event, ts, reason in cases]


def test_every_poison_class_is_dead_lettered_and_the_worker_keeps_committing(broker, start_worker):
    reference = now_ms()
    good = list(JourneyGenerator(customers=60, seed=21, start_ms=reference - 3_600_000).events(1500))
    poisons = poison_records(reference)
    avro = avro_poisons(reference)
    # A valid touchpoint decades ahead (within the contract's bounds, record timestamp to match) must
    # not switch dedupe off for its customer: a redelivery of her earlier event, with other content,
    # is still a duplicate.
    latest = good[-1]  # the victim's latest event, well inside the dedupe horizon
    victim = latest["customer_id"]
    far = {**latest, "event_id": "far-ahead", "occurred_at": reference + 70 * 365 * DAY_MS}
    redelivered = {**latest, "amount": 999.0, "type": "purchase"}
    worker = start_worker()
    run(publish(broker.bootstrap, good[:700], "avro", timestamp_from_event=True))
    run(publish_raw(broker.bootstrap, [(p.key, p.value, p.timestamp_ms) for p in poisons]))
    run(publish_raw(broker.bootstrap, [(k, v, ts) for k, v, ts, _ in avro]))
    run(publish(broker.bootstrap, good[700:] + [far], "json", timestamp_from_event=True))
    run(publish(broker.bootstrap, [redelivered], "json", timestamp_from_event=True))
    total = len(good) + len(poisons) + len(avro) + 2
    status = worker.wait_drained(total, timeout_s=120)

    totals = status["totals"]
    dead = {label.split(",")[0]: int(n) for label, n in totals["touchpoints_dead_lettered"].items() if n}
    expected_dead: dict[str, int] = {}
    for reason in [p.reason for p in poisons if p.reason] + [r for *_, r in avro]:
        expected_dead[reason.value] = expected_dead.get(reason.value, 0) + 1
    assert dead == expected_dead, "each poison record is dead-lettered with its reason, nothing else is"
    valid = [p.event for p in poisons if p.event] + good + [far]
    processed = sum(totals["touchpoints_processed"].values())
    deduplicated = sum(totals["touchpoints_deduplicated"].values())
    assert (received(status), processed, deduplicated) == (total, len(valid), 1)
    assert status["storage_rejected_rows"] == 0, "validation kept every value storable"

    assert kpi_by_channel(worker) == expected_kpis(valid)
    stored = dict(worker.query("SELECT reason, count() FROM cem.dead_letters GROUP BY reason"))
    assert stored == expected_dead
    victim_rows = worker.query(f"SELECT count() FROM cem.touchpoints_enriched WHERE customer_id = '{victim}' "
                               f"AND event_id = '{latest['event_id']}'")
    assert victim_rows == [[1]], "the redelivery after a far-future touchpoint was deduplicated"

    with urllib.request.urlopen(f"{worker.url}/healthz", timeout=5) as response:
        assert json.load(response)["status"] == "live"
    assert worker.alive()
