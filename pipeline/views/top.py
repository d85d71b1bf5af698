"""``cem top``: a live terminal view of a running pipeline.

Reads the worker's ``GET /status`` (counters, commit latency, pending rows), its Prometheus ``/metrics``
(consumer lag, when the metrics URL is known) and ClickHouse (KPIs per channel over the last 15 minutes
of *event* time, latest alerts). Two modes:

* embedded (``cem run`` beside it): ``--data-dir`` (default ``CEM_DATA_DIR`` / ``./.cem``); the run
  file ``worker.json`` gives the workers' status and metrics ports (the view is the whole group's:
  counters and lag summed over the workers), and SQL goes through the first worker's ``/query``
  (chDB allows one engine per directory, held by the worker or by ``cem engine``);
* production: ``--status-url http://worker:6066 --clickhouse-url http://clickhouse:8123``
  (``--metrics-url http://worker:9108`` for the lag; credentials from ``CEM_CLICKHOUSE_USER`` /
  ``CEM_CLICKHOUSE_PASSWORD``).

Fetching (:func:`collect`, and the small ``fetch_*`` / ``compute_*`` functions) is separate from
rendering (:func:`render_frame`), so each can be tested alone. Errors become lines in the view.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.views.client import group_urls, merged

KPI_WINDOW_MINUTES = 15
ALERT_ROWS = 8
FUNNEL_REFRESH_S = 30.0  # the funnel reads every stored touchpoint: not at every refresh
HTTP_TIMEOUT_S = 3.0

Totals = dict[str, dict[str, float]]
QueryFn = Callable[[str], tuple[list[str], list[Any]]]


# -- sources --------------------------------------------------------------------------------------
@dataclass
class Sources:
    """Where to read from, resolved once per refresh (a worker may start or stop meanwhile)."""

    status_url: str | None = None
    metrics_url: str | None = None
    query: QueryFn | None = None
    label: str = ""
    error: str | None = None  # why there is no status URL
    group: list[tuple[str, str]] = field(default_factory=list)  # every worker's (status, metrics) URLs, of cem run


@dataclass
class Target:
    """What the user asked for on the command line."""

    data_dir: Path | None = None
    status_url: str | None = None
    metrics_url: str | None = None
    clickhouse_url: str | None = None


def resolve_sources(target: Target) -> Sources:
    """Turn the command-line target into URLs and a query function."""
    from pipeline.settings import Settings

    settings = Settings.from_env()
    sources = Sources(metrics_url=_strip(target.metrics_url))
    if target.status_url:
        sources.status_url = _strip(target.status_url)
        assert sources.status_url is not None  # a non-empty URL stays a string
        sources.label = sources.status_url
    else:
        data_dir = Path(target.data_dir or settings.data_dir)
        sources.label = str(data_dir)
        info = read_run_file(data_dir)
        if info is None:
            sources.error = f"no running worker under {data_dir} (start `cem run`, or give --status-url)"
        else:
            sources.status_url = f"http://127.0.0.1:{info['web_port']}"
            if sources.metrics_url is None and info.get("metrics_port"):
                sources.metrics_url = f"http://127.0.0.1:{info['metrics_port']}"
                sources.group = group_urls(info)
    if target.clickhouse_url:
        ch_settings = settings.replace(clickhouse_url=target.clickhouse_url)
        sources.query = lambda sql: _server_query(ch_settings, sql)
    elif sources.status_url:
        url = sources.status_url
        sources.query = lambda sql: _worker_query(url, sql)
    return sources


def read_run_file(data_dir: Path) -> dict | None:
    """The live worker's ``worker.json`` under ``data_dir`` (None if absent or its process is gone)."""
    from pipeline.views.client import running_worker

    return running_worker(data_dir)


def _strip(url: str | None) -> str | None:
    return url.rstrip("/") if url else None


def _worker_query(url: str, sql: str) -> tuple[list[str], list[Any]]:
    from pipeline.views.client import query_worker

    return query_worker(url, sql, timeout_s=10.0)  # short: the view refreshes every second


def _server_query(settings: Any, sql: str) -> tuple[list[str], list[Any]]:
    from pipeline.views.query import run_query

    return run_query(settings, sql)


