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
from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass, field
from typing import Any

from processors.customer import (
    DEFAULT_DEDUPE_HORIZON_MS,
    CustomerState,
    Enriched,
    Outcome,
    apply,
    log_position,
    move_on,
    read_before,
)
from processors.identity import Identifier
from processors.stitching import Claim, Forward, Stitching, claims, forwarder_key, owner_at, subject_of
from processors.touchpoint import TOUCHPOINT_FIELDS, Touchpoint, validate, validate_values
from schemas.codec import CONFLUENT_MAGIC, SINGLE_OBJECT_MAGIC, AvroCodec
from schemas.contract import (
    CHANNELS,
    HEADER_IDENTIFIED_BY,
    MAX_EVENT_MS,
    MAX_RECORD_BYTES,
    MIN_EVENT_MS,
    TOPIC_IDENTITY,
    TOPIC_TOUCHPOINTS,
    Reason,
    Rejected,
    Stage,
)

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
    headers: Sequence[tuple[str, bytes]] = ()

    def header(self, name: str) -> bytes | None:
        if not self.headers:  # a producer's record, mostly
            return None
        return next((value for key, value in self.headers if key == name), None)

    @property
    def forwarded(self) -> bool:
        """A touchpoint the pipeline itself sent on to the state that takes it (processors.stitching)."""
        return self.topic == TOPIC_IDENTITY or (bool(self.headers) and self.header(HEADER_IDENTIFIED_BY) is not None)


@dataclass(slots=True)
class DeadLetter:
    """A record that cannot be processed: the original bytes, unchanged, and why."""

    source: SourceRecord
    reason: Reason
    stage: Stage
    detail: str


class Kind(str, enum.Enum):
    PROCESSED = "processed"
    FORWARDED = "forwarded"  # to the partition of the state that takes it (processors.stitching)
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
    forward: Forward | None = None
    claims: list[Claim] = field(default_factory=list)


