"""The planner with its own outputs fed back as its input, without a broker: for tests and benchmarks.

:class:`Loopback` is an in-memory Kafka (topics of partitions of records, read by position) in front of
one :class:`~processors.plan.BatchPlanner` with the worker's real :class:`ShippedOutputs`: what a
batch ships to ``cem.touchpoints`` or ``cem.identity`` is appended to those logs and read in turn, as
the workers of the partitions would, and each batch is committed (its states written). Identity
stitching crosses partitions this way in microseconds; the real broker runs the same records in the
live tests.

>>> from schemas.codec import AvroCodec
>>> loop = Loopback.with_stitching(b"a pseudonym key of sixteen+ bytes")
>>> loop.publish([{"event_id": "e1", "anonymous_id": "d1", "occurred_at": 1767225600000, "channel": "web", "type": "page_view"}])
>>> _ = loop.run(); sorted(loop.states.states)[0].startswith("anonymous_id:p:")
True
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping
from typing import Any

from pipeline.app.outputs import Shipped, ShippedOutputs
from processors.customer import mark_written
from processors.identity import IdentityRules
from processors.ingest import Ingestor, SourceRecord
from processors.plan import BatchPlanner, DictStates
from processors.privacy import Redactor
from processors.pseudonym import Pseudonymizer
from processors.scoring import TouchpointScoring
from processors.stitching import Stitching
from schemas.codec import AvroCodec
from schemas.contract import HEADER_IDENTITY, TOPIC_IDENTITY, TOPIC_TOUCHPOINTS, record_key

INPUTS = (TOPIC_TOUCHPOINTS, TOPIC_IDENTITY)  # the topics the worker reads


class Loopback:
    """Logs of records by (topic, partition), a planner, its states, and how far each log is read."""

    def __init__(self, planner: BatchPlanner[Shipped], partitions: int = 4):
        self.planner = planner
        self.partitions = partitions
        self.codec = AvroCodec()
        self.logs: dict[tuple[str, int], list[SourceRecord]] = {}
        self.states = DictStates()
        self.read: dict[tuple[str, int], int] = {}

    @classmethod
    def with_stitching(cls, key: bytes, rules: IdentityRules | None = None, partitions: int = 4,
                       redactor: Redactor | None = None) -> Loopback:
        """A planner as the worker configures it: stitching with ``key``, and ``redactor`` on the
        free text (none by default)."""
        codec = AvroCodec()
        stitching = Stitching(Pseudonymizer(key), rules or IdentityRules(), partitions)
        redact = redactor.redact if redactor is not None else None
        planner = BatchPlanner(Ingestor(codec, redact=redact, stitching=stitching), TouchpointScoring(),
                               ShippedOutputs(codec, (redactor or Redactor.from_spec("")).redact_bytes))
        return cls(planner, partitions)

    def append(self, topic: str, key: bytes, value: bytes, partition: int | None = None,
               headers: Iterable[tuple[str, bytes]] = (), timestamp_ms: int | None = None) -> None:
        """A record at the end of its log; without a partition, by a hash of its key."""
        p = zlib.crc32(key) % self.partitions if partition is None else partition
        log = self.logs.setdefault((topic, p), [])
        log.append(SourceRecord(topic, p, len(log), -1 if timestamp_ms is None else timestamp_ms, key, value,
                                headers=tuple(headers)))

    def publish(self, touchpoints: Iterable[Mapping[str, Any]]) -> None:
        """Touchpoints as a channel system sends them: Avro, keyed as the contract says."""
        for tp in touchpoints:
            self.append(TOPIC_TOUCHPOINTS, record_key(tp).encode(), self.codec.encode(tp, "avro"),
                        timestamp_ms=tp["occurred_at"])

    def of(self, topic: str) -> list[SourceRecord]:
        return [r for (t, _), log in sorted(self.logs.items()) if t == topic for r in log]

    def run(self, batch: int = 2, hold_merges: bool = False) -> int:
        """Read every input log to its end, ``batch`` records at a time, until nothing new comes;
        ``hold_merges``: a log whose next record is a merge is not read on (a merge slower than
        anything else). Returns the records read."""
        done = 0
        while True:
            moved = False
            for key in sorted(k for k in self.logs if k[0] in INPUTS):
                log, at = self.logs[key], self.read.get(key, 0)
                if at >= len(log) or (hold_merges and log[at].header(HEADER_IDENTITY) == b"merge"):
                    continue
                records = log[at:at + batch]
                self.read[key] = at + len(records)
                self._commit(self.planner.plan(records, self.states))
                done += len(records)
                moved = True
            if not moved:
                return done

    def _commit(self, plan: Any) -> None:
        for shipped in plan.outputs:
            r = shipped.record
            self.append(r.topic, r.key or b"", r.value or b"", r.partition if r.topic in INPUTS else r.partition or 0,
                        r.headers, r.timestamp_ms)
        for state in plan.changed.values():
            mark_written(state)
