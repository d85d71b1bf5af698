"""ClickHouse DDL for the ``cem`` database, created on start (idempotent).

``kpi_minute`` is the operators' contract: one row per (minute, channel), every column a sum (or a
mergeable uniq state), so ``sum(col) ... GROUP BY channel`` over any range is exact. It is fed by a
materialized view from ``touchpoints_enriched``; exactness rests on each enriched row being inserted
once, which :class:`sinks.clickhouse.ClickHouseSink` guarantees with source offsets.
"""

from __future__ import annotations

MERGE_SETTINGS = "SETTINGS non_replicated_deduplication_window = 10000"

# Tables written by the sink, in dependency order. `{db}` is the database name.
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
        received_at DateTime64(3, 'UTC')
    ) ENGINE = ReplacingMergeTree
    PARTITION BY toYYYYMM(occurred_at)
    ORDER BY (channel, toStartOfHour(occurred_at), customer_id, event_id)
    {MERGE_SETTINGS}
    """,
    f"""
    CREATE TABLE IF NOT EXISTS {{db}}.kpi_minute_agg (
        minute DateTime('UTC'),
        channel LowCardinality(String),
        events SimpleAggregateFunction(sum, UInt64),
        revenue SimpleAggregateFunction(sum, Decimal(38, 4)),
        refunds SimpleAggregateFunction(sum, Decimal(38, 4)),
        csat_responses SimpleAggregateFunction(sum, UInt64),
        csat_satisfied SimpleAggregateFunction(sum, UInt64),
        nps_responses SimpleAggregateFunction(sum, UInt64),
        promoters SimpleAggregateFunction(sum, UInt64),
        detractors SimpleAggregateFunction(sum, UInt64),
        ces_responses SimpleAggregateFunction(sum, UInt64),
        ces_sum SimpleAggregateFunction(sum, UInt64),
        complaints_opened SimpleAggregateFunction(sum, UInt64),
        complaints_resolved SimpleAggregateFunction(sum, UInt64),
        sentiment_n SimpleAggregateFunction(sum, UInt64),
        sentiment_sum SimpleAggregateFunction(sum, Float64),
        churn_risk_n SimpleAggregateFunction(sum, UInt64),
        churn_risk_sum SimpleAggregateFunction(sum, Float64),
        customers AggregateFunction(uniq, String)
    ) ENGINE = AggregatingMergeTree
    PARTITION BY toYYYYMM(minute)
    ORDER BY (minute, channel)
    {MERGE_SETTINGS}
    """,
    """
    CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.kpi_minute_mv TO {db}.kpi_minute_agg AS
    SELECT
        toStartOfMinute(occurred_at) AS minute,
        channel,
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
        uniqState(customer_id) AS customers
    FROM {db}.touchpoints_enriched
    GROUP BY minute, channel
    """,
    """
    CREATE VIEW IF NOT EXISTS {db}.kpi_minute AS
    SELECT
        minute, channel,
        sum(events) AS events,
        sum(revenue) AS revenue,
        sum(refunds) AS refunds,
        sum(csat_responses) AS csat_responses,
        sum(csat_satisfied) AS csat_satisfied,
        sum(nps_responses) AS nps_responses,
        sum(promoters) AS promoters,
        sum(detractors) AS detractors,
        sum(ces_responses) AS ces_responses,
        sum(ces_sum) AS ces_sum,
        sum(complaints_opened) AS complaints_opened,
        sum(complaints_resolved) AS complaints_resolved,
        sum(sentiment_n) AS sentiment_n,
        sum(sentiment_sum) AS sentiment_sum,
        sum(churn_risk_n) AS churn_risk_n,
        sum(churn_risk_sum) AS churn_risk_sum,
        uniqMergeState(customers) AS customers_state,
        uniqMerge(customers) AS unique_customers
    FROM {db}.kpi_minute_agg
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
        payload_truncated Bool
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
    """
    CREATE TABLE IF NOT EXISTS {db}.sink_offsets (
        source_table LowCardinality(String),
        source_topic LowCardinality(String),
        source_partition UInt16,
        max_offset SimpleAggregateFunction(max, Int64)
    ) ENGINE = AggregatingMergeTree
    ORDER BY (source_table, source_topic, source_partition)
    """,
    """
    CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.sink_offsets_enriched_mv TO {db}.sink_offsets AS
    SELECT 'touchpoints_enriched' AS source_table, source_topic, source_partition, max(source_offset) AS max_offset
    FROM {db}.touchpoints_enriched GROUP BY source_topic, source_partition
    """,
    """
    CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.sink_offsets_dead_letters_mv TO {db}.sink_offsets AS
    SELECT 'dead_letters' AS source_table, source_topic, source_partition, max(source_offset) AS max_offset
    FROM {db}.dead_letters GROUP BY source_topic, source_partition
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
