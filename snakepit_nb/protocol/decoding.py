"""The server interceptor that answers undecodable requests with INVALID_ARGUMENT.

gRPC Python decodes a request before the handler runs; when the bytes are not the method's
message it ends the call UNKNOWN ("Exception deserializing request") for unary requests, and in
a request stream the bad message is dropped without a word. Both servers (the orchestrator's
and every worker's) install :class:`DecodingGuard` after the token check, so a peer sending
garbage learns exactly what is wrong and nothing on the server changes.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, NoReturn

import grpc
import grpc.aio

__all__ = ["DecodingGuard"]

if TYPE_CHECKING:
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _ServerInterceptor = grpc.aio.ServerInterceptor


class _BadRequest:
    """Stands in for a request whose bytes did not parse."""

    def __init__(self, error: Exception) -> None:
        self.error = error


class _Refused(Exception):
    """Ends a request stream at an undecodable message."""


class DecodingGuard(_ServerInterceptor):
    """Answers INVALID_ARGUMENT to requests that are not valid protobuf (gRPC says UNKNOWN)."""

    def __init__(self) -> None:
        self._handlers: dict[str, Any] = {}

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[Any]], details: Any
    ) -> Any:
        method = details.method
        cached = self._handlers.get(method)
        if cached is not None:
            return cached
        handler = await continuation(details)
        if handler is None or handler.request_deserializer is None:
            return handler
        guarded = _guard(handler, method.rsplit("/", 1)[-1])
        if len(self._handlers) < 256:  # method names come from peers: keep the cache bounded
            self._handlers[method] = guarded
        return guarded


async def _refuse(context: Any, rpc: str, bad: _BadRequest) -> NoReturn:
    await context.abort(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"the {rpc} request is not a valid protobuf message ({bad.error}); send a message "
        "built from protos/snakepit_bridge.proto",
    )
    raise AssertionError("unreachable")  # context.abort always raises


async def _respond(result: Any, context: Any) -> None:
    """Finish a streaming handler: an async generator's items are written; a coroutine that
    writes with ``context.write`` is awaited."""
    if inspect.isasyncgen(result):
        try:
            async for item in result:
                await context.write(item)
        finally:
            await result.aclose()
    else:
        await result


def _guard(handler: Any, rpc: str) -> Any:
    decode = handler.request_deserializer

    def safe_decode(data: bytes) -> Any:
        try:
            return decode(data)
        except Exception as exc:
            return _BadRequest(exc)

    kwargs = {
        "request_deserializer": safe_decode,
        "response_serializer": handler.response_serializer,
    }
    streaming_out = handler.response_streaming
    if not handler.request_streaming:
        inner = handler.unary_stream if streaming_out else handler.unary_unary

        async def unary(request: Any, context: Any) -> Any:
            if isinstance(request, _BadRequest):
                await _refuse(context, rpc, request)
            if streaming_out:
                await _respond(inner(request, context), context)
                return None
            return await inner(request, context)

        if streaming_out:
            return grpc.unary_stream_rpc_method_handler(unary, **kwargs)
        return grpc.unary_unary_rpc_method_handler(unary, **kwargs)

    inner = handler.stream_stream if streaming_out else handler.stream_unary

    async def streaming(requests: AsyncIterator[Any], context: Any) -> Any:
        bad: list[_BadRequest] = []
        handler_task = asyncio.current_task()
        stopped: list[bool] = []

        async def checked() -> AsyncIterator[Any]:
            async for request in requests:
                if isinstance(request, _BadRequest):
                    bad.append(request)
                    # A handler may read its requests in a task of its own (the call channel,
                    # telemetry) and would never see this exception: stop it from here.
                    if handler_task is not None and asyncio.current_task() is not handler_task:
                        stopped.append(True)
                        handler_task.cancel()
                    raise _Refused
                yield request

        try:
            if streaming_out:
                await _respond(inner(checked(), context), context)
                result = None
            else:
                result = await inner(checked(), context)
        except (_Refused, asyncio.CancelledError):
            if not bad:
                raise
        if not bad:
            return result
        if stopped and handler_task is not None:
            handler_task.uncancel()  # the cancellation was ours, not the caller's
        return await _refuse(context, rpc, bad[0])

    if streaming_out:
        return grpc.stream_stream_rpc_method_handler(streaming, **kwargs)
    return grpc.stream_unary_rpc_method_handler(streaming, **kwargs)
