"""Journey analytics in ClickHouse (``cem.journey_transitions``, ``cem.journey_funnel``), on the real
broker and chDB.

Property: the transitions are exactly the stage changes of each customer's stored touchpoints in
event order, and the funnel counts each customer once, through the stages in order; a stream
delivered twice gives the same journeys.
"""

from __future__ import annotations

from collections import Counter
from itertools import groupby

import pytest
from conftest import now_ms, run

from pipeline.runtime.embedded import publish
from processors.synthetic import JourneyGenerator
from schemas.contract import FUNNEL_STAGES, MINUTE_MS

T0 = now_ms() - 2 * 86_400_000
HOUR = 60 * MINUTE_MS


def touch(event_id: str, customer: str, at: int, channel: str, type_: str, **fields: object) -> dict:
    return {"event_id": event_id, "customer_id": customer, "occurred_at": T0 + at, "channel": channel,
            "type": type_, **fields}


CRAFTED = [
    touch("j1", "j-ann", 0, "web", "page_view"),  # awareness
    touch("j2", "j-ann", 10 * MINUTE_MS, "web", "search"),  # consideration
    touch("j3", "j-ann", HOUR, "mobile_app", "purchase", amount=30.0, currency="EUR"),  # purchase
    touch("j4", "j-ann", 24 * HOUR, "email", "page_view"),  # browsing after an order: retention
    touch("j5", "j-bob", 0, "email", "page_view"),
    touch("j6", "j-bob", 5 * MINUTE_MS, "web", "page_view"),
    touch("j7", "j-bob", 2 * HOUR, "web", "search"),
    touch("j8", "j-cat", 0, "web", "page_view"),
]


@pytest.mark.integration
def test_journeys_are_the_stage_changes_of_the_stored_touchpoints(broker, start_worker):
    worker = start_worker()
    run(publish(broker.bootstrap, CRAFTED + CRAFTED, "avro", timestamp_from_event=True))  # every record twice
    worker.wait_drained(2 * len(CRAFTED))
    transitions = worker.query("SELECT customer_id, from_stage, to_stage, channel FROM cem.journey_transitions"
                               " ORDER BY customer_id, occurred_at")
    assert [tuple(t) for t in transitions] == [
        ("j-ann", "awareness", "consideration", "web"),
        ("j-ann", "consideration", "purchase", "mobile_app"),
        ("j-ann", "purchase", "retention", "email"),
        ("j-bob", "awareness", "consideration", "web"),
    ]
    medians = [f"median_s_{a}_to_{b}" for a, b in zip(FUNNEL_STAGES, FUNNEL_STAGES[1:], strict=False)]
    funnel = {row[0]: list(row[1:]) for row in worker.query(
        f"SELECT entry_channel, customers, {', '.join(FUNNEL_STAGES)}, {', '.join(medians)} FROM cem.journey_funnel")}
    assert funnel == {"web": [2, 2, 1, 1, 1, 600, 3000, 82800], "email": [1, 1, 1, 0, 0, 7200, None, None]}

    # The generator's journeys: the transitions are the stage changes of the stored rows, in event order.
    generated = list(JourneyGenerator(customers=20, seed=11, start_ms=T0).events(600))
    run(publish(broker.bootstrap, generated, "avro", timestamp_from_event=True))
    worker.wait_drained(2 * len(CRAFTED) + len(generated))
    rows = worker.query("SELECT customer_id, occurred_at, event_id, journey_stage, channel"
                        " FROM cem.touchpoints_enriched ORDER BY customer_id, occurred_at, event_id")
    assert len(rows) == len(CRAFTED) + len(generated)
    expected: Counter = Counter()
    for _, touchpoints in groupby(rows, key=lambda r: r[0]):
        stages = list(touchpoints)
        expected.update((a[3], b[3], b[4]) for a, b in zip(stages, stages[1:], strict=False) if a[3] != b[3])
    found = Counter({(f, t, c): n for f, t, c, n in worker.query(
        "SELECT from_stage, to_stage, channel, count() FROM cem.journey_transitions GROUP BY ALL")})
    assert found == expected and sum(found.values()) > len(generated) // 20
    customers, aware = worker.query("SELECT sum(customers), sum(awareness) FROM cem.journey_funnel")[0]
    assert customers == 3 + len({e["customer_id"] for e in generated}) and 0 < aware <= customers
