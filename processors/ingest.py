"""The per-record ingest step: decode -> validate -> protect -> dedupe -> enrich, as one pure function.

:class:`Ingestor` knows nothing about Kafka clients or Faust; it takes a :class:`SourceRecord` (the
bytes and coordinates of one input record) and a state lookup, and returns a :class:`Result` that
says which outputs to write. Every record ends in exactly one of: processed, replayed, duplicate,
dead-lettered, suppressed (the customer was erased), so ``in = processed + dead-lettered +
deduplicated + suppressed`` holds by construction; an unexpected exception inside the step is a dead
letter too (``processing_error``), never a crash.

Privacy happens here, before anything downstream sees the touchpoint: free text is redacted and,
when configured, the customer id is replaced by its pseudonym (see :mod:`processors.privacy`).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Container
from dataclasses import dataclass
from typing import Any

from processors.customer import DEFAULT_DEDUPE_HORIZON_MS, CustomerState, Enriched, Outcome, apply
from processors.touchpoint import Touchpoint, validate
from schemas.codec import CONFLUENT_MAGIC, SINGLE_OBJECT_MAGIC, AvroCodec
from schemas.contract import CHANNELS, MAX_EVENT_MS, MAX_RECORD_BYTES, MIN_EVENT_MS, Reason, Rejected, Stage

Transform = Callable[[str], str]


@dataclass(slots=True)
class SourceRecord:
    """One input record as it came off Kafka; ``epoch`` names the incarnation of its log."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    epoch: int = 1


@dataclass(slots=True)
class DeadLetter:
    """A record that cannot be processed: the original bytes, unchanged, and why."""

    source: SourceRecord
    reason: Reason
    stage: Stage
    detail: str


class Kind(str, enum.Enum):
    PROCESSED = "processed"
    REPLAYED = "replayed"  # read again after a restart: state untouched; outputs again unless durable
    DUPLICATE = "duplicate"
    DEAD_LETTER = "dead_letter"
    SUPPRESSED = "suppressed"  # of an erased customer: dropped and counted, nothing kept


@dataclass(slots=True)
class Result:
    kind: Kind
    channel: str  # "unknown" for records that never decoded that far
    enriched: Enriched | None = None
    dead_letter: DeadLetter | None = None
    state: CustomerState | None = None
    rewritten: bool = False  # the touchpoint differs from the record's own bytes (redacted, pseudonymised)


