"""Running sync tools in threads without paying a thread hop per call.

``loop.run_in_executor`` costs a thread wake-up to start each call and a self-pipe write to
report it, about two thirds of a trivial call's cost in the worker. ``SyncRunner`` keeps the
same guarantees (every sync call runs off the loop thread, up to ``max_threads`` at once) with
fewer hops: calls go into a queue that a few executor jobs drain, each job running calls one
after another for as long as there are any, and finished calls are reported to the loop in
coalesced wake-ups. A lone call still costs one hop there and one back; a burst of 64 costs
about one per thread.

A job busy in a long call is not draining the queue: a new call starts another job whenever
the queue is longer than the jobs that are free to take from it, so a slow (or stuck) tool
never holds up a call that has a thread of its own to run on.
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
        self._busy = 0  # jobs inside a call right now (not taking from the queue)
        self._done: list[tuple[asyncio.Future[Any], bool, Any]] = []
        self._flush_scheduled = False

    def submit(self, fn: Callable[[], Any]) -> asyncio.Future[Any]:
        """Queue ``fn`` (call it on the loop thread); the future gets its result or exception."""
        future: asyncio.Future[Any] = self._loop.create_future()
        with self._lock:
            self._queue.append((fn, future))
            free = self._jobs - self._busy
            start = self._jobs < self._max_jobs and free < len(self._queue)
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

    def withdraw(self, future: asyncio.Future[Any]) -> bool:
        """Take a call that has not started out of the queue (its future is cancelled).

        False once a thread runs it: then only the call itself can end, by returning.
        """
        with self._lock:
            for index, (_fn, queued) in enumerate(self._queue):
                if queued is future:
                    del self._queue[index]
                    break
            else:
                return False
        future.cancel()
        return True

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
                self._busy += 1
            try:
                outcome: tuple[bool, Any] = (True, fn())
            except BaseException as exc:  # handed to the caller's future
                outcome = (False, exc)
            finally:
                with self._lock:
                    self._busy -= 1
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
