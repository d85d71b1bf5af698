"""Memory: what the worker's state holds per customer, and whether anything grows with the data.

Runs the worker's own per-record path (processors.plan.BatchPlanner with the real scoring and the
real output encoders) in-process over ``--events`` generated touchpoints for ``--customers``
customers, in batches, under the worker's GC settings, and prints one JSON line: RSS along the way,
the deep size of the customer states per customer (total, the dedupe window, everything else), the
dedupe ids held, and the sizes of the alert engine's structures.

    .venv/bin/python benchmarks/memory.py --events 1000000 --customers 20000
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.app.main import tune_gc
from pipeline.app.outputs import ShippedOutputs
from processors.customer import mark_written
from processors.ingest import Ingestor, SourceRecord
from processors.plan import BatchPlanner, DictStates
from processors.privacy import Redactor
from processors.scoring import TouchpointScoring
from processors.synthetic import JourneyGenerator
from schemas.codec import AvroCodec


def deep_size(obj: Any, seen: set[int] | None = None) -> int:
    """Bytes an object holds, following containers, dataclass slots and __dict__ (each object once)."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    size = sys.getsizeof(obj)
    if isinstance(obj, dict):
        size += sum(deep_size(k, seen) + deep_size(v, seen) for k, v in obj.items())
    elif isinstance(obj, (list, tuple, set, frozenset)):
        size += sum(deep_size(v, seen) for v in obj)
    elif hasattr(obj, "__slots__"):
        size += sum(deep_size(getattr(obj, s), seen) for s in obj.__slots__ if hasattr(obj, s))
    elif hasattr(obj, "__dict__"):
        size += deep_size(vars(obj), seen)
    return size


def commit(plan: Any) -> None:
    """What the worker's commit does to the states it writes (their dedupe memory may be pruned)."""
    for state in plan.changed.values():
        mark_written(state)


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=2_000)
    args = parser.parse_args()
    tune_gc()
    codec = AvroCodec()
    redactor = Redactor()
    planner = BatchPlanner(Ingestor(codec, redact=redactor.redact), TouchpointScoring(),
                           ShippedOutputs(codec, redactor.redact_bytes))
    states = DictStates()
    generator = JourneyGenerator(customers=args.customers, seed=0)
    rss: list[tuple[int, float]] = [(0, round(rss_mb(), 1))]
    batch: list[SourceRecord] = []
    began = time.perf_counter()
    for offset, event in enumerate(generator.events(args.events)):
        batch.append(SourceRecord("cem.touchpoints", offset % 4, offset, event["occurred_at"],
                                  event["customer_id"].encode(), codec.encode(event, "avro")))
        if len(batch) == args.batch:
            commit(planner.plan(batch, states))
            batch = []
        if (offset + 1) % (args.events // 10) == 0:
            rss.append((offset + 1, round(rss_mb(), 1)))
            print(f"{offset + 1:>9} touchpoints  RSS {rss[-1][1]:.0f} MB", file=sys.stderr)
    if batch:
        commit(planner.plan(batch, states))
    customers = list(states.states.values())
    total = sum(deep_size(s) for s in customers)
    window = sum(deep_size(s.seen) for s in customers)
    ids = sum(len(s.seen) for s in customers)
    engine = planner.scoring.alerts
    print(json.dumps({
        "events": args.events, "customers": len(customers), "seconds": round(time.perf_counter() - began, 1),
        "rss_mb": rss,
        "state_bytes_per_customer": round(total / len(customers)),
        "dedupe_window_bytes_per_customer": round(window / len(customers)),
        "state_beyond_dedupe_window_bytes_per_customer": round((total - window) / len(customers)),
        "dedupe_ids": ids, "dedupe_ids_per_customer": round(ids / len(customers), 1),
        "alert_engine": {"sla_timers": len(engine._timers), "open_channel_minutes": sum(len(c.minutes) for c in engine._channels.values()),
                         "bytes": deep_size(engine)},
    }))


if __name__ == "__main__":
    main()
