"""A halt is never silent: liveness, readiness and the watchdog that ends a stalled process.

The same judgement for every cem Faust process, the touchpoint worker (``cem worker``) and the model
trainer (``cem trainer``); each says what its input and its progress are:

* **live** (``GET /healthz``): no agent has crashed, and input is not waiting while nothing has
  been committed for ``stall_timeout_s``. Input waits when processed records await their commit (the
  worker: staged records before the sinks' commit; the trainer: applied training records before the
  checkpoint that acks them) or the consumer lags behind its partitions' ends.
* **ready** (``GET /readyz``): live, started (models or checkpoint loaded, sinks connected), and
  holding an assignment (the worker: touchpoint partitions; the trainer: ``cem.model.training``).

:func:`supervised` runs an agent's body: an agent that raises is marked crashed for good (Faust's
own supervisor would restart it, and nothing outside the process would know).

The :class:`Watchdog` is a thread, so it sees a stall even when the event loop itself is stuck (a
blocking call, a hung insert): once the process has not been live for ``exit_after_s`` it logs why
and exits with status 3, for a supervisor (``cem run``, Kubernetes, compose) to restart it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

log = logging.getLogger("cem.health")

EXIT_STALLED = 3


@dataclass
class Health:
    """What liveness and readiness are judged from; the process's loop updates it, threads read it."""

    stall_timeout_s: float = 120.0
    clock: Callable[[], float] = time.monotonic
    started: bool = False
    assigned: bool = False
    crashed: str | None = None  # why an agent stopped for good
    last_progress: float = field(default=0.0)  # a commit, or a moment with nothing waiting
    waiting: bool = False  # staged input awaits its commit
    lagging: bool = False  # the consumer is behind a partition's end
    acked: int = 0  # input records acked so far, where the process counts them (the trainer)

    def __post_init__(self) -> None:
        self.last_progress = self.clock()

    def progressed(self) -> None:
        self.last_progress = self.clock()

    def observe(self, waiting: bool, lagging: bool | None = None, acked: int | None = None) -> None:
        """``waiting``: processed input awaits its commit; ``lagging``: unread input (None: unknown,
        as before); ``acked``: the count of input records acked so far (a commit where it grew)."""
        if acked is not None and acked != self.acked:
            self.acked = acked
            self.progressed()
        self.waiting = waiting
        if lagging is not None:
            self.lagging = lagging
        if not (self.waiting or self.lagging):
            self.progressed()  # idle is not stalled

    def stalled_for(self) -> float:
        """Seconds input has waited with nothing committed (0 if not waiting)."""
        if not (self.waiting or self.lagging):
            return 0.0
        return max(0.0, self.clock() - self.last_progress)

    def live(self) -> tuple[bool, dict]:
        """Whether the process is alive (not crashed, not stalled), and why not.

        >>> Health().live()
        (True, {'status': 'live'})
        """
        if self.crashed:
            return False, {"status": "crashed", "why": self.crashed}
        stalled = self.stalled_for()
        if stalled > self.stall_timeout_s:
            return False, {"status": "stalled", "seconds_without_commit": round(stalled, 1),
                           "waiting": self.waiting, "lagging": self.lagging}
        return True, {"status": "live"}

    def ready(self) -> tuple[bool, dict]:
        live, body = self.live()
        if not live:
            return False, body
        if not self.started:
            return False, {"status": "starting"}
        if not self.assigned:
            return False, {"status": "no partitions assigned"}
        return True, {"status": "ready"}


async def supervised(health: Health, name: str, body: Awaitable[None],
                     on_crash: Callable[[], None] | None = None) -> None:
    """Run the agent ``name``'s ``body``; if it raises, the process is not live any more: ``health``
    says why (``/healthz``), ``on_crash`` runs (a gauge), and the watchdog ends the process."""
    try:
        await body
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        health.crashed = f"agent {name}: {type(exc).__name__}: {exc}"
        if on_crash is not None:
            on_crash()
        log.error("agent %s crashed:\n%s", name, traceback.format_exc())
        raise


class Watchdog(threading.Thread):
    """Exits the process once ``health`` has not been live for ``exit_after_s``."""

    def __init__(self, health: Health, exit_after_s: float, interval_s: float = 1.0,
                 exit: Callable[[int], None] = os._exit, what: str = "worker"):
        super().__init__(name="cem-watchdog", daemon=True)
        self.health = health
        self.what = what  # the process, for the log
        self.exit_after_s = exit_after_s
        self.interval_s = interval_s
        self._exit = exit
        self._stop = threading.Event()
        self._down_since: float | None = None

    def run(self) -> None:
        while not self._stop.wait(self.interval_s):
            if self.check():
                return

    def check(self) -> bool:
        """One look; True if it ended the process (or would have, with a test's ``exit``)."""
        live, body = self.health.live()
        now = self.health.clock()
        if live:
            self._down_since = None
            return False
        if self._down_since is None:
            self._down_since = now
            log.error("%s not live: %s", self.what, body)
        if now - self._down_since < self.exit_after_s:
            return False
        log.critical("%s not live for %.0f s (%s): exiting with status %d so a supervisor restarts it",
                     self.what, now - self._down_since, body, EXIT_STALLED)
        logging.shutdown()
        self._exit(EXIT_STALLED)
        return True

    def stop(self) -> None:
        self._stop.set()
