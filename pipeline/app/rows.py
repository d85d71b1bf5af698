"""Rows for the ClickHouse tables: the one mapping from domain objects to columns."""

from __future__ import annotations

from typing import Any

from processors.customer import CustomerState, Enriched
from processors.ingest import DeadLetter
from processors.training import MetricRow
from sinks.base import SourcePosition
from sinks.clickhouse import TableRow

DEAD_LETTER_PAYLOAD_LIMIT = 64 * 1024  # the full bytes are on the DLQ topic; ClickHouse keeps a prefix

COLUMNS: dict[str, tuple[str, ...]] = {
    "touchpoints_enriched": (
        "event_id", "customer_id", "occurred_at", "channel", "type", "session_id", "case_id", "text",
        "csat", "nps", "ces", "amount", "currency", "journey_stage", "attributes", "first_seen",
        "recency_s", "events_total", "channel_events", "revenue_to_date", "orders", "open_complaints",
        "resolve_s", "channel_switch", "sentiment", "churn_risk", "source_topic", "source_partition",
        "source_offset", "received_at",
    ),
    "dead_letters": (
        "received_at", "source_topic", "source_partition", "source_offset", "reason", "stage", "detail",
        "key", "payload", "payload_bytes", "payload_truncated",
    ),
    "customer_state": (
        "customer_id", "updated_at", "first_seen", "last_seen", "events_total", "revenue", "orders", "refunds",
        "open_complaints", "complaints_opened", "complaints_resolved", "mean_resolve_s", "last_csat", "last_nps",
        "last_ces", "journey_stage", "channel_switches", "sentiment_mean", "churn_risk", "churned_at",
    ),
    "alerts": (
        "alert_id", "type", "severity", "customer_id", "channel", "occurred_at", "emitted_at", "reason", "evidence",
        "recommended_action", "model_version", "trigger_event_ids",
    ),
    "model_metrics": ("minute", "model", "version", "metric", "value"),
}


def alert_row(record: dict[str, Any]) -> TableRow:
    """A row of ``cem.alerts`` from a ``cem.Alert`` record (channel alerts have customer_id '')."""
    values = [record[c] for c in COLUMNS["alerts"]]
    values[3] = values[3] or ""
    values[4] = values[4] or ""
    return TableRow("alerts", values)


def model_metric_row(row: MetricRow) -> TableRow:
    return TableRow("model_metrics", [row.minute_s, row.model, row.version, row.metric, row.value])


def enriched_row(enriched: Enriched, topic: str) -> TableRow:
    tp = enriched.touchpoint
    values: list[Any] = [
        tp.event_id, tp.customer_id, tp.occurred_at, tp.channel, tp.type, tp.session_id, tp.case_id, tp.text,
        tp.csat, tp.nps, tp.ces, tp.amount, tp.currency, enriched.journey_stage, tp.attributes, enriched.first_seen,
        enriched.recency_s, enriched.events_total, enriched.channel_events, enriched.revenue_to_date, enriched.orders,
        enriched.open_complaints, enriched.resolve_s, enriched.channel_switch, enriched.sentiment, enriched.churn_risk,
        topic, enriched.source_partition, enriched.source_offset, enriched.received_at,
    ]
    return TableRow("touchpoints_enriched", values, SourcePosition(topic, enriched.source_partition, enriched.source_offset))


def dead_letter_row(dead: DeadLetter) -> TableRow:
    source = dead.source
    payload = source.value or b""
    values: list[Any] = [
        source.timestamp_ms, source.topic, source.partition, source.offset, dead.reason.value, dead.stage.value,
        dead.detail, source.key, payload[:DEAD_LETTER_PAYLOAD_LIMIT], len(payload), len(payload) > DEAD_LETTER_PAYLOAD_LIMIT,
    ]
    return TableRow("dead_letters", values, SourcePosition(source.topic, source.partition, source.offset))


def customer_state_row(state: CustomerState) -> TableRow:
    values: list[Any] = [
        state.customer_id, state.last_seen, state.first_seen, state.last_seen, state.events_total, state.revenue,
        state.orders, state.refunds, len(state.open_cases), state.complaints_opened, state.complaints_resolved,
        state.mean_resolve_s, state.last_csat, state.last_nps, state.last_ces, state.journey_stage,
        state.channel_switches, state.sentiment_mean if state.sentiment_n else None, state.churn_risk, state.churned_at,
    ]
    return TableRow("customer_state", values)
