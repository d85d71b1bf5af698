"""``cem worker``: run the Faust worker with its metrics and status endpoints."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client import start_http_server

from pipeline.app.faust_app import create_app, tables_recovered
from pipeline.app.health import Watchdog
from pipeline.app.metrics import Metrics
from pipeline.settings import Settings
from pipeline.views.client import write_run_file
from pipeline.views.customer import customer_view
from pipeline.views.reads import ReadOnlyQueries
from pipeline.views.web import start_status_server
from processors.pseudonym import from_settings as pseudonymizer_from_settings
from schemas.contract import TOPIC_TOUCHPOINTS

T = TypeVar("T")

FAUST_LOG_LEVELS = {"debug": "debug", "info": "info", "warn": "warn", "warning": "warn", "error": "error"}


def latency_summary(latencies: Any) -> dict[str, float | None]:
    """p50/p99 in milliseconds of a sequence of seconds.

    >>> latency_summary([0.010] * 98 + [0.5, 0.5])
    {'p50_ms': 10.0, 'p99_ms': 500.0, 'samples': 100}
    """
    values = sorted(latencies)
    if not values:
        return {"p50_ms": None, "p99_ms": None, "samples": 0}
    pick = lambda q: round(values[min(len(values) - 1, int(q * len(values)))] * 1000, 1)  # noqa: E731
    return {"p50_ms": pick(0.50), "p99_ms": pick(0.99), "samples": len(values)}


def _assigned(app: Any) -> list[int]:
    """The touchpoint partitions the worker holds: a plain read of the consumer's assignment, from
    the HTTP thread, so never ``app.consumer``, which would create the consumer on this thread."""
    consumer = app._consumer
    try:
        return sorted(tp.partition for tp in consumer.assignment() if tp.topic == TOPIC_TOUCHPOINTS) if consumer else []
    except Exception:  # its thread not started yet
        return []


def run_worker(settings: Settings) -> None:
    """Blocks until the worker stops (SIGTERM / SIGINT flush the sinks first)."""
    _quiet_client_logs(settings.log_level)
    _install_uvloop()  # before the app exists: creating it touches the event loop
    metrics = Metrics()
    app, worker = create_app(settings, metrics)
    start_http_server(settings.metrics_port, addr=settings.metrics_host, registry=metrics.registry)

    def status() -> dict:
        commit = worker.commit
        return {
            "pid": os.getpid(),
            "started": worker.started,
            "assigned": _assigned(app),
            "live": worker.health.live()[1],
            "totals": metrics.totals(),
            "latency_committed": latency_summary(commit.latencies),
            "latency_alert": latency_summary(commit.alert_latencies),
            "models": worker.model_versions(),
            "pending_rows": worker.clickhouse.pending_rows,
            "recovered": tables_recovered(app),
            "customer_states": len(worker.states),
            "committed_records": commit.committed_records,
            "first_received": worker.first_received,
            "last_committed": commit.last_committed,
            "skipped_replayed_rows": worker.clickhouse.skipped_replayed,
            "storage_rejected_rows": worker.clickhouse.rejected_rows,
            "rss_mb": _rss_mb(),
        }

    query = _read_side(settings, worker.connection)
    pseudonymize = pseudonymizer_from_settings(settings.pseudonymize, settings.pseudonym_key)

    def customer(customer_id: str) -> dict:
        assert query is not None  # served only with /query
        view = customer_view(query, customer_id, settings.clickhouse_database, pseudonymize)
        view["churn"] = _on_loop(app.loop, worker.churn_view(view.get("stored_as", customer_id)))
        return view

    start_status_server(settings.web_port, status, query, host=settings.web_host, token=settings.web_token,
                        health=worker.health.live, ready=worker.health.ready, customer=customer if query else None)
    if settings.embedded_clickhouse:  # it holds the engine: reads of the directory come here
        write_run_file(Path(settings.data_dir), os.getpid(), settings)
    Watchdog(worker.health, exit_after_s=_exit_after_s(settings)).start()
    from faust.worker import Worker

    tune_gc()
    Worker(app, loglevel=FAUST_LOG_LEVELS.get(settings.log_level, "warn"), quiet=True).execute_from_commandline()


def _read_side(settings: Settings, connection: Any) -> Callable[[str], tuple[list[str], list[tuple]]] | None:
    """What ``/query`` runs: only for an embedded engine, which nobody else can open (a server has
    its own SQL door). A shared engine checks and runs reads itself, on its read-only session; the
    worker asks on a socket of its own, so a read never waits behind the worker's inserts."""
    if settings.embedded_clickhouse:
        return ReadOnlyQueries(connection.sibling(), settings.clickhouse_database).run
    if settings.shared_engine:
        from sinks.engine import EngineConnection

        return EngineConnection(settings.clickhouse_url).read
    return None


