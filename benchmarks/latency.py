"""Latency at a steady rate: receipt -> alert acked and receipt -> ClickHouse commit.

``cem bench`` measures a backlog, where every record waits for those before it; the latency aims
are for live traffic below the sustained rate. This publishes generated touchpoints at ``--rate``
for ``--duration`` seconds (after the customers' CRM profiles) to the workers of ``cem run``'s
layout (:class:`~pipeline.runtime.embedded.WorkerGroup`: ``--workers``, ``--trainer``), waits until
every record is committed, and prints one JSON line with the group's percentiles (each the highest
worker's) and the machine's load.

    .venv/bin/python benchmarks/latency.py --rate 3750 --duration 60     # half the bench's rate
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.runtime.broker import EmbeddedBroker, ensure_topics, free_port  # noqa: E402
from pipeline.runtime.embedded import WorkerGroup, publish_profiles  # noqa: E402
from pipeline.runtime.run import embedded_settings, publish_at_rate  # noqa: E402
from pipeline.settings import Settings  # noqa: E402
from processors.synthetic import JourneyGenerator  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=3750.0, help="touchpoints per second")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of traffic")
    parser.add_argument("--customers", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--trainer", choices=("worker", "process"), default="process")
    parser.add_argument("--partitions", type=int, default=4)
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.rate, args.duration, args.customers, args.workers, args.trainer, args.partitions)))
    return 0


def measure(rate: float, duration_s: float, customers: int, workers: int, trainer: str, partitions: int) -> dict:
    directory = Path(tempfile.mkdtemp(prefix="cem-latency-"))
    port = free_port()
    settings = embedded_settings(Settings.from_env().replace(partitions=partitions, trainer=trainer), directory, port)
    with EmbeddedBroker(port, log_file=directory / "broker.log") as broker:
        ensure_topics(broker.bootstrap, partitions, {})
        group = WorkerGroup(settings, directory, workers, lambda _: (free_port(), free_port()))
        try:
            group.start()
            journeys = JourneyGenerator(customers=customers, seed=0, start_ms=int(time.time() // 60 * 60_000), run="r.")
            asyncio.run(publish_profiles(broker.bootstrap, journeys.profiles(), {}))
            published = asyncio.run(publish_at_rate(broker.bootstrap, journeys.events(), rate, "avro",
                                                    time.monotonic() + duration_s, None, {}))
            status = group.wait_drained(published, timeout_s=120)
        finally:
            group.stop()
    return {"rate": rate, "seconds": duration_s, "published": published, "workers": workers, "trainer": trainer,
            "alert": status["latency_alert"], "committed": status["latency_committed"],
            "load_avg_1m": round(os.getloadavg()[0], 2)}


if __name__ == "__main__":
    sys.exit(main())
