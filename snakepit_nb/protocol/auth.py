"""The per-runtime token that every call between the orchestrator and its workers carries.

The orchestrator makes a fresh token (:func:`new_token`) each time it starts and hands it to
its workers through the environment (``SNAKEPIT_NB_TOKEN``, never the command line). Both
servers install :class:`TokenInterceptor`; clients add the token to every call, either with
:func:`client_interceptors` on the channel or :func:`token_metadata` per call.

    >>> channel = grpc.aio.insecure_channel(
    ...     address, options=channel_options(), interceptors=client_interceptors(token))
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "TOKEN_ENV",
    "TOKEN_KEY",
    "UNAUTHENTICATED_MESSAGE",
    "Refusals",
    "TokenInterceptor",
    "channel_options",
    "client_interceptors",
    "new_token",
    "server_options",
    "token_metadata",
    "with_token",
]

#: Request metadata key carrying the token.
TOKEN_KEY = "x-snakepit-token"
#: Environment variable through which workers receive the token.
TOKEN_ENV = "SNAKEPIT_NB_TOKEN"
UNAUTHENTICATED_MESSAGE = "missing or wrong runtime token"
#: Largest message either side sends or accepts by default (the published bridge's limit).
DEFAULT_MAX_MESSAGE_BYTES = 100 * 1024 * 1024

Metadata = tuple[tuple[str, str], ...]

# How long (and how many messages) a refused streaming call is read before the refusal.
_DRAIN_SECONDS = 0.05
_DRAIN_MESSAGES = 64

# The stubs make the interceptor bases generic; at run time they are plain ABCs.
if TYPE_CHECKING:
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
    _UUInterceptor = grpc.aio.UnaryUnaryClientInterceptor[Any, Any]
    _USInterceptor = grpc.aio.UnaryStreamClientInterceptor[Any, Any]
    _SUInterceptor = grpc.aio.StreamUnaryClientInterceptor[Any, Any]
    _SSInterceptor = grpc.aio.StreamStreamClientInterceptor[Any, Any]
else:
    _ServerInterceptor = grpc.aio.ServerInterceptor
    _UUInterceptor = grpc.aio.UnaryUnaryClientInterceptor
    _USInterceptor = grpc.aio.UnaryStreamClientInterceptor
    _SUInterceptor = grpc.aio.StreamUnaryClientInterceptor
    _SSInterceptor = grpc.aio.StreamStreamClientInterceptor


def new_token() -> str:
    """A fresh random runtime token (256 bits, URL-safe text)."""
    return secrets.token_urlsafe(32)


def token_metadata(token: str | None) -> Metadata:
    """The call metadata carrying ``token`` (empty when auth is off)."""
    return ((TOKEN_KEY, token),) if token else ()


def with_token(metadata: Sequence[tuple[str, str]] | None, token: str | None) -> Metadata:
    """``metadata`` plus the token pair: for adding the token per call, without interceptors."""
    base = tuple(metadata) if metadata else ()
    return (*base, (TOKEN_KEY, token)) if token else base


def channel_options(max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> list[tuple[str, Any]]:
    """Options for a client channel to a worker or the orchestrator.

    Message size limits on both directions, no HTTP proxy (loopback traffic must never leave
    the machine through ``http_proxy``), and keepalive pings spaced as the default gRPC server
    tolerates (5 minutes), so a published worker does not answer them with ``too_many_pings``.
    """
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.enable_http_proxy", 0),
        ("grpc.keepalive_time_ms", 300_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.keepalive_permit_without_calls", 0),
        # A restarted peer comes back on a new address; do not wait long between retries.
        ("grpc.max_reconnect_backoff_ms", 2_000),
    ]


def server_options(max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> list[tuple[str, Any]]:
    """Options for our servers: message size limits, no port sharing, tolerant of pings."""
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        # Port 0 must give a port nobody else shares (gRPC sets SO_REUSEPORT by default).
        ("grpc.so_reuseport", 0),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
    ]


# ---------------------------------------------------------------------------------------------
# Server side


async def _deny(request: Any, context: Any) -> None:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE)


async def _deny_streaming(request_iterator: Any, context: Any) -> None:
    # A grpc.aio client whose write is in flight when the status arrives reports INTERNAL
    # "Internal error from Core" instead of the status. Reading what the client sends right
    # away (briefly, bounded) before refusing lets it learn the real reason.
    try:
        async with asyncio.timeout(_DRAIN_SECONDS):
            count = 0
            async for _ in request_iterator:
                count += 1
                if count >= _DRAIN_MESSAGES:
                    break
    except (TimeoutError, grpc.RpcError):
        pass
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE)


def _denial_handler(handler: Any) -> Any:
    """A handler of the same kind (unary/streaming) as ``handler`` that refuses the call."""
    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(_deny_streaming, **kwargs)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(_deny_streaming, **kwargs)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(_deny, **kwargs)
    return grpc.unary_unary_rpc_method_handler(_deny, **kwargs)


class Refusals:
    """What a :class:`TokenInterceptor` refused: how many calls, of which methods.

    The orchestrator's pool waits on it while a foreign worker starts: a worker program that
    cannot send the token shows that with its very first call, long before its start-up
    deadline.
    """

    _MAX_METHODS = 32

    def __init__(self) -> None:
        self.count = 0
        self.methods: dict[str, int] = {}
        self._event: asyncio.Event | None = None

    def record(self, method: str) -> None:
        """One refused call (on the server's loop)."""
        self.count += 1
        name = method.rsplit("/", 1)[-1] or method
        if name in self.methods or len(self.methods) < self._MAX_METHODS:
            self.methods[name] = self.methods.get(name, 0) + 1
        if self._event is not None:
            self._event.set()

    async def wait(self) -> None:
        """Return once at least one call was refused."""
        if self.count:
            return
        if self._event is None:
            self._event = asyncio.Event()
        await self._event.wait()

    def describe(self) -> str:
        """``"3 calls (Ping x3)"``."""
        methods = ", ".join(f"{name} x{n}" for name, n in self.methods.items())
        return f"{self.count} call{'s' if self.count != 1 else ''} ({methods})"


class TokenInterceptor(_ServerInterceptor):
    """Refuses every call (unary and streaming) that lacks the runtime token.

    Answers UNAUTHENTICATED "missing or wrong runtime token". ``TokenInterceptor(None)``
    checks nothing (the explicit opt-in for foreign workers that cannot send a token).
    ``refusals`` records each refused call.
    """

    def __init__(self, token: str | None, *, refusals: Refusals | None = None) -> None:
        self._token = token.encode() if token else None
        self._denials: dict[str, Any] = {}
        self.refusals = refusals

    @property
    def enabled(self) -> bool:
        return self._token is not None

    def accepts(self, metadata: Sequence[tuple[str, str | bytes]] | None) -> bool:
        """Whether call metadata carries the right token (constant-time comparison)."""
        if self._token is None:
            return True
        for key, value in metadata or ():
            if key == TOKEN_KEY:
                supplied = value if isinstance(value, bytes) else value.encode("utf-8", "replace")
                return hmac.compare_digest(supplied, self._token)
        return False

    async def intercept_service(
        self,
        continuation: Callable[[Any], Awaitable[Any]],
        handler_call_details: Any,
    ) -> Any:
        if self.accepts(handler_call_details.invocation_metadata):
            return await continuation(handler_call_details)
        method = handler_call_details.method
        if self.refusals is not None:
            self.refusals.record(method)
        denial = self._denials.get(method)
        if denial is None:
            handler = await continuation(handler_call_details)
            if handler is None:
                return None  # unknown method: gRPC answers UNIMPLEMENTED
            denial = _denial_handler(handler)
            if len(self._denials) < 256:
                self._denials[method] = denial
        return denial


# ---------------------------------------------------------------------------------------------
# Client side


def _details_with_token(details: Any, pair: tuple[str, str]) -> Any:
    metadata = details.metadata
    merged = (*tuple(metadata), pair) if metadata else (pair,)
    return grpc.aio.ClientCallDetails(
        details.method,
        details.timeout,
        grpc.aio.Metadata(*merged),
        details.credentials,
        details.wait_for_ready,
    )


class _UnaryUnaryToken(_UUInterceptor):
    def __init__(self, pair: tuple[str, str]) -> None:
        self._pair = pair

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_details_with_token(details, self._pair), request)


class _UnaryStreamToken(_USInterceptor):
    def __init__(self, pair: tuple[str, str]) -> None:
        self._pair = pair

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_details_with_token(details, self._pair), request)


class _StreamUnaryToken(_SUInterceptor):
    def __init__(self, pair: tuple[str, str]) -> None:
        self._pair = pair

    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(_details_with_token(details, self._pair), requests)


class _StreamStreamToken(_SSInterceptor):
    def __init__(self, pair: tuple[str, str]) -> None:
        self._pair = pair

    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(_details_with_token(details, self._pair), requests)


def client_interceptors(token: str | None) -> list[Any]:
    """Interceptors for ``grpc.aio.insecure_channel(..., interceptors=...)`` adding the token.

    One per call kind (grpc.aio files each interceptor under a single kind). Empty when
    ``token`` is ``None``.
    """
    if not token:
        return []
    pair = (TOKEN_KEY, token)
    return [
        _UnaryUnaryToken(pair),
        _UnaryStreamToken(pair),
        _StreamUnaryToken(pair),
        _StreamStreamToken(pair),
    ]
