"""The runtime-token interceptors on a real loopback grpc.aio server.

A small BridgeService stand-in serves one method of each kind (unary Ping, unary-stream
ExecuteStreamingTool, stream-stream CallChannel, stream-stream StreamTelemetry); every call
without the token, or with a wrong one, must be refused with UNAUTHENTICATED before the
servicer runs, and every call with it must go through.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

import grpc
import grpc.aio
import pytest

from snakepit_nb._errors import AuthenticationError
from snakepit_nb.protocol import pb, pb_grpc
from snakepit_nb.protocol.auth import (
    TOKEN_KEY,
    UNAUTHENTICATED_MESSAGE,
    TokenInterceptor,
    channel_options,
    client_interceptors,
    new_token,
    server_options,
    token_metadata,
    with_token,
)
from snakepit_nb.protocol.status import map_rpc_error

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def run_async(fn: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """Run an async test body on a fresh event loop (grpc.aio objects bind to it)."""

    @functools.wraps(fn)
    def wrapper() -> None:
        asyncio.run(fn())

    return wrapper


class _Servicer(pb_grpc.BridgeServiceServicer):  # type: ignore[misc]
    def __init__(self) -> None:
        self.calls = 0

    async def Ping(self, request: Any, context: Any) -> Any:
        self.calls += 1
        return pb.PingResponse(message=f"pong:{request.message}")

    async def ExecuteStreamingTool(self, request: Any, context: Any) -> AsyncIterator[Any]:
        self.calls += 1
        for i in range(3):
            yield pb.ToolChunk(chunk_id=f"{request.tool_name}-{i}", data=str(i).encode())
        yield pb.ToolChunk(chunk_id=f"{request.tool_name}-3", is_final=True)

    async def CallChannel(self, request_iterator: Any, context: Any) -> AsyncIterator[Any]:
        self.calls += 1
        async for frame in request_iterator:
            yield frame  # echo

    async def InitializeSession(self, request: Any, context: Any) -> Any:
        self.calls += 1
        return pb.InitializeSessionResponse(success=True)


async def _serve(token: str | None) -> tuple[grpc.aio.Server, str, _Servicer]:
    server = grpc.aio.server(interceptors=[TokenInterceptor(token)], options=server_options())
    servicer = _Servicer()
    pb_grpc.add_BridgeServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}", servicer


def _frame(n: int) -> Any:
    return pb.ChannelFrame(messages=[pb.ChannelMessage(call_id=n)])


async def _all_kinds(stub: Any, metadata: Any = None) -> list[object]:
    """One call of each kind; returns what came back (or the RpcError) per call."""
    out: list[object] = []

    async def attempt(fn: Callable[[], Awaitable[object]]) -> None:
        try:
            out.append(await fn())
        except grpc.aio.AioRpcError as err:
            out.append(err)

    async def ping() -> object:
        return (await stub.Ping(pb.PingRequest(message="hi"), metadata=metadata)).message

    async def stream() -> object:
        call = stub.ExecuteStreamingTool(pb.ExecuteToolRequest(tool_name="t"), metadata=metadata)
        return [chunk.chunk_id async for chunk in call]

    async def channel() -> object:
        async def frames() -> AsyncIterator[Any]:
            for n in (1, 2):
                yield _frame(n)

        call = stub.CallChannel(frames(), metadata=metadata)
        return [frame.messages[0].call_id async for frame in call]

    await attempt(ping)
    await attempt(stream)
    await attempt(channel)
    return out


EXPECTED_OK: list[object] = ["pong:hi", ["t-0", "t-1", "t-2", "t-3"], [1, 2]]


def _assert_refused(results: list[object]) -> None:
    assert len(results) == 3
    for result in results:
        assert isinstance(result, grpc.aio.AioRpcError), result
        assert result.code() == grpc.StatusCode.UNAUTHENTICATED
        assert result.details() == UNAUTHENTICATED_MESSAGE
        mapped = map_rpc_error(result)
        assert isinstance(mapped, AuthenticationError)
        assert UNAUTHENTICATED_MESSAGE in str(mapped)


@run_async
async def test_calls_without_or_with_a_wrong_token_are_refused() -> None:
    token = new_token()
    server, address, servicer = await _serve(token)
    try:
        async with grpc.aio.insecure_channel(address, options=channel_options()) as channel:
            stub = pb_grpc.BridgeServiceStub(channel)
            _assert_refused(await _all_kinds(stub))
            _assert_refused(await _all_kinds(stub, metadata=token_metadata("wrong")))
            _assert_refused(await _all_kinds(stub, metadata=((TOKEN_KEY, token[:-1]),)))
            _assert_refused(await _all_kinds(stub, metadata=((TOKEN_KEY, token + "x"),)))
            _assert_refused(await _all_kinds(stub, metadata=((TOKEN_KEY, ""),)))
        async with grpc.aio.insecure_channel(
            address, options=channel_options(), interceptors=client_interceptors("wrong")
        ) as channel:
            _assert_refused(await _all_kinds(pb_grpc.BridgeServiceStub(channel)))
        # The servicer never ran for a refused call.
        assert servicer.calls == 0
    finally:
        await server.stop(None)


@run_async
async def test_the_right_token_passes_per_call_and_through_interceptors() -> None:
    token = new_token()
    server, address, servicer = await _serve(token)
    try:
        async with grpc.aio.insecure_channel(address, options=channel_options()) as channel:
            stub = pb_grpc.BridgeServiceStub(channel)
            assert await _all_kinds(stub, metadata=token_metadata(token)) == EXPECTED_OK
            # Other metadata next to the token is kept.
            merged = with_token((("correlation_id", "c1"),), token)
            assert await _all_kinds(stub, metadata=merged) == EXPECTED_OK
        async with grpc.aio.insecure_channel(
            address, options=channel_options(), interceptors=client_interceptors(token)
        ) as channel:
            stub = pb_grpc.BridgeServiceStub(channel)
            assert await _all_kinds(stub) == EXPECTED_OK
            assert await _all_kinds(stub, metadata=(("correlation_id", "c2"),)) == EXPECTED_OK
        assert servicer.calls == 12
    finally:
        await server.stop(None)


@run_async
async def test_a_refused_method_stays_refused_and_others_still_pass() -> None:
    # The interceptor caches one denial handler per method; make sure that cache never lets a
    # call through, and that a good call after bad ones on the same method still passes.
    token = new_token()
    server, address, servicer = await _serve(token)
    try:
        async with grpc.aio.insecure_channel(address, options=channel_options()) as channel:
            stub = pb_grpc.BridgeServiceStub(channel)
            for _ in range(3):
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await stub.InitializeSession(pb.InitializeSessionRequest(session_id="s"))
                assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            reply = await stub.InitializeSession(
                pb.InitializeSessionRequest(session_id="s"), metadata=token_metadata(token)
            )
            assert reply.success
            assert servicer.calls == 1
    finally:
        await server.stop(None)


@run_async
async def test_token_none_disables_the_check() -> None:
    server, address, _ = await _serve(None)
    try:
        async with grpc.aio.insecure_channel(address, options=channel_options()) as channel:
            assert await _all_kinds(pb_grpc.BridgeServiceStub(channel)) == EXPECTED_OK
        assert client_interceptors(None) == []
        assert token_metadata(None) == ()
    finally:
        await server.stop(None)


@run_async
async def test_unknown_methods_are_still_unimplemented_not_unauthenticated() -> None:
    server, address, _ = await _serve(new_token())
    try:
        async with grpc.aio.insecure_channel(address, options=channel_options()) as channel:
            call = channel.unary_unary("/snakepit.bridge.BridgeService/NoSuchMethod")
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call(b"")
            assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        await server.stop(None)


def test_new_tokens_are_long_and_distinct() -> None:
    tokens = {new_token() for _ in range(100)}
    assert len(tokens) == 100
    assert all(len(t) >= 43 and t.isascii() for t in tokens)


def test_options_keep_traffic_local_and_limits_set() -> None:
    client = dict(channel_options(1234))
    assert client["grpc.enable_http_proxy"] == 0
    assert client["grpc.max_send_message_length"] == 1234
    assert client["grpc.max_receive_message_length"] == 1234
    server = dict(server_options(99))
    assert server["grpc.so_reuseport"] == 0
    assert server["grpc.max_receive_message_length"] == 99


@run_async
async def test_client_interceptors_and_per_call_metadata_both_authenticate() -> None:
    """The interceptor and per-call metadata both authenticate (their cost per call is a
    benchmark: ``auth`` in benchmarks/bench_codec.py)."""
    token = new_token()
    server, address, _ = await _serve(token)
    try:
        async with grpc.aio.insecure_channel(address, options=channel_options()) as plain:
            stub = pb_grpc.BridgeServiceStub(plain)
            assert (await _median_ping(stub, token_metadata(token), n=5)) > 0
        async with grpc.aio.insecure_channel(
            address, options=channel_options(), interceptors=client_interceptors(token)
        ) as intercepted:
            stub = pb_grpc.BridgeServiceStub(intercepted)
            assert (await _median_ping(stub, None, n=5)) > 0
    finally:
        await server.stop(None)


async def _median_ping(stub: Any, metadata: Any, n: int = 300) -> float:
    loop = asyncio.get_running_loop()
    request = pb.PingRequest(message="x")
    for _ in range(30):
        await stub.Ping(request, metadata=metadata)
    samples = []
    for _ in range(n):
        start = loop.time()
        await stub.Ping(request, metadata=metadata)
        samples.append(loop.time() - start)
    samples.sort()
    return samples[len(samples) // 2]
