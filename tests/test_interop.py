"""Interop: cem's Avro wire forms against code nobody here wrote.

cem once wrote and read single-object fingerprints byte-reversed, and its own tests (which encoded
with cem's codec) could not see it. Every check here has an independent side:

* the Avro specification's CRC-64-AVRO, written below from the spec's reference code, and the test
  vectors of apache/avro ``share/test/data/schema-tests.txt`` (which the Java implementation checks
  against its own slow-but-direct fingerprint);
* the Apache ``avro`` package (1.12, Python) and ``fastavro``, each with its own parser, canonical form,
  fingerprint, writer and reader;
* values computed once, outside this suite, with Apache Avro Java 1.8.2 (Debian ``libavro-java``):
  ``SchemaNormalization.parsingFingerprint`` of cem's schemas, and one touchpoint written by
  ``org.apache.avro.message.BinaryMessageEncoder`` (``JAVA_SINGLE_OBJECT``).

Timestamps: cem uses epoch-ms longs; both libraries' readers turn ``timestamp-millis`` into aware UTC
datetimes, which :func:`as_epoch_ms` turns back before values are compared. confluent-kafka's
``AvroSerializer`` is covered by ``tests/test_schema_registry.py``; here Confluent framing is checked
against the Apache library.
"""

from __future__ import annotations

import copy
import io
import json
from datetime import datetime, timedelta, timezone
from typing import Any

import avro.io
import avro.schema
import fastavro
import pytest
from fastavro.schema import fingerprint as fastavro_fingerprint
from fastavro.schema import to_parsing_canonical_form

import schemas.codec
from pipeline.app.outputs import AlertOutputs, ShippedOutputs
from processors.alerts import Alert
from processors.ingest import Ingestor, Kind, SourceRecord
from processors.plan import BatchPlanner, DictStates
from processors.scoring import TouchpointScoring
from processors.synthetic import JourneyGenerator
from schemas.codec import (
    CONFLUENT_MAGIC,
    SINGLE_OBJECT_MAGIC,
    AvroCodec,
    EnrichedEncoder,
    RecordEncoder,
    SchemaRegistry,
    fingerprint,
    load_schema,
)
from schemas.contract import TOPIC_ENRICHED, Reason, Rejected, schema_json

# -- CRC-64-AVRO and the Parsing Canonical Form, from the specification ---------------------------
EMPTY = 0xC15D213AA4D7A795  # the spec's EMPTY: the fingerprint of the empty string


def _fp_table() -> list[int]:
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (EMPTY & -(fp & 1))
        table.append(fp)
    return table


FP_TABLE = _fp_table()


def crc64_avro(data: bytes) -> int:
    """The spec's ``fingerprint64``: table-driven Rabin fingerprint, as an unsigned 64-bit int."""
    fp = EMPTY
    for byte in data:
        fp = (fp >> 8) ^ FP_TABLE[(fp ^ byte) & 0xFF]
    return fp


def single_object_bytes(fp: int) -> bytes:
    """The 8 header bytes of single-object encoding: the 64-bit fingerprint, little-endian (a Java
    ``long`` from schema-tests.txt is taken modulo 2**64 first)."""
    return (fp % 2**64).to_bytes(8, "little")


PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})


def parsing_form(schema: Any, defined: dict[str, Any] | None = None) -> str:
    """The Parsing Canonical Form as the Java reference (``SchemaNormalization.toParsingForm``) builds it.

    [PRIMITIVES] a primitive is its bare name, whatever else the object holds (``logicalType`` does not
    change how data parses); [FULLNAMES] named types by fullname; [STRIP] only name, type, fields,
    symbols, items, values, size, in that order; a named type is written out at its first occurrence
    and by name after. ``defined``: named types defined in other files (JSON), written out at first use.
    """
    defined = defined or {}
    seen: set[str] = set()

    def fullname(name: str, namespace: str) -> str:
        return name if "." in name or not namespace else f"{namespace}.{name}"

    def build(s: Any, namespace: str) -> str:
        if isinstance(s, list):
            return "[" + ",".join(build(branch, namespace) for branch in s) + "]"
        if isinstance(s, str):
            if s in PRIMITIVES:
                return json.dumps(s)
            name = fullname(s, namespace)
            return json.dumps(name) if name in seen else build(defined[name], namespace)
        kind = s["type"]
        if not isinstance(kind, str) or (kind not in PRIMITIVES and kind not in ("record", "enum", "fixed", "array", "map")):
            return build(kind, namespace)  # {"type": <a schema>}
        if kind in PRIMITIVES:
            return json.dumps(kind)
        if kind in ("array", "map"):
            key = "items" if kind == "array" else "values"
            return f'{{"type":"{kind}","{key}":{build(s[key], namespace)}}}'
        name = fullname(s["name"], s.get("namespace", namespace))
        if name in seen:
            return json.dumps(name)
        seen.add(name)
        out = f'{{"name":{json.dumps(name)},"type":"{kind}"'
        if kind == "enum":
            out += ',"symbols":' + json.dumps(s["symbols"], separators=(",", ":"))
        elif kind == "fixed":
            out += f',"size":{int(s["size"])}'
        else:
            inner = name.rpartition(".")[0]
            out += ',"fields":[' + ",".join(
                f'{{"name":{json.dumps(f["name"])},"type":{build(f["type"], inner)}}}' for f in s["fields"]
            ) + "]"
        return out + "}"

    return build(schema, "")


