"""Unary calls: one tool call on one worker, over its call channel or as a plain RPC.

Our workers take calls on their call channel (:mod:`channel`); foreign workers (the published
Snakepit worker) get one ``ExecuteTool`` RPC per call. Either way the call holds one slot of the
worker from :meth:`~snakepit_nb.orchestrator.pool.dispatch.Dispatcher.acquire` until
:meth:`PoolHost.settle`; a call cancelled by its caller keeps its slot until the worker confirms
the tool stopped.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import grpc.aio

from snakepit_nb._errors import ClosedError, ProtocolError
from snakepit_nb.orchestrator.pool.channel import ChannelBrokenError
from snakepit_nb.orchestrator.pool.handle import WorkerGone, WorkerHandle
from snakepit_nb.orchestrator.pool.host import PoolHost
from snakepit_nb.protocol import pb
from snakepit_nb.protocol.codec import (
    decode_any,
    decode_any_with_binary,
    remote_error_from_payload,
)
from snakepit_nb.protocol.status import error_from_call_error, map_rpc_error

__all__ = ["call_once", "channel_call", "plain_call", "remaining"]


class NotSent(Exception):
    """The call could not be handed to the chosen worker; it never ran."""


def remaining(deadline: float | None) -> float | None:
    """Seconds left until ``deadline`` (loop time), at least 1 ms; None without a deadline."""
    if deadline is None:
        return None
    return max(0.001, deadline - asyncio.get_running_loop().time())


async def call_once(  # noqa: PLR0917
    host: PoolHost,
    session_id: str,
    tool: str,
    request: pb.ExecuteToolRequest,
    payload: bytes,
    affinity: str,
    deadline: float | None,
) -> object:
    is_async = host.is_async_tool(tool)
    handle = await host.dispatcher.acquire(session_id, affinity, is_async=is_async)
    while handle.call_channel is not None:
        try:
            return await channel_call(
                host, handle, tool, session_id, payload, deadline, is_async=is_async
            )
        except NotSent:
            # The worker's channel broke before the call left: nothing ran, so another
            # worker (or the replacement) may take it, whatever the tool's idempotency.
            handle = await host.dispatcher.acquire(session_id, affinity, is_async=is_async)
    try:
        return await plain_call(host, handle, tool, session_id, request, deadline)
    finally:
        host.settle(handle, is_async=is_async)


async def channel_call(  # noqa: PLR0917
    host: PoolHost,
    handle: WorkerHandle,
    tool: str,
    session_id: str,
    payload: bytes,
    deadline: float | None,
    *,
    is_async: bool,
) -> object:
    channel = handle.call_channel
    assert channel is not None
    left = remaining(deadline)
    try:
        call_id, future = channel.submit(request=payload, timeout=left or 0.0)
    except ChannelBrokenError:
        host.settle(handle, calls=0, is_async=is_async)
        raise NotSent from None
    except BaseException:
        host.settle(handle, is_async=is_async)
        raise
    try:
        message = await future
    except asyncio.CancelledError:
        if future.cancelled():
            # We were cancelled (deadline, interrupt): tell the worker, and keep its slot
            # busy until it confirms the tool stopped.
            channel.cancel(call_id)
            incarnation = handle.cancel_sent(call_id, tool)
            channel.track(call_id).add_done_callback(
                lambda f: _settle_cancelled(
                    host, handle, f, is_async=is_async, confirming=(call_id, incarnation)
                )
            )
        else:
            _settle_cancelled(host, handle, future, is_async=is_async)
        raise
    except WorkerGone as gone:
        host.settle(handle, errors=1, is_async=is_async)
        raise gone.error_for(tool) from None
    except ClosedError:
        host.settle(handle, errors=1, is_async=is_async)
        raise
    kind = message.WhichOneof("body")
    if kind == "response":
        response = message.response
        if response.success:
            host.settle(handle, is_async=is_async)
            if response.binary_result:
                return decode_any_with_binary(response.result, response.binary_result)
            return decode_any(response.result)
        host.settle(handle, errors=1, is_async=is_async)
        raise remote_error_from_payload(
            response.error_message,
            tool_name=tool,
            session_id=session_id,
            worker_id=handle.worker_id,
        )
    host.settle(handle, errors=1, is_async=is_async)
    if kind == "error":
        raise error_from_call_error(message.error)
    raise ProtocolError(
        f"worker {handle.worker_id} answered a call with a {kind!r} message; the worker "
        "and the orchestrator disagree on the call channel contract"
    )


def _settle_cancelled(
    host: PoolHost,
    handle: WorkerHandle,
    future: asyncio.Future[Any],
    *,
    is_async: bool = False,
    confirming: tuple[int, int] | None = None,
) -> None:
    """A cancelled call's answer (or failure) arrived: now its slot is free.

    ``confirming``: ``(call id, incarnation)`` of a cancel sent to the worker."""
    if not future.cancelled():
        future.exception()  # mark retrieved
    if confirming is not None:
        handle.cancel_confirmed(*confirming)
    host.settle(handle, errors=1, is_async=is_async)


async def plain_call(  # noqa: PLR0917
    host: PoolHost,
    handle: WorkerHandle,
    tool: str,
    session_id: str,
    request: pb.ExecuteToolRequest,
    deadline: float | None,
) -> object:
    stub = handle.stub
    assert stub is not None
    call = stub.ExecuteTool(request, metadata=host.metadata, timeout=remaining(deadline))
    gone: list[BaseException] = []

    def on_gone(exc: BaseException) -> None:
        gone.append(exc)
        call.cancel()

    op = handle.add_op(on_gone)
    try:
        response = await call
    except (asyncio.CancelledError, grpc.aio.AioRpcError) as exc:
        handle.errors += 1
        if gone and isinstance(gone[0], WorkerGone):
            raise gone[0].error_for(tool) from None
        if isinstance(exc, asyncio.CancelledError):
            raise
        if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
            reason = await host.gone_reason(handle, wait=1.0)
            if reason is not None:
                raise reason.error_for(tool) from None
        if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            raise TimeoutError from exc
        raise map_rpc_error(exc) from exc
    finally:
        handle.remove_op(op)
    if response.success:
        if response.binary_result:
            return decode_any_with_binary(response.result, response.binary_result)
        return decode_any(response.result)
    handle.errors += 1
    raise remote_error_from_payload(
        response.error_message,
        tool_name=tool,
        session_id=session_id,
        worker_id=handle.worker_id,
    )
