"""Bounded fan-out: many Prefect tasks, at most ``limit`` of them submitted and unfinished at once.

``task.submit`` for every item at once hands the whole list to the task runner: a year
at two sites is ~1,500 ingest task runs, each a thread that polls a concurrency slot
against the server.  :func:`bounded` submits the next item only when one of the
``limit`` outstanding futures has finished, whatever the task runner (threads, Dask),
and yields the finished ones as they come, so callers report progress while it runs::

    for item, fut in bounded(lambda i: fetch.submit(i, cfg), items, cfg.max_in_flight):
        ...  # fut is final: fut.state / fut.result()

The items are pulled lazily from the iterable (one more only when a slot is free), so
they may come from a generator.  :class:`Progress` throttles the updates of a progress
artifact (one API call per percent, not per item).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


def bounded(submit: Callable[[T], Any], items: Iterable[T], limit: int) -> Iterator[tuple[T, Any]]:
    """``(item, future)`` for every item, in completion order, with at most ``limit`` unfinished.

    ``submit(item)`` returns a future with ``add_done_callback`` (a Prefect future; a
    ``concurrent.futures`` future works too).  Each yielded future is done.  If the
    consumer stops early, the futures still outstanding are left to finish on their own.
    """
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    cond = threading.Condition()
    finished: deque[Any] = deque()
    item_of: dict[int, T] = {}
    outstanding = 0

    def on_done(fut: Any) -> None:
        with cond:
            finished.append(fut)
            cond.notify()

    def drain(block: bool) -> list[tuple[T, Any]]:
        nonlocal outstanding
        with cond:
            while block and not finished:
                cond.wait()
            out = []
            while finished:
                fut = finished.popleft()
                outstanding -= 1
                out.append((item_of.pop(id(fut)), fut))
            return out

    for item in items:
        while True:
            ready = drain(block=outstanding >= limit)
            yield from ready
            if outstanding < limit:
                break
        fut = submit(item)
        with cond:
            outstanding += 1
            item_of[id(fut)] = item
        fut.add_done_callback(on_done)  # runs at once if it is already done
    while outstanding:
        yield from drain(block=True)


class Progress:
    """A Prefect progress artifact for ``total`` items, updated at most once per ``step`` percent
    or ``min_interval_s`` seconds (and always at the end)."""

    def __init__(self, total: int, description: str, key: str | None = None, step: float = 1.0,
                 min_interval_s: float = 5.0) -> None:
        from prefect.artifacts import create_progress_artifact

        self.total, self.done, self.step, self.min_interval_s = max(int(total), 0), 0, step, min_interval_s
        self._shown, self._at = 0.0, time.monotonic()
        self.id = create_progress_artifact(0.0, key=key, description=description)

    @property
    def percent(self) -> float:
        return 100.0 * self.done / self.total if self.total else 100.0

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if (self.percent - self._shown >= self.step or now - self._at >= self.min_interval_s
                or self.done >= self.total):
            self.show()

    def show(self) -> None:
        from prefect.artifacts import update_progress_artifact

        self._shown, self._at = self.percent, time.monotonic()
        update_progress_artifact(self.id, min(self.percent, 100.0))
