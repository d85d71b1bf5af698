"""What one record ships: its Kafka record and its ClickHouse row (the planner's ``Outputs``).

Encoding lives here, in the wiring, so the planner stays pure and the sinks see plain items.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from pipeline.app.rows import RedactBytes, alert_row, dead_letter_row, enriched_row
from processors.alerts import Alert
from processors.customer import Enriched
from processors.ingest import DeadLetter, SourceRecord
from processors.stitching import Claim, Forward, Merge
from schemas.codec import AvroCodec, EnrichedEncoder, RecordEncoder
from schemas.contract import (
    HEADER_DETAIL,
    HEADER_IDENTIFIED_BY,
    HEADER_IDENTITY,
    HEADER_REASON,
    HEADER_SOURCE_OFFSET,
    HEADER_SOURCE_PARTITION,
    HEADER_SOURCE_TOPIC,
    HEADER_STAGE,
    TOPIC_ALERTS,
    TOPIC_DLQ,
    TOPIC_ENRICHED,
    TOPIC_IDENTITY,
    TOPIC_TOUCHPOINTS,
)
from sinks.clickhouse import TableRow
from sinks.kafka import KafkaRecord


@dataclass(slots=True)
class Shipped:
    record: KafkaRecord
    row: TableRow | None  # None: a record on its way to another partition, stored there


class ShippedOutputs:
    """Enriched touchpoints as Avro ``cem.EnrichedTouchpoint`` on their source partition; dead letters
    with their original key and bytes and the reason in headers; rows for both tables."""

    def __init__(self, codec: AvroCodec, redact_bytes: RedactBytes, pseudonymize: Callable[[str], str] | None = None):
        self.codec = codec
        self.redact_bytes = redact_bytes
        self.pseudonymize = pseudonymize
        self.encoder = EnrichedEncoder()

    def enriched(self, record: SourceRecord, enriched: Enriched, rewritten: bool) -> Shipped:
        # The input's own Avro body is the enriched record's first field, unless privacy rewrote it.
        body = None if rewritten else self.codec.current_body(record.value or b"")
        tp = enriched.touchpoint
        value = self.encoder.encode(enriched.tail_values(), None if body is not None else tp.to_record(), body)
        key = tp.customer_id.encode()  # the pseudonym when pseudonymisation is on
        return Shipped(KafkaRecord(TOPIC_ENRICHED, key, value, enriched.source_partition),
                       enriched_row(enriched, record.topic, record.epoch))

    def dead_letter(self, dead: DeadLetter) -> Shipped:
        return Shipped(dead_letter_record(dead), dead_letter_row(dead, self.redact_bytes, self.pseudonymize))

    # -- identity stitching (processors.stitching): the pipeline's own records, between partitions ----
    def forward(self, record: SourceRecord, forward: Forward) -> Shipped:
        tp = forward.touchpoint
        headers = [(HEADER_IDENTIFIED_BY, forward.identified_by.encode())] if forward.topic == TOPIC_TOUCHPOINTS else []
        value = self.codec.encode(tp.to_record(), "avro")
        return Shipped(KafkaRecord(forward.topic, tp.customer_id.encode(), value, forward.partition, headers,
                                   forward.timestamp_ms), None)

    def claim(self, claim: Claim, partition: int) -> Shipped:
        return Shipped(KafkaRecord(TOPIC_IDENTITY, claim.subject.encode(), claim.to_json(), partition,
                                   [(HEADER_IDENTITY, b"claim")]), None)

    def merge(self, merge: Merge, partition: int) -> Shipped:
        return Shipped(KafkaRecord(TOPIC_IDENTITY, merge.customer_id.encode(), merge.to_json(), partition,
                                   [(HEADER_IDENTITY, b"merge")]), None)


def dead_letter_record(dead: DeadLetter) -> KafkaRecord:
    """The original key and bytes, unchanged, with why and where from in the headers."""
    source = dead.source
    headers = [
        (HEADER_REASON, dead.reason.value.encode()),
        (HEADER_STAGE, dead.stage.value.encode()),
        (HEADER_DETAIL, dead.detail.encode(errors="replace")[:1000]),
        (HEADER_SOURCE_TOPIC, source.topic.encode()),
        (HEADER_SOURCE_PARTITION, str(source.partition).encode()),
        (HEADER_SOURCE_OFFSET, str(source.offset).encode()),
    ]
    return KafkaRecord(TOPIC_DLQ, source.key, source.value, None, headers, source.timestamp_ms)


class AlertOutputs:
    """Alerts as ``cem.Alert`` records (Avro or JSON) keyed by customer (or channel), and their rows."""

    def __init__(self, fmt: str = "avro"):
        self.encoder = RecordEncoder("alert") if fmt == "avro" else None

    def ship(self, alert: Alert, emitted_ms: int) -> Shipped:
        record: dict[str, Any] = alert.to_record(emitted_ms)
        value = self.encoder.encode(record) if self.encoder else orjson.dumps(record)
        key = (alert.customer_id or alert.channel or "").encode()
        return Shipped(KafkaRecord(TOPIC_ALERTS, key, value), alert_row(alert, emitted_ms))
