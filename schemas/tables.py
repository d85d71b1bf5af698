"""The ClickHouse tables' columns, names and types: the one list the DDL, the row mapping and the sink
read. (Engines, keys and projections live with the DDL in ``sinks.clickhouse_ddl``.)

Offset-tracked tables carry the position of the input record each row came from, in the columns of
:data:`POSITION`: that is what makes at-least-once processing exact (see ``sinks.clickhouse``).

>>> names("dead_letters")[:4]
('received_at', 'source_topic', 'source_partition', 'source_epoch')
>>> [t for t in TABLES if t in OFFSET_TRACKED]
['touchpoints_enriched', 'dead_letters']
"""

from __future__ import annotations

Columns = tuple[tuple[str, str], ...]

# Where a row came from: topic, partition, incarnation of the log (epoch), offset.
POSITION = ("source_topic", "source_partition", "source_epoch", "source_offset")
_POSITION_TYPES: Columns = (
    ("source_topic", "LowCardinality(String)"),
    ("source_partition", "UInt16"),
    ("source_epoch", "UInt32"),
    ("source_offset", "Int64"),
)
MONEY = "Decimal(18, 4)"  # one amount: MAX_AMOUNT fits
MONEY_SUM = "Decimal(38, 4)"  # a customer's sums of amounts
TIME = "DateTime64(3, 'UTC')"

TABLES: dict[str, Columns] = {
    "touchpoints_enriched": (
        ("event_id", "String"),
        ("customer_id", "String"),
        ("occurred_at", TIME),
        ("channel", "LowCardinality(String)"),
        ("type", "LowCardinality(String)"),
        ("session_id", "Nullable(String)"),
        ("case_id", "Nullable(String)"),
        ("text", "Nullable(String)"),
        ("csat", "Nullable(UInt8)"),
        ("nps", "Nullable(UInt8)"),
        ("ces", "Nullable(UInt8)"),
        ("amount", f"Nullable({MONEY})"),
        ("currency", "LowCardinality(Nullable(String))"),
        ("journey_stage", "LowCardinality(String)"),
        ("attributes", "Map(String, String)"),
        ("first_seen", TIME),
        ("recency_s", "Nullable(Float64)"),
        ("events_total", "UInt64"),
        ("channel_events", "UInt64"),
        ("revenue_to_date", MONEY_SUM),
        ("orders", "UInt32"),
        ("open_complaints", "UInt16"),
        ("resolve_s", "Nullable(Float64)"),
        ("channel_switch", "Bool"),
        ("sentiment", "Nullable(Float32)"),
        ("churn_risk", "Nullable(Float32)"),
        *_POSITION_TYPES,
        ("received_at", TIME),
        ("identified_by", "Nullable(String)"),  # the identifier that attributed it (layout 4)
    ),
    "dead_letters": (
        ("received_at", TIME),
        *_POSITION_TYPES,
        ("reason", "LowCardinality(String)"),
        ("stage", "LowCardinality(String)"),
        ("detail", "String"),
        ("key", "Nullable(String)"),
        ("payload", "String"),  # the record's bytes as text, PII redacted; the DLQ topic has the original
        ("payload_bytes", "UInt32"),
        ("payload_truncated", "Bool"),
    ),
    "customer_state": (
        ("customer_id", "String"),
        ("version", "UInt64"),  # the log position of the latest touchpoint applied: the newest state wins
        ("updated_at", TIME),
        ("first_seen", TIME),
        ("last_seen", TIME),
        ("events_total", "UInt64"),
        ("revenue", MONEY_SUM),
        ("orders", "UInt32"),
        ("refunds", MONEY_SUM),
        ("open_complaints", "UInt16"),
        ("complaints_opened", "UInt32"),
        ("complaints_resolved", "UInt32"),
        ("mean_resolve_s", "Nullable(Float64)"),
        ("last_csat", "Nullable(UInt8)"),
        ("last_nps", "Nullable(UInt8)"),
        ("last_ces", "Nullable(UInt8)"),
        ("journey_stage", "LowCardinality(String)"),
        ("channel_switches", "UInt32"),
        ("sentiment_mean", "Nullable(Float32)"),
        ("churn_risk", "Nullable(Float32)"),
        ("churned_at", f"Nullable({TIME})"),
        ("identifiers", "Array(String)"),  # linked to the customer, their histories merged in (layout 4)
    ),
    "alerts": (
        ("alert_id", "String"),
        ("type", "LowCardinality(String)"),
        ("severity", "LowCardinality(String)"),
        ("customer_id", "String"),
        ("channel", "LowCardinality(String)"),
        ("occurred_at", TIME),
        ("emitted_at", TIME),
        ("reason", "String"),
        ("evidence", "Map(String, String)"),
        ("recommended_action", "String"),
        ("model_version", "Nullable(String)"),
        ("trigger_event_ids", "Array(String)"),
    ),
    "model_metrics": (
        ("minute", "DateTime('UTC')"),
        ("model", "LowCardinality(String)"),
        ("version", "UInt32"),
        ("metric", "LowCardinality(String)"),
        ("value", "Float64"),
    ),
    # One row per erasure carried out: who asked, when, and what was removed or anonymised.
    "erasure_audit": (
        ("customer_id", "String"),  # as the pipeline knows the customer (its pseudonym when pseudonymised)
        ("requested_at", TIME),
        ("requested_by", "String"),
        ("reason", "String"),
        ("erased_at", TIME),
        ("removed", "Map(String, UInt64)"),  # table or store -> rows (or entries) removed or anonymised
    ),
    # One row per incarnation of a source partition's log: a record of it (offset and digest) to
    # recognise it by, so that a log that starts over is never mistaken for a replay.
    "source_logs": (
        ("topic", "LowCardinality(String)"),
        ("partition", "UInt16"),
        ("epoch", "UInt32"),
        ("anchor_offset", "Int64"),
        ("anchor_digest", "UInt64"),
        ("recorded_at", TIME),
    ),
}

# Tables whose rows carry a source position: the sink writes each position at most once.
OFFSET_TRACKED = ("touchpoints_enriched", "dead_letters")


def names(table: str) -> tuple[str, ...]:
    """The column names of ``table``, in row order."""
    return tuple(name for name, _ in TABLES[table])
