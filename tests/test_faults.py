"""Exactly once under real faults, on the real broker and chDB, against the generator's ground truth.

* the broker loses its log under a running worker (the embedded broker restarted empty; in
  production a topic deleted and re-created), then new traffic, then a worker restart;
* a whole ``cem run`` (supervisor, broker, worker) killed with SIGKILL, and a second ``cem run`` on
  the same data directory;
* a full disk under the worker: the halt is visible, and nothing is lost once there is room again.

Property, each time: lost 0, doubled 0, ``cem.kpi_minute`` per channel equal to the truth.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import expected_kpis, kill_all, kpi_by_channel, now_ms, run

from pipeline.runtime.broker import ensure_topics, free_port
from pipeline.runtime.embedded import publish
from pipeline.views import top
from pipeline.views.client import fetch_customer, received, total
from processors.synthetic import JourneyGenerator

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]


def stored(worker) -> tuple[int, int]:
    return tuple(worker.query("SELECT count(), uniqExact(customer_id, event_id) FROM cem.touchpoints_enriched")[0])


def test_a_broker_that_loses_its_log_under_a_running_worker_loses_nothing(broker, start_worker):
    generator = JourneyGenerator(customers=120, seed=31, start_ms=now_ms() - 3_600_000)
    before, after, later = (list(generator.events(n)) for n in (1500, 1500, 500))
    worker = start_worker()
    run(publish(broker.bootstrap, before, "avro", timestamp_from_event=True))
    worker.wait_drained(len(before))

    broker.stop()  # memory storage: the log, the group's offsets and the changelog are gone
    broker.start()
    ensure_topics(broker.bootstrap, 4)
    run(publish(broker.bootstrap, after, "avro", timestamp_from_event=True))
    worker.wait_until(lambda st: st["committed_records"] >= len(before) + len(after) and st["pending_rows"] == 0,
                      90, "the worker did not process the new log")
    assert stored(worker) == (3000, 3000), "every record of the new log is stored, none skipped as a replay"
    restarts = total(worker.status()["totals"], "source_log_restarts")
    assert restarts >= 1, "the new log was detected and counted"

    worker.kill()
    again = start_worker()  # recovers its (new) changelog and processes: no hang
    run(publish(broker.bootstrap, later, "avro", timestamp_from_event=True))
    again.wait_until(lambda st: stored(again)[0] >= 3500 and st["pending_rows"] == 0, 90,
                     "the restarted worker did not process")
    assert stored(again) == (3500, 3500)
    assert kpi_by_channel(again) == expected_kpis(before + after + later)
    # The new log's records are epoch 2, but for those read before the worker learnt the log had
    # started over: they sit past every offset of the old log, so they were new to the sink too.
    epochs = dict(again.query("SELECT source_epoch, count() FROM cem.touchpoints_enriched GROUP BY source_epoch"))
    assert set(epochs) == {1, 2} and epochs[1] >= 1500 and sum(epochs.values()) == 3500


async def commit_group_offsets(bootstrap: str, offsets: dict[int, int] | None = None) -> dict[int, int]:
    """Commit the worker group's touchpoint offsets (``None``: the logs' ends); returns them."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from pipeline.app.logs import log_ends

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id="cem", enable_auto_commit=False)
    await consumer.start()
    partitions = [TopicPartition("cem.touchpoints", p) for p in range(4)]
    consumer.assign(partitions)
    try:
        ends = await log_ends(consumer, partitions) if offsets is None else {tp: offsets[tp.partition] for tp in partitions}
        await consumer.commit(ends)
        return {tp.partition: end for tp, end in ends.items()}
    finally:
        await consumer.stop()


