"""The public API end to end: real worker processes, real gRPC on loopback.

Covers issue 2's "What it must show" list through ``sp.start`` / ``Client`` / ``Session``.
"""

from __future__ import annotations

import asyncio
import math
import os
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

import snakepit_nb as sp
from snakepit_nb._loop import get_loop_thread
from snakepit_nb.protocol import pb, pb_grpc

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


# ---------------------------------------------------------------------- values


VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    -7,
    2**62,
    10**30,
    3.25,
    -0.0,
    "",
    "héllo ✓ 🐍",
    "None",
    b"",
    b"\x00\xff" * 10,
    [],
    [1, 2.5, "x", None, [True]],
    {},
    {"a": {"b": [1, {"c": None}]}},
    {1: "int key", "s": 2},
    {"$sp": "a user key that looks like a tag"},
    [float("inf"), float("-inf")],
]


def test_every_value_type_round_trips(showcase_client: sp.Client) -> None:
    s = showcase_client.session("values")
    for value in VALUES:
        echoed = s.call("echo", value=value)
        assert echoed == value, value
        assert type(echoed) is type(value), value
    assert s.call("echo", value=(1, 2)) == (1, 2)  # pickled: a tuple stays a tuple
    nan = s.call("echo", value=float("nan"))
    assert isinstance(nan, float)
    assert math.isnan(nan)
    nested = s.call("echo", value={"x": [float("nan"), 1]})
    assert math.isnan(nested["x"][0])
    assert nested["x"][1] == 1
    big = os.urandom(300_000)  # > 64 KiB: travels in binary_parameters
    assert s.call("echo", value=big) == big
    assert s.call("nbytes", n=200_000) == bytes(200_000)
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    back = s.call("echo", value=array)
    assert isinstance(back, np.ndarray)
    assert back.dtype == np.float32
    assert back.shape == (3, 4)
    assert np.array_equal(back, array)
    assert s.call("add", a=1, b=2) == 3
    assert isinstance(s.call("add", a=1, b=2), int)


# ---------------------------------------------------------------------- errors


def test_tool_exception_is_remote_tool_error_and_the_worker_stays_up(
    showcase_client: sp.Client,
) -> None:
    s = showcase_client.session()
    before = s.call("whoami")
    with pytest.raises(sp.RemoteToolError) as info:
        s.call("fail", message="kaboom", kind="KeyError")
    err = info.value
    assert err.remote_type == "KeyError"
    assert "kaboom" in err.remote_message
    assert "Traceback" in err.remote_traceback
    assert "fail" in err.remote_traceback
    assert err.tool_name == "fail"
    assert "KeyError" in "\n".join(err._render_traceback_())
    after = s.call("whoami")
    assert after["pid"] == before["pid"]
    assert s.call("add", a=2, b=3) == 5


def test_unknown_tool_session_and_bad_arguments(showcase_client: sp.Client) -> None:
    s = showcase_client.session("errs")
    with pytest.raises(sp.ToolNotFoundError, match="'nope'") as tool_info:
        s.call("nope")
    assert "add" in str(tool_info.value)  # lists what exists
    with pytest.raises(sp.ToolNotFoundError) as near_info:
        s.call("ad", a=1)
    message = str(near_info.value)
    assert "tool 'ad' is not registered (did you mean 'add'?)" in message
    assert "worker" not in message
    assert "w1" not in message
    with pytest.raises(sp.InvalidArgumentError, match="missing required parameter 'a'"):
        s.call("add", b=1)
    with pytest.raises(sp.InvalidArgumentError, match="'n'"):
        s.call("nbytes", n="ten")
    with pytest.raises(sp.InvalidArgumentError, match="unknown parameter 'zzz'"):
        s.call("add", a=1, b=2, zzz=3)
    with pytest.raises(sp.InvalidArgumentError, match="_timeout"):
        s.call("add", a=1, b=2, _timeout=-1)
    s.close()
    with pytest.raises(sp.SessionNotFoundError, match=r"session 'errs' does not exist"):
        s.call("add", a=1, b=2)
    # The client is fine afterwards.
    assert showcase_client.session("errs").call("add", a=1, b=1) == 2