# -- fetching -------------------------------------------------------------------------------------
def fetch_status(status_url: str, timeout_s: float = HTTP_TIMEOUT_S) -> dict:
    from pipeline.views.client import fetch_status as worker_status

    return worker_status(status_url, timeout_s)


def fetch_lag(metrics_url: str, timeout_s: float = HTTP_TIMEOUT_S) -> dict[str, float]:
    """``cem_consumer_lag`` summed per topic, from the worker's Prometheus exposition."""
    with urllib.request.urlopen(f"{metrics_url}/metrics", timeout=timeout_s) as response:
        return parse_lag(response.read().decode("utf-8", "replace"))


def parse_lag(text: str) -> dict[str, float]:
    """Sum ``cem_consumer_lag`` by topic.

    >>> parse_lag('# TYPE cem_consumer_lag gauge\\ncem_consumer_lag{partition="0",topic="t"} 3.0\\n'
    ...           'cem_consumer_lag{partition="1",topic="t"} 4.0\\n')
    {'t': 7.0}
    """
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "cem_consumer_lag":
            continue
        for sample in family.samples:
            topic = sample.labels.get("topic", "?")
            out[topic] = out.get(topic, 0.0) + float(sample.value)
    return out


def kpi_sql(database: str = "cem", window_minutes: int = KPI_WINDOW_MINUTES) -> str:
    """KPIs per channel over the last ``window_minutes`` of event time (ending at the newest minute)."""
    return f"""
        WITH (SELECT max(minute) FROM {database}.kpi_minute) AS latest
        SELECT
            channel,
            sum(events) AS events,
            100 * (toInt64(sum(promoters)) - toInt64(sum(detractors))) / nullIf(sum(nps_responses), 0) AS nps,
            sum(nps_responses) AS nps_n,
            100 * sum(csat_satisfied) / nullIf(sum(csat_responses), 0) AS csat_pct,
            sum(ces_sum) / nullIf(sum(ces_responses), 0) AS ces,
            sum(sentiment_sum) / nullIf(sum(sentiment_n), 0) AS sentiment,
            toFloat64(sum(revenue)) AS revenue,
            toString(latest) AS latest_minute
        FROM {database}.kpi_minute
        WHERE minute > latest - INTERVAL {int(window_minutes)} MINUTE
        GROUP BY channel
        ORDER BY events DESC, channel
    """


def alerts_sql(database: str = "cem", limit: int = ALERT_ROWS) -> str:
    return f"""
        SELECT toString(emitted_at) AS emitted_at, type, severity, customer_id, channel, reason
        FROM {database}.alerts ORDER BY emitted_at DESC LIMIT {int(limit)}
    """


def funnel_sql(database: str = "cem") -> str:
    """Customers through the journey stages in order, summed over their entry channels."""
    from schemas.contract import FUNNEL_STAGES

    sums = ", ".join(f"sum({stage}) AS {stage}" for stage in FUNNEL_STAGES)
    return f"SELECT sum(customers) AS customers, {sums} FROM {database}.journey_funnel"


def fetch_funnel(query: QueryFn, database: str = "cem") -> dict | None:
    """The funnel's counts, or None if ``cem.journey_funnel`` does not exist (an older database)."""
    records = _records_unless_missing(query, funnel_sql(database))
    return records[0] if records else None


def funnel_line(funnel: dict) -> str:
    """One line: each stage's customers, and the share of the previous stage's that got there.

    >>> funnel_line({"customers": 9, "awareness": 8, "consideration": 4, "purchase": 1, "retention": 0})
    'awareness 8 → consideration 4 (50%) → purchase 1 (25%) → retention 0 (0%)   of 9 customers'
    """
    from schemas.contract import FUNNEL_STAGES

    parts, previous = [], None
    for stage in FUNNEL_STAGES:
        n = int(funnel.get(stage) or 0)
        share = "" if previous is None else f" ({100 * n / previous:.0f}%)" if previous else " (—)"
        parts.append(f"{stage} {n:,}{share}")
        previous = n
    return " → ".join(parts) + f"   of {int(funnel.get('customers') or 0):,} customers"


def fetch_kpis(query: QueryFn, database: str = "cem") -> tuple[list[dict], str | None]:
    """(rows as dicts, the newest minute) — no rows and None when there is no data yet."""
    columns, rows = query(kpi_sql(database))
    records = [dict(zip(columns, row, strict=True)) for row in rows]
    latest = records[0]["latest_minute"] if records else None
    for record in records:
        record.pop("latest_minute", None)
    return records, latest


