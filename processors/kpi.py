"""CX score rules: how an answer counts (the same rules as ``cem.kpi_minute``'s columns).

>>> nps_category(9), nps_category(7), nps_category(6)
('promoter', 'passive', 'detractor')
>>> csat_satisfied(4), csat_satisfied(3)
(True, False)
>>> signed_revenue("purchase", 20.0), signed_revenue("refund", 5.0), signed_revenue("login", None)
(20.0, -5.0, 0.0)
"""

from __future__ import annotations

from schemas.contract import CSAT_NEUTRAL, CSAT_SATISFIED_MIN, DETRACTOR_MAX, PROMOTER_MIN

__all__ = ["CSAT_NEUTRAL", "CSAT_SATISFIED_MIN", "DETRACTOR_MAX", "PROMOTER_MIN", "csat_satisfied", "is_promoter",
           "is_detractor", "nps_category", "signed_revenue"]


def is_promoter(nps: int) -> bool:
    return nps >= PROMOTER_MIN


def is_detractor(nps: int) -> bool:
    return nps <= DETRACTOR_MAX


def nps_category(nps: int) -> str:
    if is_promoter(nps):
        return "promoter"
    return "detractor" if is_detractor(nps) else "passive"


def csat_satisfied(csat: int) -> bool:
    return csat >= CSAT_SATISFIED_MIN


def signed_revenue(type_: str, amount: float | None) -> float:
    """Net revenue of one touchpoint: purchases add, refunds (positive amounts) subtract."""
    if not amount:
        return 0.0
    if type_ == "purchase":
        return amount
    return -amount if type_ == "refund" else 0.0
