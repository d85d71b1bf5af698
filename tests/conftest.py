"""Shared fixtures: a real Tansu broker and a real ``cem worker`` process with its own chDB.

chDB allows one engine per process, so the engine always lives in a worker child process; tests read
it through the worker's ``/query`` endpoint (or ``cem query`` after the worker stops).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from pipeline.broker import EmbeddedBroker, ensure_topics, free_port
from pipeline.embedded import WorkerProcess
from pipeline.run import embedded_settings
from pipeline.settings import Settings

PARTITIONS = 4
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


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
        process = WorkerProcess(settings, tmp_path / f"worker-{len(started)}.log").start(timeout_s=90)
        started.append(process)
        return process

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


def received(status: dict) -> int:
    return int(sum(status["totals"].get("touchpoints_received", {}).values()))


def wait_drained(worker: WorkerProcess, expected_in: int, timeout_s: float = 60.0) -> dict:
    """Wait until the worker has read ``expected_in`` records and committed all of them."""
    return worker.wait_until(
        lambda st: received(st) >= expected_in and st["pending_rows"] == 0 and st["committed_records"] >= received(st),
        timeout_s, f"the worker did not drain {expected_in} records",
    )


def run(coro):  # small helper: tests are sync; publishing is async
    return asyncio.run(coro)


def now_ms() -> int:
    return int(time.time() * 1000)
