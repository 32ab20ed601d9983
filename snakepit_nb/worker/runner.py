"""Running sync tools in threads without paying a thread hop per call.

``loop.run_in_executor`` costs a thread wake-up to start each call and a self-pipe write to
report it, about two thirds of a trivial call's cost in the worker. ``SyncRunner`` keeps the
same guarantees (every sync call runs off the loop thread, up to ``max_threads`` at once) with
fewer hops: calls go into a queue that a few executor jobs drain, each job running calls one
after another for as long as there are any, and finished calls are reported to the loop in
coalesced wake-ups. A lone call still costs one hop there and one back; a burst of 64 costs
about one per thread.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["SyncRunner"]


class SyncRunner:
    """Runs callables on an executor's threads; ``submit`` returns a future on the loop."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        executor: concurrent.futures.Executor,
        max_threads: int,
    ) -> None:
        self._loop = loop
        self._executor = executor
        self._max_jobs = max(1, max_threads)
        self._lock = threading.Lock()
        self._queue: collections.deque[tuple[Callable[[], Any], asyncio.Future[Any]]] = (
            collections.deque()
        )
        self._jobs = 0
        self._done: list[tuple[asyncio.Future[Any], bool, Any]] = []
        self._flush_scheduled = False

    def submit(self, fn: Callable[[], Any]) -> asyncio.Future[Any]:
        """Queue ``fn`` (call it on the loop thread); the future gets its result or exception."""
        future: asyncio.Future[Any] = self._loop.create_future()
        with self._lock:
            self._queue.append((fn, future))
            start = self._jobs < self._max_jobs and self._jobs < len(self._queue)
            if start:
                self._jobs += 1
        if start:
            try:
                self._executor.submit(self._drain)
            except RuntimeError:  # the executor is shut down: the worker is stopping
                with self._lock:
                    self._jobs -= 1
                raise
        return future

    def _drain(self) -> None:
        # An executor thread: run queued calls until none is left.
        while True:
            with self._lock:
                if not self._queue:
                    self._jobs -= 1
                    return
                fn, future = self._queue.popleft()
            if future.cancelled():  # cancelled before it started: skip it
                continue
            try:
                outcome: tuple[bool, Any] = (True, fn())
            except BaseException as exc:  # handed to the caller's future
                outcome = (False, exc)
            self._report(future, outcome)

    def _report(self, future: asyncio.Future[Any], outcome: tuple[bool, Any]) -> None:
        with self._lock:
            self._done.append((future, *outcome))
            wake = not self._flush_scheduled
            self._flush_scheduled = True
        if wake:
            # A closed loop means nobody waits for these results any more.
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._flush)

    def _flush(self) -> None:
        # On the loop: hand every finished call's outcome to its future.
        with self._lock:
            done, self._done = self._done, []
            self._flush_scheduled = False
        for future, ok, value in done:
            if future.done():
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)
