"""``cem run``: the embedded default, supervised from this process.

Starts the Tansu broker, creates the topics, starts the workers (``cem worker``, child processes
of one consumer group, ``--workers``: by default one per core), the trainer (``cem trainer``) and
the engine they share (``cem engine``, which owns chDB), publishes synthetic traffic at ``--rate``,
shows progress each second, and on Ctrl-C, SIGTERM or after ``--duration`` drains: waits until every
published record is committed, stops the workers (which flush), then prints one JSON summary line.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pipeline.app import kafka_security
from pipeline.runtime.broker import EmbeddedBroker, ensure_topics
from pipeline.runtime.embedded import TouchpointPublisher, WorkerGroup, publish, publish_profiles
from pipeline.settings import Settings
from pipeline.views.client import received, running_worker_url, total
from sinks.engine import serving

PROGRESS_EVERY_S = 1.0
IDENTITY_SHARE = 0.3  # of the generated customers: browse anonymously first, then identify (stitching)


def embedded_settings(settings: Settings, data_dir: Path, broker_port: int) -> Settings:
    """Settings for a worker on the embedded stack under ``data_dir`` (its broker is plaintext on loopback)."""
    return settings.replace(
        kafka_bootstrap=f"127.0.0.1:{broker_port}", kafka_security_protocol="PLAINTEXT",
        clickhouse_url=f"chdb://{data_dir / 'clickhouse'}",
        data_dir=str(data_dir),
        pseudonym_key=settings.pseudonym_key or pseudonym_key(data_dir),
    )


def pseudonym_key(data_dir: Path) -> str:
    """The data directory's own pseudonym key, made once (identity stitching needs one; every run on
    the directory must map an identifier to the same pseudonym, or its links would be lost)."""
    path = data_dir / "pseudonym.key"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32))
    return path.read_text().strip()


def run_embedded(
    settings: Settings, duration_s: float | None, rate: float, customers: int, seed: int, broker_port: int,
    workers: int = 1,
) -> dict:
    """Run the embedded stack (``settings.trainer == "process"``: the trainer in a process of its
    own) with ``workers`` workers until ``duration_s`` or a stop; returns the summary."""
    from pipeline.cli import CliError

    data_dir = Path(settings.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    if running_worker_url(data_dir) or serving(data_dir):
        raise CliError(f"a worker is already running on {data_dir}: stop it or pass another --data-dir")
    settings = embedded_settings(settings, data_dir, broker_port)
    # SIGTERM (a supervisor, `docker stop`, `timeout`) drains and stops like Ctrl-C; by default it
    # would end this process at once and leave the broker and the worker running, orphaned. It is
    # turned into a SIGINT, so that inside asyncio.run the traffic task is cancelled the way Ctrl-C
    # cancels it (between sends, with its count of what was published intact).
    signal.signal(signal.SIGTERM, lambda *_: os.kill(os.getpid(), signal.SIGINT))
    started = time.monotonic()
    with EmbeddedBroker(broker_port, log_file=data_dir / "broker.log") as broker:
        ensure_topics(broker.bootstrap, settings.partitions, kafka_security.client_options(settings))
        # Ports from the configured ones up: worker i answers on web_port + i, the trainer after them.
        group = WorkerGroup(settings, data_dir, workers,
                            lambda i: (settings.web_port + i, settings.metrics_port + i))
        _say(f"broker on {broker.bootstrap}; starting {_layout(group)} (chDB under {data_dir / 'clickhouse'}) ...")
        try:  # a process that fails to start is stopped too, not left running on its own
            group.start()
            for process in group.processes:
                _say(f"{process.command} up: metrics http://127.0.0.1:{process.settings.metrics_port}/metrics, "
                     f"status {process.url}/status")
            progress = _Progress(group)
            try:
                asyncio.run(_traffic(settings, progress, duration_s, rate, customers, seed))
            except KeyboardInterrupt:
                _say("\nstopping: draining what was published ...")
            produced = progress.produced
            final = group.wait_drained(produced, timeout_s=120)
        finally:
            group.stop()
    summary = _summary(final, produced, time.monotonic() - started)
    summary["clickhouse_rows"] = _row_counts(settings)
    return summary


def _layout(group: WorkerGroup) -> str:
    workers = f"{len(group.workers)} worker{'s' if len(group.workers) > 1 else ''}"
    return workers + (", the trainer" if group.trainer else "") + (" and the shared engine" if group.engine else "")


async def _traffic(settings: Settings, progress: _Progress, duration_s: float | None, rate: float, customers: int, seed: int) -> None:
    from processors.synthetic import JourneyGenerator

    start_ms = int(time.time() // 60 * 60_000)
    # Each run's event ids are its own: a second run on the same data directory sends new touchpoints
    # of the same customers, not redeliveries of the first run's.
    journeys = JourneyGenerator(customers=customers, seed=seed, start_ms=start_ms, run=f"r{int(time.time() * 1000):x}.",
                                identity=IDENTITY_SHARE)
    options = kafka_security.client_options(settings)
    if rate > 0:
        await publish_profiles(settings.kafka_bootstrap, journeys.profiles(), options)  # the CRM join, first
    events = journeys.events()
    deadline = None if duration_s is None else time.monotonic() + duration_s
    if rate <= 0:
        while deadline is None or time.monotonic() < deadline:
            await asyncio.sleep(PROGRESS_EVERY_S)
            progress.show()
        return
    await publish_at_rate(settings.kafka_bootstrap, events, rate, "avro", deadline, progress, options)


async def publish_at_rate(
    bootstrap: str, events: Iterable[dict], rate: float, fmt: str = "avro",
    deadline: float | None = None, progress: _Progress | None = None, client_options: Mapping[str, Any] | None = None,
) -> int:
    """Publish at ``rate`` events/s (0 = as fast as possible) until the events or the deadline run out;
    ``client_options``: the Kafka security options (default: the ``CEM_KAFKA_*`` environment's)."""
    iterator = iter(events)
    if rate <= 0:
        return await publish(bootstrap, iterator, fmt, timestamp_from_event=True, client_options=client_options)
    began = last_progress = time.monotonic()
    produced = 0
    async with TouchpointPublisher(bootstrap, fmt, timestamp_from_event=True, client_options=client_options) as publisher:
        while deadline is None or time.monotonic() < deadline:
            due = int((time.monotonic() - began) * rate) - produced
            chunk = [event for _, event in zip(range(max(0, due)), iterator, strict=False)]
            if chunk:
                produced += await publisher.send(chunk)
                if progress:
                    progress.produced = produced
            elif due > 0:
                break  # the generator ran dry
            if progress and time.monotonic() - last_progress >= PROGRESS_EVERY_S:
                progress.show()
                last_progress = time.monotonic()
            await asyncio.sleep(0.05)
    return produced


class _Progress:
    """The progress line, and how many touchpoints have been published so far."""

    def __init__(self, worker: WorkerGroup):
        self.worker = worker
        self.produced = 0
        self.began = time.monotonic()
        self.tty = sys.stderr.isatty()
        self.last_line = 0.0

    def show(self) -> None:
        produced = self.produced
        try:
            status = self.worker.status()
        except Exception:
            return
        totals = status["totals"]
        line = (
            f"[{time.monotonic() - self.began:6.0f}s] published {produced:>8}  in {received(status):>8}  "
            f"processed {total(totals, 'touchpoints_processed'):>8}  dead-lettered {total(totals, 'touchpoints_dead_lettered'):>5}  "
            f"deduplicated {total(totals, 'touchpoints_deduplicated'):>5}  rows {total(totals, 'clickhouse_insert_rows'):>8}  "
            f"p99 {status['latency_committed']['p99_ms']} ms"
        )
        if self.tty:
            print("\r" + line, end="", file=sys.stderr, flush=True)
        elif time.monotonic() - self.last_line >= 10:
            print(line, file=sys.stderr, flush=True)
            self.last_line = time.monotonic()


def _summary(status: dict, produced: int, elapsed_s: float) -> dict:
    totals = status["totals"]
    return {
        "published": produced,
        "events_in": received(status),
        "processed": total(totals, "touchpoints_processed"),
        "dead_lettered": {k.split(",")[0]: int(v) for k, v in totals.get("touchpoints_dead_lettered", {}).items()},
        "deduplicated": total(totals, "touchpoints_deduplicated"),
        "replayed": total(totals, "touchpoints_replayed"),
        "forwarded": total(totals, "touchpoints_forwarded"),
        "identifiers_linked": int(totals.get("identity_events", {}).get("linked", 0)),
        "elapsed_s": round(elapsed_s, 1),
        "latency_committed": status["latency_committed"],
        "latency_alert": status["latency_alert"],
    }


def _row_counts(settings: Settings) -> dict[str, int]:
    """Row counts, read directly from chDB now that the worker has released it."""
    from pipeline.views.query import run_query

    db = settings.clickhouse_database
    sql = " UNION ALL ".join(
        f"SELECT '{t}' AS t, toInt64(count()) FROM {db}.{t}" for t in ("touchpoints_enriched", "dead_letters", "customer_state", "kpi_minute")
    ) + f" UNION ALL SELECT 'stitched_customers', toInt64(count()) FROM {db}.customer_state FINAL WHERE notEmpty(identifiers)"
    _, rows = run_query(settings, sql)
    return {t: int(n) for t, n in rows}


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)

