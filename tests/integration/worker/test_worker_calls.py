"""Unary calls, batches and cancellation against a real worker process, over real gRPC."""

from __future__ import annotations

import asyncio
import json
import math
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from test_worker_harness import (
    Harness,
    WorkerProcess,
    harness_fixture,
    spawn_worker,
    worker_fixture,
)

from snakepit_nb.protocol import pb
from snakepit_nb.protocol.codec import decode_any_with_binary, decode_json, encode_json

pytestmark = pytest.mark.integration

_harness = pytest.fixture(scope="module", name="harness")(harness_fixture)
_worker = pytest.fixture(scope="module", name="worker")(worker_fixture)

NAN = float("nan")

VALUES: list[Any] = [
    None, True, False, 0, -7, 2**62, 2**200, 1.5, -0.0, NAN, float("inf"), float("-inf"),
    "", "héllo ☃ \U0001f40d", b"", b"\x00\xff\x10", bytes(range(256)) * 400,  # > 64 KiB: binary
    [], [1, [2, [3, None]]], {}, {"a": {"b": [1, None, "x"]}}, {1: "one", (2, 3): "tuple key"},
    {"$sp": "not a tag"}, [NAN, {"inf": float("inf")}], (1, 2),
    np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1, -2, 3], dtype=np.int64),
]  # fmt: skip


def same(a: Any, b: Any) -> bool:
    """Exact equality, with NaN equal to NaN, tuples as lists and arrays by dtype and content."""
    if isinstance(a, np.ndarray):
        return (
            isinstance(b, np.ndarray)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and np.array_equal(a, b)
        )
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    if isinstance(a, tuple):
        a = list(a)
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    return bool(a == b)


def ids(value: Any) -> str:
    return type(value).__name__ + "-" + repr(value)[:20]


@pytest.mark.parametrize("value", VALUES, ids=[ids(v) for v in VALUES])
def test_every_value_round_trips_through_execute_tool(worker: WorkerProcess, value: Any) -> None:
    assert same(value, worker.call("echo", value=value))


class Channel:
    """A CallChannel stream opened by the test (as the pool would)."""

    def __init__(self, w: WorkerProcess) -> None:
        self.w = w
        self.call = w.run(self._open())

    async def _open(self) -> Any:
        return self.w.stub.CallChannel(metadata=self.w.metadata)

    def send(self, *messages: pb.ChannelMessage) -> None:
        self.w.run(self.call.write(pb.ChannelFrame(messages=list(messages))))

    def receive(self, count: int, timeout: float = 30.0) -> dict[int, pb.ChannelMessage]:
        async def go() -> dict[int, pb.ChannelMessage]:
            got: dict[int, pb.ChannelMessage] = {}
            while len(got) < count:
                frame = await asyncio.wait_for(self.call.read(), timeout)
                assert frame is not grpc.aio.EOF, "the worker ended the channel"
                for message in frame.messages:
                    got[message.call_id] = message
            return got

        return self.w.run(go(), timeout=timeout + 5)

    def close(self) -> None:
        async def go() -> None:
            await self.call.done_writing()
            assert await self.call.read() is grpc.aio.EOF

        self.w.run(go())


def test_every_value_round_trips_through_the_call_channel(worker: WorkerProcess) -> None:
    channel = Channel(worker)
    channel.send(
        *[
            pb.ChannelMessage(call_id=i + 1, request=worker.request("echo", value=v))
            for i, v in enumerate(VALUES)
        ]
    )
    replies = channel.receive(len(VALUES))
    for i, value in enumerate(VALUES):
        reply = replies[i + 1]
        assert reply.WhichOneof("body") == "response", reply
        response = reply.response
        assert response.success, response.error_message
        assert same(value, decode_any_with_binary(response.result, response.binary_result))
    channel.close()


def test_a_raising_tool_reports_type_message_traceback_and_the_worker_stays(
    worker: WorkerProcess,
) -> None:
    response = worker.execute("fail", message="kaboom", kind="KeyError")
    assert not response.success
    payload = json.loads(response.error_message)
    assert payload["type"] == "KeyError"
    assert "kaboom" in payload["message"]
    assert "raise exc_class(message)" in payload["traceback"]
    # The traceback starts in the tool, not in the worker's dispatch code.
    assert "invocation.py" not in payload["traceback"]
    assert payload["context"]["tool_name"] == "fail"
    pong = worker.run(
        lambda: worker.stub.Ping(pb.PingRequest(), metadata=worker.metadata, timeout=10)
    )
    assert pong.pid == worker.pid
    assert worker.call("add", a=2, b=3) == 5


