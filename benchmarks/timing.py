"""Microseconds per item of one step, as every benchmark here times it.

One warm-up pass, then a collected heap (a cyclic GC pass over the benchmark's own data is not the
step's cost), then ``passes`` timed passes over ``items``; ``pick`` chooses among them (the median,
or ``min`` where neighbours' load makes this VM's timings wander).
"""

from __future__ import annotations

import gc
import statistics
import timeit
from collections.abc import Callable, Sequence
from typing import Any


def us_per_item(step: Callable[[Any], Any], items: Sequence[Any], passes: int = 7,
                pick: Callable[[list[float]], float] = statistics.median) -> float:
    def one_pass() -> None:
        for item in items:
            step(item)

    one_pass()
    gc.collect()
    return pick(timeit.repeat(one_pass, number=1, repeat=passes)) / len(items) * 1e6
