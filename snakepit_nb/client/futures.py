"""Calls that run while you do something else: ``s.submit(...)`` and its future.

``Session.submit(tool_or_function, *args, **kwargs)`` starts the call on the snakepit loop and
returns a :class:`SessionFuture` at once. The future behaves like a ``concurrent.futures.Future``
(``result()``, ``exception()``, ``done()``, ``cancel()``, ``add_done_callback``) and is awaitable
in async code. ``cancel()`` stops the remote call: the call's coroutine is cancelled on the loop,
which sends the worker a cancel, the way a timeout or a kernel interrupt does; the worker's
``in_flight`` drops once its tool stopped.

:func:`as_completed` and :func:`wait` take these futures and behave like their
``concurrent.futures`` namesakes. They wait in short slices, so a kernel interrupt stops the
waiting at once (the calls keep running; cancel them with ``f.cancel()``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Callable, Coroutine, Generator, Iterable, Iterator
from typing import Any, NamedTuple

from snakepit_nb._errors import CancelledError, SnakepitError
from snakepit_nb._loop import LoopThread

__all__ = [
    "ALL_COMPLETED",
    "FIRST_COMPLETED",
    "FIRST_EXCEPTION",
    "DoneAndNotDone",
    "SessionFuture",
    "Tally",
    "as_completed",
    "wait",
]

ALL_COMPLETED = concurrent.futures.ALL_COMPLETED
FIRST_COMPLETED = concurrent.futures.FIRST_COMPLETED
FIRST_EXCEPTION = concurrent.futures.FIRST_EXCEPTION

_SLICE = 0.1


class SessionFuture:
    """One submitted call. ``f.result()`` waits for its value (or raises its error)."""

    def __init__(self, loop_thread: LoopThread, coro: Coroutine[Any, Any, Any], label: str) -> None:
        self.label = label
        self.submitted_at = time.monotonic()
        self.finished_at: float | None = None
        self._loop_thread = loop_thread
        self._callbacks: list[Callable[[SessionFuture], Any]] = []
        self._lock = threading.Lock()
        self._inner: concurrent.futures.Future[Any] = loop_thread.submit(coro)
        self._inner.add_done_callback(self._finished)

    # -- state ---------------------------------------------------------------------------------
    def done(self) -> bool:
        return self._inner.done()

    def running(self) -> bool:
        return not self._inner.done()

    def cancelled(self) -> bool:
        return self._inner.cancelled()

    def cancel(self) -> bool:
        """Stop the call, here and in its worker; False if it had already finished."""
        return self._inner.cancel()

    def result(self, timeout: float | None = None) -> Any:
        """The call's value; raises its error, ``TimeoutError`` after ``timeout`` seconds."""
        self._wait(timeout)
        if self._inner.cancelled():
            raise CancelledError(f"{self.label} was cancelled")
        exc = self._inner.exception()
        if exc is not None:
            if isinstance(exc, SnakepitError):
                raise exc.with_traceback(None)
            raise exc
        return self._inner.result()

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The call's error (None if it succeeded), once it finished."""
        self._wait(timeout)
        if self._inner.cancelled():
            return CancelledError(f"{self.label} was cancelled")
        return self._inner.exception()

    def add_done_callback(self, fn: Callable[[SessionFuture], Any]) -> None:
        """Call ``fn(future)`` when the call finishes (at once if it already has).

        The callback runs on the snakepit loop thread; keep it short and non-blocking.
        """
        with self._lock:
            if not self._inner.done():
                self._callbacks.append(fn)
                return
        fn(self)

    def __await__(self) -> Generator[Any, None, Any]:
        return self._await().__await__()

    async def _await(self) -> Any:
        try:
            return await asyncio.wrap_future(self._inner)
        except SnakepitError as exc:
            raise exc.with_traceback(None) from None

    @property
    def elapsed(self) -> float:
        end = self.finished_at if self.finished_at is not None else time.monotonic()
        return end - self.submitted_at

    def __repr__(self) -> str:
        if not self._inner.done():
            state = f"running for {self.elapsed:.1f} s"
        elif self._inner.cancelled():
            state = "cancelled"
        elif self._inner.exception() is not None:
            state = f"failed: {type(self._inner.exception()).__name__}"
        else:
            state = f"done in {self.elapsed:.2f} s"
        return f"<SessionFuture {self.label} {state}>"

    # -- internals -----------------------------------------------------------------------------
    def _wait(self, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._inner.done():
            step = _SLICE if deadline is None else min(_SLICE, deadline - time.monotonic())
            if step <= 0:
                raise TimeoutError(f"{self.label} did not finish within {timeout} s")
            concurrent.futures.wait([self._inner], timeout=step)

    def _finished(self, _: concurrent.futures.Future[Any]) -> None:
        self.finished_at = time.monotonic()
        with self._lock:
            callbacks, self._callbacks = self._callbacks, []
        for fn in callbacks:
            try:
                fn(self)
            except Exception:  # like concurrent.futures: a failing callback is logged
                import logging

                logging.getLogger(__name__).exception("a done callback of %s raised", self)


class DoneAndNotDone(NamedTuple):
    done: set[SessionFuture]
    not_done: set[SessionFuture]


def _check(futures: Iterable[SessionFuture]) -> list[SessionFuture]:
    items = list(dict.fromkeys(futures))
    for f in items:
        if not isinstance(f, SessionFuture):
            raise TypeError(
                f"expected the futures of s.submit(...), got {type(f).__name__}; "
                "pass the list s.submit returned"
            )
    return items


def wait(
    futures: Iterable[SessionFuture],
    timeout: float | None = None,
    return_when: str = ALL_COMPLETED,
) -> DoneAndNotDone:
    """Like ``concurrent.futures.wait``: ``(done, not_done)`` sets."""
    if return_when not in (ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION):
        raise ValueError(
            f"return_when must be 'ALL_COMPLETED', 'FIRST_COMPLETED' or 'FIRST_EXCEPTION' (the "
            f"constants of concurrent.futures), not {return_when!r}"
        )
    items = _check(futures)
    deadline = None if timeout is None else time.monotonic() + timeout
    inner = {f._inner: f for f in items}
    while True:
        remaining = None if deadline is None else deadline - time.monotonic()
        step = _SLICE if remaining is None else max(0.0, min(_SLICE, remaining))
        done, _ = concurrent.futures.wait(inner, timeout=step, return_when=return_when)
        finished = {inner[f] for f in done}
        if (
            len(finished) == len(items)
            or (return_when == FIRST_COMPLETED and finished)
            or (
                return_when == FIRST_EXCEPTION
                and any(f.cancelled() or f.exception() is not None for f in done)
            )
            or (remaining is not None and remaining <= 0)
        ):
            return DoneAndNotDone(finished, set(items) - finished)


def as_completed(
    futures: Iterable[SessionFuture], timeout: float | None = None
) -> Iterator[SessionFuture]:
    """Like ``concurrent.futures.as_completed``: the futures as they finish."""
    items = _check(futures)
    deadline = None if timeout is None else time.monotonic() + timeout
    pending = {f._inner: f for f in items}
    while pending:
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            raise TimeoutError(
                f"{len(pending)} (of {len(items)}) futures unfinished after {timeout} s"
            )
        step = _SLICE if remaining is None else min(_SLICE, remaining)
        done, _ = concurrent.futures.wait(pending, timeout=step, return_when=FIRST_COMPLETED)
        for inner in sorted(done, key=lambda f: pending[f].finished_at or 0.0):
            yield pending.pop(inner)


class Tally:
    """How far a set of calls got: the counts a progress view shows (thread-safe).

    ``sp.progress`` feeds one from futures' done callbacks; a long ``s.map`` feeds one as its
    items finish. ``on_change`` callbacks run in the thread that changed it.
    """

    def __init__(self, total: int, label: str = "calls") -> None:
        self.label = label
        self.total = total
        self.done = 0
        self.failed = 0
        self.cancelled = 0
        self.started_at = time.monotonic()
        self.finished_at: float | None = None
        self._lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []
        self._finished = threading.Event()
        if total == 0:
            self._finish()

    @classmethod
    def of(cls, futures: Iterable[SessionFuture], label: str = "calls") -> Tally:
        items = _check(futures)
        tally = cls(len(items), label)
        for f in items:
            f.add_done_callback(tally._future_done)
        return tally

    def _future_done(self, future: SessionFuture) -> None:
        if future.cancelled():
            self.add(cancelled=1)
        elif future._inner.exception() is not None:
            self.add(failed=1)
        else:
            self.add(ok=1)

    def add(self, ok: int = 0, failed: int = 0, cancelled: int = 0) -> None:
        with self._lock:
            self.done += ok + failed + cancelled
            self.failed += failed
            self.cancelled += cancelled
            if self.done >= self.total and self.finished_at is None:
                self._finish()
            listeners = list(self._listeners)
        for fn in listeners:
            fn()

    def _finish(self) -> None:
        self.finished_at = time.monotonic()
        self._finished.set()

    def on_change(self, fn: Callable[[], None]) -> None:
        with self._lock:
            self._listeners.append(fn)

    def finished(self) -> bool:
        return self._finished.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Until every call finished (in slices, so an interrupt gets through)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._finished.is_set():
            step = _SLICE if deadline is None else min(_SLICE, deadline - time.monotonic())
            if step <= 0:
                return False
            self._finished.wait(step)
        return True

    @property
    def elapsed(self) -> float:
        end = self.finished_at if self.finished_at is not None else time.monotonic()
        return end - self.started_at

    @property
    def rate(self) -> float:
        elapsed = self.elapsed
        return self.done / elapsed if elapsed > 0 else 0.0

    def summary(self) -> str:
        """``"37/100 calls · 2 failed · 12.3/s · 3.0 s"``."""
        parts = [f"{self.done}/{self.total} {self.label}"]
        if self.failed:
            parts.append(f"{self.failed} failed")
        if self.cancelled:
            parts.append(f"{self.cancelled} cancelled")
        parts.append(f"{self.rate:.1f}/s")
        parts.append(f"{self.elapsed:.1f} s")
        if self.finished():
            parts.append("done")
        return " · ".join(parts)

    def __repr__(self) -> str:
        return f"<Tally {self.summary()}>"
