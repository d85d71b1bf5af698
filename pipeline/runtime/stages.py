"""Per-stage cost of the touchpoint path, in-process, on the benchmark's own records.

Each stage runs over the same sample on its own, timed: decode (the Avro or JSON reader), validate
(the contract's rules, redaction), state (dedupe and enrichment), score (sentiment, churn, alert
rules), encode (the enriched record and its row), on fresh states. And the whole batch planner
(:func:`planner_cost`: those stages, identity stitching and the glue between them) over the whole
load, its states maturing as in the run. ``cem bench`` prints these beside the end-to-end cost per
touchpoint; what the planner does not account for is the rest: delivery, Kafka outputs, ClickHouse,
commits.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson

from pipeline.app.outputs import ShippedOutputs
from processors.customer import CustomerState, apply
from processors.ingest import SourceRecord
from processors.privacy import Redactor
from processors.scoring import TouchpointScoring, TrainingBatch
from processors.touchpoint import validate
from schemas.codec import AvroCodec
from schemas.contract import TOPIC_TOUCHPOINTS


def stage_costs(records: Sequence[SourceRecord], sample: int = 20_000) -> dict[str, float]:
    """µs per touchpoint of each stage over the first ``sample`` records (valid touchpoints), under
    the worker's garbage-collector settings."""
    from pipeline.app.main import tune_gc

    tune_gc()
    records = list(records[:sample])
    codec, redactor = AvroCodec(), Redactor()
    costs: dict[str, float] = {}
    decoded = _timed(costs, "decode", lambda: [codec.decode(r.value or b"") for r in records])

    def checked() -> list:
        out = []
        for r, d in zip(records, decoded, strict=True):
            tp = validate(d, r.timestamp_ms, typed=True)
            if tp.text:
                tp.text = redactor.redact(tp.text)
            out.append(tp)
        return out

    touchpoints = _timed(costs, "validate", checked)
    states: dict[str, CustomerState] = {}

    def enrich() -> list:
        out = []
        for r, tp in zip(records, touchpoints, strict=True):
            state = states.get(tp.customer_id) or states.setdefault(tp.customer_id, CustomerState(tp.customer_id))
            out.append((apply(state, tp, r.partition, r.offset, r.timestamp_ms)[1], state))
        return out

    enriched = _timed(costs, "state", enrich)
    scoring, batch = TouchpointScoring(), TrainingBatch()
    _timed(costs, "score", lambda: [scoring.score(e, s, True, batch) for e, s in enriched])
    outputs = ShippedOutputs(codec, redactor.redact_bytes)
    _timed(costs, "encode", lambda: [outputs.enriched(r, e, False) for r, (e, _) in zip(records, enriched, strict=True)])
    return {stage: round(us / len(records), 1) for stage, us in costs.items()}


def planner_cost(touchpoints: Sequence[Mapping[str, Any]], partitions: int, batch: int = 2_000) -> float:
    """µs per touchpoint of :class:`~processors.plan.BatchPlanner` as the worker configures it
    (redaction, identity stitching), over ``touchpoints`` in batches of the worker's size, each
    batch's states then written (:class:`~pipeline.runtime.loopback.Loopback`, no broker)."""
    from pipeline.app.main import tune_gc
    from pipeline.runtime.loopback import Loopback

    tune_gc()
    loop = Loopback.with_stitching(b"cem bench: a pseudonym key", partitions=partitions, redactor=Redactor())
    loop.publish(touchpoints)
    began = time.perf_counter()
    loop.run(batch=batch)
    return round((time.perf_counter() - began) / max(1, len(touchpoints)) * 1e6, 1)


def output_digest(touchpoints: Sequence[Mapping[str, Any]], partitions: int = 4, batch: int = 500,
                  damaged_every: int = 0) -> str:
    """SHA-256 of everything the planner ships for ``touchpoints`` as the worker configures it: every
    output record and row, the changed states and where they live, the alerts, the training examples
    and the tallies, batch by batch. With ``damaged_every``, every n-th record's bytes are cut or
    flipped, so the dead-letter paths count too. One refactoring, or a build, must not move it."""
    import hashlib

    from pipeline.runtime.loopback import Loopback

    digest = hashlib.sha256()

    class Digested(Loopback):
        def _commit(self, plan: Any) -> None:
            for shipped in plan.outputs:
                r = shipped.record
                digest.update(repr((r.topic, r.key, r.value, r.partition, r.headers, r.timestamp_ms, shipped.row)).encode())
            for customer_id, state in plan.changed.items():
                digest.update(repr((customer_id, plan.placed.get(customer_id))).encode() + orjson.dumps(state))
            digest.update(repr((plan.alerts, plan.training, plan.tallies, plan.sweep_error)).encode())
            super()._commit(plan)

    planner = Loopback.with_stitching(b"cem digest: a pseudonym key", partitions=partitions, redactor=Redactor()).planner
    loop = Digested(planner, partitions)
    loop.publish(touchpoints)
    if damaged_every:
        for n, record in enumerate(loop.of(TOPIC_TOUCHPOINTS)[::damaged_every]):
            loop.append(TOPIC_TOUCHPOINTS, record.key or b"", _damaged(record.value or b"", n))
    loop.run(batch=batch)
    return digest.hexdigest()


def _damaged(value: bytes, n: int) -> bytes:
    """``value`` cut at ``n`` (odd ``n``) or with its byte there flipped (even ``n``), ``n`` taken
    modulo its length."""
    at = n % len(value)
    return value[:at] if n % 2 else value[:at] + bytes([value[at] ^ 0x5A]) + value[at + 1:]


def _timed(costs: dict[str, float], stage: str, run: Callable[[], list]) -> list:
    began = time.perf_counter()
    result = run()
    costs[stage] = (time.perf_counter() - began) * 1e6
    return result
