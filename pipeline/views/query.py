"""``cem query``: SQL against the embedded chDB (directly, or through the running worker) or a server."""

from __future__ import annotations

import json
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from pipeline.settings import Settings
from pipeline.views.client import query_worker, running_worker_url


def run_query(settings: Settings, sql: str) -> tuple[list[str], list[Any]]:
    if settings.embedded_clickhouse:
        from sinks.engine import serving

        # chDB allows one engine per directory: if `cem engine` or a worker holds it, ask that.
        engine = serving(settings.clickhouse_path().parent)
        if engine is not None:
            columns, rows = engine.read(sql)
            return columns, [list(row) for row in rows]
        url = running_worker_url(settings.clickhouse_path().parent)
        if url is not None:
            return query_worker(url, sql)
        if not settings.clickhouse_path().exists():
            raise FileNotFoundError(f"no ClickHouse data under {settings.clickhouse_path()}: run `cem run` first")
    from sinks.clickhouse import connect

    client = connect(settings.clickhouse_url, settings.clickhouse_user, settings.clickhouse_password)
    result = client.query(sql)
    return list(result.column_names), [list(row) for row in result.result_rows]


def json_cell(value: Any) -> Any:
    """A ClickHouse value as plain JSON (datetimes ISO-8601, decimals as floats, bytes as text)."""
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def render(columns: list[str], rows: list[Any], fmt: str = "table") -> str:
    """Rows as JSON lines (one object per row) or an aligned text table.

    >>> print(render(["channel", "events"], [["web", 3], ["sms", 12]]))
    channel  events
    -------  ------
    web           3
    sms          12
    """
    if fmt == "json":
        return "\n".join(json.dumps({c: json_cell(v) for c, v in zip(columns, row, strict=True)}, default=str) for row in rows)
    cells = [[_text(json_cell(v)) for v in row] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    numeric = [all(_is_number(row[i]) for row in rows) and rows != [] for i in range(len(columns))]
    def fmt_row(values: list[str]) -> str:
        return "  ".join(v.rjust(w) if n else v.ljust(w) for v, w, n in zip(values, widths, numeric, strict=True)).rstrip()
    lines = [fmt_row(list(columns)), "  ".join("-" * w for w in widths)]
    lines += [fmt_row(r) for r in cells]
    return "\n".join(lines)


def _text(value: Any) -> str:
    return "NULL" if value is None else str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, Decimal)) and not isinstance(value, bool)
