"""Shared fixtures: a real Tansu broker and a real ``cem worker`` process with its own chDB.

chDB allows one engine per process, so the engine always lives in a worker child process; tests read
it through the worker's ``/query`` endpoint (or ``cem query`` after the worker stops).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

from pipeline.app.logs import read_to_end
from pipeline.runtime.broker import EmbeddedBroker, ensure_topics, free_port
from pipeline.runtime.embedded import WorkerProcess
from pipeline.runtime.run import embedded_settings
from pipeline.settings import Settings
from processors.synthetic import KPI_COLUMNS, kpi_totals

# The doctests of the compiled modules (schemas.compiled) run against what runs: the extension in
# build/compiled, whose __file__ is not the .py pytest collected it from.
os.environ.setdefault("PY_IGNORE_IMPORTMISMATCH", "1")

PARTITIONS = 4


@pytest.fixture
def broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker(free_port()) as running:
        ensure_topics(running.bootstrap, PARTITIONS)
        yield running


def worker_settings(broker: EmbeddedBroker, data_dir: Path, **overrides: object) -> Settings:
    """Settings for a test worker: short group timings (Faust joins in ~rebalance_timeout/2)."""
    base = Settings().replace(
        partitions=PARTITIONS, metrics_port=free_port(), web_port=free_port(),
        session_timeout_s=6.0, rebalance_timeout_s=2.0, heartbeat_interval_s=0.5,
        sink_flush_interval_s=0.25, **overrides,
    )
    return embedded_settings(base, data_dir, broker.port)


@pytest.fixture
def start_worker(broker: EmbeddedBroker, tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """``start_worker(**settings overrides)`` -> a started WorkerProcess on ``tmp_path``; stopped after the test."""
    started: list[WorkerProcess] = []

    def start(**overrides: object) -> WorkerProcess:
        settings = worker_settings(broker, tmp_path, **overrides)
        process = WorkerProcess(settings, tmp_path / f"worker-{len(started)}.log")
        started.append(process)  # before it starts: one that fails to start is killed too, not left running
        return process.start(timeout_s=90)

    yield start
    for process in started:
        process.kill()


def required_binary(name: str, apt_package: str) -> str:
    """A tool from Debian's packages: skip locally when it is missing, but fail under CI (which installs it)."""
    import os
    import shutil

    path = shutil.which(name)
    if path:
        return path
    if os.environ.get("CI"):
        pytest.fail(f"{name} is not installed, and CI is set: apt-get install -y {apt_package}")
    pytest.skip(f"{name} not installed (apt-get install -y {apt_package})")


def run(coro):  # small helper: tests are sync; publishing is async
    return asyncio.run(coro)


def now_ms() -> int:
    return int(time.time() * 1000)


async def read_topic(bootstrap: str, topic: str, partitions: int = PARTITIONS, timeout_s: float = 20.0) -> list[ConsumerRecord]:
    """Every record on ``topic`` from the beginning to its end, as it is now (partition by partition)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest")
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        async with asyncio.timeout(timeout_s):
            return await read_to_end(consumer, parts)
    finally:
        await consumer.stop()


def kpi_by_channel(worker: WorkerProcess) -> dict[str, dict[str, float]]:
    """The worker's ``cem.kpi_minute`` summed per channel (money to 2 decimals)."""
    sums = ", ".join(f"sum({c})" for c in KPI_COLUMNS)
    rows = worker.query(f"SELECT channel, {sums} FROM cem.kpi_minute GROUP BY channel")
    return {row[0]: {c: round(float(v), 2) for c, v in zip(KPI_COLUMNS, row[1:], strict=True)} for row in rows}


def expected_kpis(events: list[dict]) -> dict[str, dict[str, float]]:
    """What :func:`kpi_by_channel` must return for ``events``."""
    truth = kpi_totals(events)
    return {ch: {c: round(float(cols[c]), 2) for c in KPI_COLUMNS} for ch, cols in truth.items()}


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children start sessions of their own, so a group kill misses them)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


def kill_all(pid: int) -> None:
    """SIGKILL ``pid`` and every process below it (a test that failed must not leave them running)."""
    for each in [pid, *descendants(pid)]:
        try:
            os.kill(each, signal.SIGKILL)
        except ProcessLookupError:
            pass
