"""Errors over a real loopback gRPC call: the server's abort() and the client's mapping agree."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
import pytest

from snakepit_nb import _errors as E
from snakepit_nb.protocol import pb, pb_grpc
from snakepit_nb.protocol.auth import server_options
from snakepit_nb.protocol.status import (
    abort,
    abort_with_tool_error,
    map_rpc_error,
    mapping_rpc_errors,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

RAISED: dict[str, BaseException] = {
    "session": E.SessionNotFoundError("session 'nope' does not exist; create it first"),
    "tool": E.ToolNotFoundError("tool 'x' is not registered; available: add, echo"),
    "conflict": E.VersionConflictError("variable 'n' is at a newer version", current_version=9),
    "crashed": E.WorkerCrashedError("worker w2 exited with -9 during the call", exit_code=-9),
    "saturated": E.PoolSaturatedError("every worker is busy and 1024 calls are queued"),
    "remote": E.RemoteToolError("KeyError", "'k'" * 5000, "frame\n" * 5000, tool_name="get"),
    "bug": RuntimeError("unexpected"),
}


class _Servicer(pb_grpc.BridgeServiceServicer):  # type: ignore[misc]
    async def Ping(self, request: Any, context: Any) -> Any:
        try:
            raise RAISED[request.message]
        except BaseException as exc:
            await abort(context, exc)

    async def ExecuteStreamingTool(self, request: Any, context: Any) -> AsyncIterator[Any]:
        yield pb.ToolChunk(chunk_id="t-0", data=b"1")
        try:
            raise ZeroDivisionError("division by zero")
        except ZeroDivisionError as exc:
            await abort_with_tool_error(
                context, exc, tool_name=request.tool_name, session_id=request.session_id
            )


async def _with_server(body: Any) -> None:
    server = grpc.aio.server(options=server_options())
    pb_grpc.add_BridgeServiceServicer_to_server(_Servicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await body(pb_grpc.BridgeServiceStub(channel))
    finally:
        await server.stop(None)


def test_server_errors_arrive_as_the_same_classes() -> None:
    async def body(stub: Any) -> None:
        for key, raised in RAISED.items():
            with pytest.raises(E.SnakepitError) as info, mapping_rpc_errors():
                await stub.Ping(pb.PingRequest(message=key))
            err = info.value
            assert isinstance(err.__cause__, grpc.aio.AioRpcError)
            if key == "bug":
                assert type(err) is E.ProtocolError
                assert "unexpected" in str(err)
            elif key == "remote":
                assert isinstance(err, E.RemoteToolError)
                assert err.remote_type == "KeyError"
                assert err.tool_name == "get"
                assert err.remote_traceback.endswith("frame\n")
            else:
                assert type(err) is type(raised), key
                assert str(err).startswith(str(raised))
        conflict = None
        try:
            await stub.Ping(pb.PingRequest(message="conflict"))
        except grpc.aio.AioRpcError as rpc:
            conflict = map_rpc_error(rpc)
        assert isinstance(conflict, E.VersionConflictError)
        assert conflict.current_version == 9

    asyncio.run(_with_server(body))


def test_a_streaming_tool_error_ends_the_stream_with_its_payload() -> None:
    async def body(stub: Any) -> None:
        call = stub.ExecuteStreamingTool(pb.ExecuteToolRequest(tool_name="div", session_id="s"))
        received: list[str] = []

        async def drain() -> None:
            async for chunk in call:
                received.append(chunk.chunk_id)

        with pytest.raises(E.RemoteToolError) as info, mapping_rpc_errors():
            await drain()
        assert received == ["t-0"]
        assert await call.code() == grpc.StatusCode.INTERNAL
        err = info.value
        assert (err.remote_type, err.remote_message) == ("ZeroDivisionError", "division by zero")
        assert (err.tool_name, err.session_id) == ("div", "s")
        assert "ZeroDivisionError: division by zero" in err.remote_traceback

    asyncio.run(_with_server(body))