def test_unknown_tool_is_not_found_naming_it(worker: WorkerProcess) -> None:
    err = worker.rpc_error(
        lambda: worker.stub.ExecuteTool(
            worker.request("nope"), metadata=worker.metadata, timeout=10
        )
    )
    assert err.code() is grpc.StatusCode.NOT_FOUND
    assert "'nope'" in err.details()
    assert "registered: add" in err.details()


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"a": 1}, "missing required parameter 'b'"),
        ({"a": 1, "b": 2, "c": 3}, "unknown parameter 'c'"),
        ({"a": "x", "b": 2}, "parameter 'a' expects float, got str ('x')"),
        ({"a": 1, "b": [2]}, "parameter 'b' expects float, got list"),
    ],
)
def test_bad_arguments_are_invalid_argument_naming_the_parameter(
    worker: WorkerProcess, kwargs: dict[str, object], fragment: str
) -> None:
    err = worker.rpc_error(
        lambda: worker.stub.ExecuteTool(
            worker.request("add", **kwargs), metadata=worker.metadata, timeout=10
        )
    )
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in err.details()
    assert "tool 'add'" in err.details()


def test_channel_answers_infrastructure_errors_as_call_errors(worker: WorkerProcess) -> None:
    channel = Channel(worker)
    channel.send(
        pb.ChannelMessage(call_id=1, request=worker.request("nope")),
        pb.ChannelMessage(call_id=2, request=worker.request("add", a="x", b=1)),
        pb.ChannelMessage(call_id=3, request=worker.request("add", a=1, b=2)),
    )
    replies = channel.receive(3)
    assert replies[1].error.code == grpc.StatusCode.NOT_FOUND.value[0]
    assert "'nope'" in replies[1].error.message
    assert replies[2].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "parameter 'a'" in replies[2].error.message
    assert replies[3].response.success
    channel.close()


def test_call_cancel_cancels_an_async_tool(worker: WorkerProcess) -> None:
    channel = Channel(worker)
    started = time.monotonic()
    channel.send(pb.ChannelMessage(call_id=7, request=worker.request("slow", seconds=30.0)))
    channel.send(pb.ChannelMessage(call_id=7, cancel=pb.CallCancel(reason="test")))
    reply = channel.receive(1, timeout=10)[7]
    assert reply.error.code == grpc.StatusCode.CANCELLED.value[0]
    assert time.monotonic() - started < 10
    # The channel keeps serving after a cancel.
    channel.send(pb.ChannelMessage(call_id=8, request=worker.request("add", a=1, b=1)))
    assert channel.receive(1)[8].response.success
    channel.close()


def test_channel_deadline_cancels_the_call(worker: WorkerProcess) -> None:
    channel = Channel(worker)
    channel.send(
        pb.ChannelMessage(call_id=1, request=worker.request("slow", seconds=30.0), timeout=0.3)
    )
    reply = channel.receive(1, timeout=10)[1]
    assert reply.error.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    assert "0.3 s" in reply.error.message
    channel.close()


def test_sync_tools_run_off_the_loop_and_in_parallel(worker: WorkerProcess) -> None:
    channel = Channel(worker)
    started = time.monotonic()
    channel.send(
        *[
            pb.ChannelMessage(call_id=i, request=worker.request("sleep_sync", seconds=1.0))
            for i in range(1, 5)
        ]
    )
    # While four sync tools block their threads, the loop still answers at once.
    ping_started = time.monotonic()
    worker.run(lambda: worker.stub.Ping(pb.PingRequest(), metadata=worker.metadata, timeout=5))
    assert time.monotonic() - ping_started < 0.9
    replies = channel.receive(4, timeout=20)
    assert all(r.response.success for r in replies.values())
    assert time.monotonic() - started < 3.5  # four 1 s sleeps ran concurrently
    channel.close()


