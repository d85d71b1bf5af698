"""CRM profiles from ``cem.customers``: the customer attributes the churn model joins by customer_id.

A profile record is keyed by ``customer_id`` (UTF-8) and holds JSON
``{"customer_id": "...", "attributes": {"plan": "gold", "tenure_months": "14", ...}}``; attribute
values are kept as strings (the churn features coerce numbers, see
:func:`processors.churn.profile_features`). The topic is compacted: the latest profile wins.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from schemas.contract import Reason, Rejected

MAX_ATTRIBUTES = 64
MAX_VALUE_CHARS = 256


@dataclass(frozen=True, slots=True)
class Profile:
    customer_id: str
    attributes: dict[str, str]


def parse_profile(key: bytes | None, value: bytes | None) -> Profile:
    """One profile record, or :class:`~schemas.contract.Rejected` with the dead-letter reason.

    >>> parse_profile(b"c1", b'{"customer_id": "c1", "attributes": {"plan": "gold", "tenure_months": 14}}')
    Profile(customer_id='c1', attributes={'plan': 'gold', 'tenure_months': '14'})
    >>> parse_profile(b"c2", b'{"customer_id": "c1", "attributes": {}}')
    Traceback (most recent call last):
    ...
    schemas.contract.Rejected: key_mismatch: Kafka key must be the customer_id (UTF-8)
    >>> parse_profile(b"c1", b'{"customer_id": "c1"}').attributes
    Traceback (most recent call last):
    ...
    schemas.contract.Rejected: missing_field: attributes must be an object of strings
    """
    try:
        record = orjson.loads(value or b"")
    except orjson.JSONDecodeError as exc:
        raise Rejected(Reason.UNDECODABLE, f"profile is not JSON: {exc}") from None
    if not isinstance(record, dict):
        raise Rejected(Reason.WRONG_TYPE, "profile must be a JSON object")
    customer_id = record.get("customer_id")
    if not isinstance(customer_id, str) or not customer_id:
        raise Rejected(Reason.MISSING_FIELD, "customer_id must be a non-empty string")
    if key != customer_id.encode():
        raise Rejected(Reason.KEY_MISMATCH, "Kafka key must be the customer_id (UTF-8)")
    attributes = record.get("attributes")
    if not isinstance(attributes, dict):
        raise Rejected(Reason.MISSING_FIELD, "attributes must be an object of strings")
    if len(attributes) > MAX_ATTRIBUTES:
        raise Rejected(Reason.OUT_OF_RANGE, f"{len(attributes)} attributes > {MAX_ATTRIBUTES}")
    cleaned = {}
    for name, raw in attributes.items():
        if raw is None:
            continue
        if isinstance(raw, (dict, list)):
            raise Rejected(Reason.WRONG_TYPE, f"attribute {name!r} must be a scalar")
        cleaned[str(name)] = str(raw)[:MAX_VALUE_CHARS]
    return Profile(customer_id, cleaned)