def test_a_group_offset_past_the_end_of_the_log_reads_the_log_from_its_start(broker, start_worker):
    """Property: no loss when the group's committed offsets lie past the end of the log, as they do
    when they belong to an earlier incarnation of it (a worker retried its last commit against a
    broker that had restarted empty). Tansu answers a fetch past a log's end with no records and no
    error (Kafka: OFFSET_OUT_OF_RANGE), so no record would ever come to show it."""
    events = list(JourneyGenerator(customers=40, seed=37, start_ms=now_ms() - 3_600_000).events(200))
    run(publish(broker.bootstrap, events, "avro", timestamp_from_event=True))
    run(commit_group_offsets(broker.bootstrap, {p: 500 for p in range(4)}))
    worker = start_worker()
    worker.wait_until(lambda st: stored(worker)[0] >= len(events) and st["pending_rows"] == 0, 60,
                      "the worker did not read the log below its group's offsets")
    assert stored(worker) == (200, 200)
    assert total(worker.status()["totals"], "source_log_restarts") == 0, "one log all along: no epoch change"


def test_a_new_log_whose_end_is_the_old_group_offset_is_read_from_its_start(broker, start_worker):
    """Property: no loss when a log starts over and the group's offsets, left by the old log, are
    exactly the new log's ends (same traffic per partition): the worker is caught up by the numbers,
    so no fetch ever brings a record, and only the anchor shows the log is another one."""
    generator = JourneyGenerator(customers=40, seed=41, start_ms=now_ms() - 3_600_000)
    before, after = list(generator.events(400)), list(generator.events(400))
    worker = start_worker()
    run(publish(broker.bootstrap, before, "avro", timestamp_from_event=True))
    worker.wait_drained(len(before))
    worker.kill()

    broker.stop()
    broker.start()
    ensure_topics(broker.bootstrap, 4)
    run(publish(broker.bootstrap, after, "avro", timestamp_from_event=True))
    run(commit_group_offsets(broker.bootstrap))  # the old log's offsets happen to be the new log's ends
    again = start_worker()
    again.wait_until(lambda st: stored(again)[0] >= 800 and st["pending_rows"] == 0, 60,
                     "the worker did not read the new log")
    assert stored(again) == (800, 800)
    assert total(again.status()["totals"], "source_log_restarts") == 4, "every partition's new log was found"


def test_log_ends_are_the_offsets_after_the_last_records_and_reading_to_them_keeps_positions(broker):
    """Property: ``log_ends`` is one past the last record, however the records were batched, and
    ``read_to_end`` reads from the consumer's position up to it."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    from pipeline.app.logs import log_ends, read_to_end

    async def check() -> tuple[dict, list[int]]:
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=50)
        await producer.start()
        for size in (10, 5):  # two record batches
            await asyncio.gather(*[await producer.send("cem.test-ends", b"x", partition=0) for _ in range(size)])
        await producer.stop()
        consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, auto_offset_reset="none")
        await consumer.start()
        tp = TopicPartition("cem.test-ends", 0)
        consumer.assign([tp])
        try:
            ends = await log_ends(consumer, [tp])
            consumer.seek(tp, 3)
            return ends, [r.offset for r in await read_to_end(consumer, [tp])]
        finally:
            await consumer.stop()

    ends, offsets = run(check())
    assert list(ends.values()) == [15] and offsets == list(range(3, 15))


def test_a_restarted_worker_recovers_every_customer_state_its_changelog_holds(broker, start_worker):
    """Property: after a restart, every touchpoint processed before it is a duplicate if sent again.

    The states come back from the changelog (Faust's table recovery). A commit writes many states
    at once, so each changelog partition ends in a record batch of many; a recovery that stops at
    the batch's base offset (Tansu's ListOffsets answer) would forget all but its first state.
    """
    events = list(JourneyGenerator(customers=400, seed=41, start_ms=now_ms() - 3_600_000).events(1200))
    worker = start_worker()
    run(publish(broker.bootstrap, events, "avro", timestamp_from_event=True))
    worker.wait_drained(len(events))
    worker.kill()

    customers = len({event["customer_id"] for event in events})
    again = start_worker()
    recovered = again.wait_until(lambda st: st["recovered"], 60, "the restarted worker did not recover")
    assert recovered["customer_states"] == customers, "the changelog's states all recovered before the first record"
    run(publish(broker.bootstrap, events, "avro", timestamp_from_event=True))  # all of them redelivered
    status = again.wait_until(
        lambda st: sum(total(st["totals"], f"touchpoints_{n}") for n in ("deduplicated", "processed")) >= len(events)
        and st["pending_rows"] == 0, 90, "the restarted worker did not read the redeliveries",
    )
    assert stored(again) == (len(events), len(events)), "no redelivery stored as a new touchpoint"
    assert total(status["totals"], "touchpoints_deduplicated") == len(events)


# -- a second `cem run` on the same data directory --------------------------------------------------
def cem(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True, env=env,
                          timeout=240, cwd=ROOT)


def rows_in(data_dir: Path, env: dict) -> tuple[int, int]:
    out = cem("query", "SELECT count(), uniqExact(customer_id, event_id) FROM cem.touchpoints_enriched",
              "--data-dir", str(data_dir), "--format", "json", env=env)
    assert out.returncode == 0, out.stderr
    row = json.loads(out.stdout.strip().splitlines()[-1])
    return tuple(int(v) for v in row.values())


def drivers_by_worker(customer_id: str, web_port: int) -> list[bool]:
    """Whether each of the two workers' 360° views of the customer has its churn drivers (a worker
    holding the customer's state has them, a churned customer none)."""
    return [fetch_customer(f"http://127.0.0.1:{port}", customer_id)["churn"] is not None for port in (web_port, web_port + 1)]


