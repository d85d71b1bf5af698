"""Soak: touchpoints through repeated SIGKILLs of the worker, on the embedded broker and chDB.

Publishes ``--events`` generated touchpoints (with channel-system redeliveries) and kills the worker
``--kills`` times, each after the restarted worker has read records itself, then lets the last one
finish and compares ClickHouse with the generator's ground truth. Prints one JSON line: lost and
doubled touchpoints, whether ``cem.kpi_minute`` equals the truth per channel, and the recovery time
of each kill (SIGKILL -> the restarted worker's first commit).

    .venv/bin/python benchmarks/soak.py --events 150000 --kills 10        # or: make soak
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from conftest import expected_kpis, kpi_by_channel
from test_exactness import with_redeliveries

from pipeline.runtime.broker import EmbeddedBroker, ensure_topics, free_port
from pipeline.runtime.embedded import WorkerProcess, publish
from pipeline.runtime.run import embedded_settings
from pipeline.settings import Settings
from pipeline.views.client import received
from processors.synthetic import JourneyGenerator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=150_000)
    parser.add_argument("--customers", type=int, default=5_000)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--static", action="store_true", help="static group membership (CEM_GROUP_INSTANCE_ID)")
    parser.add_argument("--session-timeout", type=float, default=Settings.session_timeout_s)
    parser.add_argument("--rebalance-timeout", type=float, default=Settings.rebalance_timeout_s)
    parser.add_argument("--heartbeat", type=float, default=Settings.heartbeat_interval_s)
    args = parser.parse_args()
    print(json.dumps(soak(args)))


def soak(args: argparse.Namespace) -> dict:
    rng = random.Random(args.seed)
    directory = Path(tempfile.mkdtemp(prefix="cem-soak-"))
    port = free_port()
    overrides = dict(partitions=4, metrics_port=free_port(), web_port=free_port(), session_timeout_s=args.session_timeout,
                     rebalance_timeout_s=args.rebalance_timeout, heartbeat_interval_s=args.heartbeat,
                     sink_flush_interval_s=0.5)
    if args.static:
        overrides["group_instance_id"] = "soak-worker"
    settings = embedded_settings(Settings().replace(**overrides), directory, port)
    events = list(JourneyGenerator(customers=args.customers, seed=args.seed,
                                   start_ms=int(time.time() * 1000) - 24 * 3_600_000).events(args.events))
    stream = with_redeliveries(events)
    recoveries: list[float] = []
    with EmbeddedBroker(port, log_file=directory / "broker.log") as broker:
        ensure_topics(broker.bootstrap, 4)
        asyncio.run(publish(broker.bootstrap, stream, "avro", timestamp_from_event=True))
        worker = WorkerProcess(settings, directory / "worker-0.log").start(90)
        for kill in range(args.kills):
            n = rng.randint(2_000, max(2_001, len(stream) // (args.kills + 2)))
            worker.wait_until(lambda st, n=n: st["committed_records"] > 0 and received(st) >= n, 300, "no progress")
            worker.kill()
            killed = time.time()
            worker = WorkerProcess(settings, directory / f"worker-{kill + 1}.log").start(90)
            status = worker.wait_until(lambda st: st["last_committed"] is not None, 300, "no commit after a kill")
            recoveries.append(round(status["last_committed"] - killed, 1))
            print(f"kill {kill + 1}: after {n} records read, first commit {recoveries[-1]} s later", file=sys.stderr)
        worker.wait_until(lambda st: _rows(worker) >= len(events) and st["pending_rows"] == 0, 900, "did not finish", 1.0)
        rows, distinct = worker.query("SELECT count(), uniqExact(customer_id, event_id) FROM cem.touchpoints_enriched")[0]
        kpis_equal = kpi_by_channel(worker) == expected_kpis(events)
        worker.stop()
    return {
        "events": len(events), "redeliveries": len(stream) - len(events), "kills": args.kills, "static": args.static,
        "lost": len(events) - distinct, "doubled": rows - distinct, "kpi_minute_equal": kpis_equal,
        "recovery_s": recoveries, "recovery_max_s": max(recoveries, default=None),
    }


def _rows(worker: WorkerProcess) -> int:
    return worker.query("SELECT count() FROM cem.touchpoints_enriched")[0][0]


if __name__ == "__main__":
    main()
