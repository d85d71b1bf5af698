"""Clients of a running worker's web endpoints, and where an embedded worker answers.

``cem run``, ``cem query``, ``cem top``, ``cem bench`` and the tests talk to a worker through these.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from pipeline.settings import Settings


class WorkerError(RuntimeError):
    pass


def total(totals: dict, name: str) -> int:
    """A counter's total over its labels, from ``/status`` totals (0 if it has none yet)."""
    return int(sum(totals.get(name, {}).values()))


def received(status: dict) -> int:
    """Records the worker has read from the producers, from its ``/status``: not the touchpoints it
    forwarded to another partition itself (identity stitching), which it reads again there."""
    return total(status["totals"], "touchpoints_received") - in_transit(status)[1]


def in_transit(status: dict) -> tuple[int, int]:
    """(touchpoints this worker forwarded, forwarded touchpoints it has read) so far."""
    totals = status["totals"]
    return total(totals, "touchpoints_forwarded"), int(totals.get("identity_events", {}).get("arrived", 0))


def merged(statuses: Sequence[dict]) -> dict:
    """One ``/status`` for several workers: the counters and row counts summed, each latency
    percentile the highest worker's (an upper bound: percentiles do not add), the first receipt the
    earliest, the last commit the latest, started when all are; customer states the largest count
    (each worker also holds standby replicas of the others' states, so a lower bound).

    >>> a = {"totals": {"touchpoints_received": {"": 3}}, "pending_rows": 1, "committed_records": 3,
    ...      "latency_committed": {"p50_ms": 5.0, "p99_ms": 9.0, "samples": 3}, "started": 1.0,
    ...      "first_received": 10.0, "last_committed": 12.0}
    >>> b = {"totals": {"touchpoints_received": {"": 2}}, "pending_rows": 0, "committed_records": 1,
    ...      "latency_committed": {"p50_ms": 7.0, "p99_ms": 8.0, "samples": 1}, "started": 2.0,
    ...      "first_received": None, "last_committed": 13.0}
    >>> st = merged([a, b])
    >>> st["totals"], st["pending_rows"], st["committed_records"], st["latency_committed"]
    ({'touchpoints_received': {'': 5}}, 1, 4, {'p50_ms': 7.0, 'p99_ms': 9.0, 'samples': 4})
    >>> st["first_received"], st["last_committed"], st["started"]
    (10.0, 13.0, 2.0)
    """
    group = dict(statuses[0])
    totals: dict[str, dict[str, float]] = {}
    for status in statuses:
        for name, labels in status["totals"].items():
            into = totals.setdefault(name, {})
            for label, value in labels.items():
                into[label] = into.get(label, 0) + value
    group["totals"] = totals
    for key in ("pending_rows", "committed_records"):
        if key in group:
            group[key] = sum(status.get(key) or 0 for status in statuses)
    if "customer_states" in group:  # each worker's count has its standby replicas' states: not a sum
        group["customer_states"] = max(status.get("customer_states") or 0 for status in statuses)
    for key in ("latency_committed", "latency_alert"):
        if key in group:
            group[key] = {
                name: sum(st[key][name] for st in statuses) if name == "samples"
                else max((st[key][name] for st in statuses if st[key][name] is not None), default=None)
                for name in group[key]
            }
    group["first_received"] = min((st["first_received"] for st in statuses if st.get("first_received")), default=None)
    group["last_committed"] = max((st["last_committed"] for st in statuses if st.get("last_committed")), default=None)
    group["started"] = None if not all(st.get("started") for st in statuses) else max(st["started"] for st in statuses)
    return group


def _headers() -> dict[str, str]:
    """The bearer token a worker beyond loopback requires (``CEM_WEB_TOKEN``), if one is set."""
    token = Settings.from_env().web_token
    return {"Authorization": f"Bearer {token}"} if token else {}


