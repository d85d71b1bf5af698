"""Child processes of the embedded stack (broker, worker; Prometheus in tests): start and stop, once."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path


def spawn(argv: Sequence[str], log_path: Path | None = None, env: Mapping[str, str] | None = None) -> subprocess.Popen:
    """Start ``argv`` with stdout and stderr appended to ``log_path`` (or discarded).

    The child gets its own session: a terminal's Ctrl-C reaches only the supervisor, which then
    drains and stops its children in order.
    """
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115 - closed below, once the child has it
    try:
        return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        if not isinstance(out, int):  # our log file, not DEVNULL
            out.close()  # the child holds its own descriptor


def stop_all(processes: Sequence[subprocess.Popen | None], timeout_s: float) -> list[int]:
    """:func:`stop` for several processes, each sent SIGTERM first, so that they stop together
    (the workers of one group: one stopping alone would hand its partitions to the others first)."""
    for process in processes:
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    return [stop(process, max(0.0, deadline - time.monotonic()), signal.SIGTERM) for process in processes]


def stop(process: subprocess.Popen | None, timeout_s: float, sig: int = signal.SIGTERM) -> int:
    """Send ``sig``, wait up to ``timeout_s``, then SIGKILL; returns the exit code (0 if never started).

    >>> import sys
    >>> stop(spawn([sys.executable, "-c", "import time; time.sleep(60)"]), 5) == -signal.SIGTERM
    True
    """
    if process is None:
        return 0
    if process.poll() is None:
        process.send_signal(sig)
        try:
            return process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait()