def run_trainer(settings: Settings) -> None:
    """``cem trainer`` (``pipeline.app.trainer``): blocks until stopped."""
    from faust.worker import Worker

    from pipeline.app.trainer import create_trainer_app

    _quiet_client_logs(settings.log_level)
    _install_uvloop()  # before the app exists, as for the worker
    metrics = Metrics()
    app, trainer = create_trainer_app(settings, metrics)
    start_http_server(settings.metrics_port, addr=settings.metrics_host, registry=metrics.registry)
    start_status_server(settings.web_port, trainer.status, None, host=settings.web_host, token=settings.web_token,
                        health=trainer.health.live, ready=trainer.health.ready)
    Watchdog(trainer.health, exit_after_s=_exit_after_s(settings), what="trainer").start()
    tune_gc()
    Worker(app, loglevel=FAUST_LOG_LEVELS.get(settings.log_level, "warn"), quiet=True).execute_from_commandline()


def _exit_after_s(settings: Settings) -> float:
    """How long a process stays up not live before its watchdog ends it (a crash, a stall)."""
    return max(5.0, settings.stall_timeout_s / 4)


def _on_loop(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T], timeout_s: float = 5.0) -> T | None:
    """``coro`` run on the worker's event loop, from the HTTP thread; None if the loop does not get
    to it in time (it is planning a large fetch) or is not running yet."""
    if not loop.is_running():
        coro.close()
        return None
    try:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout_s)
    except TimeoutError:
        return None


def _rss_mb() -> float | None:
    """The worker's resident memory (Linux), for /status and `cem bench`."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def _install_uvloop() -> None:
    try:
        import uvloop  # Faust's supported event loop: more events/s and a shorter tail (benchmarks/README.md)
    except ImportError:  # pragma: no cover - uvloop is a dependency, but stay runnable without it
        return
    uvloop.install()


# The worker holds hundreds of thousands of long-lived containers (customer states, dedupe ids, the
# labeler's pending examples); CPython's default thresholds (700, 10, 10) ran a full collection
# over all of them every ~2 s, with the event loop stopped: the alert-latency tail. A young
# collection's cost follows how scattered the objects it walks are more than how many there are, so
# fewer, larger young collections stop the loop for less in all (benchmarks/README.md); full
# collections rarely. Objects alive at start (code, models) are frozen out of it.
GC_THRESHOLDS = (200_000, 20, 100)


def tune_gc() -> None:
    """The worker's garbage-collector settings (the benchmarks run under them too)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _quiet_client_logs(level: str) -> None:
    # aiokafka logs every produce request at DEBUG; Faust's worker sets the root level, so pin ours.
    numeric = logging.DEBUG if level == "debug" else logging.WARNING
    for name in ("aiokafka", "kafka", "faust", "mode", "clickhouse_connect"):
        logging.getLogger(name).setLevel(numeric)
    if level == "debug":
        logging.basicConfig(stream=sys.stderr, level=logging.DEBUG)
