"""Identity stitching on the real broker and chDB: one customer across channels, and under SIGKILL.

The planner-level properties (shared identifiers, junk, redeliveries, replays) are in
``tests/test_stitching.py``; here the same records cross real partitions through Kafka.
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request

import pytest
from conftest import expected_kpis, kpi_by_channel, now_ms, run

from pipeline.cli import main
from pipeline.runtime.embedded import publish
from pipeline.views.client import received, total
from processors.pseudonym import Pseudonymizer
from processors.synthetic import JourneyGenerator

pytestmark = pytest.mark.integration


def _identity(status: dict, event: str) -> int:
    return int(status["totals"].get("identity_events", {}).get(event, 0))


def test_an_anonymous_visitor_who_logs_in_buys_and_calls_is_one_customer(broker, start_worker, tmp_path):
    """Property: anonymous browsing -> identify at login -> a purchase in the app -> a call from the
    customer's phone number: one customer, whose 360° view holds the whole journey, each touchpoint
    stored once, and the stored identifiers only as pseudonyms."""
    t0 = now_ms() - 3_600_000
    worker = start_worker()

    def touch(event_id: str, minutes: int, channel: str, type_: str, **fields: object) -> dict:
        return {"event_id": f"{event_id}-{t0}", "occurred_at": t0 + minutes * 60_000, "channel": channel, "type": type_, **fields}

    def send(*events: dict) -> None:
        run(publish(broker.bootstrap, list(events), "avro", timestamp_from_event=True))

    send(touch("w1", 0, "web", "page_view", anonymous_id="cookie-9"), touch("w2", 1, "web", "add_to_cart", anonymous_id="cookie-9"))
    worker.wait_until(lambda st: total(st["totals"], "touchpoints_processed") >= 2, 60, "anonymous touchpoints not processed")
    send(touch("w3", 2, "web", "identify", customer_id="ann", anonymous_id="cookie-9", email="Ann@Shop.example.org",
               phone="+44 20 7946 0958"))
    worker.wait_until(lambda st: _identity(st, "merged") >= 3, 60, "the identify did not link its identifiers")
    send(touch("a1", 30, "mobile_app", "purchase", customer_id="ann", amount=40.0, currency="EUR"),
         touch("p1", 50, "phone", "call", phone="0044 20 7946 0958"))
    status = worker.wait_until(lambda st: total(st["totals"], "touchpoints_processed") >= 5 and st["pending_rows"] == 0,
                               60, "the journey was not processed")
    assert total(status["totals"], "touchpoints_forwarded") == 4  # w1, w2 to the cookie's home; p1 home, then to ann

    key = Pseudonymizer((tmp_path / "pseudonym.key").read_text().strip().encode())
    cookie, phone = f"anonymous_id:{key('cookie-9')}", f"phone:{key('+442079460958')}"
    rows = worker.query(f"SELECT event_id, customer_id, identified_by FROM cem.touchpoints_enriched "
                        f"WHERE event_id LIKE '%-{t0}' ORDER BY occurred_at")
    assert [tuple(r) for r in rows] == [
        (f"w1-{t0}", cookie, cookie), (f"w2-{t0}", cookie, cookie), (f"w3-{t0}", "ann", None),
        (f"a1-{t0}", "ann", None), (f"p1-{t0}", "ann", phone),
    ]
    with urllib.request.urlopen(f"{worker.url}/customers/{urllib.parse.quote('ann')}", timeout=10) as response:
        view = json.loads(response.read())
    assert view["profile"]["events_total"] == 5 and len(view["profile"]["identifiers"]) == 3
    assert {c["channel"]: c["touchpoints"] for c in view["channels"]} == {"web": 3, "mobile_app": 1, "phone": 1}
    assert [s["stage"] for s in view["journey"]][:2] == ["awareness", "consideration"], "the journey starts anonymous"
    stored = worker.query("SELECT groupArray(toString(tuple(*))) FROM cem.touchpoints_enriched")[0][0]
    assert not any(clear in str(stored) for clear in ("Ann@", "ann@shop", "7946", "cookie-9"))

    # Erased, the customer goes with the histories of its identifiers, and its next call is suppressed.
    before = kpi_by_channel(worker)
    assert main(["erase", "ann", "--bootstrap", broker.bootstrap, "--requested-by", "dpo@test"]) == 0
    worker.wait_until(lambda st: worker.query("SELECT count() FROM cem.erasure_audit")[0][0] >= 4, 60,
                      "the customer and its three identifiers were not erased")
    names = ", ".join(f"'{n}'" for n in ("ann", cookie, phone, f"email:{key('ann@shop.example.org')}"))
    for table in ("touchpoints_enriched", "customer_state"):
        assert worker.query(f"SELECT count() FROM cem.{table} WHERE customer_id IN ({names})")[0][0] == 0, table
    assert kpi_by_channel(worker) == before, "the per-minute KPIs keep their (anonymous) counts"
    send(touch("p2", 70, "phone", "call", phone="+442079460958"))
    worker.wait_until(lambda st: total(st["totals"], "touchpoints_suppressed") == 1, 30, "the next call was kept")


def test_stitching_survives_repeated_sigkills(broker, start_worker):
    """Property: with identity traffic (anonymous sessions that identify later, contact-only
    touchpoints, shared devices, junk identifiers) and workers killed mid-stream, every valid
    touchpoint is stored exactly once, the KPIs are exact, and each touchpoint is counted in exactly
    one customer's (or unlinked identifier's) state: no merge lost, none applied twice."""
    generator = JourneyGenerator(customers=300, seed=11, start_ms=now_ms() - 6 * 3_600_000, identity=0.5)
    events = list(generator.events(8_000))
    junk = {e for e, who in generator.ground_truth()["identity"]["events"].items() if who is None}
    valid = [e for e in events if e["event_id"] not in junk]
    run(publish(broker.bootstrap, events, "avro", timestamp_from_event=True))

    worker = start_worker(take_max=300)
    for n in (2_000, 5_000):
        worker.wait_until(lambda st, n=n: st["committed_records"] > 0 and received(st) >= n, 120, f"not {n} read")
        worker.kill()
        worker = start_worker(take_max=300)
    # Forwarded records keep arriving after the input is read: done when every valid touchpoint is stored.
    status = worker.wait_until(
        lambda st: st["committed_records"] >= received(st) > 0 and st["pending_rows"] == 0
        and worker.query("SELECT count() FROM cem.touchpoints_enriched")[0][0] >= len(valid),
        180, "the last worker did not finish",
    )
    assert _identity(status, "linked") > 0 and total(status["totals"], "touchpoints_forwarded") > 0

    rows, distinct = worker.query("SELECT count(), uniqExact(event_id) FROM cem.touchpoints_enriched")[0]
    doubled = worker.query(
        "SELECT event_id, groupArray((customer_id, identified_by, source_partition, source_offset, occurred_at)) "
        "FROM cem.touchpoints_enriched GROUP BY event_id HAVING count() > 1 LIMIT 5")
    assert rows == distinct, f"touchpoints stored twice: {doubled}"
    assert distinct == len(valid), "every valid touchpoint once, none lost"
    assert kpi_by_channel(worker) == expected_kpis(valid)
    counted = worker.query(
        "SELECT sum(events_total) FROM cem.customer_state FINAL WHERE customer_id NOT IN "
        "(SELECT arrayJoin(identifiers) FROM cem.customer_state FINAL)")[0][0]
    assert counted == len(valid), "each touchpoint in exactly one unmerged state (merges exactly once)"
