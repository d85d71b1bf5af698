"""The one protocol every sink implements, and what a sink reports to whoever watches it.

A sink sees plain items (a Kafka record; a table name and a row of column values), never domain
objects: mapping those to items is the wiring's job (``pipeline.app.rows``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar

Item = TypeVar("Item", contravariant=True)


class Sink(Protocol[Item]):
    def add(self, item: Item) -> None:
        """Buffer one item (no I/O: the hot path calls this once per output)."""

    async def flush(self) -> None:
        """Make everything added so far durable; raises if it could not."""

    async def write(self, items: Sequence[Item]) -> None:
        """Make ``items`` durable now, on their own (small batches that must not wait for a flush)."""

    async def close(self) -> None:
        """Flush and release connections."""


class SinkObserver(Protocol):
    """Receives what a sink did, so metrics stay out of the sinks' logic."""

    def on_write(self, target: str, rows: int, seconds: float, error: BaseException | None) -> None: ...


class NullObserver:
    def on_write(self, target: str, rows: int, seconds: float, error: BaseException | None) -> None:
        pass
