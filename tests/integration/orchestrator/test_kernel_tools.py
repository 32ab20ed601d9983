"""Kernel tools: functions in the kernel that workers (and sessions) call.

Most tests use an orchestrator that only serves (no pool): kernel tools need no worker. The
last one goes through a real worker's ``ctx.call_kernel_tool``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import snakepit_nb as sp
from snakepit_nb._loop import get_loop_thread
from snakepit_nb.client.clients import AsyncClient, Client
from snakepit_nb.orchestrator.config import Config
from snakepit_nb.orchestrator.orchestrator import Orchestrator

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.fixture
def kernel_client() -> Iterator[Client]:
    """A client whose orchestrator serves but runs no workers."""
    loop_thread = get_loop_thread()
    orch = Orchestrator(Config(kernel_tool_threads=2))
    loop_thread.run(orch.serve(), timeout=30)
    client = Client(AsyncClient(orch, loop_thread))
    yield client
    client.close()


def test_sync_tools_run_in_a_bounded_thread_pool(kernel_client: Client) -> None:
    lock = threading.Lock()
    running = 0
    peak = 0
    names: set[str] = set()

    def work(ms: int) -> str:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
            names.add(threading.current_thread().name)
        time.sleep(ms / 1000)
        with lock:
            running -= 1
        return threading.current_thread().name

    kernel_client.register_kernel_tool(work)
    s = kernel_client.session()
    started = time.monotonic()
    results = s.map("work", [{"ms": 100}] * 6)
    elapsed = time.monotonic() - started
    assert len(results) == 6
    assert peak == 2  # kernel_tool_threads=2: never more at once
    assert all(n.startswith("snakepit-kernel-tool") for n in names)
    assert "snakepit-loop" not in names
    assert elapsed >= 0.25  # 6 x 100 ms on 2 threads is at least 300 ms


def test_a_slow_sync_tool_does_not_block_the_loop(kernel_client: Client) -> None:
    release = threading.Event()

    def blocker() -> str:
        release.wait(10)
        return "released"

    def quick() -> str:
        return "quick"

    kernel_client.register_kernel_tool(blocker)
    kernel_client.register_kernel_tool(quick)
    s = kernel_client.session()

    async def scenario() -> tuple[str, str]:
        aclient = kernel_client.aio
        session = await aclient.session(s.session_id)
        slow = asyncio.ensure_future(session.call("blocker"))
        fast = await asyncio.wait_for(session.call("quick"), 5)
        release.set()
        return fast, await slow

    assert asyncio.run(scenario()) == ("quick", "released")


def test_async_tools_run_on_the_loop_and_time_out(kernel_client: Client) -> None:
    async def fetch(key: str) -> dict[str, str]:
        await asyncio.sleep(0)
        return {"key": key, "thread": threading.current_thread().name}

    async def forever() -> None:
        await asyncio.sleep(60)

    kernel_client.register_kernel_tool(fetch, name="fetch.v2", description="Fetch a key")
    kernel_client.register_kernel_tool(forever)
    specs = {t.name: t for t in kernel_client.tools()}
    assert specs["fetch.v2"].description == "Fetch a key"
    assert specs["fetch.v2"].kind == "kernel"
    s = kernel_client.session()
    assert s.call("fetch.v2", key="k") == {"key": "k", "thread": "snakepit-loop"}
    started = time.monotonic()
    with pytest.raises(sp.CallTimeoutError, match="forever"):
        s.call("forever", _timeout=0.2)
    assert time.monotonic() - started < 5


def test_streaming_kernel_tool_through_the_session(kernel_client: Client) -> None:
    closed = threading.Event()

    def ticks(n: int) -> Iterator[int]:
        try:
            yield from range(n)
        finally:
            closed.set()

    kernel_client.register_kernel_tool(ticks)
    s = kernel_client.session()
    assert list(s.stream("ticks", n=2500)) == list(range(2500))
    closed.clear()
    stream = s.stream("ticks", n=10**9)
    assert [next(stream) for _ in range(3)] == [0, 1, 2]
    stream.close()
    assert closed.wait(5), "closing the stream did not close the kernel generator"
    kernel_client.register_kernel_tool(lambda: 1, name="single")
    with pytest.raises(sp.InvalidArgumentError, match="does not stream"):
        list(s.stream("single"))


def test_registration_errors(kernel_client: Client) -> None:
    with pytest.raises(sp.InvalidArgumentError, match="must be a function"):
        kernel_client.register_kernel_tool(42)  # type: ignore[arg-type]
    with pytest.raises(sp.InvalidArgumentError, match="tool name"):
        kernel_client.register_kernel_tool(lambda: 1, name="no spaces allowed")

    def uses_ctx(ctx: sp.SessionContext, x: int) -> int:
        return x

    with pytest.raises(sp.InvalidArgumentError, match="session context"):
        kernel_client.register_kernel_tool(uses_ctx)
    with pytest.raises(sp.ToolNotFoundError, match="kernel tool 'ghost'"):
        kernel_client.unregister_kernel_tool("ghost")
    assert kernel_client.tools() == []


def test_replacing_a_kernel_tool(kernel_client: Client) -> None:
    kernel_client.register_kernel_tool(lambda: 1, name="version")
    kernel_client.register_kernel_tool(lambda: 2, name="version")
    assert kernel_client.session().call("version") == 2
    assert [t.name for t in kernel_client.tools()] == ["version"]


def test_a_worker_calls_kernel_tools_concurrently(client_factory: Any) -> None:
    client = client_factory(workers=2, capacity=2)
    # Each call waits for a second one to be running at the same time: calls served one
    # after the other would break the barrier (its timeout) instead.
    barrier = threading.Barrier(2, timeout=20)
    running = 0
    most = 0
    lock = threading.Lock()

    def square(x: int) -> int:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        try:
            barrier.wait()
            return x * x
        finally:
            with lock:
                running -= 1

    client.register_kernel_tool(square)
    s = client.session()
    # Eight callers at once, each from a thread of its own (a map may run its items in
    # chunks, which would leave a last call without a partner at the barrier).
    with concurrent.futures.ThreadPoolExecutor(8) as callers:
        results = list(callers.map(lambda i: s.call("ask_kernel", tool="square", x=i), range(8)))
    assert results == [i * i for i in range(8)]
    assert most >= 2
