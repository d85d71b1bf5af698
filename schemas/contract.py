"""The pipeline's public contract: topic names, dead-letter reasons and headers, field names.

Channel systems, operators and downstream services all read these names; they live here once.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

SCHEMA_DIR = Path(__file__).resolve().parent

# Event-time units: every time in the contract and the pipeline is epoch milliseconds.
MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS

# The journey funnel (cem.journey_funnel): the stages a customer is counted through, in order, and
# how long in event time a customer has to get from the first to the last.
FUNNEL_STAGES = ("awareness", "consideration", "purchase", "retention")
FUNNEL_WINDOW_S = 30 * 24 * 3600

TOPIC_TOUCHPOINTS = "cem.touchpoints"
TOPIC_DLQ = "cem.touchpoints.dlq"
TOPIC_ENRICHED = "cem.touchpoints.enriched"
TOPIC_ALERTS = "cem.alerts"
TOPIC_CUSTOMERS = "cem.customers"
TOPIC_TRAINING = "cem.model.training"  # one partition: each model trains in one place, in one order
TOPIC_MODELS = "cem.models"  # compacted: the latest snapshot per key (sentiment, churn, trainer)
# Internal, co-partitioned with cem.touchpoints: touchpoints on their way to the state that takes
# them, and the claims and merges of identity stitching (processors.stitching).
TOPIC_IDENTITY = "cem.identity"
TOPIC_ERASURES = "cem.erasures"  # compacted: erasure requests, keyed (and partitioned) like the touchpoints
STATE_TABLE = "customer_state"  # the Faust table of customer states
TOPIC_STATE_CHANGELOG = f"cem-{STATE_TABLE}-changelog"  # Faust's name for its changelog: <app id>-<table>-changelog

# How a survey answer counts, in cem.kpi_minute's columns and everywhere else (processors.kpi).
PROMOTER_MIN = 9  # NPS 9-10
DETRACTOR_MAX = 6  # NPS 0-6
CSAT_SATISFIED_MIN = 4  # CSAT 4-5 of 5
CSAT_NEUTRAL = 3  # CSAT 3: neither satisfied nor dissatisfied

# Each model's one name: its key on cem.models and in the enriched event's ``model_versions``, the
# kind of its snapshots, the start of its version (``churn-v1+5210``), the ``model`` label of its
# metrics and the ``model`` column of cem.model_metrics.
MODEL_SENTIMENT = "sentiment"
MODEL_CHURN = "churn"

MODEL_MAX_BYTES = 64 << 20  # cem.models: a trainer checkpoint holds the pending churn examples
MAX_RECORD_BYTES = 1024 * 1024  # larger records are dead-lettered as `oversize`
MAX_FUTURE_MS = DAY_MS  # occurred_at more than this ahead of the record timestamp

# Bounds of what a touchpoint may hold: what the encoders, the ClickHouse columns and the hot path can
# take from any producer (beyond them: `too_long`, `out_of_range`, `bad_timestamp`).
MIN_EVENT_MS = 946_684_800_000  # 2000-01-01T00:00:00Z
MAX_EVENT_MS = 4_102_444_800_000  # 2100-01-01T00:00:00Z (exclusive): DateTime columns hold it everywhere
MAX_ID_CHARS = 256  # event_id, customer_id, session_id, case_id, the identifiers
# Fields that name a customer without its customer_id (processors.identity), in the order that picks
# the one a touchpoint is attributed by, and (of those the producer has) the Kafka key.
IDENTIFIER_FIELDS = ("email", "phone", "anonymous_id")
MAX_TEXT_CHARS = 32_768  # free text: scored, redacted and stored on the hot path
MAX_SHORT_CHARS = 64  # currency, journey_stage
MAX_ATTRIBUTES = 64
MAX_ATTRIBUTE_KEY_CHARS = 128
MAX_ATTRIBUTE_VALUE_CHARS = 1024
MAX_AMOUNT = 1e12  # fits Decimal(18, 4), with room for a customer's sum in Decimal(38, 4)


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
    # An identifier claimed by a customer while it is another known customer's (conflict policy
    # "refuse"): the claim is dead-lettered, the touchpoint stays with the customer it named.
    IDENTITY_CONFLICT = "identity_conflict"
    TOO_LONG = "too_long"  # a string or map beyond its bound (see MAX_*_CHARS, MAX_ATTRIBUTES)
    # Not about the input's form: a record the pipeline could not process or store. Nothing a producer
    # sends should end here (validation is meant to be total); when something does, it is not lost.
    PROCESSING_ERROR = "processing_error"  # an unexpected exception while processing this record
    STORAGE_REJECTED = "storage_rejected"  # ClickHouse refused the record's row for good


# Reasons that come from the record itself (every one is exercised by `inject_bad_records`).
INPUT_REASONS: tuple[Reason, ...] = tuple(
    r for r in Reason if r not in (Reason.PROCESSING_ERROR, Reason.STORAGE_REJECTED, Reason.IDENTITY_CONFLICT))


class Rejected(ValueError):
    """A record that breaks the contract, wherever that is found (decoding, validation, a CRM
    profile); ``reason`` and ``detail`` go to its dead letter.

    >>> str(Rejected(Reason.OUT_OF_RANGE, "nps=11 is outside 0..10"))
    'out_of_range: nps=11 is outside 0..10'
    """

    def __init__(self, reason: Reason, detail: str):
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


class Stage(str, enum.Enum):
    """Where in the pipeline a record was rejected (header ``cem.stage``)."""

    DECODE = "decode"
    VALIDATE = "validate"
    STATE = "state"  # dedupe and enrichment
    SCORE = "score"  # sentiment, churn, alert rules
    ENCODE = "encode"  # the record's outputs
    STORE = "store"  # the ClickHouse insert
    IDENTITY = "identity"  # a claim of identity stitching


# Dead-letter headers (the record's key and value are the original bytes, unchanged).
HEADER_REASON = "cem.reason"
HEADER_STAGE = "cem.stage"
HEADER_DETAIL = "cem.detail"
HEADER_SOURCE_TOPIC = "cem.source.topic"
HEADER_SOURCE_PARTITION = "cem.source.partition"
HEADER_SOURCE_OFFSET = "cem.source.offset"
# Headers of the pipeline's own records on cem.identity and cem.touchpoints (processors.stitching).
HEADER_IDENTITY = "cem.identity"  # "claim" or "merge"; absent: a touchpoint
HEADER_IDENTIFIED_BY = "cem.identified-by"  # the identifier that attributed a touchpoint to its customer


def record_key(touchpoint: Mapping[str, Any]) -> str:
    """The Kafka key of a touchpoint: its ``customer_id``, else its first identifier (as sent; the
    pipeline routes such a touchpoint by its identifiers itself, so this key only spreads the load).

    >>> record_key({"customer_id": "c1", "email": "a@b.io"}), record_key({"anonymous_id": "d1", "phone": "+4420"})
    ('c1', '+4420')
    """
    for name in ("customer_id", *IDENTIFIER_FIELDS):
        value = touchpoint.get(name)
        if value:
            return str(value)
    return ""


@cache
def schema_json(name: str) -> dict[str, Any]:
    """The raw JSON of ``schemas/<name>.avsc``."""
    schema: dict[str, Any] = json.loads((SCHEMA_DIR / f"{name}.avsc").read_text())
    return schema


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