# The members the per-record path reads, as module globals: on Python 3.11 every ``Kind.X`` goes
# through the enum metaclass's ``__getattr__`` hook, several times the cost of a global.
_PROCESSED, _REPLAYED, _DUPLICATE = Kind.PROCESSED, Kind.REPLAYED, Kind.DUPLICATE
_NEW, _SETTLED, _SEEN = Outcome.NEW, Outcome.SETTLED, Outcome.DUPLICATE
_DECODE, _VALIDATE, _STATE = Stage.DECODE, Stage.VALIDATE, Stage.STATE


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
        stitching: Stitching | None = None,
    ):
        self.stitching = stitching  # None: identifiers are not used (no key to pseudonymise them with)
        self.codec = codec
        self._by_values = codec.current_fields == TOUCHPOINT_FIELDS  # see AvroCodec.decode_values
        self.dedupe_horizon_ms = dedupe_horizon_ms
        self.redact = redact
        self.pseudonymize = pseudonymize
        self.erased = erased  # the suppression list: customers (as the state knows them) erased

    def handle(self, record: SourceRecord, state_for: Callable[[str], CustomerState]) -> Result:
        stage = _DECODE
        channel = "unknown"
        try:
            value = record.value
            if value is None or not value:
                return _dead(record, Reason.UNDECODABLE, Stage.DECODE, "empty record value")
            if len(value) > MAX_RECORD_BYTES:
                return _dead(record, Reason.OVERSIZE, Stage.DECODE, f"{len(value)} bytes > {MAX_RECORD_BYTES}")
            values = self.codec.decode_values(value) if self._by_values else None
            if values is not None:  # the current schema: its values, typed and in the touchpoint's order
                stage = _VALIDATE
                channel = _channel_name(values[_CHANNEL])
                touchpoint = validate_values(values, record.timestamp_ms)
            else:
                decoded = self.codec.decode(value)
                stage = _VALIDATE
                channel = _channel_of(decoded)
                typed = value[0] in _AVRO_MARKERS  # decoded by Avro against the schema: types guaranteed
                touchpoint = validate(decoded, record.timestamp_ms, typed)
            internal = record.topic == TOPIC_IDENTITY  # the pipeline's own, protected at the edge
            sent_ids = bool(touchpoint.anonymous_id or touchpoint.email or touchpoint.phone)
            found = self._identify(touchpoint) if sent_ids else []
            if not touchpoint.customer_id:
                return self._forward_to_subject(record, touchpoint, found, state_for)
            if record.key != touchpoint.customer_id.encode():
                # State is partitioned by the key: a record keyed otherwise would split a customer's state.
                return _dead(
                    record, Reason.KEY_MISMATCH, Stage.VALIDATE, "Kafka key must be the customer_id (UTF-8)", channel,
                )
            rewritten = self._protect(touchpoint, internal) or sent_ids  # identifiers never stay in clear
            if touchpoint.customer_id in self.erased:
                return Result(Kind.SUPPRESSED, touchpoint.channel)
            stage = _STATE
            state = state_for(touchpoint.customer_id)
            if internal and (owner := owner_at(state, log_position(record.epoch, record.offset))) is not None:
                if touchpoint.event_id in state.seen:  # a redelivery of what the identifier took itself
                    return Result(_DUPLICATE, touchpoint.channel, state=state)
                return self._forward_to_owner(record, touchpoint, state, *owner)
            # A copy the pipeline forwarded is a duplicate whenever the state still knows its id: sent
            # again after a crash, it may come any time after the customer's later events.
            outcome, enriched = apply(
                state, touchpoint, record.partition, record.offset,
                record_time(record.timestamp_ms, touchpoint.occurred_at),
                _FOREVER if record.forwarded else self.dedupe_horizon_ms, record.epoch,
            )
        except Rejected as exc:
            return _dead(record, exc.reason, stage, exc.detail, channel)
        except Exception as exc:  # a bug or an input nobody foresaw: this record's problem, not the batch's
            return _dead(record, Reason.PROCESSING_ERROR, stage, describe(exc), channel)
        if outcome is _SEEN:
            return Result(_DUPLICATE, touchpoint.channel, state=state)
        if outcome is _SETTLED:  # decided before the restart, its outputs (if any) durable
            return Result(_REPLAYED, touchpoint.channel, state=state)
        kind = _PROCESSED if outcome is _NEW else _REPLAYED
        assert enriched is not None
        sent: list[Claim] = []
        if internal:
            enriched.identified_by = touchpoint.customer_id  # an identifier's own (anonymous) history
        else:
            if record.headers:  # else none: a producer's own record
                enriched.identified_by = _identified_by(record)
            if found and self.stitching is not None:
                sent = claims(state, found, self.stitching.rules, touchpoint.occurred_at, record.partition,
                              again=kind is _REPLAYED)
        # Positional (enriched, dead_letter, state, rewritten, forward, claims): keywords cost more.
        return Result(kind, touchpoint.channel, enriched, None, state, rewritten, None, sent)

    def _identify(self, tp: Touchpoint) -> list[Identifier]:
        """The touchpoint's identifiers, pseudonymised in place; dropped when stitching is off."""
        if self.stitching is not None:
            return self.stitching.identify(tp)
        tp.anonymous_id = tp.email = tp.phone = None  # no key to pseudonymise them: never kept in clear
        return []

    def _forward_to_subject(self, record: SourceRecord, tp: Touchpoint, found: list[Identifier],
                            state_for: Callable[[str], CustomerState]) -> Result:
        """Step 1 of processors.stitching: an identifier-only touchpoint goes to its subject's home."""
        subject = subject_of(found)
        if subject is None or self.stitching is None:
            why = "no usable identifier (junk values never link)" if self.stitching is not None else \
                "identity stitching is off (no CEM_PSEUDONYM_KEY)"
            return _dead(record, Reason.MISSING_FIELD, Stage.VALIDATE, f"customer_id is required: {why}", tp.channel)
        if self.redact is not None and tp.text:
            tp.text = self.redact(tp.text)
        tp.customer_id = str(subject)
        if tp.customer_id in self.erased:
            return Result(Kind.SUPPRESSED, tp.channel)
        forward = Forward(tp, TOPIC_IDENTITY, self.stitching.home(tp.customer_id), tp.customer_id, record.timestamp_ms)
        return _forwarded(state_for(forwarder_key(record.partition)), record, forward)

    def _forward_to_owner(self, record: SourceRecord, tp: Touchpoint, subject: CustomerState,
                          owner: str, partition: int) -> Result:
        """Step 3: a linked identifier's touchpoint goes to its customer."""
        identified_by, tp.customer_id = tp.customer_id, owner
        return _forwarded(subject, record, Forward(tp, TOPIC_TOUCHPOINTS, partition, identified_by, record.timestamp_ms))

    def _protect(self, tp: Touchpoint, internal: bool = False) -> bool:
        """Redact free text and pseudonymise the customer id, in place; whether anything changed."""
        rewritten = False
        if self.redact is not None and tp.text:
            redacted = self.redact(tp.text)
            rewritten = redacted != tp.text
            tp.text = redacted
        if self.pseudonymize is not None and not internal:
            tp.customer_id = self.pseudonymize(tp.customer_id)
            rewritten = True
        return rewritten


_FOREVER = 1 << 62  # a dedupe horizon no event time reaches
_AVRO_MARKERS = frozenset((SINGLE_OBJECT_MAGIC[0], CONFLUENT_MAGIC[0]))  # first bytes


def _forwarded(by: CustomerState, record: SourceRecord, forward: Forward) -> Result:
    """A forward, once per position of the log it is read from: ``by`` (the state that reads the
    record) remembers how far it has forwarded, so a record read again after a restart is
    forwarded again only if its forward may have died with the crash."""
    position = log_position(record.epoch, record.offset)
    if read_before(by, record.partition, position) and position <= by.written_position:
        return Result(Kind.REPLAYED, forward.touchpoint.channel, state=by)  # durably forwarded before
    move_on(by, record.partition, position)
    return Result(Kind.FORWARDED, forward.touchpoint.channel, forward=forward, state=by)


def _identified_by(record: SourceRecord) -> str | None:
    """The identifier a forwarded touchpoint was attributed by (its header; bounded, it is a label)."""
    value = record.header(HEADER_IDENTIFIED_BY)
    return value.decode(errors="replace")[:300] if value else None


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
    return _channel_name(decoded.get("channel"))


def _channel_name(channel: Any) -> str:
    # A label of Prometheus series: only the contract's channels, or a producer could mint series.
    return channel if isinstance(channel, str) and channel in _KNOWN_CHANNELS else "unknown"


_KNOWN_CHANNELS = frozenset(CHANNELS)
_CHANNEL = TOUCHPOINT_FIELDS.index("channel")


def _dead(record: SourceRecord, reason: Reason, stage: Stage, detail: str, channel: str = "unknown") -> Result:
    return Result(Kind.DEAD_LETTER, channel, dead_letter=DeadLetter(record, reason, stage, detail))
