"""The embedded default: Tansu broker + workers + trainer + chDB, on one machine, no Docker.

Every part runs as a child process (``cem worker``, ``cem trainer``, ``cem engine``) with its own
event loop and signals; chDB is opened by one of them only (one engine per data directory): the
worker, when it is alone, or ``cem engine``, which serves it to the rest (:class:`WorkerGroup`).
This process talks to them over their status endpoints.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from pipeline.app import kafka_security
from pipeline.runtime.processes import spawn, stop, stop_all
from pipeline.settings import Settings
from pipeline.views.client import WorkerError, fetch_status, in_transit, merged, query_worker, received, total, write_run_file
from schemas.codec import AvroCodec
from schemas.contract import TOPIC_CUSTOMERS, TOPIC_TOUCHPOINTS, record_key
from sinks.engine import engine_socket


class _Watched:
    """Waits on a ``/status``: of one process (:class:`WorkerProcess`) or a group's, merged
    (:class:`WorkerGroup`)."""

    def alive(self) -> bool:
        raise NotImplementedError

    def status(self) -> dict:
        raise NotImplementedError

    def _exited(self) -> str:
        """Which process exited, with its code and log tail (when not :meth:`alive`)."""
        raise NotImplementedError

    def _log_tail(self) -> str:
        return ""

    def wait_until(self, predicate: Any, timeout_s: float, what: str, interval_s: float = 0.1) -> dict:
        """Poll /status until ``predicate(status)`` holds; raises with the log tail otherwise."""
        deadline = time.monotonic() + timeout_s
        status: dict | None = None
        while True:
            if not self.alive():
                raise WorkerError(f"{what}: {self._exited()}")
            try:
                status = self.status()
                if predicate(status):
                    return status
            except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
                pass
            if time.monotonic() > deadline:
                last = {k: v for k, v in (status or {}).items() if k != "totals"}
                if status and "totals" in status:  # a worker's (a trainer's status has none)
                    last["received"] = received(status)
                raise WorkerError(f"{what} within {timeout_s:.0f}s; last status {last}{self._log_tail()}")
            time.sleep(interval_s)

    def wait_drained(self, expected_in: int, timeout_s: float = 60.0) -> dict:
        """Wait until the workers have read ``expected_in`` records and made all of them durable, and
        have then read nothing more for :data:`QUIET_S`: a record read again (a log's verdict after a
        restart) counts towards ``expected_in`` too, so only quiet says nothing is left on its way."""
        quiet: dict[str, float] = {}

        def drained(st: dict) -> bool:
            read = total(st["totals"], "touchpoints_received")
            done = (received(st) >= expected_in and st["pending_rows"] == 0 and st["committed_records"] >= read
                    and in_transit(st)[1] >= in_transit(st)[0])  # every forwarded touchpoint arrived
            if not done or quiet.get("read") != read:
                quiet.update(read=read, since=time.monotonic())
                return False
            return time.monotonic() - quiet["since"] >= QUIET_S

        return self.wait_until(drained, timeout_s, f"the workers did not drain {expected_in} records")


class WorkerProcess(_Watched):
    """A ``cem worker`` child process and its HTTP status/query endpoint."""

    def __init__(self, settings: Settings, log_path: Path | None = None, command: str = "worker"):
        self.settings = settings
        self.log_path = log_path
        self.command = command  # or "trainer": the same status endpoint, the same waits
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.web_port}"

    def start(self, timeout_s: float = 60.0) -> WorkerProcess:
        self.launch()
        self.wait_started(timeout_s)
        return self

    def launch(self) -> None:
        """Start the process, without waiting for it (``start`` waits)."""
        env = dict(os.environ, **self.settings.to_env())
        self.process = spawn([sys.executable, "-m", "pipeline.cli", self.command], self.log_path, env)

    def wait_started(self, timeout_s: float = 60.0) -> None:
        self.wait_until(lambda st: st.get("started"), timeout_s, f"the {self.command} did not start consuming")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def status(self) -> dict:
        return fetch_status(self.url)

    def query(self, sql: str) -> list[list[Any]]:
        return query_worker(self.url, sql)[1]

    def stop(self, timeout_s: float = 30.0) -> int:
        """Graceful stop: SIGTERM makes the worker flush its sinks and commit."""
        return stop(self.process, timeout_s)

    def kill(self) -> None:
        """SIGKILL: no flush, no commit (the crash the sinks are built to survive)."""
        stop(self.process, 0, signal.SIGKILL)

    def _exited(self) -> str:
        assert self.process is not None, "start() the worker first"
        return f"the {self.command} exited with code {self.process.returncode}{self._log_tail()}"

    def _log_tail(self) -> str:
        return log_tail(self.log_path, self.command)


def log_tail(log_path: Path | None, name: str) -> str:
    """The end of a child's log, to show with the error its exit or a timeout raises."""
    if log_path and log_path.exists():
        return f"\n--- {name} log (tail) ---\n" + log_path.read_text(errors="replace")[-3000:]
    return ""


