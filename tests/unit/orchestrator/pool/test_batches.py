"""run_map against a fake host: order, chunking, per-item errors, crashes, retries, deadlines."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
from pool_fakes import FakeHost, until

from snakepit_nb._errors import (
    CallTimeoutError,
    InvalidArgumentError,
    RemoteToolError,
    WorkerCrashedError,
)
from snakepit_nb.orchestrator.pool.calls.batches import default_chunksize, run_map
from snakepit_nb.orchestrator.pool.handle import WorkerGone

T = TypeVar("T")


def run(body: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(asyncio.wait_for(body(), 10))  # type: ignore[arg-type]


def add(a: int, b: int = 1) -> int:
    return a + b


def test_results_come_back_in_input_order_spread_over_the_workers() -> None:
    async def body() -> tuple[list[Any], FakeHost]:
        host = FakeHost(2, add)
        host.channels[0].delay = 0.02  # w1 is slower: its chunks finish last
        items = [{"a": i} for i in range(1000)]
        results = await run_map(host, "s", "add", items, timeout=5, chunksize=100, affinity="none")
        return results, host

    results, host = run(body)
    assert [v for ok, v in results] == [i + 1 for i in range(1000)]
    assert all(ok for ok, _ in results)
    assert sum(host.channels[0].batches) + sum(host.channels[1].batches) == 1000
    assert host.channels[0].batches
    assert host.channels[1].batches
    assert host.in_flight() == [0, 0]  # every slot was given back
    assert sum(c for _, c, _ in host.settled) == 1000


def test_a_failing_item_takes_its_own_slot_and_the_others_succeed() -> None:
    def picky(a: int) -> int:
        if a == 7:
            raise ValueError("seven is not welcome")
        return a

    async def body() -> list[Any]:
        host = FakeHost(1, picky)
        return await run_map(
            host,
            "s",
            "picky",
            [{"a": i} for i in range(10)],
            timeout=5,
            chunksize=None,
            affinity="none",
        )

    results = run(body)
    assert [ok for ok, _ in results].count(False) == 1
    ok, error = results[7]
    assert not ok
    assert isinstance(error, RemoteToolError)
    assert error.remote_type == "ValueError"
    assert "seven" in str(error)
    assert results[8] == (True, 8)


def test_chunks_on_a_worker_that_dies_fail_with_worker_crashed() -> None:
    async def body() -> list[Any]:
        host = FakeHost(1, add)
        host.channels[0].hold = True
        task = asyncio.create_task(
            run_map(
                host,
                "s",
                "add",
                [{"a": i} for i in range(4)],
                timeout=5,
                chunksize=2,
                affinity="none",
            )
        )
        await until(lambda: host.channels[0].batches)
        gone = WorkerGone("w1", 42, exit_code=-9, how="died with SIGKILL", aftermath="replaced")
        host.channels[0].fail_all(gone)
        return await task

    results = run(body)
    assert all(not ok for ok, _ in results[:2])
    error = results[0][1]
    assert isinstance(error, WorkerCrashedError)
    assert "died with SIGKILL" in str(error)


def test_an_idempotent_tools_chunk_is_sent_again_once_after_a_crash() -> None:
    async def body() -> tuple[list[Any], int]:
        host = FakeHost(1, add, idempotent=True)
        channel = host.channels[0]
        channel.hold = True
        task = asyncio.create_task(
            run_map(host, "s", "add", [{"a": 1}, {"a": 2}], timeout=5, chunksize=2, affinity="none")
        )
        await until(lambda: channel.batches)
        channel.hold = False
        channel.fail_all(WorkerGone("w1", 1, exit_code=1, how="died", aftermath=""))
        results = await task
        return results, len(channel.batches)

    results, sent = run(body)
    assert results == [(True, 2), (True, 3)]
    assert sent == 2


def test_a_map_past_its_deadline_cancels_what_is_still_running() -> None:
    async def body() -> FakeHost:
        host = FakeHost(1, add)
        host.channels[0].hold = True
        with pytest.raises(CallTimeoutError, match=r"did not finish within 0\.1 s"):
            await run_map(
                host, "s", "add", [{"a": 1}] * 4, timeout=0.1, chunksize=1, affinity="none"
            )
        return host

    host = run(body)
    assert host.channels[0].cancelled  # the worker was told to stop
    assert host.in_flight() == [0]


def test_an_item_that_is_not_a_mapping_is_refused_before_anything_runs() -> None:
    async def body() -> FakeHost:
        host = FakeHost(1, add)
        with pytest.raises(InvalidArgumentError, match="item 1 is a int"):
            await run_map(
                host,
                "s",
                "add",
                [{"a": 1}, 5],
                timeout=5,
                chunksize=None,  # type: ignore[list-item]
                affinity="none",
            )
        return host

    assert run(body).channels[0].batches == []


def test_default_chunks_give_each_worker_about_four() -> None:
    assert default_chunksize(1000, 2) == 125
    assert default_chunksize(3, 8) == 1
