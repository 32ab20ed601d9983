"""One worker slot of the pool: its process, its gRPC connection, its call channel, its counters.

A slot keeps its id (``w1``, ``w2``...) across restarts; each process that fills it is an
*incarnation*. Sessions with strict affinity are bound to an incarnation, so they notice when
the process holding their objects was replaced.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
import grpc.aio

from snakepit_nb._errors import ClosedError, WorkerCrashedError
from snakepit_nb.orchestrator.launch.base import placement_of
from snakepit_nb.orchestrator.pool.channel import CallChannel
from snakepit_nb.orchestrator.pool.lane import LaneClient
from snakepit_nb.protocol import pb, pb_grpc

if TYPE_CHECKING:
    from snakepit_nb.orchestrator.launch.base import LaunchedWorker

__all__ = [
    "CancelKey",
    "IncarnationEnd",
    "WorkerGone",
    "WorkerHandle",
    "WorkerState",
    "WorkerStatus",
]

log = logging.getLogger("snakepit_nb.pool")


class WorkerState(enum.StrEnum):
    """Where a slot is in its life. Only READY slots take new calls."""

    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"  # being recycled: finishes its calls, takes no new ones
    RESTARTING = "restarting"
    FAILED = "failed"  # crash-looping; given up (restart intensity exceeded)
    STOPPING = "stopping"
    STOPPED = "stopped"


@dataclass(frozen=True)
class WorkerStatus:
    """A snapshot of one worker slot, as ``client.status()`` shows it."""

    worker_id: str
    pid: int | None
    state: str
    in_flight: int
    calls: int
    errors: int
    restarts: int
    rss: int | None
    uptime: float
    address: str
    foreign: bool = False
    last_error: str = ""
    # The Ray node id (hex) of a Ray worker, this machine's host name for a local one; and the
    # host name of the machine it runs on.
    node: str = ""
    host: str = ""


class WorkerGone(Exception):
    """Internal: why an incarnation ended; each call turns it into its own user error."""

    def __init__(
        self,
        worker_id: str,
        pid: int | None,
        *,
        exit_code: int | None,
        how: str,
        aftermath: str,
        closed: bool = False,
    ) -> None:
        super().__init__(f"worker {worker_id} (pid {pid}) {how}")
        self.worker_id = worker_id
        self.pid = pid
        self.exit_code = exit_code
        self.how = how
        self.aftermath = aftermath
        self.closed = closed

    def error_for(self, tool: str) -> Exception:
        """The error a call of ``tool`` raises (WorkerCrashedError, or ClosedError)."""
        if self.closed:
            return ClosedError(
                f"the pool was closed while {tool!r} was running on worker {self.worker_id}; "
                "start a new one with sp.start()"
            )
        return WorkerCrashedError(
            f"worker {self.worker_id} (pid {self.pid}) {self.how} while running {tool!r}; the "
            f"call may have had effects; {self.aftermath}",
            worker_id=self.worker_id,
            exit_code=self.exit_code,
        )


#: Which cancelled call: a call channel's id, or ``("lane", id)`` for a call over the lane.
CancelKey = int | tuple[str, int]


class IncarnationEnd:
    """How one incarnation ended, for threads: ``event`` is set once ``error`` is known."""

    __slots__ = ("error", "event")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.error: BaseException | None = None


class WorkerHandle:
    """The pool's view of one worker slot (all methods run on the loop thread)."""

    def __init__(self, worker_id: str, *, capacity: int, async_capacity: int = 64) -> None:
        self.worker_id = worker_id
        # Two kinds of slots: sync tools run in worker threads (``capacity``, 1 by default, so
        # they never overlap unless asked); async tools run on the worker's event loop.
        self.capacity = capacity
        self.async_capacity = async_capacity
        self.state = WorkerState.STARTING
        self.incarnation = 0
        self.launched: LaunchedWorker | None = None
        self.grpc_channel: grpc.aio.Channel | None = None
        self.stub: pb_grpc.BridgeServiceStub | None = None
        self.call_channel: CallChannel | None = None
        # The worker's lane (local workers of an authenticated pool): calls from kernel threads.
        self.lane: LaneClient | None = None
        self.foreign = False
        self.pid: int | None = None
        self.address = ""
        self.sync_in_flight = 0
        self.async_in_flight = 0
        # Calls cancelled by their caller whose stop the worker has not confirmed yet, by call
        # id: (tool, when the cancel was sent). While any is left the slot takes no new call
        # of either kind; the supervisor replaces the worker if one is still there after
        # ``cancel_grace`` (a tool that ignores cancellation, a hung event loop).
        self.cancels: dict[CancelKey, tuple[str, float]] = {}
        # Set by the supervisor: told of every cancel sent, to watch for its confirmation.
        self.on_cancel: Callable[[WorkerHandle, CancelKey], None] | None = None
        self.calls = 0
        self.errors = 0
        self.restarts = 0
        self.restart_times: collections.deque[float] = collections.deque()
        self.ready_at = 0.0
        self.last_alive = 0.0
        self.last_heartbeat = 0.0
        self.last_error = ""
        self.tools: dict[str, pb.ToolSpec] = {}
        # In-flight operations that are not channel calls (streams, foreign unary calls):
        # each registers a callback that fails it when the worker goes away.
        self.ops: dict[int, Callable[[BaseException], None]] = {}
        self._next_op = 0
        # Resolved with the WorkerCrashedError (or similar) once the incarnation is gone.
        self.gone: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()
        # The same news for threads (the lane's callers), one object per incarnation.
        self.end = IncarnationEnd()
        self.exit_reason = ""  # set by the supervisor when it kills the worker on purpose
        self.recycle_requested = ""
        # Set by the supervisor while recycling: fired when the last call finishes.
        self.drained: asyncio.Event | None = None

    # ------------------------------------------------------------------ state

    @property
    def accepting(self) -> bool:
        return self.state is WorkerState.READY

    @property
    def unconfirmed_cancels(self) -> int:
        """Cancelled calls whose stop the worker has not confirmed yet."""
        return len(self.cancels)

    def cancel_sent(self, call_id: CancelKey, tool: str) -> int:
        """A cancel for ``call_id`` went to this incarnation; returns the incarnation, for
        :meth:`cancel_confirmed`."""
        self.cancels[call_id] = (tool, time.monotonic())
        if self.on_cancel is not None:
            self.on_cancel(self, call_id)
        return self.incarnation

    def cancel_confirmed(self, call_id: CancelKey, incarnation: int) -> None:
        """The worker answered the cancelled call (or the incarnation is gone)."""
        if incarnation == self.incarnation:
            self.cancels.pop(call_id, None)

    def stuck_call(self) -> tuple[str, float] | None:
        """``(tool, seconds since the cancel)`` of the oldest unconfirmed cancel, or None."""
        if not self.cancels:
            return None
        tool, since = min(self.cancels.values(), key=lambda entry: entry[1])
        return tool, time.monotonic() - since

    @property
    def in_flight(self) -> int:
        """Calls running on this slot, both kinds."""
        return self.sync_in_flight + self.async_in_flight

    def has_slot(self, is_async: bool) -> bool:
        """Whether a new call of this kind (async tool or not) may start here now."""
        if is_async:
            free = self.async_in_flight < self.async_capacity
        else:
            free = self.sync_in_flight < self.capacity
        channel = self.call_channel
        return (
            free
            and self.state is WorkerState.READY
            and not self.unconfirmed_cancels
            and (channel is None or not channel.broken)
        )

    @property
    def has_capacity(self) -> bool:
        """Whether a sync call may start here now."""
        return self.has_slot(False)

    def take_slot(self, is_async: bool) -> None:
        if is_async:
            self.async_in_flight += 1
        else:
            self.sync_in_flight += 1

    def free_slot(self, is_async: bool) -> None:
        if is_async:
            if self.async_in_flight > 0:
                self.async_in_flight -= 1
        elif self.sync_in_flight > 0:
            self.sync_in_flight -= 1

    def new_incarnation(self) -> None:
        self.incarnation += 1
        self.gone = asyncio.get_running_loop().create_future()
        self.end = IncarnationEnd()
        self.exit_reason = ""
        self.recycle_requested = ""
        self.cancels = {}
        self.ops.clear()
        self.tools = {}
        self.pid = None
        self.address = ""
        self.foreign = False
        self.lane = None

    def add_op(self, on_gone: Callable[[BaseException], None]) -> int:
        self._next_op += 1
        self.ops[self._next_op] = on_gone
        return self._next_op

    def remove_op(self, op_id: int) -> None:
        self.ops.pop(op_id, None)

    def fail_in_flight(self, exc: BaseException) -> None:
        """Fail every call still running on this incarnation with ``exc``."""
        if self.call_channel is not None:
            self.call_channel.fail_all(exc)
        ops, self.ops = self.ops, {}
        for on_gone in ops.values():
            try:
                on_gone(exc)
            except Exception:
                log.exception("failing an operation on %s raised", self.worker_id)
        if not self.gone.done():
            self.gone.set_result(exc)
        self.end.error = exc
        self.end.event.set()
        if self.lane is not None:
            self.lane.close()

    def status(self) -> WorkerStatus:
        rss: int | None = None
        if self.launched is not None and self.state in (WorkerState.READY, WorkerState.DRAINING):
            try:
                rss = self.launched.rss()
            except Exception:
                rss = None
        uptime = time.monotonic() - self.ready_at if self.ready_at and self.pid else 0.0
        placement = placement_of(self.launched) if self.launched is not None else None
        return WorkerStatus(
            worker_id=self.worker_id,
            pid=self.pid,
            state=self.state.value,
            in_flight=self.in_flight,
            calls=self.calls,
            errors=self.errors,
            restarts=self.restarts,
            rss=rss,
            uptime=uptime,
            address=self.address,
            foreign=self.foreign,
            last_error=self.last_error,
            node=placement.node if placement is not None else "",
            host=placement.host if placement is not None else "",
        )

    # ------------------------------------------------------------------ connection

    async def close_connection(self) -> None:
        if self.lane is not None:
            self.lane.close()
            self.lane = None
        if self.call_channel is not None:
            await self.call_channel.close()
            self.call_channel = None
        if self.grpc_channel is not None:
            await self.grpc_channel.close(grace=None)
            self.grpc_channel = None
        self.stub = None

    def __repr__(self) -> str:
        return (
            f"<WorkerHandle {self.worker_id} #{self.incarnation} {self.state.value} "
            f"pid={self.pid} in_flight={self.in_flight}>"
        )
