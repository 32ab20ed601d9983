"""The one UI pump: every live widget update goes through it.

jupyter_server drops IOPub messages above 1000/s (averaged over 3 s) and the browser then
silently shows a stale value; a widget update per stream chunk gets there in a fraction of a
second. So producers (stream consumers, variable watches, the pool poller) only change plain
Python state on the snakepit-loop thread and mark their view dirty; this pump, a single task on
that same thread, wakes at most ``hz`` times a second, and writes each dirty view's snapshot
into its widgets under ``hold_sync()`` -- one comm message per changed widget -- while a token
bucket keeps the total for all views under ``budget`` messages a second. Views that did not fit
in a tick stay dirty and are served first next time, so many live views share the budget and
each refreshes less often, instead of the kernel flooding the frontend.

Because producers and the pump run on the same thread, a snapshot never sees a half-applied
update and needs no lock. Widgets are created and displayed on the main thread by the magics;
only their traits are written here (ipykernel's IOPub socket queues messages from any thread).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
import weakref
from collections.abc import Callable
from typing import Protocol

from snakepit_nb._loop import LoopThread, get_loop_thread

log = logging.getLogger("snakepit_nb.notebook")

DEFAULT_HZ = 10.0
DEFAULT_BUDGET = 50.0


class LiveView(Protocol):
    """What the pump needs from a view. All methods run on the snakepit-loop thread."""

    def pending(self) -> bool:
        """True when the widgets lag behind the state."""

    def render(self) -> int:
        """Write the current snapshot into the widgets; return the comm messages sent."""

    def cost(self) -> int:
        """How many comm messages the next render will send (an estimate, at least 1)."""

    def finished(self) -> bool:
        """True when no more state changes will come (a stream ended, a view was closed)."""

    def waits(self) -> bool:
        """True when ``%snakepit wait`` should wait for this view to finish."""

    def resend(self) -> int:
        """Send the whole current state of the widgets again; return the messages sent."""


class UIPump:
    """Coalesces live-view updates into at most ``hz`` renders a second within a message budget.

    >>> pump = UIPump(hz=10, budget=50)
    >>> pump.add(view)          # from any thread; the view is rendered while it is pending
    >>> pump.wait_idle(30)      # from the main thread: streams finished, widgets up to date
    """

    def __init__(
        self,
        *,
        hz: float = DEFAULT_HZ,
        budget: float = DEFAULT_BUDGET,
        loop_thread: LoopThread | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._loop_thread = loop_thread
        self._clock = clock
        self.hz = hz
        self.budget = budget
        self._views: list[LiveView] = []
        self._last_render: dict[int, float] = {}
        # Views that sent messages since the last resend_unsaved (see there); weak, so a
        # finished view nobody holds can go.
        self._unsaved: weakref.WeakSet[LiveView] = weakref.WeakSet()
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._idle_waiters: list[asyncio.Future[None]] = []
        self._tokens = 0.0
        self._closed = False
        self.messages_sent = 0
        self.renders = 0
        self.ticks = 0

    # -- settings -------------------------------------------------------------------------
    @property
    def hz(self) -> float:
        return self._hz

    @hz.setter
    def hz(self, value: float) -> None:
        if not 0.5 <= value <= 30:
            raise ValueError(f"ui refresh rate must be between 0.5 and 30 Hz, got {value}")
        self._hz = float(value)

    @property
    def budget(self) -> float:
        return self._budget

    @budget.setter
    def budget(self, value: float) -> None:
        if not 1 <= value <= 500:
            raise ValueError(
                f"ui message budget must be between 1 and 500 messages/s, got {value} "
                "(jupyter_server drops IOPub messages above 1000/s)"
            )
        self._budget = float(value)

    @property
    def loop_thread(self) -> LoopThread:
        if self._loop_thread is None or not self._loop_thread.is_alive():
            self._loop_thread = get_loop_thread()
        return self._loop_thread

    # -- registration (any thread) ------------------------------------------------------
    def add(self, view: LiveView) -> None:
        """Start pumping ``view``; safe to call from any thread."""
        thread = self.loop_thread
        if thread.in_loop_thread():
            self._add(view)
        else:
            thread.loop.call_soon_threadsafe(self._add, view)

    def views(self) -> list[LiveView]:
        return list(self._views)

    def _add(self, view: LiveView) -> None:
        if self._closed:
            return
        if view not in self._views:
            self._views.append(view)
        self.poke()
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._tokens = self._per_tick()
            # An empty context, not the caller's copy: ipykernel then stamps every widget
            # message with the parent of the cell running *now* (its fallback for threads),
            # not of the cell that happened to start the pump. nbclient keeps only messages of
            # the running cell, so this is what makes `%snakepit wait` record final states.
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="snakepit-ui-pump", context=contextvars.Context()
            )

    def poke(self) -> None:
        """Wake the pump early (loop thread only): a view became dirty after a quiet spell."""
        if self._wake is not None:
            self._wake.set()

    # -- the loop --------------------------------------------------------------------------
    def _per_tick(self) -> float:
        return self._budget / self._hz

    async def _run(self) -> None:
        try:
            while self._views and not self._closed:
                started = self._clock()
                self.tick()
                if not self._views:
                    break
                assert self._wake is not None
                # Sleep a full period after a tick so renders stay <= hz; when nothing is
                # pending, sleep until a producer pokes us (at most a period later anyway).
                period = 1.0 / self._hz
                delay = max(0.0, period - (self._clock() - started))
                await asyncio.sleep(delay)
                if not any(_safe(v.pending) for v in self._views):
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), timeout=period * 5)
        finally:
            self._task = None
            self._release_waiters()

    def tick(self) -> int:
        """Render what fits in this tick's budget; return the messages sent. Loop thread only."""
        self.ticks += 1
        per_tick = self._per_tick()
        self._tokens = min(per_tick, self._tokens + per_tick)
        sent = 0
        dirty = [v for v in self._views if _safe(v.pending)]
        # Finished views first (their final render is what people and `%snakepit wait`
        # look for), then the ones that waited longest.
        dirty.sort(key=lambda v: (not _safe(v.finished), self._last_render.get(id(v), 0.0)))
        for view in dirty:
            cost = max(1, _safe_int(view.cost))
            if cost > self._tokens and sent > 0:
                break
            if cost > self._tokens and self._tokens < 1:
                break
            try:
                n = view.render()
            except Exception:  # a broken view must not stop the others
                log.exception("snakepit_nb: a live view failed to render; it is dropped")
                self._drop(view)
                continue
            self._tokens -= n
            sent += n
            if n:
                self._unsaved.add(view)
            self.renders += 1
            self._last_render[id(view)] = self._clock()
        for view in list(self._views):
            if _safe(view.finished) and not _safe(view.pending):
                self._drop(view)
        self.messages_sent += sent
        self._release_waiters()
        return sent

    def _drop(self, view: LiveView) -> None:
        if view in self._views:
            self._views.remove(view)
        self._last_render.pop(id(view), None)

    # -- waiting ---------------------------------------------------------------------------
    def _is_idle(self) -> bool:
        return all(
            not _safe(v.pending) and (not _safe(v.waits) or _safe(v.finished)) for v in self._views
        )

    def _release_waiters(self) -> None:
        if self._idle_waiters and (self._is_idle() or self._task is None):
            for fut in self._idle_waiters:
                if not fut.done():
                    fut.set_result(None)
            self._idle_waiters.clear()

    async def await_idle(self) -> None:
        """Until every waiting view finished and every view's widgets are up to date."""
        if self._is_idle():
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._idle_waiters.append(fut)
        self.poke()
        await fut

    def wait_idle(self, timeout: float | None = None, *, resend: bool = False) -> None:
        """Block the calling (non-loop) thread until :meth:`await_idle` returns.

        With ``resend``, then :meth:`resend_unsaved`, in the same visit to the loop. Raises
        TimeoutError after ``timeout`` seconds; a KeyboardInterrupt stops waiting without
        cancelling the views.
        """

        async def _wait() -> None:
            await asyncio.wait_for(self.await_idle(), timeout)
            if resend:
                self.resend_unsaved()

        self.loop_thread.run(_wait())

    def resend_unsaved(self) -> int:
        """Send again the whole state of every view that rendered since the last time.

        Loop thread only; returns the messages sent. ipykernel stamps a message sent from this
        thread with the request of the last cell that began. A render that lands after that
        cell went idle, before the next one begins, reaches a browser but not a saved
        notebook: nbclient records only the messages of the cell it is running. ``%snakepit
        wait`` and ``%snakepit stop`` call this, so their cell carries every final state.
        """
        views, self._unsaved = list(self._unsaved), weakref.WeakSet()
        sent = 0
        for view in views:
            try:
                sent += view.resend()
            except Exception:  # one broken view must not keep the others' state out
                log.exception("snakepit_nb: a live view failed to resend its state")
        self.messages_sent += sent
        return sent

    async def aclose(self) -> None:
        """Stop pumping (loop thread). Views keep their last rendered state."""
        self._closed = True
        self._views.clear()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._release_waiters()


def _safe(fn: Callable[[], bool]) -> bool:
    try:
        return bool(fn())
    except Exception:
        log.exception("snakepit_nb: a live view raised while being polled")
        return False


def _safe_int(fn: Callable[[], int]) -> int:
    try:
        return int(fn())
    except Exception:
        return 1
