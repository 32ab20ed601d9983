"""Streaming tools through ExecuteStreamingTool: order, final marker, batching, closing early."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import grpc
import pytest
from test_worker_harness import (
    WorkerProcess,
    gather_stream,
    harness_fixture,
    wait_for,
    worker_fixture,
)

from snakepit_nb.protocol.codec import decode_chunk, decode_chunk_batch

pytestmark = pytest.mark.integration

_harness = pytest.fixture(scope="module", name="harness")(harness_fixture)
_worker = pytest.fixture(scope="module", name="worker")(worker_fixture)


def values_of(messages: list[Any]) -> list[object]:
    out: list[object] = []
    for m in messages:
        if m.is_final:
            continue
        if m.batch_count:
            out.extend(decode_chunk_batch(m.batch))
        else:
            out.append(decode_chunk(m.data, m.metadata))
    return out


def test_chunks_arrive_in_order_with_a_final_marker(worker: WorkerProcess) -> None:
    messages = worker.run(gather_stream(worker.stream_messages("count", n=5)))
    assert [m.chunk_id for m in messages] == [f"count-{i}" for i in range(6)]
    assert [m.is_final for m in messages] == [False] * 5 + [True]
    assert values_of(messages) == [{"i": i, "progress": (i + 1) / 5} for i in range(5)]
    final = messages[-1]
    # count() ends with ctx.set_result(n): the final message carries it.
    assert final.metadata["snakepit_nb.return"] == "1"
    assert decode_chunk(final.data, final.metadata) == 5


def test_batching_packs_chunks_and_flushes_the_first_at_once(worker: WorkerProcess) -> None:
    n = 20_000
    messages = worker.run(gather_stream(worker.stream_messages("count", batching=True, n=n)))
    assert messages[0].batch_count == 1  # the first chunk is not held back
    assert messages[-1].is_final
    values = values_of(messages)
    assert values == [{"i": i, "progress": (i + 1) / n} for i in range(n)]
    assert sum(m.batch_count for m in messages) == n
    assert len(messages) < n / 10  # coalesced: far fewer messages than chunks
    assert all(m.batch_count <= 1000 for m in messages)


SYNC_GEN = '''
import time
def ticks(n: int, path: str = ""):
    """Yield n ticks, then return a summary."""
    try:
        for i in range(n):
            yield i
            time.sleep(0.001)
        return {"done": n}
    finally:
        if path:
            open(path, "w").write("closed")
'''

ASYNC_GEN = """
import asyncio
async def aticks(n: int, path: str = ""):
    try:
        for i in range(n):
            yield i
            await asyncio.sleep(0.01)
    finally:
        if path:
            open(path, "w").write("closed")
"""


def test_sync_generator_from_source_streams_and_returns(worker: WorkerProcess) -> None:
    assert worker.define(SYNC_GEN, "ticks").success
    messages = worker.run(gather_stream(worker.stream_messages("ticks", n=4)))
    assert values_of(messages) == [0, 1, 2, 3]
    final = messages[-1]
    assert final.is_final
    assert final.metadata["snakepit_nb.return"] == "1"
    assert decode_chunk(final.data, final.metadata) == {"done": 4}


@pytest.mark.parametrize(("source", "tool"), [(SYNC_GEN, "ticks"), (ASYNC_GEN, "aticks")])
def test_closing_a_stream_early_runs_the_generators_finally(
    worker: WorkerProcess, tmp_path: Path, source: str, tool: str
) -> None:
    assert worker.define(source, tool).success
    marker = tmp_path / "closed.txt"

    async def read_two_then_cancel() -> list[object]:
        call = worker.stub.ExecuteStreamingTool(
            worker.request(tool, n=100_000, path=str(marker)), metadata=worker.metadata
        )
        got = []
        async for message in call:
            got.append(decode_chunk(message.data, message.metadata))
            if len(got) == 2:
                call.cancel()
                break
        return got

    assert worker.run(read_two_then_cancel()) == [0, 1]
    # The finally block opens the file, then writes: wait for the content, not the name.
    wait_for(
        lambda: marker.exists() and marker.read_text() == "closed",
        5.0,
        f"{tool}'s finally block to run after the cancel",
    )


def test_tool_error_mid_stream_ends_internal_with_the_payload(worker: WorkerProcess) -> None:
    source = (
        "def half(n: int):\n    for i in range(n):\n        yield i\n    raise KeyError('gone')\n"
    )
    assert worker.define(source, "half").success

    async def go() -> tuple[list[object], grpc.aio.AioRpcError]:
        got: list[object] = []
        try:
            async for message in worker.stream_messages("half", n=3):
                got.append(decode_chunk(message.data, message.metadata))
        except grpc.aio.AioRpcError as err:
            return got, err
        raise AssertionError("the stream ended without an error")

    got, err = worker.run(go())
    assert got == [0, 1, 2]
    assert err.code() is grpc.StatusCode.INTERNAL
    payload = json.loads(err.details())
    assert payload["type"] == "KeyError"
    assert "raise KeyError('gone')" in payload["traceback"]


def test_a_plain_tool_through_the_streaming_rpc_is_one_chunk(worker: WorkerProcess) -> None:
    messages = worker.run(gather_stream(worker.stream_messages("add", a=2, b=3)))
    assert values_of(messages) == [5]
    assert messages[-1].is_final


def test_streaming_tool_called_unary_returns_its_chunks(worker: WorkerProcess) -> None:
    assert worker.call("count", n=3) == [{"i": i, "progress": (i + 1) / 3} for i in range(3)]


def test_a_slow_consumer_bounds_the_producer(worker: WorkerProcess) -> None:
    source = """
produced = 0
def endless():
    global produced
    while True:
        produced += 1
        yield "x" * 100
"""
    counter = """
import sys
def how_many() -> int:
    # The module a cell's source runs in is registered as snakepit_nb_cell_<name>.
    return sys.modules["snakepit_nb_cell_endless"].produced
"""
    assert worker.define(source, "endless").success
    assert worker.define(counter, "how_many").success

    async def read_one_then_pause() -> Any:
        call = worker.stub.ExecuteStreamingTool(worker.request("endless"), metadata=worker.metadata)
        await call.read()
        return call

    call = worker.run(read_one_then_pause())
    # The producer runs ahead only until the buffer (and gRPC's flow-control window) fill.
    seen: list[int] = []

    def stalled() -> bool:
        seen.append(int(str(worker.call("how_many"))))
        return len(seen) >= 3 and seen[-1] == seen[-3]

    wait_for(stalled, 20.0, "the producer to stall behind the paused consumer")
    print(f"\nproducer stalled after {seen[-1]} chunks")
    assert 64 < seen[-1] < 200_000
    worker.run(_cancel(call))


async def _cancel(call: Any) -> None:
    call.cancel()
    await asyncio.sleep(0)


def test_a_long_stream_arrives_whole_in_few_batched_messages(worker: WorkerProcess) -> None:
    """200,000 chunks with batching on: every one arrives, in order, packed into far fewer
    messages. (Its rate is a benchmark: ``sp_stream`` in benchmarks/bench_calls.py.)"""
    n = 200_000

    async def consume() -> tuple[int, list[int]]:
        messages = 0
        values: list[int] = []
        async for message in worker.stream_messages("count", batching=True, n=n):
            messages += 1
            if message.batch_count:
                values.extend(chunk["i"] for chunk in decode_chunk_batch(message.batch))
        return messages, values

    messages, values = worker.run(consume())
    assert values == list(range(n))
    assert messages < n // 100
