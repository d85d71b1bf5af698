"""ClickHouse DDL for the ``cem`` database, generated from ``schemas.tables`` (idempotent).

``kpi_minute`` is the operators' contract: one row per (minute, channel), every column a sum (or a
mergeable uniq state), so ``sum(col) ... GROUP BY channel`` over any range is exact. It is a view
answered from an aggregate projection of ``touchpoints_enriched``; exactness rests on each enriched
row being inserted once, which :class:`sinks.clickhouse.ClickHouseSink` guarantees with source positions.

No table is partitioned by time: one insert then always makes one part per table, which is atomic
with its projections (the KPI aggregates and the offset marks), and no producer's timestamps can
push an insert past ClickHouse's partitions-per-insert limit.
"""

from __future__ import annotations

from schemas.contract import CSAT_SATISFIED_MIN, DETRACTOR_MAX, FUNNEL_STAGES, FUNNEL_WINDOW_S, PROMOTER_MIN
from schemas.tables import POSITION, TABLES

SCHEMA_VERSION = 4  # bumped when a table's layout changes in a way CREATE ... IF NOT EXISTS cannot apply
# How a database of an earlier layout becomes the next one, in place ({db}: the database).
MIGRATIONS: dict[int, tuple[str, ...]] = {
    3: ("ALTER TABLE {db}.touchpoints_enriched ADD COLUMN IF NOT EXISTS identified_by Nullable(String)",
        "ALTER TABLE {db}.customer_state ADD COLUMN IF NOT EXISTS identifiers Array(String)"),
}
MERGE_SETTINGS = "SETTINGS non_replicated_deduplication_window = 10000"

# The KPI aggregates of cem.kpi_minute, shared by the projection that stores them and the view that
# reads them: identical expressions let ClickHouse answer the view from the projection. The score
# thresholds are the contract's (schemas.contract), the same numbers the pipeline counts with.
KPI_AGGREGATES = f"""
    count() AS events,
    sum(if(type = 'purchase', ifNull(amount, 0), if(type = 'refund', -ifNull(amount, 0), 0))) AS revenue,
    sum(if(type = 'refund', ifNull(amount, 0), 0)) AS refunds,
    countIf(csat IS NOT NULL) AS csat_responses,
    countIf(csat >= {CSAT_SATISFIED_MIN}) AS csat_satisfied,
    countIf(nps IS NOT NULL) AS nps_responses,
    countIf(nps >= {PROMOTER_MIN}) AS promoters,
    countIf(nps <= {DETRACTOR_MAX}) AS detractors,
    countIf(ces IS NOT NULL) AS ces_responses,
    sum(toUInt64(ifNull(ces, 0))) AS ces_sum,
    countIf(type = 'complaint_opened') AS complaints_opened,
    countIf(type = 'complaint_resolved') AS complaints_resolved,
    countIf(sentiment IS NOT NULL) AS sentiment_n,
    sum(toFloat64(ifNull(sentiment, 0))) AS sentiment_sum,
    countIf(churn_risk IS NOT NULL) AS churn_risk_n,
    sum(toFloat64(ifNull(churn_risk, 0))) AS churn_risk_sum,
    uniqState(customer_id) AS customers_state"""
KPI_KEY = "toDateTime(toStartOfMinute(occurred_at), 'UTC') AS minute, channel"
_POSITION_KEY = ", ".join(POSITION[:3])  # topic, partition, epoch
OFFSETS = f"SELECT {_POSITION_KEY}, max(source_offset) GROUP BY {_POSITION_KEY}"


def _funnel_view() -> str:
    """cem.journey_funnel: per entry channel (of a customer's first touchpoint), how many customers
    went through each of ``FUNNEL_STAGES`` in order within ``FUNNEL_WINDOW_S`` (``windowFunnel``), and
    the median event time from first reaching each stage to first reaching the next."""
    steps = ", ".join(f"journey_stage = '{stage}'" for stage in FUNNEL_STAGES)
    firsts = ", ".join(f"minOrNullIf(occurred_at, journey_stage = '{stage}') AS at_{stage}" for stage in FUNNEL_STAGES)
    reached = ", ".join(f"countIf(level >= {i}) AS {stage}" for i, stage in enumerate(FUNNEL_STAGES, 1))
    medians = ", ".join(
        f"quantileExact(0.5)(if(at_{b} >= at_{a}, dateDiff('second', at_{a}, at_{b}), NULL)) AS median_s_{a}_to_{b}"
        for a, b in zip(FUNNEL_STAGES, FUNNEL_STAGES[1:], strict=False)
    )
    return f"""
    CREATE VIEW IF NOT EXISTS {{db}}.journey_funnel AS
    SELECT entry_channel, count() AS customers, {reached}, {medians}
    FROM (
        SELECT customer_id, argMin(channel, (occurred_at, event_id)) AS entry_channel,
               windowFunnel({FUNNEL_WINDOW_S})(toDateTime(occurred_at), {steps}) AS level, {firsts}
        FROM {{db}}.touchpoints_enriched
        GROUP BY customer_id
    )
    GROUP BY entry_channel
    """


def _columns(table: str) -> str:
    return ",\n        ".join(f"{name} {type_}" for name, type_ in TABLES[table])


