"""At-least-once processing, exact aggregates: SIGKILL the worker mid-stream, restart, compare."""

from __future__ import annotations

import pytest

from conftest import expected_kpis, kpi_by_channel, now_ms, run
from pipeline.runtime.embedded import publish
from pipeline.views.client import received
from processors.synthetic import JourneyGenerator

pytestmark = pytest.mark.integration


def test_sigkill_mid_stream_and_restart_gives_exact_aggregates(broker, start_worker):
    events = list(JourneyGenerator(customers=800, seed=5, start_ms=now_ms() - 6 * 3_600_000).events(24_000))
    # channel systems redeliver 200 events shortly after the originals (well within the 24 h horizon)
    stream = [e for i, e in enumerate(events) for e in ([e, events[i - 30]] if 5030 <= i < 5230 else [e])]
    run(publish(broker.bootstrap, stream, "avro", timestamp_from_event=True))

    first = start_worker(take_max=300)
    first.wait_until(lambda st: st["committed_records"] >= 6000, 120, "the first worker did not commit 6000 records")
    first.kill()  # SIGKILL: buffered rows, unacked records and uncommitted offsets are all lost

    second = start_worker()
    expected_valid = len(events)
    # Everything read was committed (pending_rows counts in-flight inserts too), and every touchpoint is in.
    second.wait_until(
        lambda st: st["committed_records"] >= received(st) > 0 and st["pending_rows"] == 0
        and _enriched_rows(second) >= expected_valid,
        180, "the restarted worker did not finish",
    )
    status = second.status()
    replays = sum(status["totals"].get("touchpoints_replayed", {}).values()) + status["skipped_replayed_rows"]
    assert replays > 0, "the kill must land mid-flight: the restarted worker re-read committed-but-unacked work"

    assert kpi_by_channel(second) == expected_kpis(events)
    rows, distinct = second.query("SELECT count(), uniqExact(customer_id, event_id) FROM cem.touchpoints_enriched")[0]
    assert rows == distinct == expected_valid, "no touchpoint stored twice"


def _enriched_rows(worker) -> int:
    return worker.query("SELECT count() FROM cem.touchpoints_enriched")[0][0]
