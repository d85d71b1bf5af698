"""The compiled flat-record reader (``schemas.flat``) against readers nobody here wrote.

Properties: every record the Apache ``avro`` library or fastavro writes with the touchpoint schema
reads back as fastavro reads it; any other bytes either read as fastavro reads them or are refused
with ``BadAvro`` (never another exception), and only where fastavro accepts what the specification
does not (a negative length, an over-long varint) may the two differ.
"""

from __future__ import annotations

import io
import math
from typing import Any

import avro.io
import avro.schema
import fastavro
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.codec import load_schema, strip_logical_types
from schemas.contract import schema_json
from schemas.flat import BadAvro, FlatRecordReader

SCHEMA = load_schema("touchpoint", raw=True)
READER = FlatRecordReader(SCHEMA["fields"])
APACHE = avro.schema.parse(orjson.dumps(strip_logical_types(schema_json("touchpoint"))).decode())

_longs = st.integers(-(2 ** 63), 2 ** 63 - 1)
_ints = st.integers(-(2 ** 31), 2 ** 31 - 1)
_text = st.text(max_size=40)


def _value(schema: Any) -> st.SearchStrategy[Any]:
    if isinstance(schema, list):
        other = next(s for s in schema if s != "null")
        return st.one_of(st.none(), _value(other))
    if isinstance(schema, dict):
        if schema["type"] == "enum":
            return st.sampled_from(schema["symbols"])
        if schema["type"] == "map":
            return st.dictionaries(_text, _text, max_size=4)
        return _value(schema["type"])
    return {"string": _text, "long": _longs, "int": _ints, "double": st.floats(allow_nan=False)}[schema]


RECORDS = st.fixed_dictionaries({f["name"]: _value(f["type"]) for f in schema_json("touchpoint")["fields"]})


def fastavro_read(body: bytes) -> dict[str, Any]:
    stream = io.BytesIO(body)
    record = fastavro.schemaless_reader(stream, SCHEMA, None)
    assert stream.tell() == len(body), "fastavro left bytes: not one record"
    return record


def fastavro_write(record: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, SCHEMA, record)
    return out.getvalue()


def apache_write(record: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    avro.io.DatumWriter(APACHE).write(record, avro.io.BinaryEncoder(out))
    return out.getvalue()


@settings(max_examples=300, deadline=None)
@given(RECORDS)
def test_every_record_the_apache_library_or_fastavro_writes_reads_as_fastavro_reads_it(record: dict) -> None:
    for body in (apache_write(record), fastavro_write(record)):
        assert READER.read(body) == fastavro_read(body) == record


def _same_or_refused(body: bytes) -> None:
    try:
        ours = READER.read(body)
    except BadAvro:
        return  # refused: fastavro may accept some of these (see the module docstring)
    theirs = fastavro_read(body)
    assert orjson.dumps(ours, option=orjson.OPT_SORT_KEYS) == orjson.dumps(theirs, option=orjson.OPT_SORT_KEYS) \
        or _nan_equal(ours, theirs)


def _nan_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        x == y or (isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y))
        for x, y in ((a[k], b[k]) for k in a))


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(RECORDS, st.data())
def test_a_mutated_record_reads_as_fastavro_reads_it_or_is_refused(record: dict, data: st.DataObject) -> None:
    body = bytearray(fastavro_write(record))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(body)))
        how = data.draw(st.sampled_from(["flip", "cut", "insert", "delete"]))
        if how == "cut":
            del body[at:]
        elif how == "insert":
            body[at:at] = data.draw(st.binary(min_size=1, max_size=3))
        elif body and at < len(body):
            if how == "flip":
                body[at] ^= data.draw(st.integers(1, 255))
            else:
                del body[at]
    _same_or_refused(bytes(body))


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_read_as_fastavro_reads_them_or_are_refused(body: bytes) -> None:
    _same_or_refused(body)


def test_what_the_specification_forbids_is_refused_where_fastavro_reads_on() -> None:
    valid = fastavro_write({f["name"]: None for f in SCHEMA["fields"]} | {
        "event_id": "e", "occurred_at": 1, "channel": "web", "type": "login", "attributes": {}})
    negative_length = b"\x01" + valid[2:]  # event_id's length -1: fastavro reads "the rest of the body"
    too_long = b"\x80" * 10 + b"\x01" + valid[2:]  # an eleven-byte varint
    for body, why in ((negative_length, "length"), (too_long, "varint"), (valid + b"\x00", "after the record"),
                      (valid[:-1], "ends inside")):
        try:
            READER.read(body)
        except BadAvro as exc:
            assert why in str(exc), (why, exc)
        else:
            raise AssertionError(f"{why}: read")


TAIL = [f for f in schema_json("enriched")["fields"] if f["name"] != "event"]
TAIL_SCHEMA = fastavro.parse_schema(strip_logical_types({"type": "record", "name": "Tail", "fields": TAIL}))
TAILS = st.tuples(*[
    _value(f["type"]) if f["type"] != "boolean" else st.booleans() for f in strip_logical_types(TAIL)])


@settings(max_examples=300, deadline=None)
@given(TAILS)
def test_the_enriched_tail_is_written_as_fastavro_writes_it(values: tuple) -> None:
    """Property: the compiled writer of the enriched record's tail writes what fastavro writes, for
    any values of its types (64-bit longs of every length, any text, any double)."""
    from schemas.flat import FlatRecordWriter

    out = io.BytesIO()
    fastavro.schemaless_writer(out, TAIL_SCHEMA, {f["name"]: v for f, v in zip(TAIL, values, strict=True)})
    assert FlatRecordWriter(TAIL).write(values) == out.getvalue()