# The sort key leaves customer_id and event_id out on purpose: an erasure anonymises them in place
# (ClickHouse cannot update a key column), which keeps the per-minute KPIs exact; a bloom-filter
# index narrows a read of one customer (an erasure, the 360° view) to the granules that hold them.
# (A projection sorted by customer made the view's reads a lookup, but cost a quarter of the
# worker's throughput: benchmarks/README.md.)
# Why projections and not materialized views: a projection lives inside the part it aggregates, so a
# crash mid-insert (the embedded engine dies with the worker) can never leave the aggregates or the
# offset high-water marks out of step with the rows. With materialized views it can, and a replay
# then counts a block twice (seen in the SIGKILL test before this design).
DDL: tuple[str, ...] = (
    "CREATE DATABASE IF NOT EXISTS {db}",
    f"""
    CREATE TABLE IF NOT EXISTS {{db}}.touchpoints_enriched (
        {_columns("touchpoints_enriched")},
        INDEX customer customer_id TYPE bloom_filter GRANULARITY 1,
        PROJECTION kpi_minute (SELECT {KPI_KEY}, {KPI_AGGREGATES} GROUP BY minute, channel),
        PROJECTION offsets ({OFFSETS})
    ) ENGINE = MergeTree
    ORDER BY (channel, toStartOfHour(occurred_at), source_partition, source_offset)
    {MERGE_SETTINGS}
    """,
    f"""
    CREATE VIEW IF NOT EXISTS {{db}}.kpi_minute AS
    SELECT {KPI_KEY}, {KPI_AGGREGATES}, uniq(customer_id) AS unique_customers
    FROM {{db}}.touchpoints_enriched
    GROUP BY minute, channel
    """,
    # Journeys are read from the touchpoints as stored, which are exact (each position once), so
    # they cost the insert nothing; the pipeline's per-record stage is ordered here in event time.
    """
    CREATE VIEW IF NOT EXISTS {db}.journey_transitions AS
    SELECT toDateTime(toStartOfMinute(occurred_at), 'UTC') AS minute, channel, from_stage,
           journey_stage AS to_stage, customer_id, event_id, occurred_at
    FROM (
        SELECT customer_id, event_id, occurred_at, channel, journey_stage,
               lagInFrame(journey_stage, 1, '') OVER (
                   PARTITION BY customer_id ORDER BY occurred_at, event_id ROWS BETWEEN 1 PRECEDING AND CURRENT ROW
               ) AS from_stage
        FROM {db}.touchpoints_enriched
    )
    WHERE from_stage != '' AND from_stage != journey_stage
    """,
    _funnel_view(),
    f"""
    CREATE TABLE IF NOT EXISTS {{db}}.dead_letters (
        {_columns("dead_letters")},
        PROJECTION offsets ({OFFSETS})
    ) ENGINE = MergeTree
    ORDER BY (reason, received_at, source_partition, source_offset)
    {MERGE_SETTINGS}
    """,
    f"""
    CREATE TABLE IF NOT EXISTS {{db}}.customer_state (
        {_columns("customer_state")}
    ) ENGINE = ReplacingMergeTree(version)
    ORDER BY customer_id
    """,
    # An alert may be produced again after a crash (same alert_id): the replacing engine keeps one.
    f"""
    CREATE TABLE IF NOT EXISTS {{db}}.alerts (
        {_columns("alerts")},
        INDEX customer customer_id TYPE bloom_filter GRANULARITY 1
    ) ENGINE = ReplacingMergeTree
    ORDER BY (type, alert_id)
    """,
    # Progressive quality per model and event-time minute; the latest version of a minute wins.
    f"""
    CREATE TABLE IF NOT EXISTS {{db}}.model_metrics (
        {_columns("model_metrics")}
    ) ENGINE = ReplacingMergeTree(version)
    ORDER BY (model, metric, minute)
    """,
    f"""
    CREATE TABLE IF NOT EXISTS {{db}}.erasure_audit (
        {_columns("erasure_audit")}
    ) ENGINE = MergeTree
    ORDER BY (erased_at, customer_id)
    """,
    f"""
    CREATE TABLE IF NOT EXISTS {{db}}.source_logs (
        {_columns("source_logs")}
    ) ENGINE = ReplacingMergeTree(recorded_at)
    ORDER BY (topic, partition, epoch)
    """,
    "CREATE TABLE IF NOT EXISTS {db}.schema_version (version UInt32) ENGINE = ReplacingMergeTree(version) ORDER BY tuple()",
)


def statements(database: str) -> list[str]:
    """The DDL for ``database``.

    >>> statements("cem")[0]
    'CREATE DATABASE IF NOT EXISTS cem'
    >>> any("PARTITION BY" in sql for sql in statements("cem") if "CREATE TABLE" in sql)  # see the module doc
    False
    """
    return [" ".join(sql.split()).format(db=database) for sql in DDL]


def created_tables(database: str) -> list[str]:
    """The tables and views :func:`statements` creates (the read side allows exactly these).

    >>> created_tables("cem")[:4]
    ['touchpoints_enriched', 'kpi_minute', 'journey_transitions', 'journey_funnel']
    """
    names = []
    for sql in statements(database):
        words = sql.split()
        if words[0] == "CREATE" and words[1] in ("TABLE", "VIEW"):
            names.append(words[5].removeprefix(f"{database}."))
    return names