def test_batch_of_10000_calls_returns_results_in_order_with_per_item_errors(
    worker: WorkerProcess,
) -> None:
    n = 10_000
    items: list[dict[str, object]] = [{"a": i, "b": 1} for i in range(n)]
    for i in range(0, n, 1000):
        items[i] = {"a": i, "b": "bad"}
    channel = Channel(worker)
    started = time.perf_counter()
    channel.send(
        pb.ChannelMessage(
            call_id=1,
            batch=pb.BatchCall(session_id="s1", tool_name="add", arguments=encode_json(items)),
        )
    )
    reply = channel.receive(1)[1]
    elapsed = time.perf_counter() - started
    results = decode_json(reply.batch_result.results)
    assert len(results) == n
    for i, (ok, value) in enumerate(results):
        if i % 1000 == 0:
            assert not ok
            assert value["type"] == "InvalidArgumentError"
            assert "parameter 'b' expects float" in value["message"]
        else:
            assert ok
            assert value == i + 1
    print(f"\nBatchCall of {n} add calls: {elapsed * 1000:.1f} ms ({n / elapsed:,.0f} calls/s)")
    channel.close()


def test_batch_reports_tool_exceptions_per_item(worker: WorkerProcess) -> None:
    items = [{"message": f"m{i}", "kind": "ValueError"} for i in range(3)]
    channel = Channel(worker)
    channel.send(
        pb.ChannelMessage(
            call_id=1, batch=pb.BatchCall(tool_name="fail", arguments=encode_json(items))
        ),
        pb.ChannelMessage(call_id=2, batch=pb.BatchCall(tool_name="nope", arguments=b"[]")),
        pb.ChannelMessage(
            call_id=3, batch=pb.BatchCall(tool_name="noop", arguments=encode_json({"x": 1}))
        ),
    )
    replies = channel.receive(3)
    results = decode_json(replies[1].batch_result.results)
    assert [r[0] for r in results] == [False, False, False]
    assert [r[1]["message"] for r in results] == ["m0", "m1", "m2"]
    assert "raise exc_class(message)" in results[0][1]["traceback"]
    assert replies[2].error.code == grpc.StatusCode.NOT_FOUND.value[0]
    assert replies[3].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    channel.close()


def test_batch_of_an_async_tool_runs_concurrently(worker: WorkerProcess) -> None:
    items = [{"seconds": 0.5} for _ in range(20)]
    channel = Channel(worker)
    started = time.monotonic()
    channel.send(
        pb.ChannelMessage(
            call_id=1, batch=pb.BatchCall(tool_name="slow", arguments=encode_json(items))
        )
    )
    results = decode_json(channel.receive(1)[1].batch_result.results)
    assert all(ok for ok, _ in results)
    assert time.monotonic() - started < 5.0  # 20 x 0.5 s would be 10 s in sequence
    channel.close()


def test_kernel_tool_called_from_a_worker_tool(harness: Harness, worker: WorkerProcess) -> None:
    assert worker.call("ask_kernel", tool="double", x=21) == 42
    assert ("double", {"x": 21}) in harness.orchestrator.kernel_calls
    response = worker.execute("ask_kernel", tool="explode")
    payload = json.loads(response.error_message)
    assert not response.success
    assert payload["type"] == "RuntimeError"
    assert payload["message"] == "kernel tool exploded"


def test_unencodable_result_is_invalid_argument(worker: WorkerProcess) -> None:
    defined = worker.define("def give_set():\n    return {1, 2}\n", "give_set")
    assert defined.success, defined.error_message
    err = worker.rpc_error(
        lambda: worker.stub.ExecuteTool(
            worker.request("give_set"), metadata=worker.metadata, timeout=10
        )
    )
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "tool 'give_set' returned a value that cannot be sent" in err.details()
    assert worker.call("add", a=1, b=1) == 2


def test_oversize_result_is_resource_exhausted(harness: Harness, tmp_path: Path) -> None:
    small = spawn_worker(harness, tmp_path, env={"SNAKEPIT_NB_MAX_MESSAGE_BYTES": "1000000"})
    try:
        err = small.rpc_error(
            lambda: small.stub.ExecuteTool(
                small.request("nbytes", n=2_000_000), metadata=small.metadata, timeout=10
            )
        )
        assert err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "message limit" in err.details()
        assert small.call("nbytes", n=10) == bytes(10)
    finally:
        small.stop()


def test_incr_var_is_safe_against_concurrent_writers(worker: WorkerProcess) -> None:
    channel = Channel(worker)
    channel.send(
        *[
            pb.ChannelMessage(call_id=i, request=worker.request("incr_var", name="hits", by=1))
            for i in range(1, 25)
        ]
    )
    replies = channel.receive(24, timeout=60)
    values = sorted(
        int(str(decode_any_with_binary(r.response.result, b""))) for r in replies.values()
    )
    # Every increment landed exactly once: each call saw a distinct new value.
    assert values == list(range(1, 25))
    assert worker.call("incr_var", name="hits", by=2) == 26
    channel.close()
