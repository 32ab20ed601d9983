"""Unary calls: one tool call on one worker, over its call channel or as a plain RPC.

Our workers take calls on their call channel (:mod:`channel`); foreign workers (the published
Snakepit worker) get one ``ExecuteTool`` RPC per call. Either way the call holds one slot of the
worker from :meth:`~snakepit_nb.orchestrator.pool.dispatch.Dispatcher.acquire` until
:meth:`PoolHost.settle`; a call cancelled by its caller keeps its slot until the worker confirms
the tool stopped.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio

from snakepit_nb._errors import ClosedError, ProtocolError
from snakepit_nb.orchestrator.pool.calls import blobs
from snakepit_nb.orchestrator.pool.calls.direct import NOT_DIRECT, Target, lane_call, target_name
from snakepit_nb.orchestrator.pool.calls.requests import build_request, decode_result, dumps_call
from snakepit_nb.orchestrator.pool.channel import ChannelBrokenError
from snakepit_nb.orchestrator.pool.handle import WorkerGone, WorkerHandle
from snakepit_nb.orchestrator.pool.host import PoolHost
from snakepit_nb.protocol import pb
from snakepit_nb.protocol.codec import remote_error_from_payload
from snakepit_nb.protocol.lane import pack_inline, unpack_inline
from snakepit_nb.protocol.status import error_from_call_error, map_rpc_error

__all__ = ["call_once", "channel_call", "plain_call", "remaining"]

# Pickled arguments larger than this are packed in a thread, off the loop.
OFF_LOOP_BYTES = 256 * 1024


class NotSent(Exception):
    """The call could not be handed to the chosen worker; it never ran."""


def remaining(deadline: float | None) -> float | None:
    """Seconds left until ``deadline`` (loop time), at least 1 ms; None without a deadline."""
    if deadline is None:
        return None
    return max(0.001, deadline - asyncio.get_running_loop().time())


@dataclass
class Call:
    """One call as the pool received it; its gRPC form is built only if a worker needs it."""

    session_id: str
    target: Target
    args: Sequence[Any]
    kwargs: Mapping[str, Any]
    metadata: Mapping[str, str]
    variables: Sequence[pb.Variable]
    pickles: bool
    _request: pb.ExecuteToolRequest | None = None
    _payload: bytes = b""

    @property
    def tool(self) -> str:
        return target_name(self.target)

    def request(self, packed: bytes | None = None) -> pb.ExecuteToolRequest:
        """The call's request, built once (``packed``: its pickled arguments, packed already)."""
        if self._request is None:
            self._request = build_request(
                self.session_id,
                self.target,
                self.args,
                self.kwargs,
                self.metadata,
                self.variables,
                pickles=self.pickles,
                packed=packed,
            )
        return self._request

    def payload(self) -> bytes:
        if not self._payload:
            self._payload = self.request().SerializeToString()
        return self._payload

    async def prepare(self, executor: concurrent.futures.Executor) -> None:
        """Build the request; a large pickled one is packed in ``executor``, off the loop."""
        if self._request is not None or not self.pickles:
            return
        message = dumps_call(self.target, self.args, self.kwargs)  # buffers stay out of band
        if message.nbytes > OFF_LOOP_BYTES:
            packed = await asyncio.get_running_loop().run_in_executor(
                executor, pack_inline, message
            )
        else:
            packed = pack_inline(message)
        self.request(packed)

    async def payload_for(
        self, host: PoolHost, handle: WorkerHandle, deadline: float | None
    ) -> bytes:
        """The serialised request for ``handle``'s worker: arguments too large for one message
        are uploaded to it first (a blob), and the request names them."""
        await self.prepare(host.lane_executor)
        request = self.request()
        if len(request.pickled) <= blobs.threshold(host.config.max_message_bytes):
            return self.payload()
        assert handle.stub is not None
        blob_id = await blobs.upload(
            handle.stub,
            request.pickled,
            metadata=host.metadata,
            timeout=remaining(deadline),
            max_message_bytes=host.config.max_message_bytes,
        )
        small = pb.ExecuteToolRequest()
        small.CopyFrom(request)
        small.pickled = b""
        small.pickled_blob = blob_id
        return small.SerializeToString()


