"""The pipeline's public contract: topic names, dead-letter reasons and headers, field names.

Channel systems, operators and downstream services all read these names; they live here once.
"""

from __future__ import annotations

import enum
import json
from functools import lru_cache
from pathlib import Path

SCHEMA_DIR = Path(__file__).resolve().parent

# Event-time units: every time in the contract and the pipeline is epoch milliseconds.
MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS

TOPIC_TOUCHPOINTS = "cem.touchpoints"
TOPIC_DLQ = "cem.touchpoints.dlq"
TOPIC_ENRICHED = "cem.touchpoints.enriched"
TOPIC_ALERTS = "cem.alerts"
TOPIC_CUSTOMERS = "cem.customers"
TOPIC_TRAINING = "cem.model.training"  # one partition: each model trains in one place, in one order
TOPIC_MODELS = "cem.models"  # compacted: the latest snapshot per key (sentiment, churn, trainer)

# The models by name: keys of the enriched event's ``model_versions`` (which model scored it).
MODEL_SENTIMENT = "sentiment"
MODEL_CHURN = "churn"

MODEL_MAX_BYTES = 64 << 20  # cem.models: a trainer checkpoint holds the pending churn feature snapshots
MAX_RECORD_BYTES = 1024 * 1024  # larger records are dead-lettered as `oversize`
MAX_FUTURE_MS = DAY_MS  # occurred_at more than this ahead of the record timestamp


class Reason(str, enum.Enum):
    """Why a record was dead-lettered (header ``cem.reason``, column ``dead_letters.reason``)."""

    UNDECODABLE = "undecodable"
    UNKNOWN_SCHEMA = "unknown_schema"
    MISSING_FIELD = "missing_field"
    EMPTY_FIELD = "empty_field"
    WRONG_TYPE = "wrong_type"
    OUT_OF_RANGE = "out_of_range"
    BAD_TIMESTAMP = "bad_timestamp"
    FUTURE_TIMESTAMP = "future_timestamp"
    OVERSIZE = "oversize"
    UNKNOWN_ENUM = "unknown_enum"
    KEY_MISMATCH = "key_mismatch"  # the Kafka key is not the customer_id (state is partitioned by it)


class Stage(str, enum.Enum):
    """Where in the pipeline a record was rejected (header ``cem.stage``)."""

    DECODE = "decode"
    VALIDATE = "validate"


# Dead-letter headers (the record's key and value are the original bytes, unchanged).
HEADER_REASON = "cem.reason"
HEADER_STAGE = "cem.stage"
HEADER_DETAIL = "cem.detail"
HEADER_SOURCE_TOPIC = "cem.source.topic"
HEADER_SOURCE_PARTITION = "cem.source.partition"
HEADER_SOURCE_OFFSET = "cem.source.offset"


@lru_cache(maxsize=None)
def schema_json(name: str) -> dict:
    """The raw JSON of ``schemas/<name>.avsc``."""
    return json.loads((SCHEMA_DIR / f"{name}.avsc").read_text())


def enum_symbols(field: str) -> tuple[str, ...]:
    """Symbols of an enum field of ``cem.TouchpointEvent``.

    >>> enum_symbols("channel")[:3]
    ('web', 'mobile_app', 'email')
    """
    for f in schema_json("touchpoint")["fields"]:
        if f["name"] == field:
            return tuple(f["type"]["symbols"])
    raise KeyError(field)


CHANNELS: tuple[str, ...] = enum_symbols("channel")
TOUCHPOINT_TYPES: tuple[str, ...] = enum_symbols("type")