# apache/avro share/test/data/schema-tests.txt: (INPUT, canonical, fingerprint as a Java long). The
# entries without a <<fingerprint line share the canonical form, and so the fingerprint, of the one before.
SCHEMA_TESTS = [
    ('"null"', '"null"', 7195948357588979594),
    ('{"type":"null"}', '"null"', 7195948357588979594),
    ('"boolean"', '"boolean"', -6970731678124411036),
    ('{"type":"boolean"}', '"boolean"', -6970731678124411036),
    ('"int"', '"int"', 8247732601305521295),
    ('{"type":"int"}', '"int"', 8247732601305521295),
    ('"long"', '"long"', -3434872931120570953),
    ('{"type":"long"}', '"long"', -3434872931120570953),
    ('"float"', '"float"', 5583340709985441680),
    ('{"type":"float"}', '"float"', 5583340709985441680),
    ('"double"', '"double"', -8181574048448539266),
    ('{"type":"double"}', '"double"', -8181574048448539266),
    ('"bytes"', '"bytes"', 5746618253357095269),
    ('{"type":"bytes"}', '"bytes"', 5746618253357095269),
    ('"string"', '"string"', -8142146995180207161),
    ('{"type":"string"}', '"string"', -8142146995180207161),
    ("[  ]", "[]", -1241056759729112623),
    ('[ "int"  ]', '["int"]', -5232228896498058493),
    ('[ "int" , {"type":"boolean"} ]', '["int","boolean"]', 5392556393470105090),
    ('{"fields":[], "type":"record", "name":"foo"}', '{"name":"foo","type":"record","fields":[]}', -4824392279771201922),
    ('{"fields":[], "type":"record", "name":"foo", "namespace":"x.y"}',
     '{"name":"x.y.foo","type":"record","fields":[]}', 5916914534497305771),
    ('{"fields":[], "type":"record", "name":"a.b.foo", "namespace":"x.y"}',
     '{"name":"a.b.foo","type":"record","fields":[]}', -4616218487480524110),
    ('{"fields":[], "type":"record", "name":"foo", "doc":"Useful info"}',
     '{"name":"foo","type":"record","fields":[]}', -4824392279771201922),
    ('{"fields":[], "type":"record", "name":"foo", "aliases":["foo","bar"]}',
     '{"name":"foo","type":"record","fields":[]}', -4824392279771201922),
    ('{"fields":[], "type":"record", "name":"foo", "doc":"foo", "aliases":["foo","bar"]}',
     '{"name":"foo","type":"record","fields":[]}', -4824392279771201922),
    ('{"fields":[{"type":{"type":"boolean"}, "name":"f1"}], "type":"record", "name":"foo"}',
     '{"name":"foo","type":"record","fields":[{"name":"f1","type":"boolean"}]}', 7843277075252814651),
    (('{ "fields":[{"type":"boolean", "aliases":[], "name":"f1", "default":"true"},\n'
      '            {"order":"descending","name":"f2","doc":"Hello","type":"int"}],\n'
      '  "type":"record", "name":"foo"\n}'),
     '{"name":"foo","type":"record","fields":[{"name":"f1","type":"boolean"},{"name":"f2","type":"int"}]}',
     -4860222112080293046),
    ('{"type":"enum", "name":"foo", "symbols":["A1"]}', '{"name":"foo","type":"enum","symbols":["A1"]}',
     -6342190197741309591),
    ('{"namespace":"x.y.z", "type":"enum", "name":"foo", "doc":"foo bar", "symbols":["A1", "A2"]}',
     '{"name":"x.y.z.foo","type":"enum","symbols":["A1","A2"]}', -4448647247586288245),
    ('{"name":"foo","type":"fixed","size":15}', '{"name":"foo","type":"fixed","size":15}', 1756455273707447556),
    ('{"namespace":"x.y.z", "type":"fixed", "name":"foo", "doc":"foo bar", "size":32}',
     '{"name":"x.y.z.foo","type":"fixed","size":32}', -3064184465700546786),
    ('{ "items":{"type":"null"}, "type":"array"}', '{"type":"array","items":"null"}', -589620603366471059),
    ('{ "values":"string", "type":"map"}', '{"type":"map","values":"string"}', -8732877298790414990),
    ('{"name":"PigValue","type":"record",\n   "fields":[{"name":"value", "type":["null", "int", "long", "PigValue"]}]}',
     '{"name":"PigValue","type":"record","fields":[{"name":"value","type":["null","int","long","PigValue"]}]}',
     -1759257747318642341),
]
# fastavro (and so cem) validates defaults while parsing and refuses entry 026's string default for a
# boolean; the Java test parser does not. Its canonical form, a valid schema, is checked instead.
INVALID_FOR_FASTAVRO = {26}

# README of the avro-crc64 npm package (spikepanx/avro-crc64), a JavaScript implementation: the 8 bytes
# it returns for its example schema, in hex.
AVRO_CRC64_JS = (
    {"type": "record", "name": "Example", "doc": "Simple example avro schema",
     "fields": [{"name": "foobar", "type": "string", "doc": "foobar is all about barbazz"}]},
    "b75d6f7da238cf70",
)

# Apache Avro Java 1.8.2, SchemaNormalization.parsingFingerprint("CRC-64-AVRO", s) and parsingFingerprint64(s)
# of schemas/*.avsc (touchpoint.avsc and enriched.avsc parsed by one Schema.Parser; touchpoint.v1.avsc, version
# 1 of the touchpoint, which producers not yet upgraded still write).
JAVA_FINGERPRINTS = {
    "touchpoint": ("574d199abaf9a5f9", -457685207263654569),
    "touchpoint.v1": ("da7073a468787e8b", -8395140264541064998),
    "enriched": ("bdcc33dd36ad6a31", 3560848906540797117),
    "alert": ("6569446953c87f0d", 972716305109248357),
}

