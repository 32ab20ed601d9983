"""Calls over a worker's lane: from the caller's own thread, or from an executor thread.

The fast path of a blocking call (``Session.call``): the calling thread takes a slot
(:meth:`~snakepit_nb.orchestrator.pool.dispatch.Dispatcher.try_acquire`), borrows a lane
connection, pickles the call (large buffers into a sealed memfd), writes it, waits for the
answer on the same socket, and decodes it — all without handing anything to the loop thread.
On a 2-core machine that is a small fraction of a gRPC call, and faster than
``multiprocessing.Pool.apply`` (see benchmarks/). When it cannot serve a call (no lane: a
foreign or remote worker, or ``auth=False``; no free slot: the call must queue),
:func:`direct_call` answers :data:`NOT_DIRECT` and the caller goes through the loop.

Calls that start on the loop (the async API, calls routed for workers) take their slot there
and run the same exchange in an executor thread (:func:`lane_call`), so encoding and decoding
never happen on the loop thread either.

Waiting wakes every 0.1 s (the connection's timeout), so the call's deadline, a kernel
interrupt and a cancelled awaiting task are all noticed: the call is cancelled in the worker
(a CANCEL frame on another connection) and a drain thread frees its slot once the worker has
answered, or once the worker is replaced.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from snakepit_nb._errors import (
    CallTimeoutError,
    CancelledError,
    InvalidArgumentError,
    WorkerCrashedError,
)
from snakepit_nb.orchestrator.pool.calls.requests import raise_unpicklable
from snakepit_nb.protocol import lane, pickling
from snakepit_nb.protocol.codec import remote_error_from_info
from snakepit_nb.protocol.pickling import FunctionRef
from snakepit_nb.protocol.status import error_from_status

if TYPE_CHECKING:
    from snakepit_nb.orchestrator.pool.handle import IncarnationEnd, WorkerHandle
    from snakepit_nb.orchestrator.pool.host import PoolHost
    from snakepit_nb.orchestrator.pool.lane import LaneClient

__all__ = [
    "NOT_DIRECT",
    "Target",
    "abandon",
    "direct_call",
    "exchange",
    "for_lane",
    "gone_error",
    "in_thread",
    "lane_call",
    "target_name",
]

T = TypeVar("T")

#: "This call cannot go over the lane": the caller takes the loop path.
NOT_DIRECT: Any = object()
_GONE_WAIT = 2.0

#: What a call runs: a tool by name, or a Python function.
Target = str | Callable[..., Any]


def target_name(target: Target) -> str:
    if isinstance(target, str):
        return target
    return str(getattr(target, "__qualname__", None) or getattr(target, "__name__", repr(target)))


class _GaveUp(Exception):
    """The caller's wait ended early (deadline, cancellation, the worker gone)."""

    def __init__(self, reason: BaseException) -> None:
        super().__init__(str(reason))
        self.reason = reason


def direct_call(
    host: PoolHost,
    session_id: str,
    target: Target,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    *,
    timeout: float | None,
    affinity: str,
    metadata: Mapping[str, str],
) -> Any:
    """Run one call over a lane from this thread; :data:`NOT_DIRECT` if it cannot."""
    is_async = isinstance(target, str) and host.is_async_tool(target)
    handle = host.dispatcher.try_acquire(session_id, affinity, is_async=is_async)
    if handle is None:
        return NOT_DIRECT
    deadline = None if timeout is None else time.monotonic() + timeout
    return exchange(
        host,
        handle,
        session_id,
        target,
        args,
        kwargs,
        metadata,
        deadline,
        is_async=is_async,
        budget=timeout,
    )


async def lane_call(  # noqa: PLR0917
    host: PoolHost,
    handle: WorkerHandle,
    session_id: str,
    target: Target,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    metadata: Mapping[str, str],
    deadline: float | None,
    *,
    is_async: bool,
    executor: concurrent.futures.Executor,
    variables: Sequence[bytes] = (),
) -> Any:
    """:func:`exchange` for a slot taken on the loop, run in ``executor``; cancelling the
    awaiting task cancels the call in the worker."""
    return await in_thread(
        executor,
        lambda cancelled: exchange(
            host,
            handle,
            session_id,
            target,
            args,
            kwargs,
            metadata,
            deadline,
            is_async=is_async,
            cancelled=cancelled,
            variables=variables,
        ),
    )


async def in_thread(
    executor: concurrent.futures.Executor, run: Callable[[threading.Event], T]
) -> T:
    """``run(cancelled)`` in ``executor``, awaited from the loop: cancelling the awaiting task
    sets ``cancelled`` (``run`` then gives up and cancels its remote work) and does not wait."""
    cancelled = threading.Event()
    future = asyncio.get_running_loop().run_in_executor(executor, run, cancelled)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        cancelled.set()
        raise


