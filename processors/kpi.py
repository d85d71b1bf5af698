"""CX score rules: how an answer counts (the same rules as ``cem.kpi_minute``'s columns).

>>> nps_category(9), nps_category(7), nps_category(6)
('promoter', 'passive', 'detractor')
>>> csat_satisfied(4), csat_satisfied(3)
(True, False)
>>> signed_revenue("purchase", 20.0), signed_revenue("refund", 5.0), signed_revenue("login", None)
(20.0, -5.0, 0.0)
"""

from __future__ import annotations

PROMOTER_MIN = 9  # NPS 9-10
DETRACTOR_MAX = 6  # NPS 0-6
CSAT_SATISFIED_MIN = 4  # CSAT 4-5 of 5


def nps_category(nps: int) -> str:
    if nps >= PROMOTER_MIN:
        return "promoter"
    return "detractor" if nps <= DETRACTOR_MAX else "passive"


def csat_satisfied(csat: int) -> bool:
    return csat >= CSAT_SATISFIED_MIN


def signed_revenue(type_: str, amount: float | None) -> float:
    """Net revenue of one touchpoint: purchases add, refunds (positive amounts) subtract."""
    if not amount:
        return 0.0
    if type_ == "purchase":
        return amount
    return -amount if type_ == "refund" else 0.0
