"""Choosing a worker for each call: least-loaded, session affinity, and a bounded queue.

Affinity modes:

- ``"none"``: the least-loaded ready worker with free capacity.
- ``"hint"`` (default): the session's last worker if it has free capacity, else as ``"none"``.
  Cheap locality (warm caches) without ever waiting for one worker.
- ``"strict"``: the session is bound to the worker (incarnation) that ran its first call, for
  objects that live in that process. Calls wait for that worker; if it died or was recycled the
  call fails with :class:`SessionWorkerGoneError`, because the objects are lost.

Each worker has two kinds of slots: ``capacity`` for sync tools (they run in worker threads)
and ``async_capacity`` for async tools (coroutine functions and async generators, which run on
the worker's event loop); a call takes a slot of its tool's kind. When no worker has a free
slot of that kind the call waits in a FIFO queue (one per kind; at most ``max_queue`` calls
queued in all); past that, :class:`PoolSaturatedError` (RESOURCE_EXHAUSTED).

Threads: the dispatcher lives on the loop thread, but a kernel thread making a call over a
worker's lane takes and gives back slots itself (:meth:`Dispatcher.try_acquire`,
:meth:`Dispatcher.release`, from any thread); a lock guards the slot counts and bindings.
Queued calls are always handed their slot on the loop.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from snakepit_nb._errors import (
    ClosedError,
    InvalidArgumentError,
    PoolSaturatedError,
    SessionWorkerGoneError,
    WorkerFailedError,
    WorkerUnavailableError,
)
from snakepit_nb._loop import running_on
from snakepit_nb.orchestrator.pool.handle import CancelKey, WorkerHandle, WorkerState

__all__ = ["AFFINITIES", "Affinity", "Dispatcher"]

Affinity = Literal["none", "hint", "strict"]
AFFINITIES: tuple[str, ...] = ("none", "hint", "strict")

# Session -> last worker hints are a cache; strict bindings are kept until the session is
# forgotten (closed or expired).
_MAX_HINTS = 10_000


@dataclass(eq=False)
class _Waiter:
    future: asyncio.Future[WorkerHandle]
    session_id: str
    only: WorkerHandle | None  # strict affinity: this slot, this incarnation
    incarnation: int
    prefer: str | None
    is_async: bool


class Dispatcher:
    """Hands out worker slots to calls; on the loop thread, except where a method says
    "any thread"."""

    def __init__(self, handles: Sequence[WorkerHandle], *, max_queue: int) -> None:
        self._handles = list(handles)
        self._by_id = {h.worker_id: h for h in self._handles}
        self.max_queue = max_queue
        # Queued calls, one FIFO per kind of slot (index: is_async), so a call waiting for a
        # sync slot never holds up one that could take a free async slot, and back.
        self._queues: tuple[collections.deque[_Waiter], collections.deque[_Waiter]] = (
            collections.deque(),
            collections.deque(),
        )
        self._strict: dict[str, tuple[str, int]] = {}
        self._hints: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._rotation = 0
        self.closed = False
        # Guards the slot counts, which threads other than the loop's release; also
        # ``_pumping``, so a release that lands while the pump holds the queued calls
        # (out of their deque) still wakes them.
        self._lock = threading.Lock()
        self._pumping = False
        self._loop = asyncio.get_running_loop()

    @property
    def queue_length(self) -> int:
        return sum(1 for queue in self._queues for w in queue if not w.future.done())

    def _all_waiters(self) -> list[_Waiter]:
        return [w for queue in self._queues for w in queue]

    # ------------------------------------------------------------------ acquiring

    async def acquire(
        self, session_id: str, affinity: str, *, is_async: bool = False
    ) -> WorkerHandle:
        """A READY worker with a free slot of the kind asked for, already counted as taken.

        ``is_async``: the call is of an async tool (takes an ``async_capacity`` slot).
        The caller must call :meth:`release` with the same kind when the call is over. Wrap
        in a timeout for a deadline; cancellation while queued removes the call from the queue.
        """
        if self.closed:
            raise ClosedError("the pool is closed; start a new one with sp.start()")
        only, incarnation = self._strict_target(session_id, affinity)
        prefer = self._hints.get(session_id) if affinity == "hint" else None
        queue = self._queues[is_async]
        if not queue:
            with self._lock:
                handle = self._pick(only, incarnation, prefer, is_async)
                if handle is not None:
                    handle.take_slot(is_async)
                    self._bind(handle, session_id, affinity)
                    return handle
        self._check_can_ever_run(only)
        if self.queue_length >= self.max_queue:
            raise PoolSaturatedError(
                f"pool saturated: {self.queue_length} calls queued (max_queue={self.max_queue}); "
                "wait for results or start more workers"
            )
        future: asyncio.Future[WorkerHandle] = asyncio.get_running_loop().create_future()
        waiter = _Waiter(future, session_id, only, incarnation, prefer, is_async)
        queue.append(waiter)
        self.pump()
        try:
            handle = await future
        except BaseException:
            if future.done() and not future.cancelled() and future.exception() is None:
                # Handed a slot at the same moment we were cancelled: give it back.
                self.release(future.result(), is_async=is_async)
            else:
                future.cancel()
            raise
        self._bind(handle, session_id, affinity)
        return handle

    def try_acquire(
        self, session_id: str, affinity: str, *, is_async: bool = False
    ) -> WorkerHandle | None:
        """A free slot now, from any thread, or None (then queue on the loop with acquire).

        None too while calls of this kind are queued: a call never overtakes them.
        """
        if self.closed or self._queues[is_async]:
            return None
        only, incarnation = self._strict_target(session_id, affinity)
        prefer = self._hints.get(session_id) if affinity == "hint" else None
        with self._lock:
            handle = self._pick(only, incarnation, prefer, is_async)
            if handle is None:
                return None
            handle.take_slot(is_async)
            self._bind(handle, session_id, affinity)
            return handle

    def take(self, handle: WorkerHandle, *, is_async: bool = False) -> None:
        """Count one more call on ``handle`` without asking (any thread; a map keeps it fed)."""
        with self._lock:
            handle.take_slot(is_async)

    def cancel_sent(self, handle: WorkerHandle, key: CancelKey, tool: str) -> int:
        """From any thread: a cancel of call ``key`` (running ``tool``) went to ``handle``'s
        worker. Recorded on the loop (the ``cancel_grace`` watch starts there), for the
        incarnation it went to; returns that incarnation, for :meth:`cancel_confirmed`."""
        incarnation = handle.incarnation

        def record() -> None:
            if handle.incarnation == incarnation:
                handle.cancel_sent(key, tool)

        self._soon(record)
        return incarnation

    def cancel_confirmed(self, handle: WorkerHandle, key: CancelKey, incarnation: int) -> None:
        """From any thread: the worker answered the cancelled call ``key``.

        A worker with an unconfirmed cancel takes no new call, so the confirmation may
        make room for a queued one: serve the queue after it."""

        def record() -> None:
            handle.cancel_confirmed(key, incarnation)
            self.pump()

        self._soon(record)

    def _soon(self, callback: Callable[[], None]) -> None:
        if running_on(self._loop):
            callback()
        else:
            self._loop.call_soon_threadsafe(callback)

    def count_errors(self, handle: WorkerHandle, errors: int) -> None:
        with self._lock:
            handle.errors += errors

    def release(
        self,
        handle: WorkerHandle,
        *,
        is_async: bool = False,
        calls: int = 0,
        errors: int = 0,
    ) -> None:
        """A call on ``handle`` is over (any thread): count it, free its slot, serve waiters."""
        with self._lock:
            handle.calls += calls
            handle.errors += errors
            handle.free_slot(is_async)
            # Read under the lock: the pump takes the queued calls out of their deque while
            # it works and puts back the ones it could not serve before it says it is done.
            wake = self._pumping or bool(self._queues[0] or self._queues[1])
        if wake:
            if running_on(self._loop):
                self.pump()
            else:
                self._loop.call_soon_threadsafe(self.pump)

    def pump(self) -> None:
        """Give free slots to queued calls, oldest first within each kind."""
        with self._lock:
            self._pumping = True
        try:
            for is_async in (False, True):
                self._pump_queue(is_async)
        finally:
            with self._lock:
                self._pumping = False

    def _pump_queue(self, is_async: bool) -> None:
        waiters = self._queues[is_async]
        if not waiters:
            return
        keep: collections.deque[_Waiter] = collections.deque()
        while waiters:
            waiter = waiters.popleft()
            if waiter.future.done():
                continue
            with self._lock:
                handle = self._pick(waiter.only, waiter.incarnation, waiter.prefer, is_async)
                if handle is not None:
                    handle.take_slot(is_async)
            if handle is None:
                keep.append(waiter)
                if waiter.only is None and not self._any_free(is_async):
                    break
                continue
            waiter.future.set_result(handle)
        keep.extend(waiters)
        waiters.clear()
        waiters.extend(keep)

    # ------------------------------------------------------------------ events from supervision

    def worker_gone(self, handle: WorkerHandle) -> None:
        """The incarnation running on ``handle`` is gone: strict waiters for it fail now."""
        for waiter in self._all_waiters():
            if waiter.only is handle and not waiter.future.done():
                waiter.future.set_exception(self._gone_error(waiter.session_id, handle))
        self.fail_if_hopeless()

    def fail_if_hopeless(self) -> None:
        """If every slot has been given up, queued calls fail instead of waiting forever."""
        if any(h.state not in (WorkerState.FAILED, WorkerState.STOPPED) for h in self._handles):
            return
        exc = self._failed_error()
        self._fail_all(exc)

    def close(self, exc: BaseException) -> None:
        self.closed = True
        self._fail_all(exc)

    def _fail_all(self, exc: BaseException) -> None:
        for waiter in self._all_waiters():
            if not waiter.future.done():
                waiter.future.set_exception(exc)
        for queue in self._queues:
            queue.clear()

    def forget_session(self, session_id: str) -> None:
        self._strict.pop(session_id, None)
        self._hints.pop(session_id, None)

    def bound_worker(self, session_id: str) -> str | None:
        bound = self._strict.get(session_id)
        return bound[0] if bound else self._hints.get(session_id)

    # ------------------------------------------------------------------ internals

    def _strict_target(self, session_id: str, affinity: str) -> tuple[WorkerHandle | None, int]:
        if affinity not in AFFINITIES:
            raise InvalidArgumentError(
                f"affinity must be one of {', '.join(AFFINITIES)}, not {affinity!r}"
            )
        if affinity != "strict":
            return None, 0
        bound = self._strict.get(session_id)
        if bound is None:
            return None, 0
        handle = self._by_id[bound[0]]
        if handle.incarnation != bound[1] or handle.gone.done():
            raise self._gone_error(session_id, handle)
        return handle, bound[1]

    def _pick(
        self, only: WorkerHandle | None, incarnation: int, prefer: str | None, is_async: bool
    ) -> WorkerHandle | None:
        if only is not None:
            if only.incarnation == incarnation and only.has_slot(is_async):
                return only
            return None
        if prefer is not None:
            preferred = self._by_id.get(prefer)
            if preferred is not None and preferred.has_slot(is_async):
                return preferred
        best: WorkerHandle | None = None
        n = len(self._handles)
        # Rotate the starting point so ties spread over the workers.
        self._rotation = (self._rotation + 1) % n if n else 0
        for i in range(n):
            handle = self._handles[(self._rotation + i) % n]
            # Least loaded counts both kinds: async calls share the worker's loop and CPU.
            if handle.has_slot(is_async) and (best is None or handle.in_flight < best.in_flight):
                best = handle
                if handle.in_flight == 0:
                    break
        return best

    def _any_free(self, is_async: bool) -> bool:
        return any(h.has_slot(is_async) for h in self._handles)

    def _bind(self, handle: WorkerHandle, session_id: str, affinity: str) -> None:
        if affinity == "strict":
            self._strict.setdefault(session_id, (handle.worker_id, handle.incarnation))
        elif affinity == "hint" and session_id:
            hints = self._hints
            if hints.get(session_id) != handle.worker_id:
                hints[session_id] = handle.worker_id
                if len(hints) > _MAX_HINTS:
                    hints.popitem(last=False)

    def _check_can_ever_run(self, only: WorkerHandle | None) -> None:
        if only is not None:
            if only.state is WorkerState.FAILED:
                raise WorkerFailedError(self._failed_message(only))
            return
        if all(h.state in (WorkerState.FAILED, WorkerState.STOPPED) for h in self._handles):
            raise self._failed_error()

    def _failed_error(self) -> WorkerUnavailableError | WorkerFailedError:
        failed = [h for h in self._handles if h.state is WorkerState.FAILED]
        if failed:
            return WorkerFailedError(self._failed_message(failed[0]))
        return WorkerUnavailableError(
            "no workers are running; start some with `%snakepit start -n 2` or sp.start()"
        )

    @staticmethod
    def _failed_message(handle: WorkerHandle) -> str:
        tail = handle.last_error.strip() or "(no stderr output)"
        return (
            f"worker {handle.worker_id} crash-looping: it restarted {handle.restarts} times and "
            f"was given up; fix the cause shown below and restart the pool.\n{tail}"
        )

    @staticmethod
    def _gone_error(session_id: str, handle: WorkerHandle) -> SessionWorkerGoneError:
        return SessionWorkerGoneError(
            f"session {session_id!r} was bound to worker {handle.worker_id}, which is gone; its "
            "in-memory objects are lost — recreate them or use a non-strict session"
        )
