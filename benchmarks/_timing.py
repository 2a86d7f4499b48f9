"""Wall-clock and CPU time of repeated calls (no torch import: the Keras worker uses it too)."""

from __future__ import annotations

import time
from collections.abc import Callable


def timed_calls(fn: Callable[[], object], reps: int, warmup: bool = True) -> tuple[list[float], list[float]]:
    """(wall seconds, process CPU seconds, all threads) of ``reps`` calls of ``fn``, after one warm-up call.

    On a shared machine the CPU time is the steadier figure: a process with more threads takes a
    larger share of busy cores, which inflates its wall-clock speed but not its CPU time per item.
    """
    if warmup:
        fn()
    wall, cpu = [], []
    for _ in range(reps):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return wall, cpu