# A record with every kind of type, nested, across namespaces, with re-used named types.
NESTED: dict[str, Any] = {
    "type": "record", "name": "Order", "namespace": "shop.v1", "doc": "Every kind of type, nested.",
    "fields": [
        {"name": "id", "type": {"type": "fixed", "name": "OrderId", "size": 16}},
        {"name": "status", "type": {"type": "enum", "name": "Status", "symbols": ["NEW", "PAID", "SHIPPED"], "default": "NEW"}},
        {"name": "customer", "type": {"type": "record", "name": "Customer", "namespace": "crm", "fields": [
            {"name": "name", "type": "string", "doc": "display name"},
            {"name": "tier", "type": ["null", {"type": "enum", "name": "Tier", "symbols": ["GOLD", "SILVER"]}], "default": None},
        ]}},
        {"name": "lines", "type": {"type": "array", "items": {"type": "record", "name": "Line", "fields": [
            {"name": "sku", "type": "string"},
            {"name": "qty", "type": {"type": "int"}},
            {"name": "price", "type": ["null", "double", "float", "bytes"]},
            {"name": "was", "type": ["null", "Status"], "default": None},
        ]}}},
        {"name": "tags", "type": {"type": "map", "values": ["null", "string", {"type": "array", "items": "long"}]}},
        {"name": "previous", "type": ["null", "Order"], "default": None},
        {"name": "shipping", "type": ["null", "crm.Customer"], "default": None},
        {"name": "flags", "type": {"type": "array", "items": "boolean"}, "default": [], "aliases": ["f"], "order": "ignore"},
    ],
}
# The same with a fixed type referenced a second time (by name). Apache avro-python 1.12 writes the fixed
# definition out again at the reference (FixedSchema.to_canonical_json ignores names already seen), which
# is not the Parsing Canonical Form; Java, fastavro and cem agree, so only they are compared on it.
NESTED_FIXED_REUSED: dict[str, Any] = copy.deepcopy(NESTED)
NESTED_FIXED_REUSED["fields"].append({"name": "checksum", "type": ["null", "OrderId"]})
# Apache Avro Java 1.8.2, SchemaNormalization.parsingFingerprint("CRC-64-AVRO", s) of NESTED and NESTED_FIXED_REUSED.
JAVA_NESTED = "00995de80d66ceb1"
JAVA_NESTED_FIXED_REUSED = "6174075d1a7a5d43"