def fetch_alerts(query: QueryFn, database: str = "cem") -> list[dict] | None:
    """Latest alerts, or None if ``cem.alerts`` does not exist (yet)."""
    return _records_unless_missing(query, alerts_sql(database))


def _records_unless_missing(query: QueryFn, sql: str) -> list[dict] | None:
    """The rows of ``sql`` as dicts, or None if a table it reads does not exist."""
    try:
        columns, rows = query(sql)
    except Exception as exc:
        if is_missing_table(exc):
            return None
        raise
    return [dict(zip(columns, row, strict=True)) for row in rows]


def is_missing_table(exc: BaseException) -> bool:
    """ClickHouse's 'table does not exist' (code 60, UNKNOWN_TABLE), from chDB or a server.

    >>> is_missing_table(RuntimeError("Code: 60. DB::Exception: Table cem.alerts does not exist. (UNKNOWN_TABLE)"))
    True
    """
    text = str(exc)
    return "UNKNOWN_TABLE" in text or "does not exist" in text or "doesn't exist" in text


def compute_rates(previous: Totals | None, current: Totals, seconds: float) -> Totals:
    """Per-second increase of every counter between two ``/status`` totals (counter resets give 0).

    >>> compute_rates({"processed": {"web": 10}}, {"processed": {"web": 30, "sms": 4}}, 2.0)
    {'processed': {'web': 10.0, 'sms': 2.0}}
    """
    if previous is None or seconds <= 0:
        return {}
    out: Totals = {}
    for name, values in current.items():
        before = previous.get(name, {})
        out[name] = {label: max(0.0, value - before.get(label, 0.0)) / seconds for label, value in values.items()}
    return out


def total(values: dict[str, float] | None) -> float:
    return float(sum((values or {}).values()))


def by_first_label(values: dict[str, float] | None) -> dict[str, float]:
    """``{"undecodable,decode": 2}`` -> ``{"undecodable": 2}`` (labels joined by ',' in /status)."""
    out: dict[str, float] = {}
    for label, value in (values or {}).items():
        key = label.split(",", 1)[0]
        out[key] = out.get(key, 0.0) + value
    return out


@dataclass
class Snapshot:
    """Everything one frame shows; each part carries its own error."""

    at: float
    source: str
    status: dict | None = None
    status_error: str | None = None
    rates: Totals = field(default_factory=dict)
    rate_window_s: float | None = None
    lag: dict[str, float] | None = None
    lag_error: str | None = None
    kpis: list[dict] = field(default_factory=list)
    kpi_latest: str | None = None
    kpi_error: str | None = None
    alerts: list[dict] | None = None
    alerts_error: str | None = None
    funnel: dict | None = None
    funnel_error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None


def describe_error(exc: BaseException) -> str:
    """One line, no traceback.

    >>> describe_error(urllib.error.URLError(ConnectionRefusedError(111, "Connection refused")))
    'unreachable: [Errno 111] Connection refused'
    """
    if isinstance(exc, urllib.error.HTTPError):
        try:
            body = json.loads(exc.read() or b"{}")
            return f"HTTP {exc.code}: {body.get('error', exc.reason)}".splitlines()[0][:300]
        except Exception:
            return f"HTTP {exc.code}: {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return f"unreachable: {exc.reason}"
    text = str(exc).strip()
    first = text.splitlines()[0] if text else repr(exc)
    return first[:300]