def exchange(  # noqa: PLR0917
    host: PoolHost,
    handle: WorkerHandle,
    session_id: str,
    target: Target,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    metadata: Mapping[str, str],
    deadline: float | None,
    *,
    is_async: bool,
    cancelled: threading.Event | None = None,
    variables: Sequence[bytes] = (),
    budget: float | None = None,
) -> Any:
    """One call on ``handle`` (its slot already taken) over its lane, in this thread.

    ``variables``: serialised ``pb.Variable`` snapshots the tool declared it reads;
    ``budget``: the call's timeout in seconds, for the error that says it ran out.

    The slot is given back on every path; :data:`NOT_DIRECT` when nothing reached the worker.
    """
    tool = target_name(target)
    end = handle.end
    client = handle.lane
    if client is None:
        host.settle(handle, calls=0, is_async=is_async)
        return NOT_DIRECT
    try:
        conn = client.checkout()
    except (OSError, lane.LaneClosed):
        host.settle(handle, calls=0, is_async=is_async)
        return NOT_DIRECT
    wrapped_args, wrapped_kwargs = pickling.wrap_call(args, kwargs)
    ref: str | FunctionRef = tool
    for attempt in range(2):
        ref = _reference(target, client, resend=attempt > 0)
        call_id = client.next_id()
        try:
            message = pickling.dumps(
                (session_id, ref, wrapped_args, wrapped_kwargs, dict(metadata), list(variables)),
                what=f"an argument of {tool!r}",
            )
        except BaseException as exc:
            client.checkin(conn)
            host.settle(handle, calls=0, is_async=is_async)
            if isinstance(exc, InvalidArgumentError):
                raise_unpicklable(tool, args, kwargs)  # names the argument
            raise
        try:
            _send(conn, lane.CALL, call_id, message)
        except (OSError, lane.LaneClosed):
            # Nothing reached the worker: the loop path waits for a replacement.
            client.discard(conn)
            host.settle(handle, calls=0, is_async=is_async)
            return NOT_DIRECT
        answer = _wait_answer(
            host, handle, end, client, conn, call_id, tool, (deadline, budget), is_async, cancelled
        )
        if answer[0] == "error" and answer[1] == lane.FUNCTION_UNKNOWN and attempt == 0:
            continue
        break
    client.checkin(conn)
    if isinstance(ref, FunctionRef) and ref.blob is not None:
        client.functions.add(ref.digest)
    return _outcome(host, handle, answer, tool, session_id, is_async)


def _reference(target: Target, client: LaneClient, *, resend: bool) -> str | FunctionRef:
    if isinstance(target, str):
        return target
    ref = pickling.dumps_function(target)
    return ref if resend else for_lane(ref, client)


def for_lane(ref: str | FunctionRef, client: LaneClient) -> str | FunctionRef:
    """``ref`` as it goes over ``client``'s lane: a function that worker incarnation has
    already is sent as its digest alone."""
    if isinstance(ref, FunctionRef) and ref.digest in client.functions:
        return FunctionRef(ref.digest, ref.name, None)
    return ref


def _send(conn: lane.LaneSocket, kind: int, call_id: int, message: pickling.Pickled) -> None:
    parts, fds = lane.pack_message(message, shared=True)
    try:
        conn.send(kind, call_id, parts, fds)
    finally:
        for fd in fds:
            os.close(fd)


