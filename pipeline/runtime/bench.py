"""``cem bench``: sustained end-to-end throughput and latency on the embedded stack.

1. Start Tansu and pre-load N generated touchpoints (Avro) on ``cem.touchpoints``.
2. Measure the raw aiokafka consume rate of that topic (the client's own limit, same run).
3. Start the workers as ``cem run`` does (:class:`~pipeline.runtime.embedded.WorkerGroup`: by
   default one worker, the trainer in a process of its own, the engine they share); throughput =
   N / (last commit to ClickHouse - first record received), i.e. broker -> worker -> ClickHouse
   committed, group join excluded; latency = worker receipt -> ClickHouse commit per record.
4. Time each stage, and the whole planner, in-process on the same touchpoints.

With ``--workers N`` (N > 1), N worker processes share the partitions (one consumer group): the
machine's throughput, from the first receipt of any worker to the last commit of any; latency
percentiles are the highest of the workers'.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer

from pipeline.app.kafka_security import client_options
from pipeline.runtime.broker import EmbeddedBroker, ensure_topics, free_port
from pipeline.runtime.embedded import WorkerGroup, publish
from pipeline.runtime.run import embedded_settings
from pipeline.runtime.stages import planner_cost, stage_costs
from pipeline.settings import Settings
from pipeline.views.client import total
from processors.ingest import SourceRecord
from schemas.codec import AvroCodec
from schemas.contract import TOPIC_TOUCHPOINTS


def run_bench(events: int, customers: int, partitions: int, seed: int, data_dir: str | None, workers: int = 1,
              trainer: str = "process") -> dict:
    from processors.synthetic import JourneyGenerator

    directory = Path(data_dir or tempfile.mkdtemp(prefix="cem-bench-")).resolve()
    directory.mkdir(parents=True, exist_ok=True)  # a --data-dir that does not exist yet
    port = free_port()
    settings = embedded_settings(
        Settings.from_env().replace(partitions=partitions, metrics_port=free_port(), web_port=free_port(),
                                    session_timeout_s=6.0, rebalance_timeout_s=4.0),
        directory, port,
    )
    options = client_options(settings)  # the embedded broker's: plaintext
    with EmbeddedBroker(port, log_file=directory / "broker.log") as broker:
        ensure_topics(broker.bootstrap, partitions, options)
        touchpoints = list(JourneyGenerator(customers=customers, seed=seed).events(events))
        _say(f"pre-loading {len(touchpoints)} touchpoints ...")
        began = time.perf_counter()
        asyncio.run(publish(broker.bootstrap, touchpoints, "avro", timestamp_from_event=True, client_options=options))
        produce_s = time.perf_counter() - began
        _say("measuring the raw aiokafka consume rate ...")
        consume_per_s = asyncio.run(_raw_consume_rate(broker.bootstrap, len(touchpoints), options))
        _say(f"raw consume: {consume_per_s:,.0f} records/s; starting the worker ...")
        statuses = _run_workers(settings.replace(trainer=trainer), directory, workers, len(touchpoints))
    _say("")
    seconds = max(st["last_committed"] for st in statuses) - min(st["first_received"] for st in statuses)
    _say("measuring the stages in-process ...")
    codec = AvroCodec()
    sample = [SourceRecord(TOPIC_TOUCHPOINTS, i % partitions, i, t["occurred_at"], t["customer_id"].encode(),
                           codec.encode(t, "avro")) for i, t in enumerate(touchpoints[:20_000])]
    stages = stage_costs(sample)
    _say("measuring the planner in-process ...")
    plan_us = planner_cost(touchpoints, partitions)
    end_to_end_us = seconds / len(touchpoints) * 1e6
    return {
        "events": len(touchpoints),
        "customers": customers,
        "partitions": partitions,
        "workers": workers,
        "trainer": trainer,
        "events_per_s": round(len(touchpoints) / seconds, 1),
        "p50_ms": max(st["latency_committed"]["p50_ms"] for st in statuses),
        "p99_ms": max(st["latency_committed"]["p99_ms"] for st in statuses),
        "seconds": round(seconds, 2),
        "kafka_consume_per_s": round(consume_per_s, 1),
        "kafka_produce_per_s": round(len(touchpoints) / produce_s, 1),
        "ratio_to_kafka_consume": round(len(touchpoints) / seconds / consume_per_s, 4),
        "dead_lettered": sum(total(st["totals"], "touchpoints_dead_lettered") for st in statuses),
        "us_per_touchpoint": round(end_to_end_us, 1),
        "worker_rss_mb": statuses[0].get("rss_mb") if workers == 1 else [st.get("rss_mb") for st in statuses],
        "stages_us": stages,  # each stage alone, the first 20,000 touchpoints, fresh states
        "planner_us": plan_us,  # the whole planner, every touchpoint, states maturing as in the run
        "rest_us": round(end_to_end_us - plan_us, 1),  # delivery, Kafka outputs, ClickHouse, commits
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def _run_workers(settings: Settings, directory: Path, workers: int, expected: int) -> list[dict]:
    """Run the workers (:class:`~pipeline.runtime.embedded.WorkerGroup`) until they have committed
    ``expected`` records between them; returns their last statuses."""
    group = WorkerGroup(settings, directory, workers, lambda _: (free_port(), free_port()))
    try:
        group.start()
        group.wait_until(lambda st: _progress(st, expected), max(120.0, expected / 500), "the workers did not finish", 0.5)
        return group.statuses()
    finally:
        group.stop()


def _progress(status: dict, total: int) -> bool:
    done = status.get("committed_records", 0)
    print(f"\r  committed {done:>9,} / {total:,}", end="", file=sys.stderr, flush=True)
    return done >= total


async def _raw_consume_rate(bootstrap: str, expected: int, options: Mapping[str, Any] | None = None) -> float:
    consumer = AIOKafkaConsumer(
        TOPIC_TOUCHPOINTS, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest",
        enable_auto_commit=False, max_partition_fetch_bytes=8 << 20, fetch_max_bytes=64 << 20, **(options or {}),
    )
    await consumer.start()
    try:
        seen = 0
        began = None
        while seen < expected:
            batches = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            if began is None and batches:
                began = time.perf_counter()
            seen += sum(len(records) for records in batches.values())
        if began is None:  # nothing expected (no touchpoints), so nothing read
            return 0.0
        return seen / (time.perf_counter() - began)
    finally:
        await consumer.stop()


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