QUIET_S = 1.0  # the worker fetches continuously: a record still to read would arrive well within this


class EngineProcess:
    """A ``cem engine`` child process: the embedded engine of ``settings``, served on ``socket_path``
    to workers configured with :meth:`worker_settings`."""

    def __init__(self, settings: Settings, socket_path: Path, log_path: Path | None = None):
        self.settings = settings
        self.socket_path = socket_path
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 60.0) -> EngineProcess:
        from sinks.engine import engine_url, wait_for

        env = dict(os.environ, **self.settings.to_env())
        self.process = spawn([sys.executable, "-m", "pipeline.cli", "engine", "--socket", str(self.socket_path)],
                             self.log_path, env)
        if not wait_for(engine_url(self.socket_path), timeout_s):
            stop(self.process, 5)
            raise WorkerError(f"the engine did not answer on {self.socket_path} within {timeout_s:.0f}s")
        return self

    def worker_settings(self, settings: Settings) -> Settings:
        from sinks.engine import engine_url

        return settings.replace(clickhouse_url=engine_url(self.socket_path))

    def stop(self, timeout_s: float = 10.0) -> int:
        return stop(self.process, timeout_s)


class WorkerGroup(_Watched):
    """The workers of one machine, in one consumer group, with the trainer and the engine they share
    (``cem run --workers N``, ``cem bench --workers N``).

    One worker that trains in its own loop holds the engine itself, as ``cem worker`` does alone.
    With more workers, or the trainer in a process of its own (``settings.trainer == "process"``),
    ``cem engine`` holds it and serves them all on ``directory/engine.sock``, and each process keeps
    a data directory of its own (Faust's) under ``directory``. ``ports(i)`` gives process ``i`` its
    (web, metrics) ports: the workers are 0 to N-1, the trainer N.

    :meth:`status` is the group's (:func:`~pipeline.views.client.merged`), so the waits of one
    worker serve the group."""

    def __init__(self, settings: Settings, directory: Path, workers: int, ports: Callable[[int], tuple[int, int]]):
        self.directory = directory
        self.engine: EngineProcess | None = None
        if workers > 1 or settings.trainer == "process":
            self.engine = EngineProcess(settings, engine_socket(directory), directory / "engine.log")
            settings = self.engine.worker_settings(settings)
        shared = self.engine is not None

        def process(i: int, name: str, command: str = "worker") -> WorkerProcess:
            web, metrics = ports(i)
            own = settings.replace(web_port=web, metrics_port=metrics,
                                   data_dir=str(directory / name) if shared else None)
            return WorkerProcess(own, directory / f"{name}.log", command)

        names = ["worker"] if workers == 1 else [f"worker-{i}" for i in range(workers)]
        self.workers = [process(i, name) for i, name in enumerate(names)]
        self.trainer = process(workers, "trainer", "trainer") if settings.trainer == "process" else None

    @property
    def processes(self) -> list[WorkerProcess]:
        return self.workers + ([self.trainer] if self.trainer else [])

    @property
    def url(self) -> str:
        return self.workers[0].url

    def start(self, timeout_s: float = 60.0) -> WorkerGroup:
        """The engine first, then every process at once (one consumer group from the start, not a
        rebalance per worker joining); returns once each is consuming. The caller stops the group
        whatever happens, so that a process that failed to start is not left running."""
        if self.engine is not None:
            self.engine.start(timeout_s)
        for process in self.processes:
            Path(process.settings.data_dir).mkdir(parents=True, exist_ok=True)
            process.launch()
        for process in self.processes:
            process.wait_started(timeout_s)
        if self.engine is not None:  # the workers' own directories hold no run file: say who answers
            write_run_file(self.directory, self.workers[0].process.pid if self.workers[0].process else 0,
                           self.workers[0].settings, [w.settings for w in self.workers])
        return self

    def statuses(self) -> list[dict]:
        return [worker.status() for worker in self.workers]

    def status(self) -> dict:
        return merged(self.statuses())

    def alive(self) -> bool:
        engine = self.engine is None or (self.engine.process is not None and self.engine.process.poll() is None)
        return engine and all(process.alive() for process in self.processes)

    def stop(self, timeout_s: float = 30.0) -> None:
        """The workers and the trainer together (they flush into the engine), then the engine."""
        stop_all([process.process for process in self.processes], timeout_s)
        if self.engine is not None:
            self.engine.stop()

    def _exited(self) -> str:
        for process in self.processes:
            if not process.alive():
                return process._exited()
        return f"the engine exited{log_tail(self.engine.log_path if self.engine else None, 'engine')}"

    def _log_tail(self) -> str:
        return self.workers[0]._log_tail()


