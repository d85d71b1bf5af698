"""Avro binary of flat records, read and written by code compiled for one schema.

A touchpoint is a record of primitives, nullable primitives, enums and a map of strings. Generic
readers walk the schema for every datum (fastavro's compiled reader makes a Python ``read`` call per
byte of a varint); a reader generated for the schema is straight-line code over the bytes, about
three times faster. Only the shape of the code comes from the schema: its field names enter the
source as validated identifiers, its symbols as constants.

Strict, where the specification allows it: a truncated body, a union branch or enum index out of
range, a negative length, a varint longer than ten bytes or past 64 bits, invalid UTF-8 and bytes
after the record are all :class:`BadAvro`. fastavro accepts some of these (a negative length reads
the rest of the body); on everything else the two agree (``tests/test_flat.py``).

>>> reader = FlatRecordReader([{"name": "n", "type": "long"}, {"name": "s", "type": ["null", "string"]},
...                            {"name": "m", "type": {"type": "map", "values": "string"}}])
>>> reader.read(bytes.fromhex("050204c3a902026b027600"))
{'n': -3, 's': 'é', 'm': {'k': 'v'}}
>>> reader.read_values(bytes.fromhex("050204c3a902026b027600"))
(-3, 'é', {'k': 'v'})
>>> reader.read(bytes.fromhex("0502"))
Traceback (most recent call last):
...
schemas.flat.BadAvro: the body ends inside field 's'
>>> FlatRecordWriter(reader.fields).write([-3, "é", {"k": "v"}]).hex()
'050204c3a902026b027600'
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Callable, Mapping, Sequence
from typing import Any

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")  # an Avro name: safe to put in generated source


class BadAvro(ValueError):
    """The bytes are not one record of the schema."""


class Unsupported(ValueError):
    """The schema is not flat (nested records, arrays, other unions): use a generic reader."""


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    """The unsigned varint at ``i`` (its first byte already known to continue), and what follows.

    Up to six bytes (epoch milliseconds) unrolled; longer ones, rare, in a loop.
    """
    result = buf[i] & 0x7F
    b = buf[i + 1]
    if b < 0x80:
        return result | b << 7, i + 2
    result |= (b & 0x7F) << 7
    b = buf[i + 2]
    if b < 0x80:
        return result | b << 14, i + 3
    result |= (b & 0x7F) << 14
    b = buf[i + 3]
    if b < 0x80:
        return result | b << 21, i + 4
    result |= (b & 0x7F) << 21
    b = buf[i + 4]
    if b < 0x80:
        return result | b << 28, i + 5
    result |= (b & 0x7F) << 28
    b = buf[i + 5]
    if b < 0x80:
        return result | b << 35, i + 6
    return _long_varint(buf, i)


def _long_varint(buf: bytes, i: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            if result >> 64:
                raise BadAvro("a varint past 64 bits")
            return result, i
        shift += 7
        if shift > 63:
            raise BadAvro("a varint longer than ten bytes")


_unpack_double = struct.Struct("<d").unpack_from
_unpack_float = struct.Struct("<f").unpack_from


# -- reading ------------------------------------------------------------------------------------
# Each snippet reads one value into ``v`` from ``buf`` at ``i``; ``{k}`` names the field's constants.
_LONG = """\
b = buf[i]; i += 1
if b >= 0x80: b, i = _varint(buf, i - 1)
v = (b >> 1) ^ -(b & 1)
"""
_STRING = """\
b = buf[i]; i += 1
if b >= 0x80: b, i = _varint(buf, i - 1)
n = (b >> 1) ^ -(b & 1)
if n < 0 or i + n > end: raise BadAvro("a string length out of the body")
v = buf[i:i + n].decode(); i += n
"""
_BYTES = _STRING.replace(".decode()", "")
_DOUBLE = "v = _unpack_double(buf, i)[0]; i += 8\n"
_FLOAT = "v = _unpack_float(buf, i)[0]; i += 4\n"
_BOOLEAN = """\
b = buf[i]; i += 1
if b > 1: raise BadAvro("a boolean neither 0 nor 1")
v = b == 1
"""
_ENUM = _LONG + """\
if not 0 <= v < len(symbols_{k}): raise BadAvro("an enum index out of range")
v = symbols_{k}[v]
"""
_PRIMITIVE_READERS = {"long": _LONG, "int": _LONG, "string": _STRING, "bytes": _BYTES, "double": _DOUBLE,
                      "float": _FLOAT, "boolean": _BOOLEAN}


def _indent(code: str, spaces: int) -> str:
    return "".join(" " * spaces + line + "\n" for line in code.splitlines())


def _map_reader() -> str:
    """Blocks of (count, pairs) until a count of 0; a negative count is followed by the block's size
    in bytes, skipped."""
    return ("m = {}\nwhile True:\n" + _indent(_LONG + "count = v", 4)
            + "    if count == 0: break\n"
            + "    if count < 0:\n" + _indent(_LONG + "count = -count", 8)
            + "    while count:  # not range(): a map holds a pair or two, and a range per map costs as much\n"
            + _indent(_STRING + "key = v\n" + _STRING + "m[key] = v\ncount -= 1", 8)
            + "v = m\n")


def _value_reader(schema: Any, k: int, symbols: dict[str, tuple[str, ...]]) -> str:
    if isinstance(schema, str) and schema in _PRIMITIVE_READERS:
        return _PRIMITIVE_READERS[schema]
    if isinstance(schema, dict):
        kind = schema.get("type")
        if kind == "enum":
            symbols[f"symbols_{k}"] = tuple(schema["symbols"])
            return _ENUM.format(k=k)
        if kind == "map" and schema.get("values") == "string":
            return _map_reader()
        if isinstance(kind, str) and kind in _PRIMITIVE_READERS:  # {"type": "long", "logicalType": ...}
            return _PRIMITIVE_READERS[kind]
    if isinstance(schema, list) and len(schema) == 2 and "null" in schema:
        other = schema[1 - schema.index("null")]
        value = _indent(_value_reader(other, k, symbols), 4)
        null, branch = (0, 1) if schema[0] == "null" else (1, 0)
        return (f"b = buf[i]; i += 1\nif b == {2 * null}: v = None\nelif b == {2 * branch}:\n{value}"
                "else: raise BadAvro(\"a union branch out of range\")\n")
    raise Unsupported(f"no flat reader for {schema!r}")


class FlatRecordReader:
    """Reads one record of ``fields`` (an Avro record schema's fields) from a whole body."""

    def __init__(self, fields: Sequence[Mapping[str, Any]]):
        self.fields = [dict(f) for f in fields]
        names = [f["name"] for f in self.fields]
        if not all(_NAME.match(name) for name in names):
            raise Unsupported("field names that are not Avro names")
        constants: dict[str, Any] = {}
        lines = ["def read(buf):", "    i = 0", "    end = len(buf)", "    field = 0", "    try:"]
        for k, f in enumerate(self.fields):
            lines.append(f"        field = {k}")
            lines.append(_indent(_value_reader(f["type"], k, constants), 8) + f"        v{k} = v")
        lines += ["    except (IndexError, struct.error):",
                  "        raise BadAvro(f'the body ends inside field {NAMES[field]!r}') from None",
                  "    except UnicodeDecodeError as exc:",
                  "        raise BadAvro(f'invalid UTF-8 in field {NAMES[field]!r}: {exc.reason}') from None",
                  "    if i != end: raise BadAvro(f'{end - i} bytes after the record')"]
        as_dict = "    return {" + ", ".join(f"{name!r}: v{k}" for k, name in enumerate(names)) + "}"
        # The same reader, returning the values in field order: no dict to build and to read back.
        as_values = ["def read_values(buf):", *lines[1:], "    return (" + "".join(f"v{k}, " for k in range(len(names))) + ")"]
        namespace: dict[str, Any] = {"BadAvro": BadAvro, "_varint": _varint, "_unpack_double": _unpack_double,
                                     "_unpack_float": _unpack_float, "struct": struct, "NAMES": names, **constants}
        self.source = "\n".join([*lines, as_dict, *as_values])
        self.names = sorted(namespace)
        defined = define(self.source, namespace, f"<flat reader of {len(names)} fields>")
        self.read: Callable[[bytes], dict[str, Any]] = defined["read"]
        self.read_values: Callable[[bytes], tuple[Any, ...]] = defined["read_values"]


def define(source: str, namespace: dict[str, Any], filename: str) -> dict[str, Any]:
    """The functions ``source`` defines over ``namespace``: compiled ahead of time, where this very
    source was (``deploy/compile.py`` builds the sources of the bundled schemas as factories taking the
    namespace), else compiled now."""
    factory = _precompiled().get(source_key(source))
    if factory is not None:
        return factory(**namespace)
    exec(compile(source, filename, "exec"), namespace)  # noqa: S102 - shape only, see the module docstring
    return namespace


def source_key(source: str) -> str:
    """What a generated source is known by, at build time and at run time alike."""
    return hashlib.sha256(source.encode()).hexdigest()


def _precompiled() -> dict[str, Callable[..., dict[str, Any]]]:
    try:
        from schemas import flat_codecs  # type: ignore[attr-defined]  # only in a build (schemas.compiled)
    except ImportError:
        return {}
    return flat_codecs.FACTORIES  # type: ignore[no-any-return]


def factory_source(codecs: Sequence[FlatRecordReader | FlatRecordWriter]) -> str:
    """A module of one factory per codec's source: the names of its namespace in, the functions the
    source defines out (for ``deploy/compile.py``)."""
    parts = ['"""Flat Avro codecs of the bundled schemas, generated by deploy/compile.py: do not edit."""', ""]
    unique = {source_key(codec.source): codec for codec in codecs}
    for sha, codec in unique.items():
        defined = re.findall(r"^def (\w+)", codec.source, re.M)
        parts += [f"def _{sha}(*, {', '.join(codec.names)}):", _indent(codec.source, 4).rstrip("\n"),
                  "    return {" + ", ".join(f"{name!r}: {name}" for name in defined) + "}", ""]
    parts.append("FACTORIES = {" + ", ".join(f"{sha!r}: _{sha}" for sha in unique) + "}")
    return "\n".join(parts) + "\n"


# -- writing ------------------------------------------------------------------------------------
def zigzag(n: int) -> bytes:
    """A long (or int) as Avro writes it: zig-zag, then variable-length base 128.

    >>> zigzag(0), zigzag(-1), zigzag(64), zigzag(-(2 ** 63))
    (b'\\x00', b'\\x01', b'\\x80\\x01', b'\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\x01')
    >>> all(zigzag(n) == _zigzag_loop(n) for n in [*range(-300, 300), *(s * 2 ** k + d for k in range(64) for s in (1, -1) for d in (-1, 0, 1))])
    True
    """
    z = (n << 1) ^ (n >> 63)
    return _SMALL[z] if z < 0x80 else _uvarint(z)


def _uvarint(z: int) -> bytes:
    """An unsigned varint of two bytes or more (``z >= 0x80``): the common lengths unrolled."""
    if z < 0x4000:
        return _pack2((z & 0x7F) | 0x80, z >> 7)
    if z < 0x20_0000:  # log offsets, lengths
        return _pack3((z & 0x7F) | 0x80, ((z >> 7) & 0x7F) | 0x80, z >> 14)
    if 0x8_0000_0000 <= z < 0x400_0000_0000:  # epoch milliseconds (to 2039): six bytes
        return _pack6((z & 0x7F) | 0x80, ((z >> 7) & 0x7F) | 0x80, ((z >> 14) & 0x7F) | 0x80,
                      ((z >> 21) & 0x7F) | 0x80, ((z >> 28) & 0x7F) | 0x80, z >> 35)
    return _uvarint_loop(z)


# Bytes from a few ints: a Struct's pack takes them as arguments, bytes() needs a tuple built first.
_pack2, _pack3, _pack6 = (struct.Struct(f"{n}B").pack for n in (2, 3, 6))


def _zigzag_loop(n: int) -> bytes:
    return _uvarint_loop((n << 1) ^ (n >> 63))


def _uvarint_loop(z: int) -> bytes:
    out = bytearray()
    while z >= 0x80:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


_SMALL = [bytes((i,)) for i in range(0x80)]
_pack_double = struct.Struct("<d").pack
_pack_branch_double = struct.Struct("<Bd").pack  # a union's branch index (< 64, one byte) and a double


def _string(value: str) -> bytes:
    data = value.encode()
    return zigzag(len(data)) + data


def _map_of_strings(value: Mapping[str, str]) -> bytes:
    if not value:
        return b"\x00"
    items = tuple(value.items())
    encoded = _MAPS.get(items)
    if encoded is None:
        parts = [zigzag(len(value))]
        for key, item in items:
            parts += (_string(key), _string(item))
        parts.append(b"\x00")
        encoded = b"".join(parts)
        if len(_MAPS) < 256:  # model versions: a handful of maps, written again and again
            _MAPS[items] = encoded
    return encoded


_MAPS: dict[tuple[tuple[str, str], ...], bytes] = {}


# Each snippet appends one value ``v`` to ``out`` (``append`` is its bound ``append``).
_W_LONG = """\
z = (v << 1) ^ (v >> 63)
if z < 0x80: append(z)
else: out += _uvarint(z)
"""
_W_STRING = """\
d = v.encode()
if len(d) < 0x40: append(len(d) << 1)
else: out += _uvarint(len(d) << 1)
out += d
"""
_W_DOUBLE = "out += _pack_double(v)\n"
_W_BOOLEAN = "append(1 if v else 0)\n"
_W_MAP_OF_STRINGS = "out += _map_of_strings(v)\n"
_PRIMITIVE_WRITERS = {"int": _W_LONG, "long": _W_LONG, "double": _W_DOUBLE, "string": _W_STRING, "boolean": _W_BOOLEAN}


def _value_writer(schema: Any) -> str:
    if isinstance(schema, dict) and schema.get("type") == "map" and schema.get("values") == "string":
        return _W_MAP_OF_STRINGS
    if isinstance(schema, dict):
        return _value_writer(schema["type"])
    if isinstance(schema, list):  # ["null", X]: branch 0 is null, branch 1 the value
        if len(schema) != 2 or schema[0] != "null":
            raise Unsupported(f"unsupported union {schema}")
        if schema[1] == "double":  # the branch and the value in one pack
            return "if v is None: append(0)\nelse: out += _pack_branch_double(2, v)\n"
        return "if v is None: append(0)\nelse:\n    append(2)\n" + _indent(_value_writer(schema[1]), 4)
    if isinstance(schema, str) and schema in _PRIMITIVE_WRITERS:
        return _PRIMITIVE_WRITERS[schema]
    raise Unsupported(f"no flat writer for {schema!r}")


class FlatRecordWriter:
    """Avro binary of a record of primitives, nullable primitives and maps of strings, from its values
    in field order, by code generated for the record (as :class:`FlatRecordReader`)."""

    def __init__(self, fields: Sequence[Mapping[str, Any]]):
        lines = ["def write(values):", f"    ({''.join(f'v{k}, ' for k in range(len(fields)))}) = values",
                 "    out = bytearray()", "    append = out.append"]
        for k, f in enumerate(fields):
            lines.append(f"    v = v{k}")
            lines.append(_indent(_value_writer(f["type"]), 4).rstrip("\n"))
        lines.append("    return bytes(out)")
        namespace: dict[str, Any] = {"_uvarint": _uvarint, "_pack_double": _pack_double,
                                     "_pack_branch_double": _pack_branch_double, "_map_of_strings": _map_of_strings}
        self.source = "\n".join(lines)
        self.names = sorted(namespace)
        self.write: Callable[[Sequence[Any]], bytes] = define(self.source, namespace, f"<flat writer of {len(fields)} fields>")["write"]
