"""Checks at the gRPC boundary that both servers share: undecodable requests, correlation ids.

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

from snakepit_nb._errors import InvalidArgumentError

__all__ = ["MAX_CORRELATION_ID", "DecodingGuard", "check_correlation_id"]

#: Longest correlation id accepted (it travels as a gRPC header and into logs).
MAX_CORRELATION_ID = 256

if TYPE_CHECKING:
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _ServerInterceptor = grpc.aio.ServerInterceptor


def check_correlation_id(value: str) -> str:
    """``value`` if it can travel as a gRPC header (printable ASCII, at most 256 characters).

    Correlation ids are echoed in the ``x-snakepit-correlation-id`` header and passed on to
    callbacks; gRPC refuses other characters there, so they are refused here, up front, with
    INVALID_ARGUMENT instead of failing the call later.
    """
    if len(value) <= MAX_CORRELATION_ID and all(" " <= ch <= "~" for ch in value):
        return value
    raise InvalidArgumentError(
        f"correlation id {value[:40]!r}{'...' if len(value) > 40 else ''} is not usable; use at "
        f"most {MAX_CORRELATION_ID} printable ASCII characters (a UUID, for example)"
    )


class _BadRequest:
    """Stands in for a request whose bytes did not parse."""

    def __init__(self, error: Exception) -> None:
        self.error = error


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


class _Refused(Exception):
    """Ends a request stream at an undecodable message."""


class _StreamContext:
    """The servicer context a request-streaming handler sees: the real one, plus a way to stop
    the handler when a request read in another task does not parse.

    A handler task cancelled while ``context.write`` is in flight leaves gRPC unable to send
    any status (the call hangs until the caller's deadline), so a write in flight finishes
    first and the handler is stopped right after it.
    """

    def __init__(self, context: Any) -> None:
        self._context = context
        self.task = asyncio.current_task()
        self.refused: _BadRequest | None = None
        self._writing = 0
        self._cancelled = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)

    async def write(self, message: Any) -> None:
        self._writing += 1
        try:
            await self._context.write(message)
        finally:
            self._writing -= 1
        if self.refused is not None:
            self._stop()

    def refuse(self, bad: _BadRequest) -> None:
        if self.refused is None:
            self.refused = bad
            if not self._writing:
                self._stop()

    def _stop(self) -> None:
        if asyncio.current_task() is self.task:
            raise asyncio.CancelledError
        if self.task is not None and not self._cancelled:
            self._cancelled = True
            self.task.cancel()

    def settle(self) -> None:
        """Forget the cancellation this context caused (the call ends with the refusal)."""
        if self._cancelled and self.task is not None:
            self.task.uncancel()


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
        guarded = _StreamContext(context)

        async def checked() -> AsyncIterator[Any]:
            async for request in requests:
                if isinstance(request, _BadRequest):
                    if asyncio.current_task() is guarded.task:
                        await _refuse(context, rpc, request)
                    # The handler reads its requests in a task of its own (the call channel,
                    # telemetry): stop the handler, then refuse from its task.
                    guarded.refuse(request)
                    raise _Refused
                yield request

        try:
            if streaming_out:
                await _respond(inner(checked(), guarded), guarded)
                result = None
            else:
                result = await inner(checked(), guarded)
        except BaseException:
            if guarded.refused is None:
                raise
        if guarded.refused is None:
            return result
        guarded.settle()
        return await _refuse(context, rpc, guarded.refused)

    if streaming_out:
        return grpc.stream_stream_rpc_method_handler(streaming, **kwargs)
    return grpc.stream_unary_rpc_method_handler(streaming, **kwargs)
