"""The 360° view of one customer (``GET /customers/ID``, ``cem customer ID``), on the real broker and chDB.

Property: the view of a customer is that customer's touchpoints and nothing else, counted exactly
(per channel, per journey stage, the latest ones in order), with the state the pipeline keeps; an
unknown customer is "not found", and a bad id is refused, never run.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter

import pytest
from conftest import now_ms, run

from pipeline.cli import main
from pipeline.runtime.embedded import publish
from pipeline.views.customer import TIMELINE_ROWS, customer_view, render_view
from processors.synthetic import JourneyGenerator


def get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.mark.integration
def test_the_view_of_a_customer_is_exactly_their_touchpoints(broker, start_worker, tmp_path, capsys):
    events = list(JourneyGenerator(customers=30, seed=5, start_ms=now_ms() - 86_400_000).events(900))
    worker = start_worker()
    run(publish(broker.bootstrap, events, "avro", timestamp_from_event=True))
    worker.wait_drained(len(events))
    worker.wait_until(lambda st: st["pending_rows"] == 0, 30, "rows not written")

    cid, n = Counter(e["customer_id"] for e in events).most_common(1)[0]
    mine = [e for e in events if e["customer_id"] == cid]
    code, view = get(f"{worker.url}/customers/{urllib.parse.quote(cid)}")
    assert code == 200 and view["found"] and view["customer_id"] == cid
    assert {c["channel"]: c["touchpoints"] for c in view["channels"]} == Counter(e["channel"] for e in mine)
    assert sum(s["touchpoints"] for s in view["journey"]) == n
    assert view["profile"]["events_total"] == n
    assert view["rfm"]["frequency"] == sum(e["type"] == "purchase" for e in mine)
    churn = view["churn"]  # from the state this worker holds, by its current model
    assert 0.0 <= churn["risk"] <= 1.0 and churn["as_of"] == max(e["occurred_at"] for e in mine)
    weights = [abs(d["contribution"]) for d in churn["drivers"]]
    # At most five: the prior model leaves out the features that add nothing for this customer.
    assert 1 <= len(weights) <= 5 and weights == sorted(weights, reverse=True), churn
    latest = sorted(mine, key=lambda e: (e["occurred_at"], e["event_id"]), reverse=True)[:TIMELINE_ROWS]
    assert [t["event_id"] for t in view["timeline"]] == [e["event_id"] for e in latest], "newest first, ties by id"

    # The CLI reads through the running worker (it holds the engine) and prints the same view.
    assert main(["customer", cid, "--data-dir", str(tmp_path), "--format", "json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    for each in (printed, view):
        each["rfm"].pop("recency_days")  # against the wall clock, which moved
    assert printed == view
    assert main(["customer", cid, "--data-dir", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert f"customer {cid}" in text and "channels" in text and "timeline" in text and "drivers: " in text

    code, unknown = get(f"{worker.url}/customers/nobody-{now_ms()}")
    assert code == 200 and not unknown["found"] and unknown["channels"] == [] and unknown["profile"] is None
    assert main(["customer", "nobody", "--data-dir", str(tmp_path)]) == 1
    assert "no customer 'nobody'" in capsys.readouterr().out
    for bad in ("x" * 300, "a%0Ab"):  # too long; a control character
        code, body = get(f"{worker.url}/customers/{bad}")
        assert code == 400 and "printable" in body["error"]
    code, tricky = get(f"{worker.url}/customers/{urllib.parse.quote(chr(39) + ' OR 1=1 --')}")
    assert code == 200 and not tricky["found"], "an id is a value, never SQL"


def test_render_view_shows_each_part_and_says_when_nothing_is_known():
    def query(sql: str):
        if "customer_state" in sql:
            return ["last_seen", "orders", "revenue", "refunds"], [["2026-11-30T00:00:00", 2, 50.0, 0.0]]
        if "GROUP BY channel" in sql:
            return ["channel", "touchpoints"], [["web", 3]]
        return [], []

    text = render_view(customer_view(query, "c1", pseudonymize=lambda s: "p-" + s))
    assert "customer c1 (stored as p-c1)" in text and "frequency: 2" in text and "web" in text
    assert render_view(customer_view(lambda sql: ([], []), "c2")) == "no customer 'c2' in ClickHouse"