def without_logical_types(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {k: without_logical_types(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [without_logical_types(v) for v in schema]
    return schema


def apache_schema(name: str, logical_types: bool = True) -> avro.schema.Schema:
    """``schemas/<name>.avsc`` parsed by the Apache library (enriched.avsc after touchpoint.avsc, one Names)."""
    names = avro.schema.Names()
    prepare = copy.deepcopy if logical_types else without_logical_types  # never the cached schema_json itself
    if name == "enriched":
        avro.schema.make_avsc_object(prepare(schema_json("touchpoint")), names)
    return avro.schema.make_avsc_object(prepare(schema_json(name)), names)


def apache_fingerprint(name_or_schema: str | dict) -> bytes:
    """The Apache library's CRC-64-AVRO fingerprint, of the schema as Java normalises it.

    The schema is parsed without its ``logicalType`` annotations: the Parsing Canonical Form has none
    ([STRIP]), and Java writes a logical-typed long as ``"long"``, where Apache avro-python 1.12 writes
    ``{"type":"long"}`` (see :func:`test_apache_pythons_own_fingerprint_of_touchpoint_avsc_is_accepted`).
    """
    if isinstance(name_or_schema, str):
        return apache_schema(name_or_schema, logical_types=False).fingerprint("CRC-64-AVRO")
    return avro.schema.parse(json.dumps(without_logical_types(name_or_schema))).fingerprint("CRC-64-AVRO")


def fastavro_schema(name: str) -> dict:
    """``schemas/<name>.avsc`` parsed by fastavro itself (logical types kept)."""
    named: dict = {}
    if name == "enriched":
        fastavro.parse_schema(copy.deepcopy(schema_json("touchpoint")), named_schemas=named)
    return fastavro.parse_schema(copy.deepcopy(schema_json(name)), named_schemas=named)


def fastavros_fingerprint(schema: Any) -> bytes:
    return bytes.fromhex(fastavro_fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))


EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def as_datetime(ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=ms)


def as_epoch_ms(value: Any) -> Any:
    """A decoded value with every datetime (a ``timestamp-millis`` a reader converted) as epoch ms."""
    if isinstance(value, datetime):
        assert value.utcoffset() == timedelta(0), value
        return (value - EPOCH) // timedelta(milliseconds=1)
    if isinstance(value, dict):
        return {k: as_epoch_ms(v) for k, v in value.items()}
    if isinstance(value, list):
        return [as_epoch_ms(v) for v in value]
    return value


def apache_write(schema: avro.schema.Schema, datum: dict) -> bytes:
    out = io.BytesIO()
    avro.io.DatumWriter(schema).write(datum, avro.io.BinaryEncoder(out))
    return out.getvalue()


def apache_read(body: bytes, writer: avro.schema.Schema, reader: avro.schema.Schema | None = None) -> Any:
    """Decode an Avro body with the Apache library; the whole body must be consumed."""
    buf = io.BytesIO(body)
    value = avro.io.DatumReader(writer, reader or writer).read(avro.io.BinaryDecoder(buf))
    assert buf.tell() == len(body), f"{len(body) - buf.tell()} bytes left after the datum"
    return value


def fastavro_read(body: bytes, writer: dict) -> Any:
    buf = io.BytesIO(body)
    value = fastavro.schemaless_reader(buf, writer, writer)
    assert buf.tell() == len(body), f"{len(body) - buf.tell()} bytes left after the datum"
    return value


TOUCHPOINT_DEFAULTS = {f["name"]: f["default"] for f in schema_json("touchpoint")["fields"] if "default" in f}


def full(event: dict) -> dict:
    """A touchpoint with every field: the optional ones it lacks at their schema defaults."""
    return {**copy.deepcopy(TOUCHPOINT_DEFAULTS), **copy.deepcopy(event)}


EVENTS = list(JourneyGenerator(customers=20, seed=2).events(200))


def test_events_cover_the_optional_fields():
    """Property: the generated touchpoints exercise strings with non-ASCII text, maps, ints, doubles and nulls."""
    present = {k for e in EVENTS for k, v in e.items() if v is not None}
    assert {"text", "session_id", "attributes", "amount", "currency", "nps"} <= present
    assert any(not (e.get("text") or "").isascii() for e in EVENTS)


# -- 1. the specification's fingerprint --------------------------------------------------------------
def test_spec_crc64_avro_vectors():
    """Property: the spec's algorithm, written here, gives schema-tests.txt's fingerprints of their canonical
    forms; ``"int"`` is 8f 5c 39 3f 1a d5 75 72 on the wire (little-endian of 8247732601305521295)."""
    assert crc64_avro(b"") == EMPTY
    assert single_object_bytes(crc64_avro(b'"int"')) == bytes.fromhex("8f5c393f1ad57572")
    assert crc64_avro(b'"int"') == 8247732601305521295
    for _, canonical, fp in SCHEMA_TESTS:
        assert crc64_avro(canonical.encode()) == fp % 2**64, canonical
    schema, js_hex = AVRO_CRC64_JS
    assert single_object_bytes(crc64_avro(parsing_form(schema).encode())).hex() == js_hex


@pytest.mark.parametrize("i", range(len(SCHEMA_TESTS)), ids=[f"{i:03d}" for i in range(len(SCHEMA_TESTS))])
def test_schema_tests_txt_in_every_implementation(i):
    """Property: for each schema-tests.txt entry, this file's canonical form, the Apache library's and fastavro's
    canonical forms are the vector's, and the Apache library's, fastavro's and cem's ``fingerprint()`` are
    its fingerprint as single-object bytes."""
    text, canonical, fp = SCHEMA_TESTS[i]
    wire = single_object_bytes(fp)
    schema = json.loads(text)
    assert parsing_form(schema) == canonical
    apache = avro.schema.parse(text)
    assert apache.canonical_form == canonical
    assert apache.fingerprint("CRC-64-AVRO") == wire
    source = json.loads(canonical) if i in INVALID_FOR_FASTAVRO else schema
    assert to_parsing_canonical_form(source) == canonical
    assert fastavros_fingerprint(source) == wire
    assert fingerprint(source) == wire


def test_a_javascript_implementations_vector():
    """Property: cem, the Apache library and fastavro give the avro-crc64 (npm) README's bytes for its example."""
    schema, js_hex = AVRO_CRC64_JS
    assert fingerprint(schema).hex() == js_hex
    assert avro.schema.parse(json.dumps(schema)).fingerprint("CRC-64-AVRO").hex() == js_hex
    assert fastavros_fingerprint(schema).hex() == js_hex


def test_nested_record_fingerprint_agrees_everywhere():
    """Property: for a record nesting a record (other namespace), enums, a fixed, arrays, a map of a union,
    a recursive reference and re-used named types, the canonical forms of this file, the Apache library and
    fastavro are one string, and the fingerprints of the spec algorithm, the Apache library, fastavro and cem
    (raw JSON and fastavro-parsed) are the same 8 bytes."""
    form = parsing_form(NESTED)
    assert '"name":"crm.Tier"' in form and '"type":["null","shop.v1.Status"]' in form
    assert avro.schema.parse(json.dumps(NESTED)).canonical_form == form
    assert to_parsing_canonical_form(NESTED) == form
    expected = single_object_bytes(crc64_avro(form.encode()))
    assert expected.hex() == JAVA_NESTED
    assert avro.schema.parse(json.dumps(NESTED)).fingerprint("CRC-64-AVRO") == expected
    assert fastavros_fingerprint(NESTED) == expected
    assert fingerprint(NESTED) == expected
    assert fingerprint(fastavro.parse_schema(NESTED)) == expected
    # A fixed referenced twice: Java's value (Apache avro-python inlines the fixed again, see NESTED_FIXED_REUSED).
    form = parsing_form(NESTED_FIXED_REUSED)
    assert form.endswith('{"name":"checksum","type":["null","shop.v1.OrderId"]}]}')
    assert to_parsing_canonical_form(NESTED_FIXED_REUSED) == form
    assert single_object_bytes(crc64_avro(form.encode())).hex() == JAVA_NESTED_FIXED_REUSED
    assert fingerprint(NESTED_FIXED_REUSED).hex() == fastavros_fingerprint(NESTED_FIXED_REUSED).hex() == JAVA_NESTED_FIXED_REUSED


@pytest.mark.parametrize("name", ["touchpoint", "touchpoint.v1", "alert"])
def test_cem_schema_fingerprints_agree_everywhere(name):
    """Property: for touchpoint.avsc and alert.avsc, cem's ``fingerprint()`` (with and without logical types),
    its encoders' header, the spec algorithm over the Java-style canonical form, the Apache library, fastavro
    and Apache Avro Java give the same 8 bytes."""
    java_hex, java_long = JAVA_FINGERPRINTS[name]
    assert single_object_bytes(java_long).hex() == java_hex
    expected = single_object_bytes(crc64_avro(parsing_form(schema_json(name)).encode()))
    assert expected.hex() == java_hex
    assert apache_fingerprint(name) == expected
    assert fastavros_fingerprint(fastavro_schema(name)) == expected
    assert fingerprint(load_schema(name)) == fingerprint(load_schema(name, raw=True)) == expected
    assert RecordEncoder(name).fingerprint == expected


def enriched_self_contained() -> dict:
    """enriched.avsc with cem.TouchpointEvent written out where it is first used, as one schema."""
    enriched = copy.deepcopy(schema_json("enriched"))
    assert enriched["fields"][0] == {"name": "event", "type": "cem.TouchpointEvent"}
    enriched["fields"][0]["type"] = copy.deepcopy(schema_json("touchpoint"))
    return enriched


def test_enriched_fingerprint_in_other_implementations():
    """Property: for enriched.avsc (which uses cem.TouchpointEvent from touchpoint.avsc), the spec algorithm over
    the Java-style canonical form, Apache Avro Java, the Apache library (both files in one Names, or the
    self-contained schema) and fastavro (self-contained schema) give one fingerprint."""
    java_hex, java_long = JAVA_FINGERPRINTS["enriched"]
    expected = single_object_bytes(java_long)
    assert expected.hex() == java_hex
    form = parsing_form(schema_json("enriched"), {"cem.TouchpointEvent": schema_json("touchpoint")})
    assert form == parsing_form(enriched_self_contained())
    assert single_object_bytes(crc64_avro(form.encode())) == expected
    assert apache_fingerprint("enriched") == apache_fingerprint(enriched_self_contained()) == expected
    assert to_parsing_canonical_form(fastavro.parse_schema(enriched_self_contained())) == form
    assert fastavros_fingerprint(fastavro.parse_schema(enriched_self_contained())) == expected


def test_enriched_header_is_the_fingerprint_other_implementations_compute():
    """Property: every way cem writes cem.EnrichedTouchpoint (RecordEncoder, EnrichedEncoder with and without
    the reused body) heads it with the fingerprint Java, the Apache library and fastavro compute for enriched.avsc."""
    java_hex, _ = JAVA_FINGERPRINTS["enriched"]
    event, tail = _enriched_sample()
    body = AvroCodec().encode(event, "avro")[10:]
    headers = {
        "fingerprint(load_schema)": fingerprint(load_schema("enriched")),
        "RecordEncoder": RecordEncoder("enriched").encode({**tail, "event": event})[2:10],
        "EnrichedEncoder(body)": EnrichedEncoder().encode(EnrichedEncoder().tail_values(tail), None, body)[2:10],
        "EnrichedEncoder(event)": EnrichedEncoder().encode(EnrichedEncoder().tail_values(tail), event, None)[2:10],
    }
    assert {k: v.hex() for k, v in headers.items()} == dict.fromkeys(headers, java_hex)


# Apache avro-python 1.12 canonicalises {"type":"long","logicalType":"timestamp-millis"} to {"type":"long"}
# where Java and fastavro write "long": its fingerprint of touchpoint.avsc as published is 010598b7313c9073,
# not da7073a468787e8b. cem follows Java for what it writes and accepts that variant for what it reads.
def test_apache_pythons_own_fingerprint_of_touchpoint_avsc_is_accepted():
    """Property: a touchpoint headed with the Apache library's fingerprint of touchpoint.avsc exactly as
    published (logical types included) decodes in cem."""
    schema = apache_schema("touchpoint")
    event = EVENTS[0]
    payload = SINGLE_OBJECT_MAGIC + schema.fingerprint("CRC-64-AVRO") + apache_write(schema, _apache_datum(event))
    try:
        decoded: Any = AvroCodec().decode(payload)
    except Rejected as exc:
        decoded = exc.reason
    assert decoded == full(event)


# -- 2. single-object records written by other libraries, decoded by cem --------------------------------
def _apache_datum(event: dict) -> dict:
    """The touchpoint as a user of the Apache library writes it: timestamps as aware datetimes."""
    return {**full(event), "occurred_at": as_datetime(event["occurred_at"])}


def test_apache_single_object_touchpoints_decode_in_cem():
    """Property: C3 01 + the Apache library's fingerprint + its DatumWriter's body, for 200 generated
    touchpoints, decodes in cem to the same field values, and the worker's ingest step processes them."""
    schema = apache_schema("touchpoint")
    header = SINGLE_OBJECT_MAGIC + apache_fingerprint("touchpoint")
    codec = AvroCodec()
    ingest, states = Ingestor(codec), DictStates()
    for offset, event in enumerate(EVENTS):
        payload = header + apache_write(schema, _apache_datum(event))
        assert codec.decode(payload) == full(event)
        record = SourceRecord("cem.touchpoints", 0, offset, event["occurred_at"], event["customer_id"].encode(), payload)
        assert ingest.handle(record, states.get).kind is Kind.PROCESSED


def test_fastavro_single_object_touchpoints_decode_in_cem():
    """Property: C3 01 + fastavro's fingerprint + its schemaless_writer's body (fastavro parsing
    touchpoint.avsc itself), for 200 generated touchpoints, decodes in cem to the same field values."""
    schema = fastavro_schema("touchpoint")
    header = SINGLE_OBJECT_MAGIC + fastavros_fingerprint(schema)
    codec = AvroCodec()
    for event in EVENTS:
        body = io.BytesIO()
        fastavro.schemaless_writer(body, schema, full(event))
        assert codec.decode(header + body.getvalue()) == full(event)


def _evolved_touchpoint() -> dict:
    """touchpoint.avsc v2: a field added in the middle and one at the end, both with defaults."""
    v2 = copy.deepcopy(schema_json("touchpoint"))
    v2["fields"].insert(2, {"name": "loyalty_tier", "type": ["null", "string"], "default": None})
    v2["fields"].append({"name": "consent_at", "type": ["null", {"type": "long", "logicalType": "timestamp-millis"}],
                         "default": None})
    return v2


def test_evolved_writer_schema_written_by_apache_decodes_in_cem():
    """Property: a v2 writer schema (extra optional fields with defaults) registered with
    ``SchemaRegistry.register`` gets the Apache library's fingerprint for it, and touchpoints the Apache
    library writes with v2 decode in cem as the current (v1) touchpoint with the same values."""
    v2 = _evolved_touchpoint()
    registry = SchemaRegistry.from_config()
    assert registry.register(v2) == apache_fingerprint(v2) != apache_fingerprint("touchpoint")
    writer = avro.schema.parse(json.dumps(v2))
    header = SINGLE_OBJECT_MAGIC + apache_fingerprint(v2)
    codec = AvroCodec(registry)
    for event in EVENTS:
        datum = {**_apache_datum(event), "loyalty_tier": "gold", "consent_at": as_datetime(event["occurred_at"] - 1)}
        assert codec.decode(header + apache_write(writer, datum)) == full(event)


# Written once with Apache Avro Java 1.8.2: BinaryMessageEncoder(GenericData.get(), touchpoint.avsc).encode(r),
# when touchpoint.avsc was version 1 (now touchpoint.v1.avsc): an old producer's record.
JAVA_SINGLE_OBJECT = bytes.fromhex(
    "c301da7073a468787e8b0c6a6176612d310e637573742d3432f6a1d5edee660a140206732d3900022e4c6965666572756e67"
    "207a75207370c3a47420f09f989e020400020a020000000000002940020645555200020a73746f72650c6265726c696e00"
)


def test_a_touchpoint_written_by_java_decodes_in_cem():
    """Property: bytes from Java's single-object encoder (org.apache.avro.message), of version 1 of the
    schema, decode in cem as the current version, the fields added since at their defaults."""
    assert AvroCodec().decode(JAVA_SINGLE_OBJECT) == {
        "event_id": "java-1", "customer_id": "cust-42", "occurred_at": 1767225600123, "channel": "chat",
        "type": "feedback", "session_id": "s-9", "case_id": None, "text": "Lieferung zu spät 😞", "csat": 2,
        "nps": None, "ces": 5, "amount": 12.5, "currency": "EUR", "journey_stage": None,
        "attributes": {"store": "berlin"}, "anonymous_id": None, "email": None, "phone": None,
    }


# -- 3. cem's outputs, decoded by other libraries --------------------------------------------------------
def test_cem_touchpoints_read_by_apache_and_fastavro():
    """Property: ``AvroCodec().encode(event, "avro")`` is C3 01 + the Apache library's fingerprint of
    touchpoint.avsc + a body the Apache DatumReader and fastavro's schemaless_reader read, whole, as the event;
    a consumer on the v2 schema reads it with the new fields at their defaults."""
    codec = AvroCodec()
    apache, fast = apache_schema("touchpoint"), fastavro_schema("touchpoint")
    v2 = avro.schema.parse(json.dumps(_evolved_touchpoint()))
    header = SINGLE_OBJECT_MAGIC + apache_fingerprint("touchpoint")
    for event in EVENTS:
        payload = codec.encode(event, "avro")
        assert payload[:10] == header
        decoded = apache_read(payload[10:], apache)
        assert isinstance(decoded["occurred_at"], datetime)
        assert as_epoch_ms(decoded) == full(event)
        assert as_epoch_ms(fastavro_read(payload[10:], fast)) == full(event)
        newer = as_epoch_ms(apache_read(payload[10:], apache, v2))
        assert newer == {**full(event), "loyalty_tier": None, "consent_at": None}


class MeaningOutputs(ShippedOutputs):
    """The worker's ShippedOutputs, keeping what each enriched record was meant to hold."""

    def __init__(self, codec: AvroCodec):
        super().__init__(codec, lambda raw: raw.decode(errors="replace"))
        self.meant: list[dict] = []

    def enriched(self, record, enriched, rewritten):
        shipped = super().enriched(record, enriched, rewritten)
        self.meant.append(enriched.to_record())
        return shipped


def _plan(fmt: str, events: list[dict]):
    codec = AvroCodec()
    outputs = MeaningOutputs(codec)
    planner = BatchPlanner(Ingestor(codec), TouchpointScoring(), outputs)
    records = [
        SourceRecord("cem.touchpoints", i % 4, i, e["occurred_at"] + 1000, e["customer_id"].encode(), codec.encode(e, fmt))
        for i, e in enumerate(events)
    ]
    return codec, records, planner.plan(records, DictStates()), outputs.meant


@pytest.mark.parametrize("fmt", ["avro", "confluent", "json"])
def test_enriched_records_from_the_worker_read_by_apache_and_fastavro(fmt):
    """Property: the enriched records ShippedOutputs ships after BatchPlanner (input body copied for avro and
    confluent inputs, the touchpoint encoded for JSON ones) are C3 01 + 8 bytes + a body that the Apache
    library and fastavro read, whole, as enriched.avsc, holding what cem meant (the header's bytes: see
    test_enriched_header_is_the_fingerprint_other_implementations_compute)."""
    codec, records, plan, meant = _plan(fmt, EVENTS[:80])
    assert [codec.current_body(r.value) is not None for r in records] == [fmt != "json"] * len(records)
    shipped = [s.record.value for s in plan.outputs if s.record.topic == TOPIC_ENRICHED]
    assert len(shipped) == len(meant) == len(records)
    assert any(m["sentiment"] is not None for m in meant) and any(m["churn_risk"] is not None for m in meant)
    apache, fast = apache_schema("enriched"), fastavro_schema("enriched")
    for value, expected in zip(shipped, meant, strict=True):
        assert value[:2] == SINGLE_OBJECT_MAGIC and len(value[2:10]) == 8
        decoded = apache_read(value[10:], apache)
        assert isinstance(decoded["received_at"], datetime) and isinstance(decoded["event"]["occurred_at"], datetime)
        assert as_epoch_ms(decoded) == expected
        assert as_epoch_ms(fastavro_read(value[10:], fast)) == expected


def _enriched_sample() -> tuple[dict, dict]:
    event = full({**EVENTS[3], "text": "Zu spät, ärgerlich ☹", "nps": 3, "csat": 1, "amount": 0.1, "case_id": "k-1"})
    tail = {
        "source_partition": 3, "source_offset": 2**40, "received_at": event["occurred_at"] + 250,
        "journey_stage": "retention", "first_seen": 946_684_800_000, "recency_s": 12.5, "events_total": 7,
        "channel_events": 2, "revenue_to_date": -3.25, "orders": 1, "open_complaints": 1, "resolve_s": None,
        "last_csat": 1, "last_nps": 3, "last_ces": None, "channel_switch": True, "sentiment": -0.75,
        "churn_risk": 0.125, "model_versions": {"sentiment": "sentiment-v1+0", "churn": "churn-v1+3"},
    }
    return event, tail


def test_enriched_encoders_read_by_apache_and_fastavro():
    """Property: RecordEncoder("enriched") and EnrichedEncoder, reusing the input's body or encoding the event,
    write the same bytes, whose body the Apache library and fastavro read, whole, as the record meant."""
    event, tail = _enriched_sample()
    body = AvroCodec().encode(event, "avro")[10:]
    payloads = [
        RecordEncoder("enriched").encode({**tail, "event": event}),
        EnrichedEncoder().encode(EnrichedEncoder().tail_values(tail), None, body),
        EnrichedEncoder().encode(EnrichedEncoder().tail_values(tail), event, None),
    ]
    assert len(set(payloads)) == 1
    expected = {**tail, "event": event, "identified_by": None}
    assert as_epoch_ms(apache_read(payloads[0][10:], apache_schema("enriched"))) == expected
    assert as_epoch_ms(fastavro_read(payloads[0][10:], fastavro_schema("enriched"))) == expected


def _detractor_alerts() -> list[Alert]:
    events = [
        {"event_id": f"d{i}", "customer_id": f"c{i}", "occurred_at": 1767225600000 + i, "channel": "survey",
         "type": "survey_response", "nps": i, "text": "Terrible, slow and rude support — never again"}
        for i in range(3)
    ]
    _, _, plan, _ = _plan("avro", events)
    return plan.alerts


def test_alerts_read_by_apache_and_fastavro():
    """Property: ``AlertOutputs("avro").ship`` heads each alert (from TouchpointScoring on detractor
    touchpoints, and built directly with every optional field set or null) with C3 01 + the Apache library's
    fingerprint of alert.avsc, and its body reads, whole, in the Apache library and fastavro as
    ``alert.to_record(emitted_ms)``."""
    alerts = _detractor_alerts()
    assert alerts and {a.type for a in alerts} >= {"detractor"}
    alerts += [
        Alert("a" * 40, "channel_anomaly", "critical", None, "web", 1767225600000, "Web errors ×4 ▲", {},
              "page the web team", (), "anomaly-v2"),
        Alert("b" * 40, "churn_risk", "medium", "cust-1", None, 1767225600001, "risk 0.91", {"risk": "0.91", "ünï": "✓"},
              "offer a call", ("e1", "e2", "e3"), None),
    ]
    apache, fast = apache_schema("alert"), fastavro_schema("alert")
    header = SINGLE_OBJECT_MAGIC + apache_fingerprint("alert")
    outputs = AlertOutputs("avro")
    for n, alert in enumerate(alerts):
        emitted = 1767225700000 + n
        value = outputs.ship(alert, emitted).record.value
        assert value[:10] == header
        assert as_epoch_ms(apache_read(value[10:], apache)) == alert.to_record(emitted)
        assert as_epoch_ms(fastavro_read(value[10:], fast)) == alert.to_record(emitted)


# -- 4. Confluent framing ------------------------------------------------------------------------------
def test_confluent_framing_read_by_apache():
    """Property: ``AvroCodec().encode(event, "confluent")`` is 0x00 + id 2 (the current schema's, by default)
    as 4 big-endian bytes + a body the Apache library reads, whole, as the event."""
    codec, apache = AvroCodec(), apache_schema("touchpoint")
    for event in EVENTS:
        payload = codec.encode(event, "confluent")
        assert payload[:1] == CONFLUENT_MAGIC == b"\x00" and payload[1:5] == b"\x00\x00\x00\x02"
        assert as_epoch_ms(apache_read(payload[5:], apache)) == full(event)


def test_confluent_framed_apache_records_decode_in_cem():
    """Property: 0x00 + the id + an Apache DatumWriter body decodes in cem to the same values, for id 2 with
    touchpoint.avsc and id 1 with version 1 (touchpoint.v1.avsc, the defaults); an id cem has no schema for
    is unknown_schema."""
    codec, apache, v1 = AvroCodec(), apache_schema("touchpoint"), apache_schema("touchpoint.v1")
    for event in EVENTS:
        body = apache_write(apache, _apache_datum(event))
        assert codec.decode(b"\x00" + (2).to_bytes(4, "big") + body) == full(event)
        if "customer_id" in event:
            old = {k: v for k, v in _apache_datum(event).items() if k not in ("anonymous_id", "email", "phone")}
            assert codec.decode(b"\x00" + (1).to_bytes(4, "big") + apache_write(v1, old)) == full(event)
    with pytest.raises(Rejected) as rejected:
        codec.decode(b"\x00" + (3).to_bytes(4, "big") + body)
    assert rejected.value.reason is Reason.UNKNOWN_SCHEMA


# -- 5. the property that would have caught the reversed fingerprint --------------------------------
def test_a_reversed_fingerprint_rejects_every_foreign_record(monkeypatch):
    """Property: were ``schemas.codec.fingerprint`` to reverse its bytes, cem's own round trip would still pass
    (how the bug hid) while every record the Apache library and fastavro write would be rejected as
    unknown_schema: the tests above that decode foreign bytes fail on that mistake."""
    apache, fast = apache_schema("touchpoint"), fastavro_schema("touchpoint")
    foreign = []
    for event in EVENTS[:20]:
        body = io.BytesIO()
        fastavro.schemaless_writer(body, fast, full(event))
        foreign.append(SINGLE_OBJECT_MAGIC + apache_fingerprint("touchpoint") + apache_write(apache, _apache_datum(event)))
        foreign.append(SINGLE_OBJECT_MAGIC + fastavros_fingerprint(fast) + body.getvalue())
    foreign.append(JAVA_SINGLE_OBJECT)
    assert all(AvroCodec().decode(p) for p in foreign)

    real = schemas.codec.fingerprint
    monkeypatch.setattr(schemas.codec, "fingerprint", lambda schema: real(schema)[::-1])
    codec = AvroCodec()
    assert codec.decode(codec.encode(EVENTS[0], "avro")) == full(EVENTS[0])  # blind to it
    for payload in foreign:
        with pytest.raises(Rejected) as rejected:
            codec.decode(payload)
        assert rejected.value.reason is Reason.UNKNOWN_SCHEMA


# -- 6. identity stitching with records other libraries wrote -----------------------------------------
def test_identifier_only_touchpoints_written_by_apache_and_fastavro_reach_their_customer():
    """Property: touchpoints without customer_id (the null branch of version 2's union) written by the
    Apache library and by fastavro, with their own single-object headers, are attributed by their
    identifiers as cem's own records are: the anonymous page view stays the device's and joins the
    customer at the login, the call from the customer's number goes to the customer."""
    from pipeline.runtime.loopback import Loopback
    from schemas.contract import TOPIC_TOUCHPOINTS

    t0 = 1767225600000
    journey = [
        {"event_id": "w1", "occurred_at": t0, "channel": "web", "type": "page_view", "anonymous_id": "dev-9"},
        {"event_id": "w2", "occurred_at": t0 + 60_000, "channel": "web", "type": "identify", "customer_id": "c1",
         "anonymous_id": "dev-9", "phone": "+44 20 7946 0958"},
        {"event_id": "p1", "occurred_at": t0 + 120_000, "channel": "phone", "type": "call", "phone": "0044 20 7946 0958"},
    ]
    apache, fast = apache_schema("touchpoint"), fastavro_schema("touchpoint")
    writers = {
        "apache": lambda e: SINGLE_OBJECT_MAGIC + apache_fingerprint("touchpoint") + apache_write(apache, _apache_datum(e)),
        "fastavro": lambda e: SINGLE_OBJECT_MAGIC + fastavros_fingerprint(fast) + _fastavro_body(fast, full(e)),
    }
    for name, write in writers.items():
        loop = Loopback.with_stitching(b"an interop pseudonym key, 32 b.")
        for event in journey:
            key = (event.get("customer_id") or event.get("phone") or event["anonymous_id"]).encode()
            loop.append(TOPIC_TOUCHPOINTS, key, write(event), timestamp_ms=event["occurred_at"])
            loop.run()
        decoder = RecordEncoder("enriched")
        owners = {(r := decoder.decode(x.value or b""))["event"]["event_id"]: r["event"]["customer_id"]
                  for x in loop.of(TOPIC_ENRICHED)}
        assert owners["w2"] == owners["p1"] == "c1" and owners["w1"].startswith("anonymous_id:p:"), name
        assert loop.states.states["c1"].events_total == 3, name


def _fastavro_body(schema: dict, datum: dict) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, schema, datum)
    return out.getvalue()
