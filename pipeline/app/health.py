"""A halt is never silent: liveness, readiness and the watchdog that ends a stalled worker.

* **live** (``GET /healthz``): no agent has crashed, and input is not waiting while nothing has
  been committed for ``stall_timeout_s``. Input waits when processed records await their commit or
  the consumer lags behind its partitions' ends.
* **ready** (``GET /readyz``): live, started (models loaded, sinks connected), and holding an
  assignment.

The :class:`Watchdog` is a thread, so it sees a stall even when the event loop itself is stuck (a
blocking call, a hung insert): once the worker has not been live for ``exit_after_s`` it logs why and
exits the process with status 3, for a supervisor (``cem run``, Kubernetes, compose) to restart it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("cem.health")

EXIT_STALLED = 3


@dataclass
class Health:
    """What liveness and readiness are judged from; the worker updates it, threads read it."""

    stall_timeout_s: float = 120.0
    clock: Callable[[], float] = time.monotonic
    started: bool = False
    assigned: bool = False
    crashed: str | None = None  # why an agent stopped for good
    last_progress: float = field(default=0.0)  # a commit, or a moment with nothing waiting
    waiting: bool = False  # staged input awaits its commit
    lagging: bool = False  # the consumer is behind a partition's end

    def __post_init__(self) -> None:
        self.last_progress = self.clock()

    def progressed(self) -> None:
        self.last_progress = self.clock()

    def observe(self, waiting: bool, lagging: bool | None = None) -> None:
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
        """Whether the worker is alive (not crashed, not stalled), and why not.

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


class Watchdog(threading.Thread):
    """Exits the process once the worker has not been live for ``exit_after_s``."""

    def __init__(self, health: Health, exit_after_s: float, interval_s: float = 1.0,
                 exit: Callable[[int], None] = os._exit):
        super().__init__(name="cem-watchdog", daemon=True)
        self.health = health
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
            log.error("worker not live: %s", body)
        if now - self._down_since < self.exit_after_s:
            return False
        log.critical("worker not live for %.0f s (%s): exiting with status %d so a supervisor restarts it",
                     now - self._down_since, body, EXIT_STALLED)
        logging.shutdown()
        self._exit(EXIT_STALLED)
        return True

    def stop(self) -> None:
        self._stop.set()
