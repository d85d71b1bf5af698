"""At-least-once processing, exact aggregates: SIGKILL the worker mid-stream, again and again.

Property: with channel systems redelivering touchpoints in the stream, three SIGKILLs of the worker,
each after the restarted worker has consumed records itself (not during its group join), lose
nothing and double nothing: ``cem.kpi_minute`` equals the generator's ground truth, every touchpoint
is stored once, every redelivery is deduplicated; each restarted worker commits within seconds.
"""

from __future__ import annotations

import time

import pytest
from conftest import expected_kpis, kpi_by_channel, now_ms, run

from pipeline.runtime.embedded import publish
from pipeline.views.client import received, total
from processors.synthetic import JourneyGenerator

pytestmark = pytest.mark.integration

KILL_AFTER = (2500, 4000, 3000)  # records the worker of the moment has read itself before it is killed


def with_redeliveries(events: list[dict], every: int = 100, lag: int = 30) -> list[dict]:
    """The stream as channel systems send it: every ``every``-th touchpoint again ``lag`` later."""
    stream = []
    for i, event in enumerate(events):
        stream.append(event)
        if i >= lag and i % every == 0:
            stream.append(events[i - lag])
    return stream


def test_repeated_sigkills_mid_stream_lose_nothing_and_double_nothing(broker, start_worker):
    events = list(JourneyGenerator(customers=800, seed=5, start_ms=now_ms() - 6 * 3_600_000).events(24_000))
    stream = with_redeliveries(events)
    run(publish(broker.bootstrap, stream, "avro", timestamp_from_event=True))

    worker = start_worker(take_max=300)
    replays = recoveries = 0
    for n in KILL_AFTER:
        worker.wait_until(lambda st, n=n: st["committed_records"] > 0 and received(st) >= n, 120,
                          f"the worker did not read {n} records")
        worker.kill()  # SIGKILL: buffered rows, unacked records and uncommitted offsets are all lost
        killed = time.time()
        worker = start_worker(take_max=300)
        status = worker.wait_until(lambda st: st["last_committed"] is not None, 120, "the restarted worker did not commit")
        recoveries = max(recoveries, status["last_committed"] - killed)
        replays += total(status["totals"], "touchpoints_replayed") + status["skipped_replayed_rows"]

    status = worker.wait_until(
        lambda st: st["committed_records"] >= received(st) > 0 and st["pending_rows"] == 0
        and _enriched_rows(worker) >= len(events),
        180, "the last worker did not finish",
    )
    replays += total(status["totals"], "touchpoints_replayed") + status["skipped_replayed_rows"]
    assert replays > 0, "the kills must land mid-flight: a restarted worker re-read committed-but-unacked work"
    assert recoveries < 30, f"a restarted worker took {recoveries:.1f} s to its first commit"

    assert not (doubled := _doubled(worker)), f"touchpoints stored twice (event, positions): {doubled}"
    assert kpi_by_channel(worker) == expected_kpis(events)
    rows, distinct = worker.query("SELECT count(), uniqExact(customer_id, event_id) FROM cem.touchpoints_enriched")[0]
    assert rows == distinct == len(events), "no touchpoint stored twice, none lost"


def _doubled(worker) -> list[tuple]:
    return worker.query(
        "SELECT event_id, groupArray((source_partition, source_epoch, source_offset, received_at))"
        " FROM cem.touchpoints_enriched GROUP BY customer_id, event_id HAVING count() > 1 LIMIT 10"
    )


def _enriched_rows(worker) -> int:
    return worker.query("SELECT count() FROM cem.touchpoints_enriched")[0][0]