class Collector:
    """Keeps the previous ``/status`` sample so that successive snapshots carry rates."""

    def __init__(self, target: Target, database: str = "cem"):
        self.target = target
        self.database = database
        self._previous: tuple[float, int | None, Totals] | None = None
        self._funnel: tuple[float, dict | None] | None = None  # (when read, what)

    def collect(self) -> Snapshot:
        try:
            sources = resolve_sources(self.target)
        except Exception as exc:  # e.g. a malformed worker.json or CEM_* variable
            sources = Sources(label=str(self.target.status_url or self.target.data_dir or ""), error=describe_error(exc))
        now = time.monotonic()
        snap = Snapshot(at=time.time(), source=sources.label)
        if sources.status_url is None:
            snap.status_error = sources.error
        else:
            try:
                urls = [status for status, _ in sources.group] or [sources.status_url]
                statuses = [fetch_status(url) for url in urls]
                snap.status = statuses[0] if len(statuses) == 1 else merged(statuses)  # the group's
            except Exception as exc:
                snap.status_error = describe_error(exc)
        if snap.status is not None:
            totals = snap.status.get("totals") or {}
            pid = snap.status.get("pid")
            if self._previous is not None and self._previous[1] == pid:
                snap.rate_window_s = now - self._previous[0]
                snap.rates = compute_rates(self._previous[2], totals, snap.rate_window_s)
            self._previous = (now, pid, totals)
        if sources.metrics_url:
            try:
                snap.lag = {}
                for url in [metrics for _, metrics in sources.group] or [sources.metrics_url]:
                    for topic, lag in fetch_lag(url).items():  # each worker exports its own partitions'
                        snap.lag[topic] = snap.lag.get(topic, 0.0) + lag
            except Exception as exc:
                snap.lag_error = describe_error(exc)
        if sources.query is None:
            snap.kpi_error = snap.alerts_error = "no ClickHouse to ask (no worker; or give --clickhouse-url)"
            return snap
        if snap.status is None and not self.target.clickhouse_url:
            snap.kpi_error = snap.alerts_error = "read through the worker, which does not answer"
            return snap
        try:
            snap.kpis, snap.kpi_latest = fetch_kpis(sources.query, self.database)
        except Exception as exc:
            snap.kpi_error = describe_error(exc)
        try:
            snap.alerts = fetch_alerts(sources.query, self.database)
        except Exception as exc:
            snap.alerts_error = describe_error(exc)
        try:
            if self._funnel is None or now - self._funnel[0] >= FUNNEL_REFRESH_S:
                self._funnel = (now, fetch_funnel(sources.query, self.database))
            snap.funnel = self._funnel[1]
        except Exception as exc:
            snap.funnel_error = describe_error(exc)
        return snap


# -- rendering ------------------------------------------------------------------------------------
def _num(value: Any, digits: int = 0, none: str = "—") -> str:
    if value is None:
        return none
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return f"{number:,.{digits}f}"


def _rate(rates: Totals, name: str, label: str | None = None, available: bool = True) -> str:
    if not available:
        return "…"
    values = rates.get(name, {})
    value = total(values) if label is None else values.get(label, 0.0)
    return _num(value, 1)


