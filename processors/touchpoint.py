"""The typed touchpoint and its validation: every rule of the event contract, in one place.

:func:`validate` turns a decoded dict (from Avro or JSON) into a :class:`Touchpoint`, or raises
:class:`Rejected` with the dead-letter reason. The reference time for the far-future check is the
Kafka record timestamp, never the wall clock, so a replay rejects exactly the same records.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping

from schemas.contract import CHANNELS, HOUR_MS, MAX_FUTURE_MS, TOUCHPOINT_TYPES, Reason

SCORE_RANGES: dict[str, tuple[int, int]] = {"csat": (1, 5), "nps": (0, 10), "ces": (1, 7)}
_CHANNELS = frozenset(CHANNELS)
_TYPES = frozenset(TOUCHPOINT_TYPES)
_OPTIONAL_STRINGS = ("session_id", "case_id", "text", "currency", "journey_stage")


class Rejected(ValueError):
    """A touchpoint that breaks the contract; ``reason`` goes to the dead-letter record."""

    def __init__(self, reason: Reason, detail: str):
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


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

    def to_record(self) -> dict[str, Any]:
        """The Avro/JSON record form (field names of ``cem.TouchpointEvent``)."""
        return {name: getattr(self, name) for name in self.__slots__}  # type: ignore[attr-defined]

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
    processors.touchpoint.Rejected: out_of_range: nps=11 is outside 0..10

    ``typed=True`` is for records Avro already decoded against the schema: types and enum symbols are
    guaranteed there, so only the rules a schema cannot express are checked (about 4x cheaper).
    """
    if typed:
        return _validate_typed(record, reference_ms)
    event_id = _required_string(record, "event_id")
    customer_id = _required_string(record, "customer_id")
    occurred_at = parse_event_time(_required(record, "occurred_at"))
    _check_future(occurred_at, reference_ms)
    channel = _enum(record, "channel", _CHANNELS)
    type_ = _enum(record, "type", _TYPES)
    tp = Touchpoint(event_id, customer_id, occurred_at, channel, type_)
    for name in _OPTIONAL_STRINGS:
        value = record.get(name)
        if value is not None and not isinstance(value, str):
            raise Rejected(Reason.WRONG_TYPE, f"{name} must be a string, got {type(value).__name__}")
        setattr(tp, name, value or None)
    for name, (low, high) in SCORE_RANGES.items():
        setattr(tp, name, _score(record, name, low, high))
    tp.amount = _amount(record, type_)
    tp.attributes = _attributes(record)
    return tp


def _validate_typed(record: Mapping[str, Any], reference_ms: int) -> Touchpoint:
    """The contract rules a schema cannot express: non-empty ids, ranges, far-future event time."""
    event_id, customer_id, occurred_at = record["event_id"], record["customer_id"], record["occurred_at"]
    if not event_id.strip():
        raise Rejected(Reason.EMPTY_FIELD, "event_id is empty")
    if not customer_id.strip():
        raise Rejected(Reason.EMPTY_FIELD, "customer_id is empty")
    parse_event_time(occurred_at)
    _check_future(occurred_at, reference_ms)
    for name, (low, high) in SCORE_RANGES.items():
        value = record[name]
        if value is not None:
            _check_range(name, value, low, high)
    amount = record["amount"]
    if amount is not None:
        _check_amount(amount)
    return Touchpoint(
        event_id, customer_id, occurred_at, record["channel"], record["type"], record["session_id"] or None,
        record["case_id"] or None, record["text"] or None, record["csat"], record["nps"], record["ces"], amount,
        record["currency"] or None, record["journey_stage"] or None, record["attributes"],
    )


def parse_event_time(value: Any) -> int:
    """Event time as epoch ms, from epoch ms (int) or an ISO-8601 string with a UTC offset.

    >>> parse_event_time("2026-01-01T00:00:00Z"), parse_event_time(1767225600000)
    (1767225600000, 1767225600000)
    >>> parse_event_time("2026-01-01T00:00:00")
    Traceback (most recent call last):
    ...
    processors.touchpoint.Rejected: bad_timestamp: occurred_at '2026-01-01T00:00:00' has no UTC offset
    """
    if isinstance(value, bool):
        raise Rejected(Reason.WRONG_TYPE, "occurred_at must be an ISO-8601 string or epoch milliseconds")
    if isinstance(value, int):
        if not 0 <= value < 253402300800000:  # year 10000
            raise Rejected(Reason.BAD_TIMESTAMP, f"occurred_at {value} is not a plausible epoch-ms time")
        return value
    if isinstance(value, datetime):
        return _from_datetime(value, repr(value))
    if not isinstance(value, str):
        raise Rejected(Reason.WRONG_TYPE, "occurred_at must be an ISO-8601 string or epoch milliseconds")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00") if value.endswith("Z") else value)
    except ValueError:
        raise Rejected(Reason.BAD_TIMESTAMP, f"occurred_at {value[:64]!r} is not ISO-8601") from None
    return _from_datetime(parsed, repr(value[:64]))


def _from_datetime(value: datetime, shown: str) -> int:
    if value.tzinfo is None:
        raise Rejected(Reason.BAD_TIMESTAMP, f"occurred_at {shown} has no UTC offset")
    return int(value.astimezone(timezone.utc).timestamp() * 1000)


def _required(record: Mapping[str, Any], name: str) -> Any:
    value = record.get(name)
    if value is None:
        raise Rejected(Reason.MISSING_FIELD, f"{name} is required")
    return value


def _required_string(record: Mapping[str, Any], name: str) -> str:
    value = _required(record, name)
    if not isinstance(value, str):
        raise Rejected(Reason.WRONG_TYPE, f"{name} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise Rejected(Reason.EMPTY_FIELD, f"{name} is empty")
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
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise Rejected(Reason.WRONG_TYPE, f"{name} must be an integer, got {value!r}"[:200])
    _check_range(name, value, low, high)
    return int(value)


def _amount(record: Mapping[str, Any], type_: str) -> float | None:
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
    return value


# -- the rules both paths check (typed or not), with one wording --------------------------------


def _check_future(occurred_at: int, reference_ms: int) -> None:
    if occurred_at - reference_ms > MAX_FUTURE_MS:
        raise Rejected(
            Reason.FUTURE_TIMESTAMP,
            f"occurred_at is {(occurred_at - reference_ms) / HOUR_MS:.1f} h after the record timestamp (limit 24 h)",
        )


def _check_range(name: str, value: int | float, low: int, high: int) -> None:
    if not low <= value <= high:
        raise Rejected(Reason.OUT_OF_RANGE, f"{name}={value} is outside {low}..{high}")


def _check_amount(value: int | float) -> None:
    if value < 0 or value != value or value == float("inf"):
        raise Rejected(Reason.OUT_OF_RANGE, f"amount={value} must be a finite number >= 0 (refunds as positive amounts)")