def status(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=3) as response:
        return json.load(response)


def test_a_second_cem_run_on_the_same_data_directory_stores_every_event(tmp_path):
    web_port = free_port()
    env = dict(os.environ, CEM_WEB_PORT=str(web_port), CEM_METRICS_PORT=str(free_port()),
               CEM_SESSION_TIMEOUT_S="6", CEM_REBALANCE_TIMEOUT_S="2", CEM_SINK_FLUSH_INTERVAL_S="0.25")
    # Two workers, the trainer and the engine, whatever the machine's cores: every process of the run
    # is killed, and the second run recovers from all of them.
    common = ["--data-dir", str(tmp_path), "--broker-port", str(free_port()), "--customers", "300", "--rate", "1500",
              "--workers", "2"]
    first = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", *common], env=env, cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if status(web_port)["committed_records"] >= 3000:
                    break
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            assert time.monotonic() < deadline and first.poll() is None, "the first run did not commit 3000 touchpoints"
            time.sleep(0.2)
        # While it runs, the operator's views are the whole group's: `cem top` counts both workers, and
        # `cem customer` gets the churn drivers of a customer some worker holds (actively, or as
        # Faust's standby replica), unless it churned meanwhile (then it has none to explain).
        before = sum(received(status(port)) for port in (web_port, web_port + 1))
        assert received(top.Collector(top.Target(data_dir=tmp_path)).collect().status) >= before > received(status(web_port))
        ids = cem("query", "SELECT customer_id FROM cem.customer_state FINAL WHERE events_total > 0 AND isNull(churned_at) "
                  "LIMIT 8", "--data-dir", str(tmp_path), "--format", "json", env=env).stdout.splitlines()
        for line in ids:
            customer_id = json.loads(line)["customer_id"]
            before = drivers_by_worker(customer_id, web_port)
            view = json.loads(cem("customer", customer_id, "--data-dir", str(tmp_path), "--format", "json", env=env).stdout)
            if before == drivers_by_worker(customer_id, web_port) and any(before):  # not churned meanwhile
                assert view["found"] and view["churn"] is not None, customer_id
    finally:  # all of it, whatever happened: supervisor, broker, engine, workers, trainer
        kill_all(first.pid)
    first.wait()
    kept = rows_in(tmp_path, env)
    assert kept[0] >= 3000 and kept[0] == kept[1]

    second = cem("run", *common, "--duration", "6", env=env)
    assert second.returncode == 0, second.stderr[-3000:]
    summary = json.loads(second.stdout.strip().splitlines()[-1])
    # Every published touchpoint ends once, processed or dead-lettered (some read again when a log's
    # verdict came after its first fetch, their outputs sent again and deduplicated).
    shown, dead = json.dumps(summary), sum(summary["dead_lettered"].values())
    assert summary["published"] > 3000 and summary["processed"] + dead == summary["published"], shown
    assert summary["events_in"] >= summary["published"], shown
    # Every touchpoint of the second run is stored, next to every one the first run stored.
    assert rows_in(tmp_path, env) == (kept[0] + summary["processed"],) * 2
