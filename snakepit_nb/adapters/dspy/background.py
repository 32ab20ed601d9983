"""Blocking DSPy work on a thread, seen by an async tool as a bounded stream of events.

DSPy is synchronous (optimizers, ``Evaluate``, ``streamify(async_streaming=False)``), while
the worker serves tools on an asyncio loop. ``BackgroundRun`` runs the blocking part on a
daemon thread that ``emit()``s events into a bounded asyncio queue; the async tool iterates
the run and yields the events as stream chunks. A slow consumer slows the thread (the queue
never grows past ``maxsize``). ``cancel()`` (the caller cancelled the stream) sets
``cancelled``: the thread's next ``emit()`` or ``check()`` raises ``Cancelled``, a
``BaseException`` so that DSPy's ``except Exception`` handlers let it through and the
optimizer stops at its next metric or LM call.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["BackgroundRun", "Cancelled"]


class Cancelled(BaseException):
    """The run was cancelled; raised inside the worker thread to unwind DSPy."""


_DONE = "done"
_ITEM = "item"
_ERROR = "error"


class BackgroundRun:
    """Run ``target(run)`` on a thread; iterate what it emits with ``async for``.

    ``async for event in run`` starts the thread (if ``start()`` was not called) and yields
    what it emits; the target's return value becomes ``result`` when the iteration ends, and
    an exception it raises is re-raised by the iteration. Call ``cancel()`` when abandoning
    the iteration early.
    """

    def __init__(
        self, target: Callable[[BackgroundRun], Any], *, name: str, maxsize: int = 256
    ) -> None:
        self._target = target
        self.name = name
        self._queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(maxsize)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.cancelled = threading.Event()
        self.result: Any = None
        self._finished = False

    # -- thread side -------------------------------------------------------------------------
    def check(self) -> None:
        """Raise ``Cancelled`` in the worker thread if the consumer went away."""
        if self.cancelled.is_set():
            raise Cancelled(f"{self.name} was cancelled")

    def emit(self, item: Any) -> None:
        """Hand an event to the consumer; blocks while the queue is full."""
        self._put((_ITEM, item))

    def _put(self, entry: tuple[str, Any], *, final: bool = False) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            raise Cancelled(f"{self.name}: the worker's event loop is gone")
        try:
            future = asyncio.run_coroutine_threadsafe(self._queue.put(entry), loop)
        except RuntimeError as exc:  # loop closed between the check and the call
            raise Cancelled(f"{self.name}: the worker's event loop is gone") from exc
        while True:
            try:
                future.result(timeout=0.05)
                return
            except concurrent.futures.TimeoutError:
                if self.cancelled.is_set():
                    future.cancel()
                    if final:
                        return
                    raise Cancelled(f"{self.name} was cancelled") from None

    def _run(self, context: contextvars.Context) -> None:
        try:
            result = context.run(self._target, self)
        except BaseException as exc:
            entry: tuple[str, Any] = (_ERROR, exc)
        else:
            entry = (_DONE, result)
        with contextlib.suppress(Cancelled):  # nobody is listening any more
            self._put(entry, final=True)

    # -- loop side ---------------------------------------------------------------------------
    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(
            target=self._run,
            args=(contextvars.copy_context(),),
            name=f"snakepit-dspy-{self.name}",
            daemon=True,
        )
        self._thread.start()

    def __aiter__(self) -> BackgroundRun:
        if self._thread is None:
            self.start()
        return self

    async def __anext__(self) -> Any:
        """The next emitted event; StopAsyncIteration once the target returned."""
        if self._finished:
            raise StopAsyncIteration
        kind, payload = await self._queue.get()
        if kind == _ITEM:
            return payload
        self._finished = True
        if kind == _DONE:
            self.result = payload
            raise StopAsyncIteration
        raise payload

    def cancel(self) -> None:
        self.cancelled.set()

    async def wait_stopped(self, seconds: float) -> bool:
        """Wait (without blocking the loop) until the thread has ended; True if it did."""
        thread = self._thread
        if thread is None:
            return True
        await asyncio.to_thread(thread.join, seconds)
        return not thread.is_alive()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()