class Ingestor:
    """Turns input records into results; holds the codec, the dedupe horizon and the privacy steps.

    >>> from schemas.codec import AvroCodec
    >>> ingest = Ingestor(AvroCodec())
    >>> states = {}
    >>> lookup = lambda cid: states.setdefault(cid, CustomerState(cid))
    >>> value = b'{"event_id":"e1","customer_id":"c1","occurred_at":1767225600000,"channel":"web","type":"login"}'
    >>> ingest.handle(SourceRecord("cem.touchpoints", 0, 0, 1767225600000, b"c1", value), lookup).kind
    <Kind.PROCESSED: 'processed'>
    >>> ingest.handle(SourceRecord("cem.touchpoints", 0, 1, 1767225600000, b"c1", value), lookup).kind
    <Kind.DUPLICATE: 'duplicate'>
    >>> r = ingest.handle(SourceRecord("cem.touchpoints", 0, 2, 1767225600000, b"c1", b"\\x01garbage"), lookup)
    >>> r.kind, r.dead_letter.reason.value
    (<Kind.DEAD_LETTER: 'dead_letter'>, 'undecodable')
    """

    def __init__(
        self,
        codec: AvroCodec,
        dedupe_horizon_ms: int = DEFAULT_DEDUPE_HORIZON_MS,
        redact: Transform | None = None,
        pseudonymize: Transform | None = None,
        erased: Container[str] = frozenset(),
    ):
        self.codec = codec
        self.dedupe_horizon_ms = dedupe_horizon_ms
        self.redact = redact
        self.pseudonymize = pseudonymize
        self.erased = erased  # the suppression list: customers (as the state knows them) erased

    def handle(self, record: SourceRecord, state_for: Callable[[str], CustomerState]) -> Result:
        stage = Stage.DECODE
        channel = "unknown"
        try:
            value = record.value
            if value is None or not value:
                return _dead(record, Reason.UNDECODABLE, Stage.DECODE, "empty record value")
            if len(value) > MAX_RECORD_BYTES:
                return _dead(record, Reason.OVERSIZE, Stage.DECODE, f"{len(value)} bytes > {MAX_RECORD_BYTES}")
            decoded = self.codec.decode(value)
            stage = Stage.VALIDATE
            channel = _channel_of(decoded)
            typed = value[:1] in _AVRO_MARKERS  # decoded by Avro against the schema: types guaranteed
            touchpoint = validate(decoded, reference_ms=record.timestamp_ms, typed=typed)
            if record.key != touchpoint.customer_id.encode():
                # State is partitioned by the key: a record keyed otherwise would split a customer's state.
                return _dead(
                    record, Reason.KEY_MISMATCH, Stage.VALIDATE, "Kafka key must be the customer_id (UTF-8)", channel,
                )
            rewritten = self._protect(touchpoint)
            if touchpoint.customer_id in self.erased:
                return Result(Kind.SUPPRESSED, touchpoint.channel)
            stage = Stage.STATE
            state = state_for(touchpoint.customer_id)
            outcome, enriched = apply(
                state, touchpoint, record.partition, record.offset,
                record_time(record.timestamp_ms, touchpoint.occurred_at), self.dedupe_horizon_ms, record.epoch,
            )
        except Rejected as exc:
            return _dead(record, exc.reason, stage, exc.detail, channel)
        except Exception as exc:  # a bug or an input nobody foresaw: this record's problem, not the batch's
            return _dead(record, Reason.PROCESSING_ERROR, stage, describe(exc), channel)
        if outcome is Outcome.DUPLICATE:
            return Result(Kind.DUPLICATE, touchpoint.channel, state=state)
        if outcome is Outcome.SETTLED:  # decided before the restart, its outputs (if any) durable
            return Result(Kind.REPLAYED, touchpoint.channel, state=state)
        kind = Kind.PROCESSED if outcome is Outcome.NEW else Kind.REPLAYED
        return Result(kind, touchpoint.channel, enriched=enriched, state=state, rewritten=rewritten)

    def _protect(self, tp: Touchpoint) -> bool:
        """Redact free text and pseudonymise the customer id, in place; whether anything changed."""
        rewritten = False
        if self.redact is not None and tp.text:
            redacted = self.redact(tp.text)
            rewritten = redacted != tp.text
            tp.text = redacted
        if self.pseudonymize is not None:
            tp.customer_id = self.pseudonymize(tp.customer_id)
            rewritten = True
        return rewritten


_AVRO_MARKERS = (SINGLE_OBJECT_MAGIC[:1], CONFLUENT_MAGIC)


def record_time(timestamp_ms: int, fallback: int) -> int:
    """A Kafka record timestamp as the time a record was received, or ``fallback`` when it is none
    a consumer could read (-1 from old clients, or a producer's nonsense).

    >>> record_time(1_767_225_600_000, 0), record_time(-1, 7), record_time(10**18, 7)
    (1767225600000, 7, 7)
    """
    return timestamp_ms if MIN_EVENT_MS <= timestamp_ms < MAX_EVENT_MS else fallback


def describe(exc: BaseException) -> str:
    """An exception as a dead letter's detail: its type and message, bounded.

    >>> describe(KeyError("x"))
    "KeyError: 'x'"
    """
    return f"{type(exc).__name__}: {exc}"[:1000]


def _channel_of(decoded: dict[str, Any]) -> str:
    # A label of Prometheus series: only the contract's channels, or a producer could mint series.
    channel = decoded.get("channel")
    return channel if isinstance(channel, str) and channel in _KNOWN_CHANNELS else "unknown"


_KNOWN_CHANNELS = frozenset(CHANNELS)


def _dead(record: SourceRecord, reason: Reason, stage: Stage, detail: str, channel: str = "unknown") -> Result:
    return Result(Kind.DEAD_LETTER, channel, dead_letter=DeadLetter(record, reason, stage, detail))
