"""A long ``s.map`` shows its progress: after two seconds, a live view of the items done.

A map is one request to the pool, which answers when every item is done. To show progress
without slowing the maps that are quick anyway, :class:`ProgressiveMap` first sends a small
slice (about 2% of the items, at least two per worker) and measures its rate. If the rest would
finish within ``PROGRESS_AFTER`` seconds of the start, it goes as one request: a quick map
pays one extra round trip. Otherwise the rest goes in slices of about half a second each (never
fewer items than the pool has workers twice), a ``Tally`` counts the items as slices finish,
and once two seconds have passed the progress view appears (a widget in a notebook, a line a
second on ``sys.stderr`` elsewhere). ``progress=False`` sends the map as one request.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from snakepit_nb._errors import CallTimeoutError
from snakepit_nb.client.futures import Tally

__all__ = ["PROGRESS_AFTER", "ProgressiveMap", "set_progress_display"]

PROGRESS_AFTER = 2.0
SLICE_SECONDS = 0.5

MapResults = list[tuple[bool, Any]]

_display: Callable[[Tally], Any] | None = None


def set_progress_display(show: Callable[[Tally], Any] | None) -> None:
    """Where a long map's progress is shown (the notebook layer registers its widget)."""
    global _display
    _display = show


class _ConsoleProgress:
    """A line on ``sys.stderr`` at most once a second, and one when the map is done."""

    def __init__(self, tally: Tally) -> None:
        self.tally = tally
        self._last = 0.0
        tally.on_change(self._changed)
        self._print()

    def _changed(self) -> None:
        if self.tally.finished() or time.monotonic() - self._last >= 1.0:
            self._print()

    def _print(self) -> None:
        self._last = time.monotonic()
        print(f"progress: {self.tally.summary()}", file=sys.stderr, flush=True)


def _show(tally: Tally) -> Any:
    show = _display
    if show is not None:
        try:
            return show(tally)
        except Exception:  # no widgets here after all: the text form
            pass
    return _ConsoleProgress(tally)


class ProgressiveMap:
    """The slices of one map, and its tally once it turned out to be long."""

    def __init__(
        self, items: Sequence[Any], *, workers: int, timeout: float | None, label: str
    ) -> None:
        self.items = items
        self.workers = max(1, workers)
        self.timeout = timeout
        self.label = label
        self.started = time.monotonic()
        self.results: MapResults = []
        self.tally: Tally | None = None
        self.view: Any = None
        self._rate = 0.0

    def _remaining_time(self) -> float | None:
        if self.timeout is None:
            return None
        left = self.timeout - (time.monotonic() - self.started)
        if left <= 0:
            raise CallTimeoutError(
                f"{self.label} did not finish within {self.timeout} s "
                f"({len(self.results)} of {len(self.items)} items done)"
            )
        return left

    def next_slice(self) -> tuple[Sequence[Any], float | None] | None:
        """The next items to send and the deadline they have, or None when all were sent."""
        done, n = len(self.results), len(self.items)
        if done >= n:
            return None
        if done == 0:
            size = min(n, max(2 * self.workers, n // 50))
        else:
            elapsed = time.monotonic() - self.started
            projected = (n - done) / self._rate if self._rate > 0 else float("inf")
            if self.tally is None and elapsed + projected < PROGRESS_AFTER:
                size = n - done  # quick: the rest at once
            else:
                size = max(2 * self.workers, int(self._rate * SLICE_SECONDS))
        return self.items[done : done + size], self._remaining_time()

    def finished_slice(self, results: MapResults) -> None:
        self.results.extend(results)
        elapsed = time.monotonic() - self.started
        self._rate = len(self.results) / elapsed if elapsed > 0 else 0.0
        done, n = len(self.results), len(self.items)
        if self.tally is None and done < n:
            projected = (n - done) / self._rate if self._rate > 0 else float("inf")
            if elapsed + projected >= PROGRESS_AFTER:
                self.tally = Tally(n, "items")
                self.tally.started_at = self.started
                self._count(self.results)
                return
        elif self.tally is not None:
            self._count(results)

    def _count(self, results: MapResults) -> None:
        assert self.tally is not None
        failed = sum(1 for ok, _ in results if not ok)
        self.tally.add(ok=len(results) - failed, failed=failed)
        elapsed = time.monotonic() - self.started
        if self.view is None and elapsed >= PROGRESS_AFTER:
            self.view = _show(self.tally)

    # -- drivers ---------------------------------------------------------------------------
    def run(self, send: Callable[[Sequence[Any], float | None], MapResults]) -> MapResults:
        """Send every slice with ``send(items, timeout)`` (blocking)."""
        while (step := self.next_slice()) is not None:
            self.finished_slice(send(*step))
        return self.results

    async def arun(
        self, send: Callable[[Sequence[Any], float | None], Awaitable[MapResults]]
    ) -> MapResults:
        """Send every slice with ``await send(items, timeout)``."""
        while (step := self.next_slice()) is not None:
            self.finished_slice(await send(*step))
        return self.results
