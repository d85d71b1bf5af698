"""The source-log book's verdicts (``pipeline.app.logs.LogBook``), against a scripted broker.

Property: a partition is read again from the log's start exactly when its offsets are not the
anchored log's (another record at the anchor, or none) or when the consumer reads past the end.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pipeline.app.logs import Anchor, LogBook, Probe

KEY = ("cem.touchpoints", 2)


class Rows:
    """ClickHouse as far as the book reads it: the anchors of ``cem.source_logs``."""

    def __init__(self, anchors: list[Anchor] | None = None):
        self.anchors = anchors or []

    def rows(self, sql: str) -> list[list[Any]]:
        return [[a.epoch, a.offset, a.digest] for a in sorted(self.anchors, key=lambda a: -a.epoch)[:1]]


class Sink:
    def __init__(self) -> None:
        self.written: list[Any] = []

    def marks(self, table: str) -> dict:
        return {}

    async def write(self, rows: list[Any]) -> None:
        self.written.extend(rows)


def book(probe: Probe, anchors: list[Anchor] | None = None) -> tuple[LogBook, list]:
    new_logs: list = []

    async def answer(key: Any, offset: int) -> Probe:
        return probe

    logs = LogBook(Rows(anchors), Sink(), "cem", answer, lambda *a: new_logs.append(a))  # type: ignore[arg-type]
    return logs, new_logs


def verdict(logs: LogBook, overrun: bool = False) -> Any:
    return asyncio.run(logs.verdict(KEY, 1, overrun=overrun))


def test_the_same_record_at_the_anchor_is_the_same_log() -> None:
    logs, new_logs = book(Probe(0, 7), [Anchor(1, 40, 7)])
    assert verdict(logs).restart_at is None and logs.epoch(KEY) == 1 and not new_logs


def test_another_record_or_none_at_the_anchor_is_a_new_log_read_from_its_start() -> None:
    for probe in (Probe(0, 8), Probe(3, None)):
        logs, new_logs = book(probe, [Anchor(1, 40, 7)])
        result = verdict(logs)
        assert (result.epoch, result.restart_at) == (2, probe.log_start) and len(new_logs) == 1


def test_a_position_past_the_end_of_the_same_log_reads_it_again_from_its_start() -> None:
    logs, new_logs = book(Probe(5, 7), [Anchor(1, 40, 7)])
    result = verdict(logs, overrun=True)
    assert (result.epoch, result.restart_at) == (1, 5) and not new_logs, "one log: no new epoch"


def test_a_position_past_the_end_of_a_log_never_anchored_reads_it_from_its_start() -> None:
    logs, new_logs = book(Probe(0, 9))
    assert verdict(logs).restart_at is None, "without an overrun, nothing to check"
    result = verdict(logs, overrun=True)
    assert (result.epoch, result.restart_at) == (1, 0) and not new_logs


def test_a_position_past_the_end_of_a_new_log_starts_a_new_epoch() -> None:
    logs, new_logs = book(Probe(0, None), [Anchor(1, 40, 7)])
    result = verdict(logs, overrun=True)
    assert (result.epoch, result.restart_at) == (2, 0) and len(new_logs) == 1


def test_a_new_log_is_found_once_until_its_first_record_anchors_it() -> None:
    logs, new_logs = book(Probe(0, 8), [Anchor(1, 40, 7)])
    assert verdict(logs).restart_at == 0
    again = verdict(logs)
    assert (again.epoch, again.restart_at, len(new_logs)) == (2, None, 1), "the same new log, not a third"
    asyncio.run(logs.anchor(KEY, 0, 8))
    assert verdict(logs).epoch == 2 and len(new_logs) == 1


def test_a_new_log_not_read_yet_is_read_from_its_start_again_after_a_reassignment() -> None:
    """A rebalance moves the position to the group's offset, which is the old log's."""
    logs, new_logs = book(Probe(0, 8), [Anchor(1, 40, 7)])
    assert verdict(logs).restart_at == 0
    again = asyncio.run(logs.verdict(KEY, 2))
    assert (again.epoch, again.restart_at, len(new_logs)) == (2, 0, 1)


def test_a_probe_that_fails_leaves_the_partition_to_be_checked_again() -> None:
    """Property: no verdict, no pass. A probe that raises (the broker away mid-restart) is a
    LogProbeError and the partition stays unverified, so its next fetch is checked: marked verified
    before the probe, the new log's records that followed would have been taken for the old log's."""
    import pytest

    from pipeline.app.logs import LogProbeError

    async def away(key: Any, offset: int) -> Probe:
        raise ConnectionError("the broker is restarting")

    logs = LogBook(Rows([Anchor(1, 40, 7)]), Sink(), "cem", away, lambda *a: None)  # type: ignore[arg-type]
    with pytest.raises(LogProbeError):
        asyncio.run(logs.verdict(KEY, 1))
    assert not logs.verified_in(KEY, 1) and logs.needs_verdict(KEY, 1, 0)
