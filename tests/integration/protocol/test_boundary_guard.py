"""``DecodingGuard`` (protocol/boundary.py) on a real grpc.aio server over loopback.

The servicer here is a small stand-in with the four kinds of handlers the real servers have:
unary, server-streaming, a request stream read by the handler itself, and a request stream read
by a task of its own while the handler writes (the worker's call channel and telemetry). Each
must answer undecodable bytes INVALID_ARGUMENT -- never UNKNOWN, never silence, never a hang --
and the handler must be finished afterwards (no task left behind).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import grpc.aio
import pytest

from snakepit_nb.protocol import pb, pb_grpc
from snakepit_nb.protocol.auth import TokenInterceptor, token_metadata
from snakepit_nb.protocol.boundary import DecodingGuard

pytestmark = pytest.mark.integration

TOKEN = "guard-test-token"
PREFIX = "/snakepit.bridge.BridgeService/"
GARBAGE = b"U]"  # field 10, wire type 5 (fixed32), then too few bytes: not a message
FRAME = pb.ChannelFrame(messages=[pb.ChannelMessage(call_id=1)]).SerializeToString()


def _rpc(channel: Any, kind: str, path: str) -> Any:
    """A raw-bytes callable of ``kind`` ("unary_unary", ...): bytes in, bytes out."""
    return getattr(channel, kind)(path, request_serializer=None, response_deserializer=None)


class StandIn(pb_grpc.BridgeServiceServicer):  # type: ignore[misc]
    """Handlers shaped like the real ones; records what ran to the end."""

    def __init__(self) -> None:
        self.finished: list[str] = []
        self.ended = {"StreamTelemetry": asyncio.Event(), "CallChannel": asyncio.Event()}
        self.pings: list[str] = []

    async def Ping(self, request: pb.PingRequest, context: Any) -> pb.PingResponse:
        self.pings.append(request.message)
        return pb.PingResponse(message=f"pong: {request.message}")

    async def ExecuteStreamingTool(
        self, request: pb.ExecuteToolRequest, context: Any
    ) -> AsyncIterator[pb.ToolChunk]:
        for i in range(3):
            yield pb.ToolChunk(chunk_id=f"{request.tool_name}-{i}")

    async def StreamTelemetry(self, request_iterator: Any, context: Any) -> None:
        # Reads in a task of its own and writes forever, like the worker's telemetry feed.
        seen = asyncio.Event()

        async def read() -> None:
            async for _control in request_iterator:
                seen.set()

        reader = asyncio.get_running_loop().create_task(read())
        try:
            while True:
                await context.write(pb.TelemetryEvent(event_parts=["tick"]))
                await asyncio.sleep(0.01)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            self.finished.append("StreamTelemetry")
            self.ended["StreamTelemetry"].set()

    async def CallChannel(self, request_iterator: Any, context: Any) -> None:
        # Like the worker's call channel: a reader task feeds a queue, the handler answers
        # each frame with a write, and ends when the reader is done.
        queue: asyncio.Queue[Any] = asyncio.Queue(16)

        async def read() -> None:
            try:
                async for frame in request_iterator:
                    await queue.put(frame)
            finally:
                await queue.put(None)

        reader = asyncio.get_running_loop().create_task(read())
        try:
            while (frame := await queue.get()) is not None:
                await context.write(pb.ChannelFrame(messages=list(frame.messages)))
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            self.finished.append("CallChannel")
            self.ended["CallChannel"].set()


class Served:
    def __init__(self) -> None:
        self.servicer = StandIn()
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self.server: grpc.aio.Server | None = None

    def run(self, coro: Any, timeout: float = 30) -> Any:
        return self.loop.run_until_complete(asyncio.wait_for(coro, timeout))

    async def start(self) -> None:
        self.server = grpc.aio.server(interceptors=[TokenInterceptor(TOKEN), DecodingGuard()])
        pb_grpc.add_BridgeServiceServicer_to_server(self.servicer, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()

    async def call(
        self, method: str, payloads: list[bytes], *, token: str | None = TOKEN
    ) -> tuple[Any, str, list[bytes], float]:
        """(code, details, responses, seconds) of one raw-bytes call."""
        metadata = token_metadata(token)
        started = time.perf_counter()
        responses: list[bytes] = []
        async with grpc.aio.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            try:
                if method in ("CallChannel", "StreamTelemetry"):

                    async def requests() -> AsyncIterator[bytes]:
                        # All at once, as a peer would: the handler is still writing its
                        # answer to one frame when the next one arrives.
                        for payload in payloads:
                            yield payload

                    call = _rpc(channel, "stream_stream", PREFIX + method)(
                        requests(), metadata=metadata, timeout=5
                    )
                    async for item in call:
                        responses.append(item)
                        if method == "StreamTelemetry" and len(responses) > 500:
                            break
                elif method == "ExecuteStreamingTool":
                    async for item in _rpc(channel, "unary_stream", PREFIX + method)(
                        payloads[0], metadata=metadata, timeout=5
                    ):
                        responses.append(item)
                else:
                    responses.append(
                        await _rpc(channel, "unary_unary", PREFIX + method)(
                            payloads[0], metadata=metadata, timeout=5
                        )
                    )
            except grpc.aio.AioRpcError as err:
                return err.code(), err.details() or "", responses, time.perf_counter() - started
        return grpc.StatusCode.OK, "", responses, time.perf_counter() - started

    async def wait_finished(self, name: str) -> None:
        await self.servicer.ended[name].wait()

    def close(self) -> None:
        if self.server is not None:
            self.run(self.server.stop(0))
        self.loop.close()


@pytest.fixture
def served() -> Iterator[Served]:
    s = Served()
    s.run(s.start())
    yield s
    s.close()


def _refused(code: Any, details: str, method: str) -> None:
    assert code is grpc.StatusCode.INVALID_ARGUMENT, (code, details)
    assert f"the {method} request is not a valid protobuf message" in details, details
    assert "protos/snakepit_bridge.proto" in details  # says what to send instead


def test_unary_and_server_streaming_garbage_is_invalid_argument(served: Served) -> None:
    for method in ("Ping", "ExecuteStreamingTool"):
        code, details, responses, _ = served.run(served.call(method, [GARBAGE]))
        _refused(code, details, method)
        assert responses == []
    assert served.servicer.pings == []  # the handler never ran


def test_good_requests_pass_unchanged(served: Served) -> None:
    code, _, responses, _ = served.run(
        served.call("Ping", [pb.PingRequest(message="hi").SerializeToString()])
    )
    assert code is grpc.StatusCode.OK
    assert pb.PingResponse.FromString(responses[0]).message == "pong: hi"
    code, _, chunks, _ = served.run(
        served.call(
            "ExecuteStreamingTool", [pb.ExecuteToolRequest(tool_name="t").SerializeToString()]
        )
    )
    assert code is grpc.StatusCode.OK
    assert [pb.ToolChunk.FromString(c).chunk_id for c in chunks] == ["t-0", "t-1", "t-2"]
    code, _, frames, _ = served.run(served.call("CallChannel", [FRAME, FRAME]))
    assert (code, len(frames)) == (grpc.StatusCode.OK, 2)


@pytest.mark.parametrize(
    "payloads",
    [[GARBAGE], [FRAME, GARBAGE], [FRAME, FRAME, GARBAGE, FRAME]],
    ids=["first", "after-an-answer", "in-the-middle"],
)
def test_garbage_on_a_call_channel_is_refused_at_once_and_the_handler_ends(
    served: Served, payloads: list[bytes]
) -> None:
    code, details, frames, seconds = served.run(served.call("CallChannel", payloads))
    _refused(code, details, "CallChannel")
    # Before the fix, garbage after an answered frame hung the call until its deadline.
    assert seconds < 2.0
    assert len(frames) <= payloads.index(GARBAGE)
    served.run(served.wait_finished("CallChannel"), timeout=5)


def test_garbage_on_a_feed_that_writes_forever_is_refused(served: Served) -> None:
    code, details, events, seconds = served.run(
        served.call("StreamTelemetry", [pb.TelemetryControl().SerializeToString(), GARBAGE])
    )
    _refused(code, details, "StreamTelemetry")
    assert events  # it was writing when the garbage arrived
    assert seconds < 2.0
    served.run(served.wait_finished("StreamTelemetry"), timeout=5)


def test_the_token_is_checked_before_decoding(served: Served) -> None:
    for method in ("Ping", "CallChannel"):
        code, _, _, _ = served.run(served.call(method, [GARBAGE], token="wrong"))
        assert code is grpc.StatusCode.UNAUTHENTICATED
