"""Wire codecs for touchpoints: Avro single-object, Confluent framing, and JSON.

One record = one Kafka value. :class:`AvroCodec` decodes any of the three forms into a plain dict
with the fields of ``cem.TouchpointEvent`` (Avro already type-checked it; JSON is checked by
``processors.touchpoint.validate``), or raises :class:`~schemas.contract.Rejected` with a dead-letter reason.
"""

from __future__ import annotations

import io
import json
import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import fastavro
import orjson
from fastavro.schema import fingerprint as _fingerprint
from fastavro.schema import to_parsing_canonical_form

from schemas.contract import SCHEMA_DIR, Reason, Rejected, schema_json
from schemas.flat import BadAvro, FlatRecordReader, FlatRecordWriter, Unsupported

SINGLE_OBJECT_MAGIC = b"\xc3\x01"  # Avro spec: single-object encoding marker
CONFLUENT_MAGIC = b"\x00"  # Confluent wire format: magic byte + 4-byte big-endian schema id
PREVIOUS_VERSIONS = ("touchpoint.v1",)  # earlier cem.TouchpointEvent versions: always known writers
DEFAULT_CONFLUENT_IDS = {1: SCHEMA_DIR / "touchpoint.v1.avsc", 2: SCHEMA_DIR / "touchpoint.avsc"}




def load_schema(name: str, raw: bool = False) -> dict[str, Any]:
    """Parse ``schemas/<name>.avsc`` with fastavro, named types it refers to written out in place.

    ``raw`` drops logical types: timestamps stay epoch-ms longs, which is what the pipeline uses,
    and fastavro skips its datetime conversion. The parsing canonical form, and so the fingerprint,
    ignores logical types:

    >>> fingerprint(load_schema("touchpoint", raw=True)) == fingerprint(load_schema("touchpoint"))
    True

    Written out, because a schema parsed against already-known named types keeps the bare name in
    its canonical form where the specification (and Java, and every other implementation) puts the
    type's definition at its first use; the fingerprint would then be one nobody else computes:

    >>> fingerprint(load_schema("enriched")).hex()
    'bdcc33dd36ad6a31'
    """
    schema = expanded_schema_json(name)
    return cast("dict[str, Any]", fastavro.parse_schema(strip_logical_types(schema) if raw else schema))


def expanded_schema_json(name: str) -> dict[str, Any]:
    """``schemas/<name>.avsc`` as JSON, with cem's other named types written out at their first use."""
    schema: dict[str, Any] = json.loads(json.dumps(schema_json(name)))
    if name == "enriched":
        for f in schema["fields"]:
            if f["type"] == "cem.TouchpointEvent":
                f["type"] = schema_json("touchpoint")
    return schema


def _logical_variant_fingerprint(schema: Any) -> bytes | None:
    """The fingerprint of the canonical form that writes logical-typed primitives as objects, or None
    when the schema has no logical type (the variant is the canonical form itself).

    >>> _logical_variant_fingerprint(schema_json("touchpoint.v1")).hex()
    '010598b7313c9073'
    """
    marks: list[str] = []

    def mark(node: Any) -> Any:
        if isinstance(node, dict):
            if "logicalType" in node and node.get("type") in _PRIMITIVES:
                marks.append(node["type"])
                return {"type": "fixed", "name": f"cemlogicalvariant{len(marks) - 1}", "size": 0}
            return {k: mark(v) for k, v in node.items()}
        if isinstance(node, list):
            return [mark(v) for v in node]
        return node

    marked = mark(schema)
    if not marks:
        return None
    canonical = to_parsing_canonical_form(fastavro.parse_schema(marked))
    canonical = _MARK.sub(lambda m: f'{{"type":"{marks[int(m.group(1))]}"}}', canonical)
    return bytes.fromhex(_fingerprint(canonical, "CRC-64-AVRO"))


_PRIMITIVES = frozenset({"int", "long", "float", "double", "bytes", "string"})
_MARK = re.compile(r'\{"name":"(?:[\w.]*\.)?cemlogicalvariant(\d+)","type":"fixed","size":0\}')


