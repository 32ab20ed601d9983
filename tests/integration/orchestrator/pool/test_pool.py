"""The pool with real workers: start-up, dispatch, affinity, queue, deadlines, cancellation,
streaming, map, status, cell-defined tools, recycling and telemetry."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pool_support import all_ready, pool_kwargs, wait_until, worker

from snakepit_nb._errors import (
    CallTimeoutError,
    PoolSaturatedError,
    RemoteToolError,
    SessionWorkerGoneError,
    ToolNotFoundError,
)
from snakepit_nb.protocol import pb

pytestmark = pytest.mark.integration


@pytest.fixture
def make(client_factory: Callable[..., Any]) -> Callable[..., Any]:
    def start(**kwargs: Any) -> Any:
        return client_factory(**pool_kwargs(**kwargs))

    return start


def in_flight(client: Any) -> dict[str, int]:
    return {w.worker_id: w.in_flight for w in client.status().workers}


# ------------------------------------------------------------------ start-up and status


def test_four_workers_start_concurrently(make: Callable[..., Any], tmp_path: Path) -> None:
    """Each worker's adapter import waits until all four import it at once: a serial start
    could not finish."""
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    client = make(
        workers=4, env={"POOL_TEST_BARRIER": str(barrier), "POOL_TEST_BARRIER_COUNT": "4"}
    )
    status = client.status()
    assert [w.worker_id for w in status.workers] == ["w1", "w2", "w3", "w4"]
    assert all(w.state == "ready" for w in status.workers)
    assert len({w.pid for w in status.workers}) == 4
    assert sorted(int(p.name) for p in barrier.iterdir()) == sorted(w.pid for w in status.workers)


def test_status_reports_each_worker(make: Callable[..., Any]) -> None:
    client = make(workers=2)
    s = client.session("status")
    for _ in range(3):
        s.call("noop")
    with pytest.raises(RemoteToolError):
        s.call("fail")
    status = client.status()
    pool = status.pool
    assert pool.queue_length == 0
    assert pool.max_queue == 1024
    assert pool.capacity == 1
    assert pool.totals["calls"] == 4
    assert pool.totals["errors"] == 1
    for w in status.workers:
        assert w.pid
        assert w.pid > 0
        assert w.rss is not None
        assert w.rss > 10 * 2**20
        assert w.uptime > 0
        assert w.address.startswith("127.0.0.1:")
        assert w.restarts == 0
        assert w.in_flight == 0


# ------------------------------------------------------------------ dispatch


def test_least_loaded_spreads_concurrent_calls(make: Callable[..., Any]) -> None:
    client = make(workers=2)
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as executor:
        futures = [
            executor.submit(client.session(f"spread-{i}").call, "slow", seconds=1.0)
            for i in range(2)
        ]
        wait_until(lambda: in_flight(client) == {"w1": 1, "w2": 1}, 5.0, "one call per worker")
        assert [f.result(timeout=10) for f in futures] == ["done", "done"]


def test_capacity_allows_concurrent_calls_per_worker(make: Callable[..., Any]) -> None:
    client = make(workers=1, capacity=3)
    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as executor:
        futures = [
            executor.submit(client.session(f"cap-{i}").call, "sleep_sync", seconds=1.0)
            for i in range(3)
        ]
        wait_until(lambda: in_flight(client) == {"w1": 3}, 5.0, "three calls on one worker")
        assert client.status().pool.queue_length == 0
        assert [f.result(timeout=10) for f in futures] == ["slept"] * 3


def run_concurrently(client: Any, tool: str, n: int, **kwargs: Any) -> tuple[list[Any], float]:
    """``n`` calls of ``tool`` at once (one thread each); their results and the wall time."""
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=n) as executor:
        futures = [
            executor.submit(client.session(f"{tool}-{i}").call, tool, **kwargs) for i in range(n)
        ]
        results = [f.result(timeout=60) for f in futures]
    return results, time.monotonic() - started


def test_async_tools_overlap_beyond_the_sync_capacity(make: Callable[..., Any]) -> None:
    # Default config: capacity=1 (sync), async_capacity=64. 20 x 0.5 s of an async tool on 2
    # workers take ~0.5 s when they overlap; one at a time per worker would take 5 s.
    client = make(workers=2)
    pool = client.status().pool
    assert (pool.capacity, pool.async_capacity) == (1, 64)
    results, elapsed = run_concurrently(client, "slow", 20, seconds=0.5)
    assert results == ["done"] * 20
    assert elapsed < 3.0
    assert client.status().pool.totals["in_flight"] == 0


def test_async_calls_do_not_take_the_sync_slot(make: Callable[..., Any]) -> None:
    client = make(workers=1)
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as executor:
        waiting = [
            executor.submit(client.session(f"a{i}").call, "slow", seconds=1.5) for i in range(3)
        ]
        wait_until(lambda: in_flight(client) == {"w1": 3}, 5.0, "three async calls to run")
        # The sync slot is still free: a sync call runs at once, nothing queues.
        started = time.monotonic()
        assert client.session("sync").call("sleep_sync", seconds=0.1) == "slept"
        assert time.monotonic() - started < 1.2
        assert client.status().pool.queue_length == 0
        assert [f.result(timeout=10) for f in waiting] == ["done"] * 3


def test_sync_tools_still_run_one_at_a_time_per_worker(make: Callable[..., Any]) -> None:
    client = make(workers=1)
    results, elapsed = run_concurrently(client, "sleep_sync", 4, seconds=0.3)
    assert results == ["slept"] * 4
    assert elapsed >= 4 * 0.3


def test_async_capacity_one_serialises_async_tools(make: Callable[..., Any]) -> None:
    client = make(workers=1, async_capacity=1)
    assert client.status().pool.async_capacity == 1
    results, elapsed = run_concurrently(client, "slow", 4, seconds=0.3)
    assert results == ["done"] * 4
    assert elapsed >= 4 * 0.3


def test_bounded_queue_says_pool_saturated(make: Callable[..., Any]) -> None:
    client = make(workers=1, max_queue=2)
    s = client.session("busy")
    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as executor:
        running = executor.submit(s.call, "sleep_sync", seconds=1.5)
        wait_until(lambda: in_flight(client) == {"w1": 1}, 5.0, "the first call to run")
        queued = [executor.submit(s.call, "add", a=i, b=0) for i in range(2)]
        wait_until(lambda: client.status().pool.queue_length == 2, 5.0, "two queued calls")
        with pytest.raises(PoolSaturatedError) as info:
            s.call("noop")
        assert str(info.value) == (
            "pool saturated: 2 calls queued (max_queue=2); wait for results or start more workers"
        )
        assert running.result(timeout=10) == "slept"
        assert [f.result(timeout=10) for f in queued] == [0, 1]
    assert s.call("add", a=1, b=1) == 2


def test_hint_affinity_prefers_the_sessions_worker(make: Callable[..., Any]) -> None:
    client = make(workers=3)
    s = client.session("sticky")
    first = s.call("whoami")["worker_id"]
    assert {s.call("whoami")["worker_id"] for _ in range(10)} == {first}


def test_strict_affinity_fails_when_its_worker_is_gone(make: Callable[..., Any]) -> None:
    client = make(workers=2)
    strict = client.session("objects", strict_affinity=True)
    home = strict.call("whoami")
    assert {strict.call("whoami")["worker_id"] for _ in range(5)} == {home["worker_id"]}
    os.kill(home["pid"], signal.SIGKILL)
    wait_until(
        lambda: worker(client, home["worker_id"]).pid != home["pid"],
        10.0,
        "the worker to be replaced",
    )
    with pytest.raises(SessionWorkerGoneError) as info:
        strict.call("whoami")
    assert str(info.value) == (
        f"session 'objects' was bound to worker {home['worker_id']}, which is gone; its "
        "in-memory objects are lost — recreate them or use a non-strict session"
    )
    # Other sessions carry on.
    assert client.session("loose").call("add", a=1, b=2) == 3


def test_strict_affinity_waits_for_its_busy_worker(make: Callable[..., Any]) -> None:
    client = make(workers=2)
    strict = client.session("pinned", strict_affinity=True)
    home = strict.call("whoami")["worker_id"]
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as executor:
        first = executor.submit(strict.call, "sleep_sync", seconds=0.8)
        wait_until(lambda: in_flight(client)[home] == 1, 5.0, "the first call to run")
        second = executor.submit(strict.call, "whoami")
        wait_until(lambda: client.status().pool.queue_length == 1, 5.0, "the second to queue")
        assert first.result(timeout=10) == "slept"
        assert second.result(timeout=10)["worker_id"] == home


# ------------------------------------------------------------------ deadlines, cancellation


def test_deadline_cancels_the_tool_in_the_worker(make: Callable[..., Any], tmp_path: Path) -> None:
    client = make(workers=1)
    s = client.session("deadline")
    marker = str(tmp_path / "slow")
    started = time.monotonic()
    with pytest.raises(CallTimeoutError, match=r"did not finish within 0\.5 s"):
        s.call("slow", seconds=30.0, marker=marker, _timeout=0.5)
    assert time.monotonic() - started < 3.0
    wait_until(lambda: Path(marker + ".cancelled").exists(), 5.0, "the tool to be cancelled")
    assert s.call("add", a=1, b=1) == 2


def test_cancelled_call_reaches_the_worker(
    make: Callable[..., Any], tmp_path: Path, run_on_loop: Callable[[Any], Any]
) -> None:
    client = make(workers=1)
    pool = client.orchestrator.pool
    marker = str(tmp_path / "slow")

    async def cancel_midway() -> bool:
        task = asyncio.ensure_future(
            pool.call("s", "slow", {"seconds": 30.0, "marker": marker}, timeout=None)
        )
        while pool.status().workers[0].in_flight == 0:  # noqa: ASYNC110 - polling a counter
            await asyncio.sleep(0.01)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return True
        return False

    assert run_on_loop(cancel_midway())
    wait_until(lambda: Path(marker + ".cancelled").exists(), 5.0, "the tool to be cancelled")
    # The slot is freed once the worker confirms; the next call runs.
    wait_until(lambda: in_flight(client) == {"w1": 0}, 5.0, "the slot to be released")
    assert client.session("s").call("add", a=2, b=2) == 4


# ------------------------------------------------------------------ streaming


def test_stream_yields_chunks_and_the_return_value(make: Callable[..., Any]) -> None:
    client = make(workers=1)
    stream = client.session("stream").stream("count", n=2500)
    chunks = list(stream)
    assert chunks == [{"i": i} for i in range(2500)]
    assert stream.result == 2500


def test_closing_a_stream_closes_the_generator(
    make: Callable[..., Any], tmp_path: Path, run_on_loop: Callable[[Any], Any]
) -> None:
    client = make(workers=1)
    pool = client.orchestrator.pool
    marker = str(tmp_path / "ticks")

    async def read_two_then_close() -> list[object]:
        stream = pool.stream(
            "s", "ticks", {"n": 10_000, "delay": 0.01, "marker": marker}, timeout=None
        )
        got: list[object] = []
        async for batch in stream:
            got.extend(batch)
            if len(got) >= 2:
                break
        await stream.aclose()
        return got

    assert run_on_loop(read_two_then_close())[:2] == [0, 1]
    wait_until(lambda: Path(marker + ".closed").exists(), 5.0, "the generator's finally")
    wait_until(lambda: in_flight(client) == {"w1": 0}, 5.0, "the slot to be released")
    assert client.session("s").call("add", a=1, b=1) == 2


def test_async_generator_streams_take_async_slots(
    make: Callable[..., Any], run_on_loop: Callable[[Any], Any]
) -> None:
    client = make(workers=1)
    pool = client.orchestrator.pool
    handle = pool.handles[0]

    async def sync_call_during_streams() -> tuple[int, int, object, int]:
        streams = [
            pool.stream("s", "ticks", {"n": 10_000, "delay": 0.01}, timeout=None) for _ in range(2)
        ]
        for stream in streams:
            await anext(stream)  # both running on the one worker
        counts = (handle.async_in_flight, handle.sync_in_flight)
        # The sync slot is free: a sync call does not queue behind the streams.
        result = await pool.call("s", "add", {"a": 2, "b": 3}, timeout=10.0)
        for stream in streams:
            await stream.aclose()
        return (*counts, result, handle.in_flight)

    assert run_on_loop(sync_call_during_streams()) == (2, 0, 5, 0)


def test_stream_deadline(make: Callable[..., Any]) -> None:
    client = make(workers=1)
    s = client.session("stream-deadline")
    with pytest.raises(CallTimeoutError):
        list(s.stream("ticks", n=10_000, delay=0.01, _timeout=0.5))
    assert s.call("add", a=1, b=1) == 2


# ------------------------------------------------------------------ map


def test_map_keeps_order_and_reports_errors_per_item(make: Callable[..., Any]) -> None:
    client = make(workers=2)
    s = client.session("map")
    values = s.map("odd_only", [{"i": i} for i in range(1001)], return_exceptions=True)
    assert len(values) == 1001
    for i, value in enumerate(values):
        if i % 2:
            assert value == i
        else:
            assert isinstance(value, RemoteToolError)
            assert value.remote_message == f"{i} is even"
    with pytest.raises(RemoteToolError, match="0 is even"):
        s.map("odd_only", [{"i": i} for i in range(5)])
    assert s.call("add", a=1, b=1) == 2


def test_map_spreads_chunks_over_workers(make: Callable[..., Any]) -> None:
    client = make(workers=2)
    s = client.session("spread")
    assert s.map("add", [{"a": i, "b": 1} for i in range(20_000)]) == list(range(1, 20_001))
    calls = {w.worker_id: w.calls for w in client.status().workers}
    assert calls["w1"] > 0
    assert calls["w2"] > 0
    assert calls["w1"] + calls["w2"] == 20_000


def test_map_items_on_a_dead_worker_fail_others_complete(make: Callable[..., Any]) -> None:
    client = make(workers=2)
    s = client.session("map-crash")
    # Item 3 kills its worker: the items of that chunk fail, everything else succeeds.
    items = [{"how": "exit1"} if i == 3 else {"how": "nope"} for i in range(8)]
    values = s.map("crash", items, return_exceptions=True)
    kinds = [type(v).__name__ for v in values]
    assert kinds[3] == "WorkerCrashedError"
    assert "RemoteToolError" in kinds  # items on the surviving worker ran (and raised)
    wait_until(lambda: all_ready(client), 10.0, "the replacement")
    assert s.map("add", [{"a": 1}] * 10) == [1] * 10


# ------------------------------------------------------------------ cell-defined tools


def missing_everywhere(client: Any, tool: str, **kwargs: Any) -> set[str]:
    """Workers that do not serve ``tool``: each one's own DescribeTools lacks it, and calls
    (fresh sessions rotate over the workers) answer NOT_FOUND."""
    for i in range(8):
        with pytest.raises(ToolNotFoundError):
            client.session(f"probe-{tool}-{i}").call(tool, **kwargs)
    pool = client.orchestrator.pool

    async def described() -> dict[str, set[str]]:
        tables = {}
        for handle in pool.handles:
            reply = await handle.stub.DescribeTools(
                pb.DescribeToolsRequest(), metadata=pool.metadata, timeout=10
            )
            tables[handle.worker_id] = {spec.name for spec in reply.tools}
        return tables

    tables = asyncio.run_coroutine_threadsafe(described(), pool_loop()).result(30)
    return {wid for wid, names in tables.items() if tool not in names}


def pool_loop() -> asyncio.AbstractEventLoop:
    from snakepit_nb._loop import get_loop_thread

    return get_loop_thread().loop


TRIPLE = "def triple(x: int) -> int:\n    return 3 * x\n"


def test_define_tool_reaches_every_worker_and_later_ones(make: Callable[..., Any]) -> None:
    client = make(workers=2)
    spec = client.define_tool(TRIPLE)
    assert spec.name == "triple"
    assert spec.metadata["source"] == "cell"
    s = client.session("cells")
    assert s.map("triple", [{"x": i} for i in range(100)]) == [3 * i for i in range(100)]
    # Workers started later get the definition replayed before they take calls.
    pids = {w.pid for w in client.status().workers}
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    wait_until(
        lambda: all_ready(client) and not pids & {w.pid for w in client.status().workers},
        15.0,
        "both workers to be replaced",
    )
    assert s.map("triple", [{"x": i} for i in range(100)]) == [3 * i for i in range(100)]


def test_define_tool_failure_in_one_worker_changes_nothing(make: Callable[..., Any]) -> None:
    client = make(workers=2)
    client.define_tool("def picky(x):\n    return ('v1', x)\n")
    refusing = (
        "import os\n"
        "if os.environ['SNAKEPIT_NB_WORKER_ID'] == 'w2':\n"
        "    raise RuntimeError('w2 refuses this tool')\n"
        "def picky(x):\n"
        "    return ('v2', x)\n"
    )
    with pytest.raises(RemoteToolError) as info:
        client.define_tool(refusing)
    assert info.value.remote_type == "RuntimeError"
    assert "w2 refuses this tool" in info.value.remote_message
    assert info.value.worker_id == "w2"
    assert "RuntimeError" in info.value.remote_traceback
    # Rolled back: both workers still run v1.
    s = client.session("picky")
    assert s.map("picky", [{"x": i} for i in range(40)]) == [("v1", i) for i in range(40)]


def test_define_new_tool_failure_is_rolled_back(make: Callable[..., Any]) -> None:
    client = make(workers=2)
    refusing = (
        "import os\n"
        "if os.environ['SNAKEPIT_NB_WORKER_ID'] == 'w1':\n"
        "    raise ImportError('no such library here')\n"
        "def fresh():\n"
        "    return 1\n"
    )
    with pytest.raises(RemoteToolError, match="no such library"):
        client.define_tool(refusing)
    assert "fresh" not in {t.name for t in client.tools()}
    # w2 accepted it and was rolled back: neither worker has it.
    assert missing_everywhere(client, "fresh") == {"w1", "w2"}
    assert client.session("fresh").call("add", a=1, b=1) == 2


def test_remove_tool(make: Callable[..., Any]) -> None:
    client = make(workers=2)
    client.define_tool(TRIPLE)
    client.remove_tool("triple")
    assert "triple" not in {t.name for t in client.tools()}
    assert missing_everywhere(client, "triple", x=1) == {"w1", "w2"}
    assert client.session("gone").call("add", a=1, b=1) == 2


# ------------------------------------------------------------------ recycling, telemetry


def test_recycle_after_calls(make: Callable[..., Any]) -> None:
    client = make(workers=1, recycle_after_calls=5)
    s = client.session("recycle")
    first = s.call("whoami")["pid"]
    for _ in range(4):
        s.call("noop")
    second = wait_until(
        lambda: (w := worker(client, "w1")).state == "ready" and w.pid != first and w.pid,
        10.0,
        "the worker to be recycled",
    )
    assert s.call("whoami")["pid"] == second
    assert worker(client, "w1").restarts == 0  # a recycle is not a crash


def test_recycle_above_rss(make: Callable[..., Any]) -> None:
    client = make(workers=1, recycle_above_rss=1 * 2**20, heartbeat_interval=0.2)
    first = worker(client, "w1").pid
    wait_until(
        lambda: (w := worker(client, "w1")).state == "ready" and w.pid != first,
        10.0,
        "the worker to be recycled for its memory",
    )
    assert client.session("rss").call("add", a=1, b=1) == 2


def test_telemetry_reaches_subscribers(
    make: Callable[..., Any], run_on_loop: Callable[[Any], Any]
) -> None:
    client = make(workers=1)
    pool = client.orchestrator.pool
    events: list[tuple[str, pb.TelemetryEvent]] = []

    async def subscribe() -> Callable[[], None]:
        return pool.subscribe_telemetry(lambda wid, ev: events.append((wid, ev)))

    unsubscribe = run_on_loop(subscribe())
    s = client.session("telemetry")
    deadline = time.monotonic() + 10
    while not any("tool" in ev.event_parts for _, ev in events):
        s.call("noop")
        assert time.monotonic() < deadline, "no tool telemetry arrived"
        time.sleep(0.05)
    assert {wid for wid, _ in events} == {"w1"}

    async def stop() -> None:
        unsubscribe()

    run_on_loop(stop())


def test_recycle_after_seconds(make: Callable[..., Any]) -> None:
    client = make(workers=1, recycle_after_seconds=1.0, heartbeat_interval=0.2)
    first = worker(client, "w1").pid
    wait_until(
        lambda: (w := worker(client, "w1")).state == "ready" and w.pid != first,
        10.0,
        "the worker to be recycled for its age",
    )
    assert client.session("age").call("add", a=1, b=1) == 2


# ------------------------------------------------------------------ transport, start-up failure


def test_unix_socket_transport(make: Callable[..., Any]) -> None:
    client = make(workers=2, transport="unix")
    addresses = [w.address for w in client.status().workers]
    assert all(a.startswith("unix:") for a in addresses)
    s = client.session("unix")
    assert s.call("add", a=20, b=22) == 42
    assert s.map("add", [{"a": i} for i in range(100)]) == list(range(100))
    assert list(s.stream("count", n=3)) == [{"i": 0}, {"i": 1}, {"i": 2}]


def test_start_failure_names_the_cause_and_leaves_nothing(
    client_factory: Callable[..., Any],
) -> None:
    import psutil

    from snakepit_nb._errors import StartupError

    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with pytest.raises(StartupError) as info:
        client_factory(**pool_kwargs(workers=2, adapter="no_such_module_here:Nope"))
    assert "no_such_module_here" in str(info.value)
    leftovers = [
        p
        for p in psutil.Process().children(recursive=True)
        if p.pid not in before and "snakepit_nb.worker" in " ".join(p.cmdline())
    ]
    assert leftovers == []
