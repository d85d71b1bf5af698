"""The embedded engine shared by several workers (``cem engine``, ``sinks.engine``), for real:
a chDB engine process, the Tansu broker, two ``cem worker`` processes."""

from __future__ import annotations

import os
import stat
import time
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client
from pathlib import Path

import pytest
from clickhouse_connect.driver.exceptions import DatabaseError
from conftest import PARTITIONS, expected_kpis, kpi_by_channel, now_ms, run, worker_settings

from pipeline.runtime.embedded import EngineProcess, WorkerProcess, publish
from pipeline.views.client import total
from pipeline.views.query import run_query
from pipeline.views.reads import QueryRefused
from processors.synthetic import JourneyGenerator
from sinks.clickhouse import connect, is_data_error
from sinks.engine import engine_url


@pytest.fixture
def engine(broker, tmp_path: Path):
    process = EngineProcess(worker_settings(broker, tmp_path), tmp_path / "engine.sock", tmp_path / "engine.log").start()
    yield process
    process.stop()


class Stored:
    """The engine read as a worker's ``/query`` is read (for ``kpi_by_channel``)."""

    def __init__(self, url: str):
        self.connection = connect(url)

    def query(self, sql: str) -> list[tuple]:
        return self.connection.rows(sql)


def test_two_workers_sharing_the_engine_store_every_touchpoint_once_across_a_rebalance(broker, engine, tmp_path):
    """Property: no loss and no double count when two workers write one embedded engine, and half
    the partitions move from the first to the second in the middle of the stream (each keeps its
    own marks and deduplication tokens, as replicas against a ClickHouse server do)."""
    events = list(JourneyGenerator(customers=200, seed=43, start_ms=now_ms() - 3_600_000).events(2_000))
    first_half, second_half = events[:1_000], events[1_000:]
    workers: list[WorkerProcess] = []

    def start(i: int) -> WorkerProcess:
        data_dir = tmp_path / f"worker-{i}"
        data_dir.mkdir()
        settings = engine.worker_settings(worker_settings(broker, data_dir))
        workers.append(WorkerProcess(settings, tmp_path / f"worker-{i}.log"))  # killed even if it fails to start
        return workers[-1].start(timeout_s=90)

    stored = Stored(engine_url(engine.socket_path))
    count = "SELECT count(), uniqExact(customer_id, event_id) FROM cem.touchpoints_enriched"
    try:
        start(0)
        run(publish(broker.bootstrap, first_half, "avro", timestamp_from_event=True))
        wait_for(lambda: stored.query(count)[0][0] >= len(first_half), "the first worker did not store its half")
        start(1)
        wait_for(lambda: [len(w.status()["assigned"]) for w in workers] == [PARTITIONS // 2] * 2,
                 "the group did not share the partitions")
        run(publish(broker.bootstrap, second_half, "avro", timestamp_from_event=True))
        wait_for(lambda: stored.query(count)[0][0] >= len(events) and all(drained(w.status()) for w in workers),
                 "the two workers did not store the stream")
        assert all(total(w.status()["totals"], "touchpoints_received") > 0 for w in workers), "both took partitions"
        assert stored.query(count) == [(2_000, 2_000)]
        assert kpi_by_channel(stored) == expected_kpis(events)  # type: ignore[arg-type]
    finally:
        for worker in workers:
            worker.kill()


def drained(status: dict) -> bool:
    return status["pending_rows"] == 0 and status["committed_records"] >= total(status["totals"], "touchpoints_received")


def wait_for(predicate, what: str, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def test_the_engine_answers_as_the_engine_would_in_process(engine):
    """Property: statements, answers and refusals come through unchanged, a refused insert as the
    same ClickHouse error class, so the sink still tells bad rows from a server in trouble."""
    connection = connect(engine_url(engine.socket_path))
    connection.command("CREATE TABLE IF NOT EXISTS cem.engine_probe (n UInt8, s String) ENGINE = MergeTree ORDER BY n")
    connection.insert("cem.engine_probe", [[1, 2], ["a", "b"]], ["n", "s"], {})
    assert connection.rows("SELECT n, s FROM cem.engine_probe ORDER BY n") == [(1, "a"), (2, "b")]
    assert connection.query("SELECT 1 AS one").column_names == ("one",)
    with pytest.raises(Exception) as bad_row:
        connection.insert("cem.engine_probe", [[300], ["x"]], ["n", "s"], {})  # 300 is no UInt8
    assert is_data_error(bad_row.value), bad_row.value
    with pytest.raises(DatabaseError) as refused:
        connection.command("SELECT throwIf(1, 'refused')")
    assert "refused" in str(refused.value)


def test_reads_of_a_shared_engine_see_cem_s_tables_and_nothing_else(broker, engine, tmp_path):
    """Property: ``cem query`` on the directory of a running shared engine reads through the engine
    (which holds chDB: opening it would fail), on its read-only session: cem's tables are served,
    the host, the engine's system tables and every write are refused, and the workers' session
    still writes after the reads."""
    settings = worker_settings(broker, tmp_path)
    assert run_query(settings, "SELECT count() FROM cem.touchpoints_enriched") == (["count()"], [[0]])
    for sql in ("SELECT * FROM system.tables", "SELECT file('/etc/hostname')", "DROP TABLE cem.dead_letters",
                "INSERT INTO cem.dead_letters SELECT * FROM cem.dead_letters", "SELECT 1; DROP TABLE cem.kpi_minute"):
        with pytest.raises(QueryRefused):
            run_query(settings, sql)
    writer = connect(engine_url(engine.socket_path))
    writer.command("CREATE TABLE IF NOT EXISTS cem.engine_writes (n UInt8) ENGINE = MergeTree ORDER BY n")
    writer.insert("cem.engine_writes", [[7]], ["n"], {})
    assert writer.rows("SELECT n FROM cem.engine_writes") == [(7,)]


def test_the_engine_is_for_the_directory_s_owner_only(engine):
    """Property: the engine listens on no network port, its socket and key are the owner's alone
    (0600), and a client without the key is refused before it can send a statement."""
    sock, key = engine.socket_path, engine.socket_path.with_name("engine.key")
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600 and stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert stat.S_ISSOCK(os.stat(sock).st_mode)
    assert not inet_listeners(engine.process.pid), "the engine must not listen on the network"
    with pytest.raises(AuthenticationError):
        Client(str(sock), "AF_UNIX", authkey=b"not the key")
    assert connect(engine_url(sock)).rows("SELECT 1") == [(1,)], "still serving the owner"


def inet_listeners(pid: int) -> set[int]:
    """Inodes of the TCP/UDP sockets ``pid`` listens on (or is bound to, for UDP)."""
    mine = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            mine.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except FileNotFoundError:  # closed since the listing (the engine's own threads open and close files)
            continue
    inodes = {int(link[8:-1]) for link in mine if link.startswith("socket:[")}
    found: set[int] = set()
    for table, listening in (("tcp", "0A"), ("tcp6", "0A"), ("udp", "07"), ("udp6", "07")):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == listening and int(fields[9]) in inodes:
                found.add(int(fields[9]))
    return found



def test_a_trainer_of_its_own_trains_the_models_the_workers_score_with(broker, engine, tmp_path):
    """Property: with ``CEM_TRAINER=process`` the worker leaves ``cem.model.training`` alone and
    ``cem trainer`` learns from it: its snapshots reach the worker (hot-swapped), its quality rows
    reach the shared engine, and the worker's own event loop trains nothing."""
    from processors.synthetic import DEFAULT_START_MS
    from schemas.contract import MODEL_CHURN, MODEL_SENTIMENT

    events = list(JourneyGenerator(customers=200, seed=5, start_ms=DEFAULT_START_MS, churn_within_days=6).events(4_000))
    options = dict(trainer="process", model_publish_interval_s=0.5, churn_horizon_s=2 * 86400.0)
    started: list[WorkerProcess] = []

    def start(name: str, command: str) -> WorkerProcess:
        (tmp_path / name).mkdir()
        settings = engine.worker_settings(worker_settings(broker, tmp_path / name, **options))
        started.append(WorkerProcess(settings, tmp_path / f"{name}.log", command))
        return started[-1].start(timeout_s=90)

    try:
        worker, trainer = start("worker", "worker"), start("trainer", "trainer")
        run(publish(broker.bootstrap, events, "avro", timestamp_from_event=True))
        worker.wait_drained(len(events))
        trainer.wait_until(lambda st: st["trained_through"] is not None and st["snapshots_published"] >= 1, 60,
                           "the trainer did not learn and publish")
        models = worker.wait_until(lambda st: st["models"]["snapshots_loaded"] >= 2 and st["models"]["sentiment"] != "sentiment-v1+0",
                                   60, "the worker did not load the trainer's snapshots")["models"]
        assert models["trained_through"] is None and models["snapshots_published"] == 0, "the worker trains nothing"
        quality = "SELECT DISTINCT model FROM cem.model_metrics ORDER BY model"
        stored = Stored(engine_url(engine.socket_path))
        wait_for(lambda: [r[0] for r in stored.query(quality)] == [MODEL_CHURN, MODEL_SENTIMENT],
                 "no model_metrics rows from the trainer", 30)
        # A SIGTERM stops it gracefully (its checkpoint written, its records acked), not after the
        # stop's timeout by SIGKILL: holding records unacked until a checkpoint, it must not wait
        # for their acks before it checkpoints.
        assert trainer.stop(timeout_s=20) == 0
    finally:
        for process in started:
            process.kill()
