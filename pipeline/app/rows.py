"""Rows for the ClickHouse tables: the one mapping from domain objects to columns (``schemas.tables``).

The sink sees only what these return: a table name and a tuple of values in column order.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from processors.alerts import Alert
from processors.customer import CustomerState, Enriched
from processors.ingest import DeadLetter, record_time
from processors.training import MetricRow
from schemas.contract import Reason, Stage
from schemas.tables import names
from sinks.clickhouse import Row, TableRow

DEAD_LETTER_PAYLOAD_LIMIT = 16 * 1024  # the full bytes are on the DLQ topic; ClickHouse keeps a redacted prefix
RedactBytes = Callable[[bytes], str]


def enriched_row(enriched: Enriched, topic: str, epoch: int) -> TableRow:
    tp = enriched.touchpoint
    return "touchpoints_enriched", (
        tp.event_id, tp.customer_id, tp.occurred_at, tp.channel, tp.type, tp.session_id, tp.case_id, tp.text,
        tp.csat, tp.nps, tp.ces, tp.amount, tp.currency, enriched.journey_stage, tp.attributes, enriched.first_seen,
        enriched.recency_s, enriched.events_total, enriched.channel_events, enriched.revenue_to_date, enriched.orders,
        enriched.open_complaints, enriched.resolve_s, enriched.channel_switch, enriched.sentiment, enriched.churn_risk,
        topic, enriched.source_partition, epoch, enriched.source_offset, enriched.received_at, enriched.identified_by,
    )


def dead_letter_row(dead: DeadLetter, redact: RedactBytes, key_text: Callable[[str], str] | None = None) -> TableRow:
    """The dead letter for ClickHouse: its payload as text with PII redacted (the DLQ topic keeps the
    original bytes), and its key as ``key_text`` makes it (the customer's pseudonym, when the
    pipeline pseudonymises: what an erasure finds it by)."""
    source = dead.source
    payload = source.value or b""
    text = redact(payload[:DEAD_LETTER_PAYLOAD_LIMIT])
    key = None if source.key is None else redact(source.key[:1024])
    if key and key_text is not None:  # the id in clear goes, from the key and from the payload's text
        key, text = key_text(key), text.replace(key, key_text(key))
    return "dead_letters", (
        record_time(source.timestamp_ms, 0), source.topic, source.partition, source.epoch, source.offset, dead.reason.value,
        dead.stage.value, dead.detail, key, text, len(payload), len(payload) > DEAD_LETTER_PAYLOAD_LIMIT,
    )


def customer_state_row(state: CustomerState) -> TableRow:
    return "customer_state", (
        state.customer_id, state.position, state.last_seen, state.first_seen, state.last_seen, state.events_total,
        state.revenue, state.orders, state.refunds, len(state.open_cases), state.complaints_opened,
        state.complaints_resolved, state.mean_resolve_s, state.last_csat, state.last_nps, state.last_ces,
        state.journey_stage, state.channel_switches, state.sentiment_mean if state.sentiment_n else None,
        state.churn_risk, state.churned_at, list(state.merged),
    )


def alert_row(alert: Alert, emitted_ms: int) -> TableRow:
    """A row of ``cem.alerts`` (channel alerts have customer_id '')."""
    return "alerts", (
        alert.alert_id, alert.type, alert.severity, alert.customer_id or "", alert.channel or "", alert.occurred_at,
        emitted_ms, alert.reason, dict(alert.evidence), alert.recommended_action, alert.model_version,
        list(alert.trigger_event_ids),
    )


def model_metric_row(row: MetricRow) -> TableRow:
    return "model_metrics", (row.minute_s, row.model, row.version, row.metric, row.value)


def source_log_row(topic: str, partition: int, epoch: int, anchor_offset: int, anchor_digest: int) -> TableRow:
    return "source_logs", (topic, partition, epoch, anchor_offset, anchor_digest, int(time.time() * 1000))


_DEAD = {name: i for i, name in enumerate(names("dead_letters"))}
_ENRICHED = names("touchpoints_enriched")


def storage_rejected(table: str, rows: Sequence[Row], why: str) -> list[Row]:
    """Dead letters for rows ClickHouse refused for good (the sink's ``on_rejected``).

    An enriched row becomes a ``storage_rejected`` dead letter at its source position, its values
    as JSON for the payload (already redacted: they left the ingest step); a dead letter that could
    not be stored is replaced by one without key and payload.
    """
    if table == "dead_letters":
        return [_stripped(row, why) for row in rows]
    position = [_ENRICHED.index(c) for c in ("received_at", "source_topic", "source_partition", "source_epoch", "source_offset")]
    letters = []
    for row in rows:
        payload = _as_json(dict(zip(_ENRICHED, row, strict=True)))
        letters.append((
            *(row[i] for i in position), Reason.STORAGE_REJECTED.value, Stage.STORE.value, f"{table}: {why}"[:1000],
            None, payload[:DEAD_LETTER_PAYLOAD_LIMIT], len(payload), len(payload) > DEAD_LETTER_PAYLOAD_LIMIT,
        ))
    return letters


def _as_json(values: dict[str, Any]) -> str:
    try:
        return orjson.dumps(values, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
    except (TypeError, ValueError):  # a value JSON cannot hold: the detail says why the row was refused
        return ""


def _stripped(row: Row, why: str) -> Row:
    values: list[Any] = list(row)
    values[_DEAD["detail"]] = why[:1000]
    values[_DEAD["key"]] = None
    values[_DEAD["payload"]] = ""
    return tuple(values)
