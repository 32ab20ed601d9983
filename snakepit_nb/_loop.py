"""The event-loop thread snakepit_nb owns.

ipykernel already runs an asyncio loop on the main thread, so ``asyncio.run`` fails in a cell
and grpc.aio objects are bound to the loop that created them. Like dask's IO-loop thread and
ipyparallel's client IO thread, snakepit_nb runs all of its async code on one daemon thread
named ``snakepit-loop`` and hands coroutines to it from any other thread. Callbacks from workers
are therefore served even while a cell computes.

Interpreter exit takes one ordered path (:func:`at_exit`): first the runtimes still open close
(their calls end, their call channels close, their workers stop: SIGTERM, then SIGKILL after a
short grace), then the backup kills whatever worker process is left, and last the loop thread
stops, before the interpreter tears down the modules gRPC runs on. A script that forgets
``client.close()`` so exits in well under a second, and silently.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

THREAD_NAME = "snakepit-loop"


# How often a blocked caller wakes up. A kernel interrupt is a SIGINT to the process; the
# OS may hand it to any thread, and CPython then only raises KeyboardInterrupt once the main
# thread runs Python code again: a caller blocked in one long wait would not see it until the
# call ended. Waiting in slices (dask's sync() does the same) bounds that delay.
_WAIT_SLICE = 0.1
# How long an interrupted blocking call waits for its coroutine to finish cancelling.
_CANCEL_GRACE = 5.0


def wait_interruptibly(future: concurrent.futures.Future[T], timeout: float | None = None) -> T:
    """``future.result(timeout)``, waking every 0.1 s so a KeyboardInterrupt gets through."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        step = _WAIT_SLICE if deadline is None else min(_WAIT_SLICE, deadline - time.monotonic())
        if step <= 0:
            raise concurrent.futures.TimeoutError
        try:
            return future.result(step)
        except concurrent.futures.TimeoutError:
            if future.done():  # the coroutine's own TimeoutError (e.g. CallTimeoutError)
                raise


async def _tracked(
    coro: Coroutine[Any, Any, T], started: threading.Event, settled: threading.Event
) -> T:
    started.set()
    try:
        return await coro
    finally:
        settled.set()


class LoopThread:
    """An asyncio loop running forever on a daemon thread."""

    def __init__(self, name: str = THREAD_NAME) -> None:
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        self._ready.wait()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None
        return self._loop

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def in_loop_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def is_alive(self) -> bool:
        return self._thread.is_alive() and not self.loop.is_closed()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule ``coro`` on the loop; returns a thread-safe future."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and block the calling thread until it finishes.

        If the caller is interrupted (KeyboardInterrupt from a kernel interrupt), the
        coroutine is cancelled on the loop before the interrupt propagates, so a remote call
        does not keep running unseen.
        """
        if self.in_loop_thread():
            coro.close()
            raise RuntimeError(
                "a blocking snakepit_nb call was made on the snakepit-loop thread, where it "
                "would deadlock; use the async API (AsyncClient / AsyncSession) there instead"
            )
        started, settled = threading.Event(), threading.Event()
        future = self.submit(_tracked(coro, started, settled))
        try:
            return wait_interruptibly(future, timeout)
        except BaseException:
            if not future.done():
                future.cancel()
            # A cancelled concurrent future counts as done at once, before the loop has run
            # the cancellation. Wait for the coroutine itself to unwind, so its cleanup (a
            # CallCancel sent to the worker, a generator closed) has happened when we return.
            if started.is_set():
                settled.wait(_CANCEL_GRACE)
            raise

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the loop and join the thread. Pending tasks are cancelled first."""
        if not self._thread.is_alive():
            return

        async def _cancel_all() -> None:
            current = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not current]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if not self.in_loop_thread():
            with contextlib.suppress(concurrent.futures.TimeoutError, RuntimeError):
                self.submit(_cancel_all()).result(timeout)
        self.loop.call_soon_threadsafe(self.loop.stop)
        if not self.in_loop_thread():
            self._thread.join(timeout)


def running_on(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether the calling thread is running ``loop`` right now."""
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def set_event(loop: asyncio.AbstractEventLoop, event: asyncio.Event) -> None:
    """Set ``event`` of ``loop`` from any thread (at once on the loop's own thread).

    A closed loop means nobody is left to wake: that is not an error.
    """
    if running_on(loop):
        event.set()
    else:
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(event.set)


_lock = threading.Lock()
_shared: LoopThread | None = None


def get_loop_thread() -> LoopThread:
    """The process-wide loop thread, started on first use (and again after a stop)."""
    global _shared
    with _lock:
        if _shared is None or not _shared.is_alive():
            _shared = LoopThread()
        return _shared


# ---------------------------------------------------------------------------------------------
# Interpreter exit

#: Orders of the exit hooks (lower runs first), then the shared loop thread stops.
EXIT_CLOSE_RUNTIMES = 10
EXIT_STOP_PROCESSES = 20

_exit_hooks: list[tuple[int, int, Callable[[], None]]] = []
_exit_lock = threading.Lock()


def at_exit(hook: Callable[[], None], *, order: int) -> None:
    """Run ``hook`` once at interpreter exit, hooks of lower ``order`` first.

    One ``atexit`` handler runs them all, so their order does not depend on which module was
    imported first; after the last one the shared loop thread stops.
    """
    with _exit_lock:
        _exit_hooks.append((order, len(_exit_hooks), hook))


def run_exit_hooks() -> None:
    """What ``atexit`` runs: every hook in order (each at most once), then stop the loop."""
    global _shared
    with _exit_lock:
        hooks = sorted(_exit_hooks)
        _exit_hooks.clear()
    for _order, _seq, hook in hooks:
        with contextlib.suppress(Exception):  # one failing hook must not skip the others
            hook()
    with _lock:
        shared, _shared = _shared, None
    if shared is not None and not shared.in_loop_thread():
        with contextlib.suppress(Exception):
            shared.stop(timeout=1.0)


atexit.register(run_exit_hooks)
