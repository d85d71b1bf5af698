"""The commit protocol's cadence (``pipeline.app.commit``), with in-memory sinks and a fake clock."""

from __future__ import annotations

import asyncio
from typing import Any

from pipeline.app.commit import Commit
from pipeline.app.metrics import Metrics
from pipeline.app.outputs import AlertOutputs


class Buffer:
    """A sink that keeps what it is given; ``due`` as the ClickHouse sink's own rule would say."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self.flushes = 0
        self.sink_due = False
        self.pending_rows = 0

    def add(self, item: Any) -> None:
        self.items.append(item)

    async def flush(self) -> None:
        self.flushes += 1

    async def ship(self, target: str) -> list[asyncio.Future]:
        return []

    def due(self, waiting: bool = False) -> bool:
        return self.sink_due


def test_a_commit_is_due_an_interval_after_the_last_one_began_however_long_it_took():
    """Property: staged input is committed one interval after the previous commit *began*, not an
    interval after it ended (then a record staged as a commit began waited two commits and the
    interval). The sink's own rule still makes a commit due at once (a full block of rows)."""
    now = [100.0]
    clickhouse = Buffer()
    commit = Commit(Buffer(), clickhouse, delivery=None, changelog=lambda state: state,  # type: ignore[arg-type]
                    metrics=Metrics(), alerts=AlertOutputs("json"), checkpoint=lambda: None, interval_s=1.0,
                    clock=lambda: now[0])
    asyncio.run(commit.commit())  # began at 100.0
    now[0] = 100.6  # that commit took 0.6 s; input staged meanwhile
    commit.stage_events([], [])
    assert not commit.due()
    now[0] = 101.0
    assert commit.due(), "an interval after the last commit began"
    asyncio.run(commit.commit())
    now[0] = 101.5
    assert not commit.due(), "nothing staged"
    commit.stage_events([], [])
    assert not commit.due()
    clickhouse.sink_due = True
    assert commit.due(), "the sink's own rule"


def test_the_end_of_a_burst_is_committed_once_the_input_goes_quiet_and_a_trickle_at_most_twice_an_interval():
    """Property: staged input waits for the interval only while more input keeps coming. Once none
    has been staged for a quarter interval, and half an interval has passed since the last commit
    began, it is committed (the last records of a burst waited up to a whole interval for nothing);
    a record staged sooner than half an interval after a commit began still waits, so input that
    trickles in makes at most two commits an interval."""
    now = [100.0]
    commit = Commit(Buffer(), Buffer(), delivery=None, changelog=lambda state: state,  # type: ignore[arg-type]
                    metrics=Metrics(), alerts=AlertOutputs("json"), checkpoint=lambda: None, interval_s=1.0,
                    clock=lambda: now[0])
    asyncio.run(commit.commit())  # began at 100.0
    now[0] = 100.6
    commit.stage_events([], [])  # the last input of a burst
    now[0] = 100.8
    assert not commit.due(), "input staged 0.2 s ago: more may follow"
    now[0] = 100.85
    assert commit.due(), "quiet for a quarter interval"
    asyncio.run(commit.commit())  # began at 100.85
    now[0] = 100.9
    commit.stage_events([], [])  # a trickle: one record now and then
    now[0] = 101.3
    assert not commit.due(), "quiet, but the last commit began less than half an interval ago"
    now[0] = 101.35
    assert commit.due()
