"""Time of the 360° view of one customer (``pipeline.views.customer``) with a million touchpoints loaded.

    python benchmarks/customer_view.py [--touchpoints 1000000] [--customers 20000] [--lookups 200]

Loads ``--touchpoints`` enriched touchpoints of ``--customers`` customers, spread over 30 days and
the channels as live traffic is, and one state per customer, into a fresh embedded ClickHouse laid
out by cem's own DDL (every customer stitched: a tenth of the touchpoints are stored under an
anonymous identifier linked to the customer, which the view reads too); then builds the whole view (every section, through the read-only door the
worker serves it by) for ``--lookups`` random customers. Reports the p50/p99 milliseconds per view,
and the granules the touchpoint reads select out of the table's (``EXPLAIN indexes = 1``). Then
times the journey analytics over the same table (the median of ``--passes`` reads each): the whole
funnel (``cem.journey_funnel``), and the transitions of the last day (``cem.journey_transitions``).

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.views.customer import SECTIONS, customer_view
from pipeline.views.reads import ReadOnlyQueries
from sinks.clickhouse import ClickHouseSink, connect, quote

CHANNELS = "['web', 'mobile_app', 'email', 'sms', 'phone', 'chat', 'social', 'in_store', 'survey']"
TYPES = "['page_view', 'search', 'add_to_cart', 'purchase', 'support_contact', 'chat_message', 'survey_response']"
STAGES = "['awareness', 'consideration', 'purchase', 'retention', 'advocacy']"


def load(connection, touchpoints: int, customers: int) -> None:
    connection.command(f"""
        INSERT INTO cem.touchpoints_enriched (event_id, customer_id, occurred_at, channel, type, journey_stage,
            amount, currency, sentiment, first_seen, events_total, channel_events, revenue_to_date, orders,
            open_complaints, channel_switch, source_topic, source_partition, source_epoch, source_offset, received_at)
        SELECT concat('e', toString(number)),
            concat(if(number % 10 = 0, 'anonymous_id:p:', 'cust-'), toString(cityHash64(number, 1) % {customers})),
            t, {CHANNELS}[1 + cityHash64(number, 2) % 9], {TYPES}[1 + cityHash64(number, 3) % 7],
            {STAGES}[1 + cityHash64(number, 4) % 5], if(number % 7 = 0, toDecimal64(19.99, 4), NULL), 'EUR',
            if(number % 5 = 0, toFloat32((cityHash64(number, 5) % 200) / 100 - 1), NULL), t, 1, 1,
            toDecimal128(0, 4), 0, 0, false, 'cem.touchpoints', number % 4, 1, intDiv(number, 4), t
        FROM (SELECT number, toDateTime64(now() - (number * 2592000 / {touchpoints}), 3, 'UTC') AS t
              FROM numbers({touchpoints}))
        SETTINGS max_insert_block_size = 200000""")
    connection.command(f"""
        INSERT INTO cem.customer_state (customer_id, version, updated_at, first_seen, last_seen, events_total,
            revenue, orders, refunds, open_complaints, complaints_opened, complaints_resolved, journey_stage,
            channel_switches, identifiers)
        SELECT concat('cust-', toString(number)), 1, now64(3), now64(3) - 2592000, now64(3) - number % 86400,
            50, toDecimal128(99.5, 4), 5, toDecimal128(0, 4), 0, 0, 0, 'retention', 3,
            [concat('anonymous_id:p:', toString(number))]
        FROM numbers({customers})""")
    connection.command("OPTIMIZE TABLE cem.touchpoints_enriched FINAL")


def granules(connection, customer_id: str) -> str:
    plan = "\n".join(r[0] for r in connection.rows(
        "EXPLAIN indexes = 1 " + SECTIONS["timeline"].format(db="cem", ids=quote(customer_id))))
    found = re.findall(r"Granules: (\d+)/(\d+)", plan)
    return f"{found[-1][0]}/{found[-1][1]}" if found else "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--touchpoints", type=int, default=1_000_000)
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--lookups", type=int, default=200)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--passes", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cem-view-") as data:
        connection = connect(f"chdb://{data}/clickhouse")
        ClickHouseSink(connection, "cem").create_schema()
        started = time.perf_counter()
        load(connection, args.touchpoints, args.customers)
        loaded_s = time.perf_counter() - started
        reads = ReadOnlyQueries(connection.sibling(), "cem").run
        rng = random.Random(args.seed)
        ids = [f"cust-{rng.randrange(args.customers)}" for _ in range(args.lookups)]
        customer_view(reads, ids[0])  # warm the caches of the first read
        times = []
        for customer_id in ids:
            t0 = time.perf_counter()
            view = customer_view(reads, customer_id)
            times.append((time.perf_counter() - t0) * 1000)
            assert view["found"], customer_id
        times.sort()
        print(json.dumps({
            "touchpoints": args.touchpoints, "customers": args.customers, "lookups": args.lookups,
            "load_s": round(loaded_s, 1), "view_ms_p50": round(statistics.median(times), 1),
            "view_ms_p99": round(times[int(0.99 * (len(times) - 1))], 1),
            "timeline_granules": granules(connection, ids[0]), "sections": len(SECTIONS),
            **{f"{name}_ms": timed(reads, sql, args.passes) for name, sql in JOURNEY_READS.items()},
        }))


JOURNEY_READS = {
    "journey_funnel": "SELECT * FROM cem.journey_funnel",
    "journey_transitions_day": "SELECT from_stage, to_stage, channel, count() FROM cem.journey_transitions"
                               " WHERE occurred_at >= (SELECT max(occurred_at) FROM cem.touchpoints_enriched)"
                               " - INTERVAL 1 DAY GROUP BY ALL",
}


def timed(reads, sql: str, passes: int) -> float:
    """The median milliseconds of ``passes`` reads of ``sql`` (through the read-only door)."""
    times = []
    for _ in range(passes):
        t0 = time.perf_counter()
        reads(sql)
        times.append((time.perf_counter() - t0) * 1000)
    return round(statistics.median(times), 1)


if __name__ == "__main__":
    main()