def test_call_timeout(showcase_client: sp.Client) -> None:
    s = showcase_client.session("t", timeout=0.3)
    started = time.monotonic()
    with pytest.raises(sp.CallTimeoutError):
        s.call("slow", seconds=5)
    assert time.monotonic() - started < 3
    assert s.call("slow", seconds=0.01, _timeout=5)["slept"] >= 0


# ---------------------------------------------------------------------- streams


def test_stream_chunks_arrive_in_order_with_the_final_value(showcase_client: sp.Client) -> None:
    s = showcase_client.session()
    stream = s.stream("count", n=500)
    chunks = list(stream)
    assert [c["i"] for c in chunks] == list(range(500))
    assert chunks[-1]["progress"] == 1.0
    assert stream.result == 500
    assert stream.chunks == chunks
    assert stream.done
    with s.stream("count", n=3) as again:
        assert again.collect() == [{"i": i, "progress": (i + 1) / 3} for i in range(3)]


def test_a_stream_told_to_keep_n_chunks_holds_the_last_n(showcase_client: sp.Client) -> None:
    s = showcase_client.session()
    stream = s.stream("count", n=2000, _keep=10)
    seen = [c["i"] for c in stream]
    assert seen == list(range(2000))  # iteration still gets every chunk
    assert [c["i"] for c in stream.chunks] == list(range(1990, 2000))
    assert stream.received == 2000
    assert stream.result == 2000
    assert "2000 chunks" in repr(stream)
    with s.stream("count", n=5, _keep=0) as nothing_kept:
        assert nothing_kept.collect() == []
        assert nothing_kept.received == 5
    for bad in (-1, 2.5, True, "10"):
        with pytest.raises(sp.InvalidArgumentError, match="_keep must be a whole number"):
            s.stream("count", n=3, _keep=bad)


TICKER = '''
import time

def ticker(path: str, delay: float = 0.01):
    """Tick until closed; record the close in a file."""
    i = 0
    try:
        while True:
            yield i
            i += 1
            time.sleep(delay)
    finally:
        with open(path, "w") as f:
            f.write(f"closed after {i}")
'''


def test_closing_a_stream_early_stops_the_generator_in_the_worker(
    showcase_client: sp.Client, tmp_path: Path
) -> None:
    spec = showcase_client.define_tool(TICKER)
    assert spec.name == "ticker"
    assert spec.supports_streaming
    assert spec.kind == "cell"
    assert "ticker" in {t.name for t in showcase_client.tools()}
    s = showcase_client.session()
    marker = tmp_path / "closed.txt"
    stream = s.stream("ticker", path=str(marker))
    first = [next(stream) for _ in range(5)]
    assert first == [0, 1, 2, 3, 4]
    stream.close()
    assert wait_for(marker.exists, timeout=10), "the generator's finally did not run"
    assert marker.read_text().startswith("closed after")
    # The worker is free again at once (capacity 1).
    started = time.monotonic()
    assert s.call("add", a=1, b=1) == 2
    assert time.monotonic() - started < 2


def test_breaking_out_with_a_with_block_closes_too(
    showcase_client: sp.Client, tmp_path: Path
) -> None:
    showcase_client.define_tool(TICKER)
    marker = tmp_path / "closed2.txt"
    with showcase_client.session().stream("ticker", path=str(marker)) as stream:
        for value in stream:
            if value == 3:
                break
    assert wait_for(marker.exists, timeout=10)