def render_frame(snap: Snapshot, width: int = 160) -> Any:
    """A rich renderable for one snapshot (used by Live and by ``--once``), laid out for ``width`` columns."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.text import Text

    header = Text()
    header.append("cem top", style="bold")
    header.append(f"  {snap.source}  ", style="dim")
    header.append(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(snap.at)), style="dim")
    if snap.status is not None:
        header.append(f"  worker pid {snap.status.get('pid')}", style="dim")
        if not snap.status.get("started"):
            header.append("  (joining the consumer group…)", style="yellow")

    if snap.status is None:
        pipeline: Any = Panel(Text(f"worker: {snap.status_error}", style="bold red"), title="Pipeline")
    else:
        pipeline = _side_by_side([_throughput_table(snap), _dead_letter_table(snap), _health_table(snap)], width)
    parts = [header, pipeline, _kpi_panel(snap), _funnel_text(snap), _alerts_panel(snap)]
    return Group(*parts)


def _funnel_text(snap: Snapshot) -> Any:
    from rich.text import Text

    text = Text("journey  ", style="bold")
    if snap.funnel_error:
        text.append(f"ClickHouse: {snap.funnel_error}", style="red")
    elif not snap.funnel or not snap.funnel.get("customers"):
        text.append("no journeys yet", style="dim")
    else:
        text.append(funnel_line(snap.funnel))
    return text


def _side_by_side(tables: list[Any], width: int, gap: int = 2) -> Any:
    """Tables left to right while they fit at their natural width, then on the next line."""
    from rich.console import Console, Group
    from rich.measure import Measurement
    from rich.table import Table

    console = Console(width=max(width, 20))
    rows: list[list[Any]] = [[]]
    used = 0
    for table in tables:
        need = Measurement.get(console, console.options, table).maximum
        if rows[-1] and used + gap + need > width:
            rows.append([])
            used = 0
        used += need + (gap if rows[-1] else 0)
        rows[-1].append(table)
    lines = []
    for row in rows:
        grid = Table.grid(padding=(0, gap, 0, 0))
        grid.add_row(*row)
        lines.append(grid)
    return Group(*lines)


def _throughput_table(snap: Snapshot) -> Any:
    from rich.table import Table

    assert snap.status is not None  # render_frame draws the tables only with a status
    totals = snap.status.get("totals") or {}
    have_rates = snap.rate_window_s is not None
    table = Table(title="Throughput", title_justify="left", expand=False)
    table.add_column("channel")
    for name in ("in", "processed", "dedup"):
        table.add_column(name, justify="right")
    table.add_column("in/s", justify="right")
    table.add_column("proc/s", justify="right")
    received, processed, dedup = (totals.get(k, {}) for k in ("touchpoints_received", "touchpoints_processed", "touchpoints_deduplicated"))
    channels = sorted(set(received) | set(processed), key=lambda c: (-received.get(c, 0), c))
    for channel in channels:
        table.add_row(
            channel, _num(received.get(channel, 0)), _num(processed.get(channel, 0)), _num(dedup.get(channel, 0)),
            _rate(snap.rates, "touchpoints_received", channel, have_rates),
            _rate(snap.rates, "touchpoints_processed", channel, have_rates),
        )
    table.add_section()
    table.add_row(
        "total", _num(total(received)), _num(total(processed)), _num(total(dedup)),
        _rate(snap.rates, "touchpoints_received", None, have_rates),
        _rate(snap.rates, "touchpoints_processed", None, have_rates), style="bold",
    )
    return table


def _dead_letter_table(snap: Snapshot) -> Any:
    from rich.table import Table

    assert snap.status is not None  # render_frame draws the tables only with a status
    totals = snap.status.get("totals") or {}
    have_rates = snap.rate_window_s is not None
    table = Table(title="Dead letters", title_justify="left")
    table.add_column("reason")
    table.add_column("total", justify="right")
    table.add_column("/s", justify="right")
    dead = by_first_label(totals.get("touchpoints_dead_lettered"))
    dead_rates = {"dl": by_first_label(snap.rates.get("touchpoints_dead_lettered"))}
    for reason in sorted(dead, key=lambda r: (-dead[r], r)):
        table.add_row(reason, _num(dead[reason]), _rate(dead_rates, "dl", reason, have_rates), style="red")
    if not dead:
        table.add_row("none", "0", _rate(dead_rates, "dl", None, have_rates), style="green")
    return table


def _health_table(snap: Snapshot) -> Any:
    from rich.table import Table

    status = snap.status
    assert status is not None  # render_frame draws the tables only with a status
    have_rates = snap.rate_window_s is not None
    table = Table(title="Health", title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    latency = status.get("latency_committed") or {}
    table.add_row("commit latency p50", _ms(latency.get("p50_ms")))
    table.add_row("commit latency p99", _ms(latency.get("p99_ms")))
    table.add_row("ClickHouse pending rows", _num(status.get("pending_rows")))
    table.add_row("committed records", _num(status.get("committed_records")))
    table.add_row("dead-lettered/s", _rate(snap.rates, "touchpoints_dead_lettered", None, have_rates))
    table.add_row("deduplicated/s", _rate(snap.rates, "touchpoints_deduplicated", None, have_rates))
    if snap.lag is not None:
        if not snap.lag:
            table.add_row("consumer lag", "— (no partitions yet)")
        for topic, lag in sorted(snap.lag.items()):
            table.add_row(f"consumer lag {topic}", _num(lag), style="yellow" if lag > 0 else None)
    elif snap.lag_error:
        table.add_row("consumer lag", f"[red]{snap.lag_error[:60]}[/red]")
    return table


def _ms(value: Any) -> str:
    return "—" if value is None else f"{float(value):,.1f} ms"


def _kpi_panel(snap: Snapshot) -> Any:
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    title = f"KPIs per channel, last {KPI_WINDOW_MINUTES} min of event time"
    if snap.kpi_latest:
        title += f" (to {snap.kpi_latest} UTC)"
    if snap.kpi_error:
        return Panel(Text(f"ClickHouse: {snap.kpi_error}", style="red"), title=title, title_align="left")
    if not snap.kpis:
        return Panel(Text("no KPI data yet", style="dim"), title=title, title_align="left")
    table = Table(title=title, title_justify="left")
    table.add_column("channel")
    for name in ("events", "NPS", "NPS n", "CSAT %", "CES", "sentiment", "revenue"):
        table.add_column(name, justify="right")
    for row in snap.kpis:
        table.add_row(
            str(row.get("channel")), _num(row.get("events")), _num(row.get("nps"), 1), _num(row.get("nps_n")),
            _num(row.get("csat_pct"), 1), _num(row.get("ces"), 2), _num(row.get("sentiment"), 2),
            _num(row.get("revenue"), 2),
        )
    return table


def _alerts_panel(snap: Snapshot) -> Any:
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    title = "Latest alerts"
    if snap.alerts_error:
        return Panel(Text(f"ClickHouse: {snap.alerts_error}", style="red"), title=title, title_align="left")
    if snap.alerts is None:
        return Panel(Text("no cem.alerts table (yet)", style="dim"), title=title, title_align="left")
    if not snap.alerts:
        return Panel(Text("no alerts", style="green"), title=title, title_align="left")
    table = Table(title=title, title_justify="left")
    for name in ("emitted_at", "type", "severity", "customer_id", "channel", "reason"):
        table.add_column(name, overflow="ellipsis", no_wrap=name != "reason")
    for row in snap.alerts:
        style = "red" if str(row.get("severity")) in ("critical", "high") else None
        table.add_row(*(str(row.get(c, "")) for c in ("emitted_at", "type", "severity", "customer_id", "channel", "reason")), style=style)
    return table


# -- command --------------------------------------------------------------------------------------
def add_top_parser(subparsers: Any) -> None:
    top = subparsers.add_parser("top", help="live terminal view: throughput, lag, latency, KPIs, alerts")
    where = top.add_mutually_exclusive_group()
    where.add_argument("--data-dir", default=None, help="the embedded run's data dir (default CEM_DATA_DIR or ./.cem)")
    where.add_argument("--status-url", default=None, help="a worker's status endpoint, e.g. http://worker:6066")
    top.add_argument("--metrics-url", default=None, help="its Prometheus endpoint (e.g. http://worker:9108), for the lag")
    top.add_argument("--clickhouse-url", default=None, help="ClickHouse server (default: through the worker's /query)")
    top.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    top.add_argument("--once", action="store_true", help="print one frame and exit (0 if the worker answered)")
    top.set_defaults(handler=_top)


def _top(args: argparse.Namespace) -> int:
    from pipeline.settings import Settings

    target = Target(
        data_dir=Path(args.data_dir) if args.data_dir else None, status_url=args.status_url,
        metrics_url=args.metrics_url, clickhouse_url=args.clickhouse_url,
    )
    collector = Collector(target, Settings.from_env().clickhouse_database)
    interval = max(0.05, float(args.interval))
    try:
        if args.once:
            return run_once(collector, interval)
        run_live(collector, interval)
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:  # `cem top | head`
        try:
            sys.stdout.close()
        except Exception:
            pass
    return 0


def _console() -> Any:
    import os

    from rich.console import Console

    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=160)
    return console


def run_once(collector: Collector, interval: float) -> int:
    """Two samples ``interval`` apart (so rates are real), one frame on stdout."""
    first = collector.collect()
    snap = first
    if first.ok:
        time.sleep(interval)
        snap = collector.collect()
    console = _console()
    console.print(render_frame(snap, console.width))
    return 0 if snap.ok else 1


def run_live(collector: Collector, interval: float) -> None:
    from rich.live import Live

    console = _console()
    if not console.is_terminal:  # piped: one frame per refresh, like `top -b`
        while True:
            console.print(render_frame(collector.collect(), console.width))
            console.rule()
            console.file.flush()
            time.sleep(interval)
    with Live(render_frame(collector.collect(), console.width), console=console, screen=console.is_terminal,
              auto_refresh=False, transient=False) as live:
        while True:
            time.sleep(interval)
            live.update(render_frame(collector.collect(), console.width), refresh=True)


if __name__ == "__main__":  # pragma: no cover
    parser = argparse.ArgumentParser(prog="cem")
    add_top_parser(parser.add_subparsers())
    ns = parser.parse_args()
    sys.exit(ns.handler(ns))
