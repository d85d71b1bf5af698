"""What the alert rules remember about one customer, stored inside the customer's state.

Its own module because both sides need it: :class:`processors.customer.CustomerState` holds one
(and restores it from the changelog), and :mod:`processors.alerts`, which builds on the customer
state, updates it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any


@dataclass(slots=True)
class CustomerAlertState:
    """Cooldowns, fired alert ids, churn hysteresis and complaint cases of one customer; JSON-friendly
    (``to_dict``/``from_dict``) for the customer-state changelog.

    >>> s = CustomerAlertState("c1", last_alert_at={"detractor": 5})
    >>> CustomerAlertState.from_dict(s.to_dict()) == s
    True
    """

    customer_id: str
    last_event_at: int = 0  # the customer's latest event time seen
    last_alert_at: dict[str, int] = field(default_factory=dict)  # alert type -> event time (cooldown)
    fired: dict[str, int] = field(default_factory=dict)  # alert_id -> occurred_at: never emit an id twice
    churn_armed: bool = True  # hysteresis: False after an alert until risk falls below re-arm level
    last_risk: float | None = None
    # case_id -> the case as a list, compact in the JSON changelog (its layout: processors.alerts)
    cases: dict[str, list[Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _ALERT_STATE_FIELDS}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CustomerAlertState:
        return cls(**{k: v for k, v in data.items() if k in _ALERT_STATE_FIELDS})


_ALERT_STATE_FIELDS = tuple(f.name for f in fields(CustomerAlertState))