class TouchpointPublisher:
    """One producer to ``cem.touchpoints`` for a whole session; touchpoints keyed as the contract says
    (``schemas.contract.record_key``).

    ``timestamp_from_event`` sets the Kafka record timestamp to ``occurred_at`` (replaying
    historical or simulated traffic), so the far-future check is relative to the event's own time.
    ``client_options`` are the Kafka security options (``pipeline.app.kafka_security``); by default
    those of the ``CEM_KAFKA_*`` environment.
    """

    def __init__(self, bootstrap: str, fmt: str = "avro", codec: AvroCodec | None = None, timestamp_from_event: bool = False,
                 client_options: Mapping[str, Any] | None = None):
        self._bootstrap = bootstrap
        self._options = _security(client_options)
        self._fmt = fmt
        self._codec = codec or AvroCodec()
        self._timestamp_from_event = timestamp_from_event
        self._producer: AIOKafkaProducer | None = None

    async def __aenter__(self) -> TouchpointPublisher:
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self._bootstrap, enable_idempotence=False, acks="all", linger_ms=10, max_batch_size=1 << 20,
            **self._options,
        )
        await self._producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._producer is not None  # __aenter__ set it
        await self._producer.stop()

    async def send(self, touchpoints: Iterable[dict]) -> int:
        """Publish and wait for the broker's acks; returns the count."""

        producer = self._producer
        assert producer is not None, "use TouchpointPublisher as an async context manager"
        pending, count = [], 0
        for touchpoint in touchpoints:
            pending.append(await producer.send(
                TOPIC_TOUCHPOINTS, self._codec.encode(touchpoint, self._fmt), key=record_key(touchpoint).encode(),
                timestamp_ms=touchpoint["occurred_at"] if self._timestamp_from_event else None,
            ))
            count += 1
            if len(pending) >= 5000:
                await _settle(pending)
        await _settle(pending)
        return count


async def publish(
    bootstrap: str,
    touchpoints: Iterable[dict],
    fmt: str = "avro",
    codec: AvroCodec | None = None,
    timestamp_from_event: bool = False,
    client_options: Mapping[str, Any] | None = None,
) -> int:
    """Publish touchpoint dicts once (see :class:`TouchpointPublisher`); returns the count."""
    async with TouchpointPublisher(bootstrap, fmt, codec, timestamp_from_event, client_options) as publisher:
        return await publisher.send(touchpoints)


async def publish_raw(
    bootstrap: str, records: Iterable[tuple], timestamp_ms: int | None = None, topic: str = TOPIC_TOUCHPOINTS,
    client_options: Mapping[str, Any] | None = None,
) -> int:
    """Publish raw ``(key, value)`` or ``(key, value, timestamp_ms)`` records to ``topic`` (bad-input
    tests, replays, CRM profiles); ``timestamp_ms`` is the default record timestamp."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False, max_request_size=4 << 20,
                                **_security(client_options))
    await producer.start()
    try:
        futures = []
        for key, value, *when in records:
            futures.append(await producer.send(topic, value, key=key, timestamp_ms=when[0] if when else timestamp_ms))
        sent = len(futures)
        await _settle(futures)
    finally:
        await producer.stop()
    return sent


def _security(client_options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The given security options, or (None) those of the ``CEM_KAFKA_*`` environment."""
    if client_options is None:
        return kafka_security.client_options(Settings.from_env())
    return dict(client_options)


async def _settle(futures: list) -> None:
    for future in futures:
        await future
    futures.clear()


async def publish_erasures(settings: Settings, customer_ids: Iterable[str], requested_by: str, reason: str = "") -> int:
    """Erasure requests on ``cem.erasures``: keyed by the customer as the pipeline knows it (its pseudonym
    when pseudonymisation is on) and on the partition of the customer's touchpoints (the producers'
    default partitioner on the raw id), so that the worker holding the customer carries it out."""
    from aiokafka.partitioner import DefaultPartitioner

    from pipeline.app.erasure import ErasureRequest
    from processors.pseudonym import from_settings
    from schemas.contract import TOPIC_ERASURES

    pseudonymize = from_settings(settings.pseudonymize, settings.pseudonym_key)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, enable_idempotence=False, acks="all",
                                **kafka_security.client_options(settings))
    await producer.start()
    try:
        partitions = sorted(await producer.partitions_for(TOPIC_TOUCHPOINTS))
        partitioner, now = DefaultPartitioner(), int(time.time() * 1000)
        futures = []
        for raw in customer_ids:
            if not raw.strip():
                raise ValueError("a customer id is empty")
            customer_id = pseudonymize(raw) if pseudonymize else raw
            request = ErasureRequest(customer_id, now, requested_by, reason)
            partition = partitioner(raw.encode(), partitions, partitions)
            futures.append(await producer.send(TOPIC_ERASURES, request.to_value(), key=customer_id.encode(), partition=partition))
        sent = len(futures)
        await _settle(futures)
    finally:
        await producer.stop()
    return sent


async def publish_profiles(bootstrap: str, profiles: Iterable[dict], client_options: Mapping[str, Any] | None = None) -> int:
    """Publish CRM profiles (``{customer_id, attributes}``) to ``cem.customers``, keyed by customer_id."""
    return await publish_raw(
        bootstrap, ((p["customer_id"].encode(), orjson.dumps(p)) for p in profiles), topic=TOPIC_CUSTOMERS,
        client_options=client_options,
    )