def query_worker(url: str, sql: str, timeout_s: float = 60.0) -> tuple[list[str], list[list]]:
    """SQL through a running worker's ``/query``; ClickHouse's refusal comes back as :class:`WorkerError`."""
    request = urllib.request.Request(f"{url}/query", data=sql.encode(), method="POST", headers=_headers())
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            body = json.load(response)
    except urllib.error.HTTPError as exc:  # the worker answers a bad query with 400 {"error": ...}
        raise _refusal(exc) from None
    return body["columns"], body["rows"]


def _refusal(exc: urllib.error.HTTPError) -> WorkerError:
    """The worker's ``{"error": ...}`` answer as a :class:`WorkerError`."""
    try:
        return WorkerError(json.loads(exc.read() or b"{}").get("error") or str(exc))
    except ValueError:
        return WorkerError(str(exc))


def fetch_customer(url: str, customer_id: str, timeout_s: float = 30.0) -> dict:
    """A running worker's 360° view of one customer (``GET /customers/ID``): with the churn drivers,
    which only the worker holding the customer's state can give."""
    request = urllib.request.Request(f"{url}/customers/{urllib.parse.quote(customer_id, safe='')}", headers=_headers())
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return json.load(response)
    except urllib.error.HTTPError as exc:
        raise _refusal(exc) from None


def fetch_held_customer(run: dict, customer_id: str) -> dict:
    """The 360° view from the workers of a run file (:func:`running_worker`): the view of the worker
    that holds the customer's state, whose view alone has the churn drivers, else the first's."""
    views = (fetch_customer(url, customer_id) for url, _ in group_urls(run))
    first = next(views)
    return first if first.get("churn") is not None else next((v for v in views if v.get("churn") is not None), first)


def fetch_status(url: str, timeout_s: float = 5.0) -> dict:
    """A running worker's ``/status``."""
    request = urllib.request.Request(f"{url}/status", headers=_headers())
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return json.load(response)


def running_worker(data_dir: Path) -> dict | None:
    """The ``worker.json`` of a live worker that holds the chDB engine under ``data_dir``, if any."""
    try:
        info = json.loads((Path(data_dir) / "worker.json").read_text())
        os.kill(info["pid"], 0)
    except (OSError, ValueError, KeyError):  # absent, unreadable, or its process is gone
        return None
    return None if _zombie(info["pid"]) else info


def _zombie(pid: int) -> bool:
    """A process that has exited but was not reaped (its parent was killed): not a running worker."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def running_worker_url(data_dir: Path) -> str | None:
    """The status URL of a live worker that holds the chDB engine under ``data_dir``, if any."""
    info = running_worker(data_dir)
    return f"http://127.0.0.1:{info['web_port']}" if info else None


def write_run_file(data_dir: Path, pid: int, settings: Settings, group: Sequence[Settings] = ()) -> None:
    """Tell ``cem query``, ``cem top`` and ``cem customer`` who answers for ``data_dir``: the worker
    ``pid`` with ``settings`` (its ports), which serves the read side; ``group``: the settings of
    every worker of its group (their ports), each holding its own partitions' customers."""
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "worker.json").write_text(json.dumps({
        "pid": pid, "web_port": settings.web_port, "metrics_port": settings.metrics_port,
        "clickhouse_url": settings.clickhouse_url,
        "workers": [{"web_port": s.web_port, "metrics_port": s.metrics_port} for s in group],
    }))


def group_urls(run: dict) -> list[tuple[str, str]]:
    """The (status, metrics) URLs of every worker of a run file (:func:`running_worker`).

    >>> group_urls({"web_port": 6066, "metrics_port": 9108})
    [('http://127.0.0.1:6066', 'http://127.0.0.1:9108')]
    >>> [s for s, _ in group_urls({"web_port": 1, "workers": [{"web_port": 1, "metrics_port": 2}, {"web_port": 3, "metrics_port": 4}]})]
    ['http://127.0.0.1:1', 'http://127.0.0.1:3']
    """
    workers = run.get("workers") or [run]
    return [(f"http://127.0.0.1:{w['web_port']}", f"http://127.0.0.1:{w.get('metrics_port')}") for w in workers]
