"""Versionable model snapshots: the one way models and labelers are saved and loaded."""

from __future__ import annotations

import pickle
from typing import TypeVar

T = TypeVar("T", bound="Snapshot")


class Snapshot:
    """Mixin: ``to_bytes()`` / ``from_bytes()`` (a pickle: load from the pipeline's own topics only).

    >>> type(Snapshot.from_bytes(Snapshot().to_bytes())).__name__
    'Snapshot'
    >>> import pickle; Snapshot.from_bytes(pickle.dumps(1))
    Traceback (most recent call last):
    ...
    TypeError: snapshot holds a int, not a Snapshot
    """

    # Whether publishing should zlib the pickle; False where the bulk is compressed already.
    compress_on_publish = True

    def to_bytes(self) -> bytes:
        return pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL)

    @classmethod
    def from_bytes(cls: type[T], data: bytes) -> T:
        obj = pickle.loads(data)
        if not isinstance(obj, cls):
            raise TypeError(f"snapshot holds a {type(obj).__name__}, not a {cls.__name__}")
        return obj
