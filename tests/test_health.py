"""A halt is never silent: liveness, readiness and the watchdog, on a fake clock."""

from __future__ import annotations

from pipeline.app.health import EXIT_STALLED, Health, Watchdog


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_idle_is_live_and_waiting_without_commits_is_not():
    clock = Clock()
    health = Health(stall_timeout_s=60, clock=clock)
    clock.now += 3600
    health.observe(waiting=False, lagging=False)
    assert health.live()[0], "nothing waits: an idle worker is live however long it idles"
    health.observe(waiting=True)
    clock.now += 59
    assert health.live()[0]
    clock.now += 2
    live, body = health.live()
    assert not live and body["status"] == "stalled" and body["seconds_without_commit"] == 61.0
    health.progressed()  # a commit
    assert health.live()[0]


def test_lag_alone_is_input_waiting():
    clock = Clock()
    health = Health(stall_timeout_s=10, clock=clock)
    health.observe(waiting=False, lagging=True)
    clock.now += 11
    assert not health.live()[0], "records wait on the broker and nothing is committed: stalled"


def test_a_crashed_agent_is_not_live_nor_ready():
    health = Health()
    health.started = health.assigned = True
    assert health.ready() == (True, {"status": "ready"})
    health.crashed = "agent touchpoints: RuntimeError: boom"
    assert health.live()[1]["status"] == "crashed" and not health.ready()[0]


def test_ready_needs_a_start_and_an_assignment():
    health = Health()
    assert health.ready()[1]["status"] == "starting"
    health.started = True
    assert health.ready()[1]["status"] == "no partitions assigned"


def test_the_watchdog_exits_once_not_live_for_long_enough():
    """Property: a worker that stops committing with input waiting exits non-zero, in bounded time."""
    clock = Clock()
    health = Health(stall_timeout_s=30, clock=clock)
    exits: list[int] = []
    watchdog = Watchdog(health, exit_after_s=20, exit=exits.append)
    health.observe(waiting=True)
    clock.now += 31
    assert not watchdog.check() and not exits  # not live, but only just
    clock.now += 19
    assert not watchdog.check()
    clock.now += 2
    assert watchdog.check() and exits == [EXIT_STALLED]


def test_the_watchdog_forgives_a_recovery():
    clock = Clock()
    health = Health(stall_timeout_s=30, clock=clock)
    exits: list[int] = []
    watchdog = Watchdog(health, exit_after_s=20, exit=exits.append)
    health.observe(waiting=True)
    clock.now += 40
    watchdog.check()
    health.progressed()
    clock.now += 15
    watchdog.check()
    clock.now += 40
    assert not watchdog.check() and not exits, "the clock restarts after a recovery"


def test_a_trainer_is_live_while_its_checkpoints_ack_input_and_stalled_once_they_stop():
    """Property: for a process whose progress is acked input (``cem trainer``: a checkpoint acks the
    training records it covers), acks that keep coming keep it live however long input waits;
    input waiting with no ack for ``stall_timeout_s`` is a stall; and once nothing waits it is live
    again, idle for as long as it likes."""
    clock = Clock()
    health = Health(stall_timeout_s=60, clock=clock)
    for acked in (200, 400, 600):  # records always waiting, a checkpoint acking some every 50 s
        health.observe(waiting=True, lagging=False, acked=acked)
        clock.now += 50
        health.observe(waiting=True, lagging=False, acked=acked)
        assert health.live()[0], f"acks at {acked}: making progress"
    clock.now += 11  # 61 s without an ack, records waiting
    health.observe(waiting=True, lagging=True, acked=600)
    live, body = health.live()
    assert not live and body["status"] == "stalled" and body["lagging"]
    health.observe(waiting=True, lagging=True, acked=800)  # the checkpoint got through
    assert health.live()[0]
    health.observe(waiting=False, lagging=False, acked=800)
    clock.now += 3600
    health.observe(waiting=False, lagging=False, acked=800)
    assert health.live()[0], "idle is not stalled"


async def test_a_supervised_agent_that_raises_leaves_the_process_not_live_nor_ready():
    """Property: an agent body that raises marks the process crashed for good (a restart of the agent
    by Faust's supervisor does not make it live again), runs ``on_crash`` and re-raises; one that is
    cancelled (a rebalance, a stop) is no crash."""
    import asyncio

    import pytest

    from pipeline.app.health import supervised

    health = Health()
    health.started = health.assigned = True
    crashes: list[str] = []

    async def cancelled() -> None:
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await supervised(health, "training", cancelled(), lambda: crashes.append("x"))
    assert health.ready()[0] and not crashes

    async def failing() -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await supervised(health, "training", failing(), lambda: crashes.append("x"))
    assert health.live() == (False, {"status": "crashed", "why": "agent training: RuntimeError: boom"})
    assert not health.ready()[0] and crashes == ["x"]
    health.observe(waiting=False, acked=10)  # progress after the agent is restarted
    assert not health.live()[0], "a crash is for good"
