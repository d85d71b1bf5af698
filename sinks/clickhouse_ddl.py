"""ClickHouse DDL for the ``cem`` database, created on start (idempotent).

``kpi_minute`` is the operators' contract: one row per (minute, channel), every column a sum (or a
mergeable uniq state), so ``sum(col) ... GROUP BY channel`` over any range is exact. It is a view
answered from an aggregate projection of ``touchpoints_enriched``; exactness rests on each enriched
row being inserted once, which :class:`sinks.clickhouse.ClickHouseSink` guarantees with source offsets.
"""

from __future__ import annotations

MERGE_SETTINGS = "SETTINGS non_replicated_deduplication_window = 10000"

# The KPI aggregates of cem.kpi_minute, shared by the projection that stores them and the view that
# reads them: identical expressions let ClickHouse answer the view from the projection.
KPI_AGGREGATES = """
    count() AS events,
    sum(if(type = 'purchase', ifNull(amount, 0), if(type = 'refund', -ifNull(amount, 0), 0))) AS revenue,
    sum(if(type = 'refund', ifNull(amount, 0), 0)) AS refunds,
    countIf(csat IS NOT NULL) AS csat_responses,
    countIf(csat >= 4) AS csat_satisfied,
    countIf(nps IS NOT NULL) AS nps_responses,
    countIf(nps >= 9) AS promoters,
    countIf(nps <= 6) AS detractors,
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
OFFSETS = "SELECT source_topic, source_partition, max(source_offset) GROUP BY source_topic, source_partition"

# Why projections and not materialized views: a projection lives inside the part it aggregates, so a
# crash mid-insert (the embedded engine dies with the worker) can never leave the aggregates or the
# offset high-water marks out of step with the rows. With materialized views it can, and a replay
# then counts a block twice (seen in the SIGKILL test before this design).
DDL: tuple[str, ...] = (
    "CREATE DATABASE IF NOT EXISTS {db}",
    f"""
    CREATE TABLE IF NOT EXISTS {{db}}.touchpoints_enriched (
        event_id String,
        customer_id String,
        occurred_at DateTime64(3, 'UTC'),
        channel LowCardinality(String),
        type LowCardinality(String),
        session_id Nullable(String),
        case_id Nullable(String),
        text Nullable(String),
        csat Nullable(UInt8),
        nps Nullable(UInt8),
        ces Nullable(UInt8),
        amount Nullable(Decimal(18, 4)),
        currency LowCardinality(Nullable(String)),
        journey_stage LowCardinality(String),
        attributes Map(String, String),
        first_seen DateTime64(3, 'UTC'),
        recency_s Nullable(Float64),
        events_total UInt64,
        channel_events UInt64,
        revenue_to_date Decimal(18, 4),
        orders UInt32,
        open_complaints UInt16,
        resolve_s Nullable(Float64),
        channel_switch Bool,
        sentiment Nullable(Float32),
        churn_risk Nullable(Float32),
        source_topic LowCardinality(String),
        source_partition UInt16,
        source_offset Int64,
        received_at DateTime64(3, 'UTC'),
        PROJECTION kpi_minute (SELECT {KPI_KEY}, {KPI_AGGREGATES} GROUP BY minute, channel),
        PROJECTION offsets ({OFFSETS})
    ) ENGINE = MergeTree
    PARTITION BY toYYYYMM(occurred_at)
    ORDER BY (channel, toStartOfHour(occurred_at), customer_id, event_id)
    {MERGE_SETTINGS}
    """,
    f"""
    CREATE VIEW IF NOT EXISTS {{db}}.kpi_minute AS
    SELECT {KPI_KEY}, {KPI_AGGREGATES}, uniq(customer_id) AS unique_customers
    FROM {{db}}.touchpoints_enriched
    GROUP BY minute, channel
    """,
    f"""
    CREATE TABLE IF NOT EXISTS {{db}}.dead_letters (
        received_at DateTime64(3, 'UTC'),
        source_topic LowCardinality(String),
        source_partition UInt16,
        source_offset Int64,
        reason LowCardinality(String),
        stage LowCardinality(String),
        detail String,
        key Nullable(String),
        payload String,
        payload_bytes UInt32,
        payload_truncated Bool,
        PROJECTION offsets ({OFFSETS})
    ) ENGINE = MergeTree
    PARTITION BY toYYYYMM(received_at)
    ORDER BY (reason, received_at, source_partition, source_offset)
    {MERGE_SETTINGS}
    """,
    """
    CREATE TABLE IF NOT EXISTS {db}.customer_state (
        customer_id String,
        updated_at DateTime64(3, 'UTC'),
        first_seen DateTime64(3, 'UTC'),
        last_seen DateTime64(3, 'UTC'),
        events_total UInt64,
        revenue Decimal(18, 4),
        orders UInt32,
        refunds Decimal(18, 4),
        open_complaints UInt16,
        complaints_opened UInt32,
        complaints_resolved UInt32,
        mean_resolve_s Nullable(Float64),
        last_csat Nullable(UInt8),
        last_nps Nullable(UInt8),
        last_ces Nullable(UInt8),
        journey_stage LowCardinality(String),
        channel_switches UInt32,
        sentiment_mean Nullable(Float32),
        churn_risk Nullable(Float32),
        churned_at Nullable(DateTime64(3, 'UTC'))
    ) ENGINE = ReplacingMergeTree(events_total)
    ORDER BY customer_id
    """,
    # An alert may be produced again after a crash (same alert_id): the replacing engine keeps one.
    """
    CREATE TABLE IF NOT EXISTS {db}.alerts (
        alert_id String,
        type LowCardinality(String),
        severity LowCardinality(String),
        customer_id String,
        channel LowCardinality(String),
        occurred_at DateTime64(3, 'UTC'),
        emitted_at DateTime64(3, 'UTC'),
        reason String,
        evidence Map(String, String),
        recommended_action String,
        model_version Nullable(String),
        trigger_event_ids Array(String)
    ) ENGINE = ReplacingMergeTree
    PARTITION BY toYYYYMM(occurred_at)
    ORDER BY (type, alert_id)
    """,
    # Progressive quality per model and event-time minute; the latest version of a minute wins.
    """
    CREATE TABLE IF NOT EXISTS {db}.model_metrics (
        minute DateTime('UTC'),
        model LowCardinality(String),
        version UInt32,
        metric LowCardinality(String),
        value Float64
    ) ENGINE = ReplacingMergeTree(version)
    ORDER BY (model, metric, minute)
    """,
)

# Tables whose rows carry a source offset: the sink skips rows at or below the stored high-water mark.
OFFSET_TRACKED = ("touchpoints_enriched", "dead_letters")


def statements(database: str) -> list[str]:
    """The DDL for ``database``.

    >>> statements("cem")[0]
    'CREATE DATABASE IF NOT EXISTS cem'
    """
    return [" ".join(sql.split()).format(db=database) for sql in DDL]
