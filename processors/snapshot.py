"""Snapshots: the one persisted shape of the models, the churn labeler, the trainer and the alert engine.

A snapshot is a short header naming what it holds, then the payload, the object's pickle (zlib'ed
or not)::

    offset   size  field
    0        4     magic b"CEMS"
    4        1     n, the length of the kind
    5        n     kind, ASCII: "sentiment", "churn", "labeler", "trainer", "alerts"
    5 + n    2     the kind's format version, unsigned big-endian
    7 + n    1     compression of the payload: 0 none, 1 zlib
    8 + n    ...   payload: pickle, protocol 5

A class that is snapshotted says what it is (:class:`Snapshottable`). Its version goes up when a
snapshot written by the previous code could not be loaded, or would not behave the same, and
:func:`from_snapshot` refuses a snapshot of another kind or another version with a
:class:`SnapshotError`: the caller decides what then (the worker's alert engine warms up afresh).
Payloads are pickles: load snapshots from the pipeline's own topics only.

>>> from processors.churn import ChurnLabeler
>>> data = to_snapshot(ChurnLabeler())
>>> data[:12], read_header(data)
(b'CEMS\\x07labeler', Header(kind='labeler', version=1, compressed=False, size=15))
>>> from_snapshot(data, ChurnLabeler).size
0
"""

from __future__ import annotations

import io
import pickle
import struct
import zlib
from typing import NamedTuple, Protocol, TypeVar

MAGIC = b"CEMS"
_VERSION_AND_FLAG = struct.Struct(">HB")
_ZLIB_LEVEL = 1  # the payloads that are compressed are small models: level 1 is nearly as tight, and fast


class SnapshotError(ValueError):
    """Bytes that are not a snapshot of the kind and version asked for (or not a snapshot at all)."""


class Snapshottable(Protocol):
    """What a snapshotted class declares, as plain class attributes."""

    SNAPSHOT_KIND: str  # the header's kind
    SNAPSHOT_VERSION: int  # its format version: bump it when old snapshots must be refused
    SNAPSHOT_COMPRESSED: bool  # zlib the payload; False where the bulk is compressed already


T = TypeVar("T", bound=Snapshottable)


class Header(NamedTuple):
    kind: str
    version: int
    compressed: bool
    size: int  # bytes before the payload


def to_snapshot(obj: Snapshottable) -> bytes:
    """The snapshot of ``obj``: header, then its pickle (zlib'ed if its class says so)."""
    cls = type(obj)
    kind = cls.SNAPSHOT_KIND.encode("ascii")
    header = MAGIC + bytes((len(kind),)) + kind + _VERSION_AND_FLAG.pack(cls.SNAPSHOT_VERSION, cls.SNAPSHOT_COMPRESSED)
    if cls.SNAPSHOT_COMPRESSED:
        return header + zlib.compress(pickle.dumps(obj, protocol=5), _ZLIB_LEVEL)
    # Pickled straight after the header: an uncompressed payload (the trainer's, tens of MB) is not
    # copied once more to be joined to it.
    out = io.BytesIO()
    out.write(header)
    pickle.dump(obj, out, protocol=5)
    return out.getvalue()


def read_header(data: bytes) -> Header:
    """The header of a snapshot; :class:`SnapshotError` if ``data`` does not start with one.

    >>> read_header(b"\\x80\\x05old pickle")
    Traceback (most recent call last):
    ...
    processors.snapshot.SnapshotError: not a snapshot: no CEMS header
    """
    if data[:4] != MAGIC or len(data) < 5:
        raise SnapshotError("not a snapshot: no CEMS header")
    n = data[4]
    end = 5 + n + _VERSION_AND_FLAG.size
    if len(data) < end:
        raise SnapshotError("not a snapshot: its header is cut short")
    version, flag = _VERSION_AND_FLAG.unpack_from(data, 5 + n)
    if flag > 1:
        raise SnapshotError(f"unknown snapshot compression {flag}")
    return Header(bytes(data[5:5 + n]).decode("ascii", "replace"), version, bool(flag), end)


def from_snapshot(data: bytes, kind: type[T]) -> T:
    """The object in a snapshot of ``kind`` (a :class:`Snapshottable` class), at its current version.

    >>> from processors.churn import ChurnLabeler, ChurnModel
    >>> from_snapshot(to_snapshot(ChurnModel()), ChurnLabeler)
    Traceback (most recent call last):
    ...
    processors.snapshot.SnapshotError: a 'churn' snapshot, not a 'labeler' one
    >>> data = to_snapshot(ChurnLabeler())
    >>> from_snapshot(data[:12] + b"\\x00\\x09" + data[14:], ChurnLabeler)
    Traceback (most recent call last):
    ...
    processors.snapshot.SnapshotError: 'labeler' snapshot of version 9: this code reads version 1
    """
    header = read_header(data)
    if header.kind != kind.SNAPSHOT_KIND:
        raise SnapshotError(f"a {header.kind!r} snapshot, not a {kind.SNAPSHOT_KIND!r} one")
    if header.version != kind.SNAPSHOT_VERSION:
        raise SnapshotError(
            f"{header.kind!r} snapshot of version {header.version}: this code reads version {kind.SNAPSHOT_VERSION}")
    payload = memoryview(data)[header.size:]  # a view: the trainer's payload is not copied to be read
    try:
        obj = pickle.loads(zlib.decompress(payload) if header.compressed else payload)
    except SnapshotError:
        raise
    except Exception as exc:  # a corrupt payload can fail in any of pickle's many ways
        raise SnapshotError(f"{header.kind!r} snapshot does not load: {exc!r}") from exc
    if not isinstance(obj, kind):
        raise SnapshotError(f"{header.kind!r} snapshot holds a {type(obj).__name__}, not a {kind.__name__}")
    return obj
