"""The typed touchpoint and its validation: every rule of the event contract, in one place.

:func:`validate` turns a decoded dict (from Avro or JSON) into a :class:`Touchpoint`, or raises
:class:`~schemas.contract.Rejected` with the dead-letter reason. It is meant to be total: whatever a
producer sends, either a touchpoint comes out whose every value the encoders and the ClickHouse
columns can hold (finite numbers in range, bounded strings and maps, event times in
``[MIN_EVENT_MS, MAX_EVENT_MS)``), or a rejection does. The reference time for the far-future check
is the Kafka record timestamp, never the wall clock, so a replay rejects exactly the same records.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from typing import Any

from schemas.contract import (
    CHANNELS,
    HOUR_MS,
    IDENTIFIER_FIELDS,
    MAX_AMOUNT,
    MAX_ATTRIBUTE_KEY_CHARS,
    MAX_ATTRIBUTE_VALUE_CHARS,
    MAX_ATTRIBUTES,
    MAX_EVENT_MS,
    MAX_FUTURE_MS,
    MAX_ID_CHARS,
    MAX_SHORT_CHARS,
    MAX_TEXT_CHARS,
    MIN_EVENT_MS,
    TOUCHPOINT_TYPES,
    Reason,
    Rejected,
)

SCORE_RANGES: dict[str, tuple[int, int]] = {"csat": (1, 5), "nps": (0, 10), "ces": (1, 7)}
_CHANNELS = frozenset(CHANNELS)
_TYPES = frozenset(TOUCHPOINT_TYPES)
# The optional strings, and the most characters each may have.
_OPTIONAL_STRINGS: dict[str, int] = {
    "session_id": MAX_ID_CHARS, "case_id": MAX_ID_CHARS, "text": MAX_TEXT_CHARS,
    "currency": MAX_SHORT_CHARS, "journey_stage": MAX_SHORT_CHARS,
    **dict.fromkeys(IDENTIFIER_FIELDS, MAX_ID_CHARS),
}


@dataclass(slots=True)
class Touchpoint:
    """One valid touchpoint. ``occurred_at`` is event time in epoch milliseconds (UTC)."""

    event_id: str
    customer_id: str
    occurred_at: int
    channel: str
    type: str
    session_id: str | None = None
    case_id: str | None = None
    text: str | None = None
    csat: int | None = None
    nps: int | None = None
    ces: int | None = None
    amount: float | None = None
    currency: str | None = None
    journey_stage: str | None = None
    attributes: dict[str, str] = field(default_factory=dict)
    # Identifiers (see processors.identity): as sent until ingest pseudonymises them in place.
    anonymous_id: str | None = None
    email: str | None = None
    phone: str | None = None

    def to_record(self) -> dict[str, Any]:
        """The Avro/JSON record form (field names of ``cem.TouchpointEvent``)."""
        return {name: getattr(self, name) for name in self.__slots__}

    @property
    def case_key(self) -> str:
        """The complaint case this touchpoint belongs to: ``case_id``, else its own ``event_id``.

        >>> Touchpoint("e1", "c1", 0, "phone", "complaint_opened").case_key
        'e1'
        """
        return self.case_id or self.event_id


def validate(record: Mapping[str, Any], reference_ms: int, typed: bool = False) -> Touchpoint:
    """Check one decoded record against the contract.

    ``reference_ms`` is the Kafka record timestamp; ``occurred_at`` more than 24 h after it is
    rejected as ``future_timestamp``.

    >>> tp = validate({"event_id": "e1", "customer_id": "c1", "occurred_at": "2026-01-01T10:00:00+01:00",
    ...                "channel": "survey", "type": "survey_response", "nps": 9}, reference_ms=1767261600000)
    >>> tp.occurred_at, tp.nps
    (1767258000000, 9)
    >>> validate({"event_id": "e1", "customer_id": "c1", "occurred_at": 1767258000000,
    ...           "channel": "survey", "type": "survey_response", "nps": 11}, 1767261600000)
    Traceback (most recent call last):
    ...
    schemas.contract.Rejected: out_of_range: nps=11 is outside 0..10

    ``typed=True`` is for records Avro already decoded against the schema: types and enum symbols are
    guaranteed there, so only the rules a schema cannot express are checked (about 4x cheaper).
    """
    if typed:
        return _validate_typed(record, reference_ms)
    event_id = _required_string(record, "event_id")
    customer_id = _required_string(record, "customer_id") if record.get("customer_id") is not None or \
        not _has_identifier(record) else ""
    occurred_at = parse_event_time(_required(record, "occurred_at"))
    _check_future(occurred_at, reference_ms)
    channel = _enum(record, "channel", _CHANNELS)
    type_ = _enum(record, "type", _TYPES)
    tp = Touchpoint(event_id, customer_id, occurred_at, channel, type_)
    for name, limit in _OPTIONAL_STRINGS.items():
        value = record.get(name)
        if value is not None and not isinstance(value, str):
            raise Rejected(Reason.WRONG_TYPE, f"{name} must be a string, got {type(value).__name__}")
        if value:
            _check_length(name, value, limit)
        setattr(tp, name, value or None)
    for name, (low, high) in SCORE_RANGES.items():
        setattr(tp, name, _score(record, name, low, high))
    tp.amount = _amount(record)
    tp.attributes = _attributes(record)
    return tp


def _validate_typed(record: Mapping[str, Any], reference_ms: int) -> Touchpoint:
    return validate_values([record[name] for name in TOUCHPOINT_FIELDS], reference_ms)


def validate_values(values: Sequence[Any], reference_ms: int) -> Touchpoint:
    """:func:`validate` with ``typed=True`` of a record as its values in ``TOUCHPOINT_FIELDS`` order
    (what a reader compiled for the schema returns): the contract rules a schema cannot express,
    non-empty ids, lengths, ranges, event-time bounds."""
    (event_id, customer_id, occurred_at, channel, type_, session_id, case_id, text, csat, nps, ces, amount,
     currency, journey_stage, attributes, anonymous_id, email, phone) = values
    if len(event_id) > MAX_ID_CHARS or not event_id.strip():
        _check_id("event_id", event_id)
    if customer_id is not None or not (anonymous_id or email or phone):
        if customer_id is None:
            raise Rejected(Reason.MISSING_FIELD, _NO_SUBJECT)
        if len(customer_id) > MAX_ID_CHARS or not customer_id.strip():
            _check_id("customer_id", customer_id)
    _check_event_time(occurred_at)
    _check_future(occurred_at, reference_ms)
    for index, name, limit in _OPTIONAL_STRING_LIMITS:
        value = values[index]
        if value and len(value) > limit:
            _check_length(name, value, limit)
    for index, name, low, high in _SCORE_LIMITS:
        value = values[index]
        if value is not None and not low <= value <= high:
            _check_range(name, value, low, high)
    if amount is not None:
        _check_amount(amount)
    _check_attributes(attributes)
    return Touchpoint(
        event_id, customer_id, occurred_at, channel, type_, session_id or None, case_id or None, text or None,
        csat, nps, ces, amount, currency or None, journey_stage or None, attributes,
        anonymous_id or None, email or None, phone or None,
    )


TOUCHPOINT_FIELDS = tuple(f.name for f in fields(Touchpoint))  # the order of cem.TouchpointEvent's fields
_NO_SUBJECT = "customer_id is required, or one of anonymous_id, email, phone"
# The limits with the field's position: the typed path, run on every record, checks inline and
# calls the rule (for its wording) only when it fails, as it does for the ids.
_OPTIONAL_STRING_LIMITS = tuple((TOUCHPOINT_FIELDS.index(name), name, limit) for name, limit in _OPTIONAL_STRINGS.items())
_SCORE_LIMITS = tuple((TOUCHPOINT_FIELDS.index(name), name, low, high) for name, (low, high) in SCORE_RANGES.items())


def _has_identifier(record: Mapping[str, Any]) -> bool:
    """Whether the record names its customer by an identifier (checked for junk at ingest)."""
    return any(isinstance(record.get(name), str) and record[name] for name in IDENTIFIER_FIELDS)


def parse_event_time(value: Any) -> int:
    """Event time as epoch ms, from epoch ms (int) or an ISO-8601 string with a UTC offset.

    >>> parse_event_time("2026-01-01T00:00:00Z"), parse_event_time(1767225600000)
    (1767225600000, 1767225600000)
    >>> parse_event_time("2026-01-01T00:00:00")
    Traceback (most recent call last):
    ...
    schemas.contract.Rejected: bad_timestamp: occurred_at '2026-01-01T00:00:00' has no UTC offset
    >>> parse_event_time("9999-01-01T00:00:00Z")
    Traceback (most recent call last):
    ...
    schemas.contract.Rejected: bad_timestamp: occurred_at 253370764800000 is outside 2000-01-01..2100-01-01 (epoch ms)
    """
    if isinstance(value, bool):
        raise Rejected(Reason.WRONG_TYPE, "occurred_at must be an ISO-8601 string or epoch milliseconds")
    if isinstance(value, int):
        return _check_event_time(value)
    if isinstance(value, datetime):
        return _check_event_time(_from_datetime(value, repr(value)))
    if not isinstance(value, str):
        raise Rejected(Reason.WRONG_TYPE, "occurred_at must be an ISO-8601 string or epoch milliseconds")
    if len(value) > MAX_SHORT_CHARS:
        raise Rejected(Reason.BAD_TIMESTAMP, f"occurred_at {value[:MAX_SHORT_CHARS]!r}... is not ISO-8601")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00") if value.endswith("Z") else value)
    except ValueError:
        raise Rejected(Reason.BAD_TIMESTAMP, f"occurred_at {value!r} is not ISO-8601") from None
    return _check_event_time(_from_datetime(parsed, repr(value)))


def _from_datetime(value: datetime, shown: str) -> int:
    if value.tzinfo is None:
        raise Rejected(Reason.BAD_TIMESTAMP, f"occurred_at {shown} has no UTC offset")
    try:
        return int(value.astimezone(timezone.utc).timestamp() * 1000)
    except (OverflowError, ValueError):  # year 1 or 9999 plus an offset leaves the calendar
        raise Rejected(Reason.BAD_TIMESTAMP, f"occurred_at {shown} is outside the calendar in UTC") from None


def _check_event_time(ms: int) -> int:
    if not MIN_EVENT_MS <= ms < MAX_EVENT_MS:
        raise Rejected(Reason.BAD_TIMESTAMP, f"occurred_at {ms} is outside 2000-01-01..2100-01-01 (epoch ms)")
    return ms


def _required(record: Mapping[str, Any], name: str) -> Any:
    value = record.get(name)
    if value is None:
        raise Rejected(Reason.MISSING_FIELD, _NO_SUBJECT if name == "customer_id" else f"{name} is required")
    return value


def _required_string(record: Mapping[str, Any], name: str) -> str:
    value = _required(record, name)
    if not isinstance(value, str):
        raise Rejected(Reason.WRONG_TYPE, f"{name} must be a string, got {type(value).__name__}")
    _check_id(name, value)
    return value


def _enum(record: Mapping[str, Any], name: str, allowed: frozenset[str]) -> str:
    value = _required(record, name)
    if not isinstance(value, str):
        raise Rejected(Reason.WRONG_TYPE, f"{name} must be a string, got {type(value).__name__}")
    if value not in allowed:
        raise Rejected(Reason.UNKNOWN_ENUM, f"{name}={value[:64]!r} is not one of {', '.join(sorted(allowed))}")
    return value


def _score(record: Mapping[str, Any], name: str, low: int, high: int) -> int | None:
    value = record.get(name)
    if value is None:
        return None
    # JSON has no integer type of its own: 9 and 9.0 are the same answer, 9.5 is not one.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not _whole(value):
        raise Rejected(Reason.WRONG_TYPE, f"{name} must be an integer, got {value!r}"[:200])
    _check_range(name, value, low, high)
    return int(value)


def _whole(value: int | float) -> bool:
    return isinstance(value, int) or (math.isfinite(value) and value.is_integer())


def _amount(record: Mapping[str, Any]) -> float | None:
    value = record.get("amount")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Rejected(Reason.WRONG_TYPE, f"amount must be a number, got {value!r}"[:200])
    _check_amount(value)
    return float(value)


def _attributes(record: Mapping[str, Any]) -> dict[str, str]:
    value = record.get("attributes")
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise Rejected(Reason.WRONG_TYPE, "attributes must be a map of string to string")
    _check_attributes(value)
    return value


# -- the rules both paths check (typed or not), with one wording --------------------------------


def _check_future(occurred_at: int, reference_ms: int) -> None:
    # A record without a usable timestamp (-1 from old clients) has no reference; the event-time
    # bounds of _check_event_time still hold for it.
    if reference_ms >= MIN_EVENT_MS and occurred_at - reference_ms > MAX_FUTURE_MS:
        raise Rejected(
            Reason.FUTURE_TIMESTAMP,
            f"occurred_at is {(occurred_at - reference_ms) / HOUR_MS:.1f} h after the record timestamp (limit 24 h)",
        )


def _check_id(name: str, value: str) -> None:
    if not value.strip():
        raise Rejected(Reason.EMPTY_FIELD, f"{name} is empty")
    _check_length(name, value, MAX_ID_CHARS)


def _check_length(name: str, value: str, limit: int) -> None:
    if len(value) > limit:
        raise Rejected(Reason.TOO_LONG, f"{name} has {len(value)} characters (limit {limit})")


def _check_range(name: str, value: int | float, low: int, high: int) -> None:
    if not low <= value <= high:
        raise Rejected(Reason.OUT_OF_RANGE, f"{name}={value} is outside {low}..{high}")


def _check_amount(value: int | float) -> None:
    if not (math.isfinite(value) and 0 <= value <= MAX_AMOUNT):
        raise Rejected(
            Reason.OUT_OF_RANGE,
            f"amount={value} must be a finite number in 0..{MAX_AMOUNT:g} (refunds as positive amounts)",
        )


def _check_attributes(attributes: Mapping[str, str]) -> None:
    if len(attributes) > MAX_ATTRIBUTES:
        raise Rejected(Reason.TOO_LONG, f"attributes has {len(attributes)} entries (limit {MAX_ATTRIBUTES})")
    for key, value in attributes.items():
        _check_length("an attribute name", key, MAX_ATTRIBUTE_KEY_CHARS)
        if len(value) > MAX_ATTRIBUTE_VALUE_CHARS:  # the name is made only for the rejection
            _check_length(f"attribute {key[:MAX_ATTRIBUTE_KEY_CHARS]!r}", value, MAX_ATTRIBUTE_VALUE_CHARS)