async def call_once(host: PoolHost, call: Call, affinity: str, deadline: float | None) -> object:
    """One attempt of ``call`` on a worker: over its lane, its call channel, or a plain RPC."""
    tool, session_id = call.tool, call.session_id
    is_async = isinstance(call.target, str) and host.is_async_tool(call.target)
    handle = await host.dispatcher.acquire(session_id, affinity, is_async=is_async)
    while True:
        client = handle.lane
        if client is not None and not client.closed:
            result = await lane_call(
                host,
                handle,
                session_id,
                call.target,
                call.args,
                call.kwargs,
                call.metadata,
                deadline,
                is_async=is_async,
                executor=host.lane_executor,
                variables=[v.SerializeToString() for v in call.variables],
            )
            if result is not NOT_DIRECT:
                return result
        elif handle.call_channel is not None:
            try:
                payload = await call.payload_for(host, handle, deadline)
            except grpc.aio.AioRpcError as exc:
                # The upload failed: the call never ran.
                host.settle(handle, calls=0, is_async=is_async)
                raise await _blob_error(host, handle, tool, exc) from exc
            except BaseException:
                host.settle(handle, calls=0, is_async=is_async)
                raise
            try:
                return await channel_call(
                    host, handle, tool, session_id, payload, deadline, is_async=is_async
                )
            except NotSent:
                pass
        else:
            break
        # The lane or the channel broke before the call left: nothing ran, so another
        # worker (or the replacement) may take it, whatever the tool's idempotency.
        handle = await host.dispatcher.acquire(session_id, affinity, is_async=is_async)
    try:
        return await plain_call(host, handle, tool, session_id, call.request(), deadline)
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
        if response.success and response.pickled_result_blob and host.pickles:
            return await _take_result(host, handle, tool, response, deadline, is_async=is_async)
        if response.success:
            host.settle(handle, is_async=is_async)
            return decode_result(response, pickles=host.pickles, tool=tool)
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


async def _take_result(
    host: PoolHost,
    handle: WorkerHandle,
    tool: str,
    response: pb.ExecuteToolResponse,
    deadline: float | None,
    *,
    is_async: bool,
) -> object:
    """A result the worker kept as a blob: taken in pieces, then unpickled."""
    assert handle.stub is not None
    try:
        packed = await blobs.take(
            handle.stub,
            response.pickled_result_blob,
            metadata=host.metadata,
            timeout=remaining(deadline),
        )
    except grpc.aio.AioRpcError as exc:
        host.settle(handle, errors=1, is_async=is_async)
        raise await _blob_error(host, handle, tool, exc) from exc
    except BaseException:
        host.settle(handle, errors=1, is_async=is_async)
        raise
    host.settle(handle, is_async=is_async)
    return unpack_inline(packed, what=f"the result of {tool!r}")


async def _blob_error(
    host: PoolHost, handle: WorkerHandle, tool: str, exc: grpc.aio.AioRpcError
) -> Exception:
    """The error of a failed PutBlob/TakeBlob: the worker's end if it is gone, else the RPC's."""
    reason = await host.gone_reason(handle, wait=1.0)
    if reason is not None:
        return reason.error_for(tool)
    return map_rpc_error(exc)


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
        host.dispatcher.count_errors(handle, 1)
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
        # A foreign worker's answer is never unpickled.
        return decode_result(response, pickles=False, tool=tool)
    host.dispatcher.count_errors(handle, 1)
    raise remote_error_from_payload(
        response.error_message,
        tool_name=tool,
        session_id=session_id,
        worker_id=handle.worker_id,
    )
