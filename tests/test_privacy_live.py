"""Privacy end to end, on the real broker and chDB: PII never in clear downstream, pseudonyms, erasure.

* PII typed into free text (e-mail, phone, card, IBAN) reaches no ClickHouse table and no downstream
  topic in clear (the DLQ topic keeps the original bytes: its contract, see the README);
* with ``CEM_PSEUDONYMIZE=hmac-sha256`` no customer id is stored or published in clear;
* ``cem erase`` removes a customer's state, alerts and dead letters and anonymises its touchpoints
  within a minute, across a worker restart, with the per-minute KPIs unchanged; the customer's
  later touchpoints are dropped and counted.
"""

from __future__ import annotations

import time

import pytest
from conftest import kpi_by_channel, now_ms, read_topic, run

from pipeline.cli import main
from pipeline.runtime.embedded import publish, publish_raw
from pipeline.views.client import total
from processors.pseudonym import Pseudonymizer
from processors.synthetic import JourneyGenerator
from schemas.contract import TOPIC_ALERTS, TOPIC_ENRICHED, TOPIC_TRAINING

pytestmark = pytest.mark.integration

PII = ["jane.doe+cx@example.com", "+44 20 7946 0958", "4111 1111 1111 1111", "DE89 3704 0044 0532 0130 00"]
KEY = "a pseudonym key of at least sixteen bytes"


def comments(customer: str, at: int) -> list[dict]:
    """Survey answers whose comments carry PII, as customers type it (a detractor: an alert quotes it)."""
    return [{"event_id": f"pii-{at}-{i}", "customer_id": customer, "occurred_at": at + i, "channel": "survey",
             "type": "survey_response", "nps": 2, "text": f"Awful. Call me on {pii} or I leave."}
            for i, pii in enumerate(PII)]


def everything_stored(worker) -> str:
    """Every text column of every cem table, as one string to search."""
    tables = {"touchpoints_enriched": "concat(customer_id, ' ', event_id, ' ', ifNull(text, ''), ' ', toString(attributes))",
              "dead_letters": "concat(ifNull(key, ''), ' ', payload, ' ', detail)",
              "customer_state": "customer_id",
              "alerts": "concat(customer_id, ' ', reason, ' ', toString(evidence), ' ', arrayStringConcat(trigger_event_ids, ' '))"}
    return "\n".join(str(row[0]) for table, expr in tables.items()
                     for row in worker.query(f"SELECT {expr} FROM cem.{table}"))


async def downstream(bootstrap: str) -> bytes:
    records = []
    for topic, partitions in ((TOPIC_ENRICHED, 4), (TOPIC_ALERTS, 4), (TOPIC_TRAINING, 1)):
        records += await read_topic(bootstrap, topic, partitions)
    return b"\n".join((r.key or b"") + b" " + (r.value or b"") for r in records)


def test_pii_and_customer_ids_never_reach_storage_or_downstream_topics_in_clear(broker, start_worker):
    """Property: none of the PII strings, and (pseudonymised) none of the raw customer ids, appear in
    any ClickHouse table or in the enriched, alerts and training topics."""
    at = now_ms() - 3_600_000
    events = list(JourneyGenerator(customers=20, seed=9, start_ms=at).events(300)) + comments("cust-pii", at)
    bad = [(b"cust-pii", f'{{"customer_id": "cust-pii", "text": "mail {PII[0]}"}}'.encode())]
    worker = start_worker(pseudonymize="hmac-sha256", pseudonym_key=KEY)
    run(publish(broker.bootstrap, events, "json", timestamp_from_event=True))
    run(publish_raw(broker.bootstrap, bad, timestamp_ms=now_ms()))
    worker.wait_drained(len(events) + len(bad))
    assert worker.query("SELECT count() FROM cem.alerts WHERE type = 'detractor'")[0][0] >= 1
    stored, published = everything_stored(worker), run(downstream(broker.bootstrap))
    for secret in PII + sorted({e["customer_id"] for e in events}):
        assert secret not in stored, f"{secret!r} is stored in clear"
        assert secret.encode() not in published, f"{secret!r} is published in clear"
    assert Pseudonymizer(KEY.encode())("cust-pii") in stored, "the pseudonym stands in for the id"


def test_erasure_removes_the_customer_within_a_minute_across_a_restart(broker, start_worker):
    """Property: after `cem erase`, nothing stored names the customer or holds its text, the KPIs are
    exactly as before, an audit row says what went, and its later touchpoints are suppressed."""
    at = now_ms() - 3_600_000
    victim = "cust-erase"
    events = list(JourneyGenerator(customers=30, seed=4, start_ms=at).events(600)) + comments(victim, at)
    worker = start_worker()
    run(publish(broker.bootstrap, events, "json", timestamp_from_event=True))
    run(publish_raw(broker.bootstrap, [(victim.encode(), b"{not json")], timestamp_ms=now_ms()))
    worker.wait_drained(len(events) + 1)
    before = kpi_by_channel(worker)
    for table, column in (("touchpoints_enriched", "customer_id"), ("customer_state", "customer_id"),
                          ("alerts", "customer_id"), ("dead_letters", "key")):
        assert worker.query(f"SELECT count() FROM cem.{table} WHERE {column} = '{victim}'")[0][0] >= 1, table

    asked = time.monotonic()
    assert main(["erase", victim, "--bootstrap", broker.bootstrap, "--requested-by", "dpo@test", "--reason", "T-1"]) == 0
    worker.kill()  # a restart in between: the request is carried out by the next worker
    again = start_worker()
    audit = again.wait_until(lambda st: again.query("SELECT count() FROM cem.erasure_audit")[0][0] >= 1, 60,
                             "the erasure was not carried out")
    assert time.monotonic() - asked < 60
    assert audit["totals"].get("erasures")
    assert victim not in everything_stored(again) and "Call me on" not in everything_stored(again)
    assert kpi_by_channel(again) == before, "the per-minute KPIs keep their (anonymous) counts"
    (who, why, removed), = again.query("SELECT requested_by, reason, removed FROM cem.erasure_audit")
    assert (who, why) == ("dpo@test", "T-1") and removed["touchpoints_enriched"] == len(comments(victim, at))

    run(publish(broker.bootstrap, comments(victim, at + 10_000), "json", timestamp_from_event=True))
    again.wait_until(lambda st: total(st["totals"], "touchpoints_suppressed") == len(PII), 30,
                     "later touchpoints of the erased customer were not suppressed")
    assert victim not in everything_stored(again)
