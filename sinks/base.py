"""The one protocol every sink implements: write a batch, flush, close."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence, TypeVar

Row = TypeVar("Row", contravariant=True)


class Sink(Protocol[Row]):
    async def write(self, rows: Sequence[Row]) -> None:
        """Buffer rows; may flush when a size threshold is reached."""

    async def flush(self) -> None:
        """Make everything written so far durable; raises if it could not."""

    async def close(self) -> None:
        """Flush and release connections."""


class SinkObserver(Protocol):
    """Receives what a sink did, so metrics stay out of the sinks' logic."""

    def on_write(self, target: str, rows: int, seconds: float, error: BaseException | None) -> None: ...


class NullObserver:
    def on_write(self, target: str, rows: int, seconds: float, error: BaseException | None) -> None:
        pass


@dataclass(frozen=True)
class SourcePosition:
    """Where an output row came from: the idempotency key of at-least-once processing."""

    topic: str
    partition: int
    offset: int
