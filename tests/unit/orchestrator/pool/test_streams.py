"""StreamCall against a fake host and a fake streaming RPC: batches, the final value, errors."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
import grpc.aio
import pytest
from pool_fakes import FakeHost

from snakepit_nb._errors import RemoteToolError, ResourceExhaustedError, WorkerCrashedError
from snakepit_nb.orchestrator.pool.calls.streams import RETURN_MARK, StreamCall
from snakepit_nb.orchestrator.pool.channel import EOF
from snakepit_nb.orchestrator.pool.handle import WorkerGone
from snakepit_nb.protocol import pb
from snakepit_nb.protocol.codec import encode_chunk, encode_chunk_batch

T = TypeVar("T")


def run(body: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(asyncio.wait_for(body(), 10))  # type: ignore[arg-type]


class FakeStreamCall:
    """What ``stub.ExecuteStreamingTool`` returns: messages, then EOF or an error."""

    def __init__(self, messages: list[pb.ToolChunk], error: BaseException | None = None) -> None:
        self._messages = list(messages)
        self._error = error
        self.cancelled = False
        self.blocked: asyncio.Event | None = None

    async def read(self) -> Any:
        if self._messages:
            return self._messages.pop(0)
        if self.blocked is not None:
            await self.blocked.wait()
        if self._error is not None:
            raise self._error
        return EOF

    def done(self) -> bool:
        return self.cancelled or (not self._messages and self.blocked is None)

    def cancel(self) -> bool:
        self.cancelled = True
        return True


class FakeStub:
    def __init__(self, call: FakeStreamCall) -> None:
        self.call = call
        self.requests: list[pb.ExecuteToolRequest] = []

    def ExecuteStreamingTool(self, request: pb.ExecuteToolRequest, **_: Any) -> FakeStreamCall:
        self.requests.append(request)
        return self.call


def host_with(call: FakeStreamCall) -> tuple[FakeHost, FakeStub]:
    host = FakeHost(1, lambda: None)
    stub = FakeStub(call)
    host.handles[0].stub = stub  # type: ignore[assignment]
    return host, stub


def stream(host: FakeHost, request: pb.ExecuteToolRequest | None = None) -> StreamCall:
    return StreamCall(
        host,
        "s",
        "count",
        request or pb.ExecuteToolRequest(session_id="s", tool_name="count"),
        timeout=5,
        affinity="none",
    )


def batch(*values: object) -> pb.ToolChunk:
    return pb.ToolChunk(batch=encode_chunk_batch(list(values)), batch_count=len(values))


def final(result: object) -> pb.ToolChunk:
    data, meta = encode_chunk(result)
    chunk = pb.ToolChunk(is_final=True, data=data, metadata=meta)
    chunk.metadata[RETURN_MARK] = "1"
    return chunk


def test_batches_arrive_in_order_and_the_return_value_is_kept() -> None:
    async def body() -> tuple[list[list[object]], object, FakeHost, FakeStub]:
        call = FakeStreamCall([batch(0, 1), batch(2), final({"total": 3})])
        host, stub = host_with(call)
        s = stream(host)
        batches = [b async for b in s]
        return batches, s.result, host, stub

    batches, result, host, stub = run(body)
    assert batches == [[0, 1], [2]]
    assert result == {"total": 3}
    assert stub.requests[0].metadata["snakepit_nb.chunk_batching"] == "1"
    assert host.settled == [("w1", 1, 0)]
    assert host.in_flight() == [0]


def test_a_tool_error_arrives_as_remote_tool_error_with_the_worker_traceback() -> None:
    payload = json.dumps(
        {"type": "ZeroDivisionError", "message": "division by zero", "traceback": "Traceback..."}
    )
    error = grpc.aio.AioRpcError(
        grpc.StatusCode.INTERNAL, grpc.aio.Metadata(), grpc.aio.Metadata(), details=payload
    )

    async def body() -> tuple[BaseException, FakeHost]:
        host, _ = host_with(FakeStreamCall([batch(1)], error))
        s = stream(host)
        try:
            async for _ in s:
                pass
        except RemoteToolError as exc:
            return exc, host
        raise AssertionError("the stream did not fail")

    exc, host = run(body)
    assert isinstance(exc, RemoteToolError)
    assert exc.remote_type == "ZeroDivisionError"
    assert host.settled == [("w1", 1, 1)]  # counted as an error on that worker


def test_a_worker_that_dies_mid_stream_ends_it_with_worker_crashed() -> None:
    async def body() -> BaseException:
        call = FakeStreamCall([batch(1)])
        call.blocked = asyncio.Event()
        host, _ = host_with(call)
        s = stream(host)
        assert await s.__anext__() == [1]
        reader = asyncio.create_task(s.__anext__())
        await asyncio.sleep(0)
        gone = WorkerGone("w1", 7, exit_code=-9, how="died with SIGKILL", aftermath="replaced")
        host.handles[0].fail_in_flight(gone)
        try:
            await reader
        except WorkerCrashedError as exc:
            assert call.cancelled
            return exc
        raise AssertionError("the stream did not fail")

    exc = run(body)
    assert "died with SIGKILL while running 'count'" in str(exc)


def test_closing_a_stream_early_cancels_the_rpc_and_frees_the_slot() -> None:
    async def body() -> tuple[FakeStreamCall, FakeHost]:
        call = FakeStreamCall([batch(1), batch(2), batch(3)])
        host, _ = host_with(call)
        s = stream(host)
        assert await s.__anext__() == [1]
        await s.aclose()
        return call, host

    call, host = run(body)
    assert call.cancelled
    assert host.in_flight() == [0]


def test_an_oversize_request_is_refused_before_a_worker_is_taken() -> None:
    async def body() -> FakeHost:
        host, stub = host_with(FakeStreamCall([]))
        request = pb.ExecuteToolRequest(session_id="s", tool_name="count")
        request.binary_parameters["blob"] = b"x" * (host.config.max_message_bytes + 1)
        with pytest.raises(ResourceExhaustedError, match="max_message_bytes"):
            async for _ in stream(host, request):
                pass
        assert stub.requests == []
        return host

    assert run(body).in_flight() == [0]