def test_define_tool_bad_source_changes_nothing(showcase_client: sp.Client) -> None:
    before = {t.name for t in showcase_client.tools()}
    with pytest.raises(sp.InvalidArgumentError, match="does not parse"):
        showcase_client.define_tool("def broken(:\n    pass")
    with pytest.raises(sp.InvalidArgumentError, match="defines no function"):
        showcase_client.define_tool("x = 1")
    with pytest.raises(sp.InvalidArgumentError, match="tool name"):
        showcase_client.define_tool("def f():\n    return 1", name="bad name")
    with pytest.raises(sp.RemoteToolError):
        showcase_client.define_tool("import not_a_module_anywhere\ndef f():\n    return 1")
    assert {t.name for t in showcase_client.tools()} == before
    spec = showcase_client.define_tool(
        "def helper(x):\n    return x * 2\n\ndef doubled(x: int) -> int:\n    return helper(x)\n"
    )
    assert spec.name == "doubled"
    assert showcase_client.session().call("doubled", x=21) == 42
    showcase_client.remove_tool("doubled")
    with pytest.raises(sp.ToolNotFoundError):
        showcase_client.session().call("doubled", x=1)


# ---------------------------------------------------------------------- kernel tools


def test_a_worker_tool_calls_a_kernel_tool(showcase_client: sp.Client) -> None:
    notes = {"alpha": [1, 2, 3]}
    threads: list[str] = []

    def lookup(key: str) -> Any:
        """Read a note kept in the kernel."""
        threads.append(threading.current_thread().name)
        return notes[key]

    spec = showcase_client.register_kernel_tool(lookup)
    assert spec.kind == "kernel"
    assert spec.name == "lookup"
    s = showcase_client.session()
    assert s.call("ask_kernel", tool="lookup", key="alpha") == [1, 2, 3]
    assert threads
    assert threads[0].startswith("snakepit-kernel-tool")
    with pytest.raises(sp.RemoteToolError) as info:
        s.call("ask_kernel", tool="lookup", key="missing")
    assert "missing" in str(info.value)
    # A kernel tool is also callable directly from the session (it runs in the kernel).
    assert s.call("lookup", key="alpha") == [1, 2, 3]
    with pytest.raises(sp.RemoteToolError) as direct:
        s.call("lookup", key="zzz")
    assert direct.value.remote_type == "KeyError"
    showcase_client.unregister_kernel_tool("lookup")
    with pytest.raises(sp.RemoteToolError, match="lookup"):
        s.call("ask_kernel", tool="lookup", key="alpha")
    with pytest.raises(sp.ToolNotFoundError):
        showcase_client.unregister_kernel_tool("lookup")


# ---------------------------------------------------------------------- auth, status, sessions


