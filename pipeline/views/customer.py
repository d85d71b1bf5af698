"""The 360° view of one customer (``cem customer ID``, ``GET /customers/ID``), read from ClickHouse.

Every part of it is one SELECT through the same door as ``cem query`` and ``/query`` (read-only by
construction, :mod:`pipeline.views.reads`), so the view can read nothing that door cannot.

``customer_state`` is ordered by ``customer_id`` (a lookup); ``touchpoints_enriched`` and ``alerts``
keep a bloom-filter index on ``customer_id`` that skips the granules without the customer (their sort
keys leave the id out so an erasure can anonymise it in place), which with thousands of customers a
granule is most of them. ``benchmarks/customer_view.py`` measures it with a million touchpoints.

A stitched customer's view takes in the touchpoints its identifiers had before they were linked to it
(``customer_state.identifiers``; see ``processors.stitching``), so the journey starts where it did.

When identifiers are pseudonymised (``CEM_PSEUDONYMIZE``) the stored ``customer_id`` is the keyed hash
of the one channel systems send: the view hashes the requested id the same way before it looks.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from pipeline.views.query import json_cell, render
from schemas.tables import TABLES
from sinks.clickhouse import quote

Query = Callable[[str], tuple[list[str], list[Any]]]
TIMELINE_ROWS = 20
STATE_COLUMNS = [name for name, _ in TABLES["customer_state"] if name != "customer_id"]

SECTIONS: dict[str, str] = {
    "profile": f"SELECT {', '.join(STATE_COLUMNS)} FROM {{db}}.customer_state FINAL WHERE customer_id = {{id}}",
    "channels": (
        "SELECT channel, count() AS touchpoints, min(occurred_at) AS first, max(occurred_at) AS last "
        "FROM {db}.touchpoints_enriched WHERE customer_id IN ({ids}) GROUP BY channel ORDER BY touchpoints DESC, channel"
    ),
    "journey": (
        "SELECT journey_stage AS stage, min(occurred_at) AS entered, count() AS touchpoints "
        "FROM {db}.touchpoints_enriched WHERE customer_id IN ({ids}) GROUP BY stage ORDER BY entered"
    ),
    "sentiment_trend": (
        "SELECT toDate(occurred_at) AS day, round(avg(sentiment), 3) AS mean, count() AS texts "
        "FROM {db}.touchpoints_enriched WHERE customer_id IN ({ids}) AND sentiment IS NOT NULL "
        "GROUP BY day ORDER BY day DESC LIMIT 14"
    ),
    "cases": (
        "SELECT case_id, min(occurred_at) AS opened, max(occurred_at) AS last_contact, count() AS touchpoints, "
        "countIf(type = 'complaint_resolved') > 0 AS resolved "
        "FROM {db}.touchpoints_enriched WHERE customer_id IN ({ids}) AND case_id IS NOT NULL "
        "GROUP BY case_id ORDER BY opened DESC LIMIT 20"
    ),
    "timeline": (
        "SELECT occurred_at, event_id, channel, type, journey_stage, amount, currency, csat, nps, ces, "
        "round(sentiment, 3) AS sentiment, round(churn_risk, 3) AS churn_risk, case_id "
        f"FROM {{db}}.touchpoints_enriched WHERE customer_id IN ({{ids}}) ORDER BY occurred_at DESC, event_id DESC "
        f"LIMIT {TIMELINE_ROWS}"
    ),
    "alerts": (
        "SELECT emitted_at, type, severity, channel, reason, recommended_action "
        "FROM {db}.alerts FINAL WHERE customer_id IN ({ids}) ORDER BY emitted_at DESC LIMIT 20"
    ),
}


def customer_view(query: Query, customer_id: str, database: str = "cem",
                  pseudonymize: Callable[[str], str] | None = None,
                  now: dt.datetime | None = None) -> dict[str, Any]:
    """Everything ClickHouse knows of one customer, as plain JSON values.

    ``now`` (default: the wall clock) is only for the RFM recency: the view is a read, and the
    pipeline's own logic never uses it.
    """
    stored = pseudonymize(customer_id) if pseudonymize is not None else customer_id
    profile = _rows(query, SECTIONS["profile"].format(db=database, id=quote(stored)))
    state = profile[0] if profile else None
    # The customer's touchpoints, and those its identifiers had before they were linked to it.
    ids = ", ".join(quote(i) for i in [stored, *(state or {}).get("identifiers", [])])
    parts = {name: _rows(query, sql.format(db=database, ids=ids)) for name, sql in SECTIONS.items() if name != "profile"}
    view: dict[str, Any] = {"customer_id": customer_id, "found": bool(state or parts["channels"])}
    if stored != customer_id:
        view["stored_as"] = stored
    view["profile"] = state
    view["rfm"] = rfm(state, now or dt.datetime.now(dt.timezone.utc)) if state else None
    view.update(parts)
    return view


def rfm(state: dict[str, Any], now: dt.datetime) -> dict[str, Any]:
    """Recency (days since the last touchpoint), frequency (orders) and monetary value (net revenue).

    >>> rfm({"last_seen": "2026-11-20T10:00:00+00:00", "orders": 3, "revenue": 120.5, "refunds": 20.5},
    ...     dt.datetime(2026, 12, 1, 10, tzinfo=dt.timezone.utc))
    {'recency_days': 11.0, 'frequency': 3, 'monetary': 100.0}
    """
    last = dt.datetime.fromisoformat(state["last_seen"])
    if last.tzinfo is None:
        last = last.replace(tzinfo=dt.timezone.utc)
    return {
        "recency_days": round((now - last).total_seconds() / 86400, 1),
        "frequency": state["orders"],
        "monetary": round((state["revenue"] or 0) - (state["refunds"] or 0), 4),
    }


def _rows(query: Query, sql: str) -> list[dict[str, Any]]:
    columns, rows = query(sql)
    return [{c: json_cell(v) for c, v in zip(columns, row, strict=True)} for row in rows]


def render_view(view: dict[str, Any]) -> str:
    """The view as text: the profile as ``name: value`` lines, every list as a table."""
    if not view["found"]:
        return f"no customer {view['customer_id']!r} in ClickHouse"
    lines = [f"customer {view['customer_id']}" + (f" (stored as {view['stored_as']})" if "stored_as" in view else "")]
    for name in ("profile", "rfm"):
        if view[name]:
            lines += ["", name] + [f"  {k}: {v}" for k, v in view[name].items() if v is not None]
    churn = view.get("churn")
    if churn:
        drivers = ", ".join(f"{d['feature']} {d['contribution']:+.3f}" for d in churn["drivers"])
        lines += ["", "churn", f"  risk: {churn['risk']} (model {churn['model_version']})", f"  drivers: {drivers}"]
    for name in SECTIONS:
        rows = view.get(name)
        if name != "profile" and rows:
            columns = list(rows[0])
            lines += ["", name, render(columns, [[r[c] for c in columns] for r in rows])]
    return "\n".join(lines)
