"""The one protocol every sink implements, and what a sink reports to whoever watches it.

A sink sees plain items (a Kafka record; a table name and a row of column values), never domain
objects: mapping those to items is the wiring's job (``pipeline.app.rows``).

:class:`Sink` is what every sink does. Three capabilities extend it, each a small protocol of its
own, so that a caller names what it relies on and never a concrete sink: :class:`BufferedSink` (its
owner decides when to flush), :class:`PrioritySink` (one target sent ahead of the rest) and
:class:`ReplayGuard` (positions already written, so a replay is not written twice).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Protocol, TypeVar, runtime_checkable

Item = TypeVar("Item", contravariant=True)
PositionKey = tuple[str, int, int]  # (source topic, partition, epoch)


@runtime_checkable
class Sink(Protocol[Item]):
    def add(self, item: Item) -> None:
        """Buffer one item (no I/O: the hot path calls this once per output)."""

    async def flush(self) -> None:
        """Make everything added so far durable; raises if it could not."""

    async def write(self, items: Sequence[Item]) -> None:
        """Make ``items`` durable now, on their own (small batches that must not wait for a flush)."""

    async def close(self) -> None:
        """Flush and release connections."""


@runtime_checkable
class BufferedSink(Sink[Item], Protocol[Item]):
    """A sink whose owner flushes it when a flush is due (the commit protocol decides, not the sink)."""

    @property
    def pending_rows(self) -> int:
        """Items not yet durable: buffered, or in a write that has not returned."""

    def due(self, waiting: bool = False) -> bool:
        """Whether a flush is due (size or age); ``waiting``: the caller holds work that needs one."""


@runtime_checkable
class PrioritySink(Sink[Item], Protocol[Item]):
    """A sink that can send one target's items now, ahead of the next flush."""

    async def ship(self, target: str) -> list[asyncio.Future]:
        """Send ``target``'s buffered items; the futures resolve when each is durable."""


@runtime_checkable
class ReplayGuard(Protocol):
    """Positions a sink already holds, per table: a row at or below its mark is a replay."""

    async def load_marks(self) -> None:
        """Read the marks again from the store (after an assignment: another worker may have written)."""

    def marks(self, table: str) -> Mapping[PositionKey, int]:
        """Per position key, the highest source offset ``table`` holds or will hold."""


class SinkObserver(Protocol):
    """Receives what a sink did, so metrics stay out of the sinks' logic."""

    def on_write(self, target: str, rows: int, seconds: float, error: BaseException | None) -> None: ...


class NullObserver:
    def on_write(self, target: str, rows: int, seconds: float, error: BaseException | None) -> None:
        pass