def strip_logical_types(schema: Any) -> Any:
    """A copy of a schema (JSON form) without ``logicalType`` annotations."""
    if isinstance(schema, dict):
        return {k: strip_logical_types(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [strip_logical_types(v) for v in schema]
    return schema


def fingerprint(schema: Any) -> bytes:
    """CRC-64-AVRO fingerprint of a schema's parsing canonical form, the 8 bytes single-object
    encoding writes (the specification's little-endian form of the 64-bit value).

    fastavro's hex string already lists those bytes in that order; read as one big-endian number
    and packed little-endian it would come out reversed. The specification's vector for ``"int"``:

    >>> fingerprint("int").hex(), int.from_bytes(fingerprint("int"), "little")
    ('8f5c393f1ad57572', 8247732601305521295)
    """
    return bytes.fromhex(_fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))


@dataclass
class SchemaRegistry:
    """Known writer schemas, by single-object fingerprint and by Confluent schema id.

    The reader schema is always the current ``cem.TouchpointEvent``; writers may use any registered
    version, so adding an optional field with a default on the writer side never breaks the reader.
    """

    reader: dict[str, Any] = field(default_factory=lambda: load_schema("touchpoint", raw=True))
    by_fingerprint: dict[bytes, dict[str, Any]] = field(default_factory=dict)
    by_confluent_id: dict[int, dict[str, Any]] = field(default_factory=dict)
    # Confluent ids a Schema Registry could not give a schema for, and why (set per batch by the worker).
    unavailable: dict[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.register(self.reader)
        self._accept_variant(expanded_schema_json("touchpoint"), self.reader)
        for version in PREVIOUS_VERSIONS:  # what producers not yet upgraded write, read as ever
            self.register(schema_json(version))

    def register(self, schema: Mapping[str, Any], confluent_id: int | None = None) -> bytes:
        parsed = cast("dict[str, Any]",
                      schema if "__fastavro_parsed" in schema else fastavro.parse_schema(strip_logical_types(dict(schema))))
        fp = fingerprint(parsed)
        parsed = self.by_fingerprint.setdefault(fp, parsed)  # same schema -> same object (no resolution)
        if "__fastavro_parsed" not in schema:
            self._accept_variant(schema, parsed)
        if confluent_id is not None:
            self.by_confluent_id[confluent_id] = parsed
        return fp

    def _accept_variant(self, schema: Any, parsed: dict[str, Any]) -> None:
        """Also know the schema by the fingerprint Apache avro-python writes for it: that library
        keeps a logical type's primitive as ``{"type": "long"}`` in the canonical form, where the
        specification (and Java, fastavro) write ``"long"``, so its producers head records with
        another fingerprint of the same schema."""
        variant = _logical_variant_fingerprint(schema)
        if variant is not None:
            self.by_fingerprint.setdefault(variant, parsed)

    @classmethod
    def from_config(
        cls, schema_files: Iterable[str | Path] = (), confluent_ids: Mapping[int, str | Path] | None = None,
    ) -> SchemaRegistry:
        """A registry with the current schema, extra writer schema files, and Confluent id mappings.

        ``confluent_ids`` defaults to ``{1: schemas/touchpoint.v1.avsc, 2: schemas/touchpoint.avsc}``:
        id 1 named version 1 before there was a version 2, and producers still write it.
        """
        registry = cls()
        for path in schema_files:
            registry.register(json.loads(Path(path).read_text()))
        ids = confluent_ids if confluent_ids is not None else DEFAULT_CONFLUENT_IDS
        for schema_id, path in ids.items():
            registry.register(json.loads(Path(path).read_text()), confluent_id=schema_id)
        return registry


class RecordEncoder:
    """Single-object Avro encoding of one of our own schemas (enriched events, alerts).

    >>> enc = RecordEncoder("touchpoint")
    >>> payload = enc.encode(_avro_ready({"event_id": "e", "customer_id": "c", "occurred_at": 0,
    ...                                   "channel": "sms", "type": "other"}))
    >>> payload[:2] == SINGLE_OBJECT_MAGIC, enc.decode(payload)["channel"]
    (True, 'sms')
    """

    def __init__(self, name: str):
        self.schema = load_schema(name, raw=True)
        self.fingerprint = fingerprint(self.schema)
        self._prefix = SINGLE_OBJECT_MAGIC + self.fingerprint

    def encode(self, record: Mapping[str, Any]) -> bytes:
        body = io.BytesIO()
        body.write(self._prefix)
        fastavro.schemaless_writer(body, self.schema, record)
        return body.getvalue()

    def decode(self, payload: bytes) -> dict[str, Any]:
        if payload[:10] != self._prefix:
            raise Rejected(Reason.UNKNOWN_SCHEMA, "not single-object encoded with this schema")
        return cast("dict[str, Any]", fastavro.schemaless_reader(io.BytesIO(payload[10:]), self.schema, self.schema))


class EnrichedEncoder:
    """Single-object ``cem.EnrichedTouchpoint`` encoding that reuses the input's Avro body.

    Avro binary of a record is its fields' encodings in order, and the enriched record starts with
    the touchpoint itself: when the input arrived in the current schema, its body bytes *are* that
    field, so only the tail is encoded; the tail's fields (plain values in schema order) go through
    a writer compiled for them (:class:`FlatRecordWriter`).

    >>> enc, full = EnrichedEncoder(), RecordEncoder("enriched")
    >>> event = _avro_ready({"event_id": "e", "customer_id": "c", "occurred_at": 5, "channel": "sms", "type": "other"})
    >>> tail = {"source_partition": 1, "source_offset": 2, "received_at": 3, "journey_stage": "awareness",
    ...         "first_seen": 5, "events_total": 1, "channel_events": 1, "revenue_to_date": 0.0, "orders": 0,
    ...         "open_complaints": 0, "channel_switch": False, "sentiment": -0.5, "model_versions": {"m": "v1"}}
    >>> values = enc.tail_values(tail)
    >>> body = AvroCodec().encode(event, "avro")[10:]
    >>> enc.encode(values, event, body) == enc.encode(values, event, None) == full.encode({**tail, "event": event})
    True
    """

    def __init__(self) -> None:
        full = schema_json("enriched")
        assert full["fields"][0]["name"] == "event", "the event must stay the first field of the enriched schema"
        self.tail_fields = [f for f in full["fields"] if f["name"] != "event"]
        self.tail_writer = FlatRecordWriter(self.tail_fields)
        self._event = load_schema("touchpoint", raw=True)
        self._prefix = SINGLE_OBJECT_MAGIC + fingerprint(load_schema("enriched"))

    def tail_values(self, tail: Mapping[str, Any]) -> list[Any]:
        """The tail's values in schema order (defaults for absent optional fields)."""
        return [tail.get(f["name"], f.get("default")) for f in self.tail_fields]

    def encode(self, tail: Sequence[Any], event: Mapping[str, Any] | None, event_body: bytes | None) -> bytes:
        """``tail``: the tail's values in schema order; ``event_body``: the input's Avro body when
        written with the current schema, else None (``event`` is then encoded)."""
        if event_body is None:
            out = io.BytesIO()
            fastavro.schemaless_writer(out, self._event, event)
            event_body = out.getvalue()
        return b"".join((self._prefix, event_body, self.tail_writer.write(tail)))


class AvroCodec:
    """Encode and decode touchpoints in the three accepted wire forms.

    >>> codec = AvroCodec()
    >>> event = {"event_id": "e1", "customer_id": "c1", "occurred_at": 1767225600000,
    ...          "channel": "web", "type": "page_view"}
    >>> for fmt in ("avro", "confluent", "json"):
    ...     decoded = codec.decode(codec.encode(event, fmt))
    ...     assert decoded["event_id"] == "e1" and decoded["channel"] == "web", fmt
    >>> codec.decode(b"\\xc3\\x01" + b"\\x00" * 8 + b"x")
    Traceback (most recent call last):
    ...
    schemas.contract.Rejected: unknown_schema: no writer schema with fingerprint 0000000000000000
    """

    def __init__(self, registry: SchemaRegistry | None = None):
        self.registry = registry or SchemaRegistry.from_config()
        self._reader = self.registry.reader
        self._reader_fp = fingerprint(self._reader)
        self.flat_reader = flat = _flat_reader(self._reader)  # None: fastavro reads the current schema too
        self._flat = flat.read if flat is not None else None
        self._flat_values = flat.read_values if flat is not None else None
        self._same = {self._reader_fp: None}  # writer == reader: no schema resolution needed
        # The id encode() writes: the one that names the current schema, if any does.
        self._confluent_id = next((i for i, w in self.registry.by_confluent_id.items() if w is self._reader), 2)

    # -- encoding (generator, `cem publish`, tests) --------------------------------------------
    def encode(self, event: Mapping[str, Any], fmt: str = "avro") -> bytes:
        """``fmt``: ``avro`` (single-object), ``confluent`` or ``json``."""
        if fmt == "json":
            return json.dumps(event, separators=(",", ":"), default=str).encode()
        body = io.BytesIO()
        fastavro.schemaless_writer(body, self._reader, _avro_ready(event))
        if fmt == "avro":
            return SINGLE_OBJECT_MAGIC + self._reader_fp + body.getvalue()
        if fmt == "confluent":
            return CONFLUENT_MAGIC + struct.pack(">I", self._confluent_id) + body.getvalue()
        raise ValueError(f"unknown format {fmt!r}: use avro, confluent or json")

    # -- decoding (the worker's first step) -----------------------------------------------------
    def decode(self, payload: bytes) -> dict[str, Any]:
        """Decode one Kafka value into a dict of touchpoint fields, or raise :class:`Rejected`."""
        if payload[:2] == SINGLE_OBJECT_MAGIC:
            fp = payload[2:10]
            writer = self.registry.by_fingerprint.get(fp)
            if writer is None:
                raise Rejected(Reason.UNKNOWN_SCHEMA, f"no writer schema with fingerprint {fp.hex()}")
            return self._read_avro(payload[10:], writer, fp in self._same)
        if payload[:1] == CONFLUENT_MAGIC and len(payload) >= 5:
            (schema_id,) = struct.unpack(">I", payload[1:5])
            writer = self.registry.by_confluent_id.get(schema_id)
            if writer is None:
                why = self.registry.unavailable.get(schema_id) or f"no writer schema mapped to Confluent id {schema_id}"
                raise Rejected(Reason.UNKNOWN_SCHEMA, why)
            return self._read_avro(payload[5:], writer, writer is self._reader)
        return read_json(payload)

    @property
    def current_fields(self) -> tuple[str, ...]:
        """The current schema's field names, in its order: what :meth:`decode_values` returns."""
        return tuple(f["name"] for f in self._reader["fields"])

    def decode_values(self, payload: bytes) -> tuple[Any, ...] | None:
        """The values of a record written with the current schema, in :attr:`current_fields` order,
        read as :meth:`decode` reads it (same rejections); None for any other payload (decode it)."""
        if self._flat_values is None:
            return None
        if payload[:2] == SINGLE_OBJECT_MAGIC and payload[2:10] == self._reader_fp:
            body = payload[10:]
        elif payload[:1] == CONFLUENT_MAGIC and len(payload) >= 5 and \
                self.registry.by_confluent_id.get(struct.unpack(">I", payload[1:5])[0]) is self._reader:
            body = payload[5:]
        else:
            return None
        try:
            return self._flat_values(body)
        except BadAvro as exc:
            raise Rejected(Reason.UNDECODABLE, f"invalid Avro body: {exc}"[:300]) from None

    def current_body(self, payload: bytes) -> bytes | None:
        """The Avro body of a record written with the current (reader) schema, else None."""
        if payload[:2] == SINGLE_OBJECT_MAGIC and payload[2:10] == self._reader_fp:
            return payload[10:]
        if payload[:1] == CONFLUENT_MAGIC and len(payload) >= 5:
            writer = self.registry.by_confluent_id.get(struct.unpack(">I", payload[1:5])[0])
            return payload[5:] if writer is self._reader else None
        return None

    def _read_avro(self, body: bytes, writer: dict[str, Any], same: bool = False) -> dict[str, Any]:
        if same and self._flat is not None:  # the current schema: its own compiled reader
            try:
                return self._flat(body)
            except BadAvro as exc:
                raise Rejected(Reason.UNDECODABLE, f"invalid Avro body: {exc}"[:300]) from None
        stream = io.BytesIO(body)
        try:
            record = fastavro.schemaless_reader(stream, writer, None if same else self._reader)
        except fastavro.read.SchemaResolutionError as exc:
            reason = Reason.UNKNOWN_ENUM if "enum" in str(exc).lower() or "symbol" in str(exc).lower() else Reason.WRONG_TYPE
            raise Rejected(reason, str(exc)[:300]) from None
        except Exception as exc:  # truncated or corrupt Avro body
            raise Rejected(Reason.UNDECODABLE, f"invalid Avro body: {type(exc).__name__}: {exc}"[:300]) from None
        if stream.tell() != len(body):  # a record and something else: not one record (nor reusable as one)
            raise Rejected(Reason.UNDECODABLE, f"{len(body) - stream.tell()} bytes after the Avro record")
        return cast("dict[str, Any]", record)


def flat_codecs() -> list[FlatRecordReader | FlatRecordWriter]:
    """The flat codecs every worker builds, as it builds them: the current touchpoint schema's reader
    and the enriched tail's writer (``deploy/compile.py`` compiles them ahead)."""
    return [codec for codec in (AvroCodec().flat_reader, EnrichedEncoder().tail_writer) if codec is not None]


def _flat_reader(schema: dict[str, Any]) -> FlatRecordReader | None:
    """The compiled reader of a flat record schema; None for any other (fastavro reads those)."""
    try:
        return FlatRecordReader(schema["fields"])
    except Unsupported:
        return None


def confluent_schema_id(payload: bytes) -> int | None:
    """The schema id of a Confluent-framed value (magic byte 0, 4-byte big-endian id), else None.

    >>> confluent_schema_id(b"\\x00\\x00\\x00\\x00\\x07body"), confluent_schema_id(b'{"a": 1}')
    (7, None)
    """
    if payload[:1] == CONFLUENT_MAGIC and len(payload) >= 5:
        return int.from_bytes(payload[1:5], "big")
    return None


def read_json(payload: bytes) -> dict[str, Any]:
    """A JSON object, or :class:`Rejected` (``undecodable``).

    Strict RFC 8259 (orjson): no ``NaN``/``Infinity``, valid UTF-8 without lone surrogate escapes,
    nesting bounded (1024 levels), numbers that fit a double; a leading UTF-8 byte-order mark is
    allowed, as the RFC permits parsers to.

    >>> read_json(b'{"nps": NaN}')
    Traceback (most recent call last):
    ...
    schemas.contract.Rejected: undecodable: neither Avro nor a JSON object: unexpected character, expected a JSON value: line 1 column 9 (char 8)
    >>> read_json(b"[" * 100_000 + b"]" * 100_000)
    Traceback (most recent call last):
    ...
    schemas.contract.Rejected: undecodable: neither Avro nor a JSON object: depth limit exceeded: line 1 column 1026 (char 1025)
    """
    try:
        obj = orjson.loads(payload[3:] if payload[:3] == _BOM else payload)
    except orjson.JSONDecodeError as exc:
        raise Rejected(Reason.UNDECODABLE, f"neither Avro nor a JSON object: {exc}"[:300]) from None
    if not isinstance(obj, dict):
        raise Rejected(Reason.UNDECODABLE, f"JSON value is a {type(obj).__name__}, not an object")
    return obj


_BOM = b"\xef\xbb\xbf"


def _avro_ready(event: Mapping[str, Any]) -> dict[str, Any]:
    """Fill optional fields with their defaults so fastavro can write a partial dict."""
    record: dict[str, Any] = {name: None for name in _OPTIONAL}
    record["attributes"] = {}
    record.update(event)
    if record.get("attributes") is None:
        record["attributes"] = {}
    return record


_OPTIONAL = [f["name"] for f in schema_json("touchpoint")["fields"] if "default" in f]