def test_the_running_orchestrator_refuses_calls_without_the_token(
    showcase_client: sp.Client,
) -> None:
    with grpc.insecure_channel(showcase_client.address) as channel:
        stub = pb_grpc.BridgeServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Ping(pb.PingRequest(message="x"), timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as info:
            stub.InitializeSession(pb.InitializeSessionRequest(session_id="evil"), timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "evil" not in {i.session_id for i in showcase_client.sessions()}


def test_status_sessions_and_info(showcase_client: sp.Client) -> None:
    s = showcase_client.session("stats", strict_affinity=True)
    for _ in range(3):
        s.call("noop")
    status = showcase_client.status()
    assert len(status.workers) == 1
    worker = status.workers[0]
    assert worker.state == "ready"
    assert worker.pid
    assert worker.calls >= 3
    assert status.queue_length == 0
    assert status.sessions.active >= 1
    assert "w1" in str(status)
    info = s.info()
    assert info.call_count == 3
    # A stream counts as one call, a map as one call per item (failures counted too).
    assert [c["i"] for c in s.stream("count", n=2)] == [0, 1]
    s.map("add", [{"a": 1, "b": 1}] * 4)
    s.map("fail", [{"message": "m"}], return_exceptions=True)
    info = s.info()
    assert (info.call_count, info.error_count) == (3 + 1 + 4 + 1, 1)
    assert info.last_worker == "w1"
    assert info.session_id == "stats"
    assert info.strict_affinity
    assert "stats" in {i.session_id for i in showcase_client.sessions()}
    s.vars["temperature"] = 0.5
    assert s.info().variable_count == 1
    s.close()
    assert "stats" not in {i.session_id for i in showcase_client.sessions()}


def test_map_keeps_order_and_reports_errors(showcase_client: sp.Client) -> None:
    s = showcase_client.session()
    assert s.map("add", [{"a": i, "b": 1} for i in range(200)]) == [i + 1 for i in range(200)]
    items = [{"message": "m0"}, {"message": "m1"}]
    with pytest.raises(sp.RemoteToolError):
        s.map("fail", items)
    mixed = s.map("echo", [{"value": 1}, {"value": 2}], return_exceptions=True)
    assert mixed == [1, 2]
    errors = s.map("fail", items, return_exceptions=True)
    assert all(isinstance(e, sp.RemoteToolError) for e in errors)
    assert [e.remote_message for e in errors] == ["m0", "m1"]
    assert s.map("add", []) == []
    with pytest.raises(sp.InvalidArgumentError, match="map item 1 is a int"):
        s.map("add", [{"a": 1, "b": 1}, 5])


def test_blocking_calls_refuse_to_run_on_the_loop_thread(showcase_client: sp.Client) -> None:
    s = showcase_client.session()

    async def inside_the_loop() -> None:
        s.call("noop")

    with pytest.raises(RuntimeError, match="would deadlock"):
        get_loop_thread().run(inside_the_loop())


def test_closed_client_says_so(client_factory: Any) -> None:
    client = client_factory()
    s = client.session()
    client.close()
    client.close()  # idempotent
    assert client.closed
    with pytest.raises(sp.ClosedError, match=r"sp\.start\(\)"):
        s.call("noop")
    with pytest.raises(sp.ClosedError):
        client.tools()


# ---------------------------------------------------------------------- the async API


def test_async_api_from_another_event_loop() -> None:
    async def main() -> tuple[Any, ...]:
        async with await sp.astart(workers=1, startup_timeout=60) as aclient:
            s = await aclient.session("async")
            total = await s.call("add", a=20, b=22)
            chunks = [c["i"] async for c in s.stream("count", n=4)]
            results = await asyncio.gather(*(s.call("echo", value=i) for i in range(20)))
            mapped = await s.map("add", [{"a": 1, "b": i} for i in range(5)])
            tools = await aclient.tools()
            return total, chunks, results, mapped, len(tools), aclient

    total, chunks, results, mapped, n_tools, aclient = asyncio.run(main())
    assert total == 42
    assert chunks == [0, 1, 2, 3]
    assert results == list(range(20))
    assert mapped == [1, 2, 3, 4, 5]
    assert n_tools > 5
    assert aclient.closed


def test_sessions_are_get_or_create(showcase_client: sp.Client) -> None:
    a = showcase_client.session("same")
    a.vars["x"] = 1
    b = showcase_client.session("same")
    assert b.vars["x"] == 1
    fresh = {showcase_client.session().session_id for _ in range(3)}
    assert len(fresh) == 3
    with pytest.raises(sp.InvalidArgumentError, match="timeout"):
        showcase_client.session("t", timeout=0)


def test_a_variable_watch_gives_the_value_then_changes_and_says_what_timed_out(
    showcase_client: sp.Client,
) -> None:
    s = showcase_client.session("watching")
    s.vars.define("t", 0, type="integer", min=0, max=10)
    with s.vars.watch("t") as changes:
        first = changes.next(timeout=10)
        assert (first.kind, first.value) == ("initial_value", 0)
        assert s.call("incr_var", name="t", by=3) == 3  # a worker writes it
        change = changes.next(timeout=10)
        assert (change.kind, change.value) == ("value_change", 3)
        assert change.source.startswith("w")
        with pytest.raises(TimeoutError, match=r"no change to 't' within 0\.05 s"):
            changes.next(timeout=0.05)