def _wait_answer(  # noqa: PLR0917
    host: PoolHost,
    handle: WorkerHandle,
    end: IncarnationEnd,
    client: LaneClient,
    conn: lane.LaneSocket,
    call_id: int,
    tool: str,
    limit: tuple[float | None, float | None],
    is_async: bool,
    cancelled: threading.Event | None,
) -> tuple[Any, ...]:
    """The worker's answer to ``call_id``; on a deadline or an interrupt, cancel and raise.

    ``limit``: the deadline (monotonic time) and the timeout it came from, in seconds.
    """
    deadline, budget = limit
    within = "its deadline" if budget is None else f"{budget:g} s"

    def waiter() -> None:
        if end.event.is_set():
            raise _GaveUp(gone_error(handle, end, tool))
        if cancelled is not None and cancelled.is_set():
            raise _GaveUp(CancelledError(f"call {tool!r} was cancelled"))
        if deadline is not None and time.monotonic() >= deadline:
            raise _GaveUp(
                CallTimeoutError(
                    f"call of {tool!r} did not finish within {within}; the worker was told "
                    "to stop it — pass a larger timeout if it is only slow"
                )
            )

    try:
        kind, _cid, payload, fds = conn.recv(waiter)
    except _GaveUp as gave_up:
        if isinstance(gave_up.reason, WorkerCrashedError):
            client.discard(conn)
            host.settle(handle, calls=1, errors=1, is_async=is_async)
        else:
            abandon(host, handle, client, conn, [call_id], tool, is_async)
        raise gave_up.reason from None
    except lane.LaneClosed:
        client.discard(conn)
        host.settle(handle, calls=1, errors=1, is_async=is_async)
        raise gone_error(handle, end, tool, wait=_GONE_WAIT) from None
    except BaseException:  # KeyboardInterrupt: stop the remote call too
        abandon(host, handle, client, conn, [call_id], tool, is_async)
        raise
    if kind != lane.REPLY:
        client.discard(conn)
        host.settle(handle, calls=1, errors=1, is_async=is_async)
        raise WorkerCrashedError(
            f"worker {handle.worker_id} answered a call with frame kind {kind}; it was replaced",
            worker_id=handle.worker_id,
        )
    stream, buffers = lane.unpack_message(payload, fds)
    answer = pickling.loads(stream, buffers, what=f"the answer of {tool!r}")
    return tuple(answer)


def abandon(  # noqa: PLR0917
    host: PoolHost,
    handle: WorkerHandle,
    client: LaneClient,
    conn: lane.LaneSocket,
    call_ids: Sequence[int],
    tool: str,
    is_async: bool = False,
) -> None:
    """Cancel calls we stop waiting for; each slot is freed once the worker answers it.

    A drain thread reads the answers still due on ``conn`` (the worker answers a cancelled
    call once its tool has stopped), then gives the connection back; if the worker is
    replaced instead (``cancel_grace`` passed, or it died), the lane closes and the slots
    are freed then.
    """
    dispatcher = host.dispatcher
    incarnation = 0
    for call_id in call_ids:
        incarnation = dispatcher.cancel_sent(handle, ("lane", call_id), tool)
    answered = iter(call_ids)

    def drain() -> None:
        due = len(call_ids)
        # The cancels go from here, not from the caller's thread: sending one may mean opening
        # a connection, which a worker whose tool holds the GIL answers late or never (then
        # cancel_grace replaces it); an interrupted caller never waits for that.
        for call_id in call_ids:
            client.cancel(call_id)
        try:
            while due:
                _kind, _cid, _payload, fds = conn.recv()
                for fd in fds:
                    os.close(fd)
                due -= 1
                # Free the slot first: confirming makes the worker eligible again, and a call
                # queued for it may start the moment the loop records that.
                host.settle(handle, calls=1, errors=1, is_async=is_async)
                dispatcher.cancel_confirmed(handle, ("lane", next(answered)), incarnation)
        except (OSError, lane.LaneClosed):
            client.discard(conn)
        else:
            client.checkin(conn)
        finally:
            if due:  # the incarnation is gone: its cancels went with it
                host.settle(handle, calls=due, errors=due, is_async=is_async)

    threading.Thread(target=drain, name="snakepit-lane-drain", daemon=True).start()


def gone_error(
    handle: WorkerHandle, end: IncarnationEnd, tool: str, *, wait: float = 0.0
) -> WorkerCrashedError:
    """Why the incarnation ``end`` belongs to went away, as the error of a call of ``tool``."""
    if wait:
        end.event.wait(wait)
    error_for = getattr(end.error, "error_for", None)
    if callable(error_for):
        error = error_for(tool)
        if isinstance(error, WorkerCrashedError):
            return error
        raise error  # the pool was closed: ClosedError
    return WorkerCrashedError(
        f"worker {handle.worker_id} closed its lane while running {tool!r}; the call may have "
        "had effects; the pool is replacing it",
        worker_id=handle.worker_id,
    )


def _outcome(  # noqa: PLR0917
    host: PoolHost,
    handle: WorkerHandle,
    answer: tuple[Any, ...],
    tool: str,
    session_id: str,
    is_async: bool,
) -> Any:
    status = answer[0]
    if status == "ok":
        host.settle(handle, is_async=is_async)
        return answer[1]
    host.settle(handle, errors=1, is_async=is_async)
    if status == "raised":
        raise remote_error_from_info(
            answer[1], tool_name=tool, session_id=session_id, worker_id=handle.worker_id
        )
    raise error_from_status(
        getattr(grpc.StatusCode, str(answer[1]), grpc.StatusCode.UNKNOWN),
        str(answer[2]),
        error_class=str(answer[3]) if len(answer) > 3 else "",
    )
