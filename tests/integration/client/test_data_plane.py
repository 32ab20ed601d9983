"""The data plane end to end: real workers, the lane (a unix socket and sealed memfds), gRPC.

Large arrays with default settings, exact Python values both ways (a script's ``__main__``
objects included), functions and lambdas, the memory left behind after success, errors,
cancels and a worker killed mid-transfer, concurrent large transfers that keep heartbeats
alive, and the refusals where pickles must not go (``auth=False``).
"""

from __future__ import annotations

import asyncio
import datetime
import decimal
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pandas as pd
import psutil
import pytest
from launcher_standin import processes_with_marker, wait_until

import snakepit_nb as sp
from snakepit_nb.protocol import pb, pb_grpc

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

MB = 1_000_000


def _memfds() -> list[str]:
    """The memfds this process holds open (each would pin its memory)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("/memfd:"):
            found.append(target)
    return found


def _worker_memfds(pid: int) -> list[str]:
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("/memfd:"):
            found.append(target)
    return found


def _shm() -> set[str]:
    """Our names in /dev/shm (there should never be any: segments are anonymous memfds), and
    this process's mappings of anything there. Other programs on the machine may come and go
    in /dev/shm meanwhile; only what is ours counts."""
    ours = {name for name in os.listdir("/dev/shm") if "snakepit" in name}
    with open("/proc/self/maps") as maps:
        mapped = {line.split()[-1] for line in maps if "/dev/shm/" in line}
    return ours | mapped


# ---------------------------------------------------------------------- large values


def test_a_100_mb_array_round_trips_with_default_settings(showcase_client: sp.Client) -> None:
    s = showcase_client.session("big")
    before_shm = _shm()
    array = np.random.default_rng(1).random(100 * MB // 8)  # 100 MB of float64
    echoed = s.call("echo", value=array)
    assert isinstance(echoed, np.ndarray)
    assert echoed.dtype == array.dtype
    assert echoed.shape == array.shape
    assert np.array_equal(echoed, array)
    # Zero-copy on arrival: a view of the mapped segment, not an array that owns a copy.
    assert not echoed.flags.owndata
    echoed[0] = -1.0  # a private (copy-on-write) mapping: writable, and ours alone
    assert echoed[0] == -1.0
    del echoed
    assert _memfds() == []
    assert _shm() == before_shm
    worker = showcase_client.status().workers[0]
    assert worker.restarts == 0
    # The worker closes its reply's memfd right after sending it.
    assert wait_until(lambda: _worker_memfds(worker.pid) == [], 5.0)


def test_bytes_and_a_memoryview_travel_raw(showcase_client: sp.Client) -> None:
    s = showcase_client.session("raw")
    blob = os.urandom(3 * MB)
    assert s.call("echo", value=blob) == blob
    assert type(s.call("echo", value=blob)) is bytes
    assert s.call("echo", value=bytearray(blob)) == bytearray(blob)
    assert type(s.call("echo", value=bytearray(blob))) is bytearray
    assert s.call("echo", value=memoryview(blob)) == blob
    assert s.call("nbytes", n=5 * MB) == bytes(5 * MB)


def test_four_concurrent_100_mb_echoes_on_two_workers_keep_both_alive(
    client_factory: Any,
) -> None:
    client = client_factory(workers=2)
    arrays = [np.full(100 * MB // 8, float(i)) for i in range(4)]
    results: dict[int, Any] = {}
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            results[i] = client.session(f"c{i}").call("echo", value=arrays[i])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    for i in range(4):
        assert results[i][0] == float(i)
        assert results[i][-1] == float(i)
    assert [w.restarts for w in client.status().workers] == [0, 0]


NO_LANE = {"SNAKEPIT_NB_LANE_DIR": ""}


def test_without_a_lane_values_travel_pickled_over_grpc(client_factory: Any) -> None:
    """Workers without a lane (as on another machine): the same values, over gRPC."""
    client = client_factory(workers=1, env=NO_LANE)
    s = client.session("grpc")
    array = np.arange(4 * MB // 8, dtype=np.int64).reshape(1000, -1)
    echoed = s.call("echo", value=array)
    assert np.array_equal(echoed, array)
    assert echoed.dtype == np.int64
    assert s.call("echo", value=(1, {2}, decimal.Decimal("1.5"))) == (
        1,
        {2},
        decimal.Decimal("1.5"),
    )
    offset = 3
    assert s.call(lambda x: x + offset, 1) == 4
    assert s.map(lambda x: (x, x * x), range(500)) == [(x, x * x) for x in range(500)]
    assert s.map("echo", [{"value": {i}} for i in range(50)]) == [{i} for i in range(50)]
    with pytest.raises(sp.InvalidArgumentError) as info:
        s.call("echo", value=threading.Lock())
    assert "'value'" in str(info.value)

    async def streamed() -> list[Any]:
        session = await client.aio.session("grpc")
        return [chunk async for chunk in session.stream("count", n=3)]

    chunks = asyncio.run(streamed())
    assert [c["i"] for c in chunks] == [0, 1, 2]
    assert all(type(c) is dict for c in chunks)
    (worker,) = client.status().workers
    assert worker.restarts == 0


def test_nothing_is_left_after_an_error_a_timeout_and_a_worker_killed_mid_call(
    client_factory: Any,
) -> None:
    client = client_factory(workers=1, cancel_grace=2.0)
    s = client.session("leaks")
    big = np.ones(20 * MB // 8)
    before_shm = _shm()
    # The tool raises with a large argument in hand.

    def fail_with(array: Any) -> None:
        raise ValueError(f"refusing {array.nbytes} bytes")

    with pytest.raises(sp.RemoteToolError):
        s.call(fail_with, big)
    with pytest.raises(sp.InvalidArgumentError):
        s.call("add", a=big, b=1, c=2)
    # A timeout while the tool still runs (it stops through ctx.cancelled).
    with pytest.raises(sp.CallTimeoutError):
        s.call("sleep_sync", seconds=30.0, _timeout=0.5)
    assert wait_until(lambda: client.status().workers[0].in_flight == 0, 10.0)
    # A worker killed while the call (with 20 MB of arguments) is in its hands.
    pid = client.status().workers[0].pid
    killer = threading.Timer(0.5, os.kill, (pid, signal.SIGKILL))
    killer.start()
    with pytest.raises(sp.WorkerCrashedError):
        s.call("sleep_sync", seconds=30.0)
    killer.join()
    assert wait_until(
        lambda: (
            client.status().workers[0].state == "ready" and client.status().workers[0].pid != pid
        ),
        30.0,
    )
    assert s.call("echo", value=big).shape == big.shape
    assert _memfds() == []
    assert _shm() == before_shm
    pid = client.status().workers[0].pid
    assert wait_until(lambda: _worker_memfds(pid) == [], 5.0)


# ---------------------------------------------------------------------- exact values


def test_python_values_keep_their_exact_types(showcase_client: sp.Client) -> None:
    s = showcase_client.session("types")
    values: list[Any] = [
        (1, "two", 3.0),
        {1, 2, 3},
        frozenset({"a"}),
        datetime.datetime(2026, 12, 3, 14, 0, tzinfo=datetime.UTC),
        datetime.date(2026, 1, 2),
        datetime.timedelta(seconds=90),
        decimal.Decimal("3.14159265358979323846"),
        complex(1, -2),
        Path("some/where"),
        {"nested": [(1, 2), {3}], (4, 5): "tuple key"},
        np.float32(1.5),
        np.arange(6, dtype=np.uint8).reshape(2, 3),
    ]
    for value in values:
        echoed = s.call("echo", value=value)
        assert type(echoed) is type(value), value
        if isinstance(value, np.ndarray):
            assert np.array_equal(echoed, value)
        else:
            assert echoed == value
    # Through a map and a stream as well.
    assert s.map("echo", [{"value": v} for v in values[:6]]) == values[:6]


def test_dataframes_and_series_round_trip(showcase_client: sp.Client) -> None:
    s = showcase_client.session("pandas")
    frame = pd.DataFrame(
        {
            "x": np.arange(200_000, dtype=np.float64),
            "label": pd.Categorical(["a", "b"] * 100_000),
            "when": pd.date_range("2026-01-01", periods=200_000, freq="s"),
        }
    ).set_index("when")
    echoed = s.call("echo", value=frame)
    pd.testing.assert_frame_equal(echoed, frame)
    series = pd.Series([1.5, None, 3.0], index=["p", "q", "r"], name="s")
    pd.testing.assert_series_equal(s.call("echo", value=series), series)
    # Work on a frame in the worker: a function of the notebook's.
    assert s.call(lambda f: float(f["x"].sum()), frame) == float(frame["x"].sum())


def test_a_100_mb_round_trip_stays_within_memory_bounds(showcase_client: sp.Client) -> None:
    """Issue 11's memory bound: the worker's memory returns to its baseline after the call.
    (The kernel's peak during a round trip is measured by benchmarks/bench_data.py, in a fresh
    process where a high-water mark means something.)"""
    s = showcase_client.session("memory")
    worker = psutil.Process(showcase_client.status().workers[0].pid)
    s.call("noop")
    baseline = worker.memory_info().rss
    array = np.ones(100 * MB // 8)
    assert s.call("echo", value=array).shape == array.shape
    assert wait_until(lambda: worker.memory_info().rss < baseline + 20 * MB, 5.0), (
        worker.memory_info().rss - baseline
    )


KILLED = r"""
import json, sys
import numpy as np
import snakepit_nb as sp

client = sp.start(workers=2, startup_timeout=60.0)
s = client.session("doomed")
array = np.ones(50_000_000 // 8)
s.call("echo", value=array)
print(json.dumps({"run_id": client.run_id}), flush=True)
while True:
    s.map(lambda a: a.sum(), [array] * 4)
"""


def test_a_kernel_killed_mid_transfer_leaves_no_memory_and_no_process() -> None:
    before_shm = _shm()
    with subprocess.Popen(
        [sys.executable, "-c", KILLED],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line, proc.communicate(timeout=30)[1]
            run_id = json.loads(line)["run_id"]
        finally:
            proc.kill()
            proc.wait(30)
    # The workers and their guardians go with the kernel; memfds have no name to leave.
    assert wait_until(lambda: not processes_with_marker(run_id), 10.0)
    assert _shm() == before_shm


def test_functions_lambdas_and_closures_run_in_workers(client_factory: Any) -> None:
    client = client_factory(workers=2)
    s = client.session("fn")
    offset = 10

    def add_offset(x: int, y: int = 0) -> int:
        return x + y + offset

    assert s.call(add_offset, 1, y=2) == 13
    assert s.call(os.getpid) in {w.pid for w in client.status().workers}
    assert s.map(lambda x: x * x, range(1000)) == [x * x for x in range(1000)]
    assert s.map(add_offset, [1, 2, 3], [10, 20, 30]) == [21, 32, 43]
    # A function's error is the function's own, with its traceback.
    with pytest.raises(sp.RemoteToolError) as info:
        s.call(lambda: 1 / 0)
    assert info.value.remote_type == "ZeroDivisionError"
    # Over gRPC too (the async API).

    async def go() -> Any:
        session = await client.aio.session("fn-aio")
        return await session.call(add_offset, 5), await session.map(add_offset, [1, 2])

    assert asyncio.run(go()) == (15, [11, 12])


def test_a_short_map_of_slow_items_runs_them_side_by_side(
    client_factory: Any, tmp_path: Path
) -> None:
    client = client_factory(workers=2)
    s = client.session("side-by-side")
    folder = str(tmp_path)

    def meet(i: int) -> int:
        # Each item says it is here, then waits for the other: both return only if they run
        # at the same time, on two workers.
        import os
        import time

        Path(folder, str(i)).touch()
        deadline = time.monotonic() + 10
        while len(os.listdir(folder)) < 2:
            if time.monotonic() > deadline:
                raise TimeoutError(f"item {i} waited alone")
            time.sleep(0.01)
        return os.getpid()

    pids = s.map(meet, [0, 1], progress=False)
    assert len(set(pids)) == 2


def test_a_function_is_sent_again_to_a_new_worker_incarnation(client_factory: Any) -> None:
    client = client_factory(workers=1)
    s = client.session("again")
    base = 100

    def shifted(x: int) -> int:
        return x + base

    assert s.call(shifted, 1) == 101
    assert s.call(shifted, 2) == 102  # the second time only its digest travels
    pid = client.status().workers[0].pid
    os.kill(pid, signal.SIGKILL)
    assert wait_until(
        lambda: (
            client.status().workers[0].state == "ready" and client.status().workers[0].pid != pid
        ),
        30.0,
    )
    assert s.call(shifted, 3) == 103
    assert s.map(shifted, range(5)) == [100, 101, 102, 103, 104]


SCRIPT = r"""
import dataclasses, json, sys
import snakepit_nb as sp

@dataclasses.dataclass(frozen=True)
class Point:
    x: float
    y: float

    def norm2(self):
        return self.x * self.x + self.y * self.y

class Counter:
    def __init__(self):
        self.n = 0
    def bump(self, by):
        self.n += by
        return self

def scale(p, k):
    return Point(p.x * k, p.y * k)

client = sp.start(workers=1, startup_timeout=60.0)
s = client.session("main")
p = Point(3.0, 4.0)
echoed = s.call("echo", value=p)
out = {
    "echo_type": type(echoed).__qualname__,
    "echo_equal": echoed == p,
    "norm2": s.call(lambda q: q.norm2(), p),
    "scaled": dataclasses.asdict(s.call(scale, p, 2)),
    "mapped": [dataclasses.asdict(q) for q in s.map(scale, [p, p], [1, 3])],
    "counter": s.call(lambda c: c.bump(5).n, Counter()),
}
client.close()
print(json.dumps(out))
"""


def test_objects_and_functions_defined_in_main_travel_by_value(tmp_path: Path) -> None:
    """What a notebook does: classes and functions of ``__main__``, unknown to the workers."""
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {
        "echo_type": "Point",
        "echo_equal": True,
        "norm2": 25.0,
        "scaled": {"x": 6.0, "y": 8.0},
        "mapped": [{"x": 3.0, "y": 4.0}, {"x": 9.0, "y": 12.0}],
        "counter": 5,
    }


def test_a_value_that_cannot_be_pickled_names_its_parameter_and_type(
    showcase_client: sp.Client,
) -> None:
    s = showcase_client.session("unpicklable")
    with pytest.raises(sp.InvalidArgumentError) as info:
        s.call("echo", value=threading.Lock())
    message = str(info.value)
    assert "'value'" in message
    assert "lock" in message
    with pytest.raises(sp.InvalidArgumentError) as info:
        s.call(lambda v: v, threading.Lock())
    assert "argument 0" in str(info.value)
    # Nothing was sent, nothing changed: the session goes on.
    assert s.call("add", a=1, b=2) == 3


def test_a_result_that_cannot_be_pickled_fails_that_call_only(
    showcase_client: sp.Client,
) -> None:
    s = showcase_client.session("unsendable")
    with pytest.raises(sp.InvalidArgumentError) as info:
        s.call(threading.Lock)
    assert "lock" in str(info.value)
    results = s.map(lambda i: threading.Lock() if i == 2 else i, range(4), return_exceptions=True)
    assert results[:2] == [0, 1]
    assert isinstance(results[2], sp.SnakepitError)
    assert results[3] == 3


# ---------------------------------------------------------------------- refusals


def test_with_auth_off_pickles_are_refused_before_anything_is_sent(
    client_factory: Any,
) -> None:
    client = client_factory(workers=1, auth=False)
    s = client.session("plain")
    assert s.call("echo", value={"a": [1, 2]}) == {"a": [1, 2]}  # JSON-friendly: fine
    with pytest.raises(sp.InvalidArgumentError) as info:
        s.call("echo", value={1, 2})
    assert "'value'" in str(info.value)
    assert "set" in str(info.value)
    assert "auth=False" in str(info.value)
    with pytest.raises(sp.InvalidArgumentError, match="auth=False"):
        s.call(lambda: 1)
    with pytest.raises(sp.InvalidArgumentError, match="auth=False"):
        s.map(lambda x: x, [1, 2])
    assert client.status().workers[0].calls == 1


def test_a_worker_without_the_token_never_unpickles(client_factory: Any) -> None:
    """The other direction: a pickled request reaching a worker started with auth=False is
    refused by the worker itself, before it unpickles anything."""
    client = client_factory(workers=1, auth=False, transport="tcp")
    address = client.status().workers[0].address
    marker = Path(os.environ.get("TMPDIR", "/tmp")) / f"snakepit-unpickled-{os.getpid()}"
    marker.unlink(missing_ok=True)

    class Evil:
        def __reduce__(self) -> tuple[Any, ...]:
            return (Path.touch, (marker,))

    from snakepit_nb.orchestrator.pool.calls.requests import dumps_call
    from snakepit_nb.protocol.lane import pack_inline

    request = pb.ExecuteToolRequest(
        session_id="x",
        tool_name="echo",
        pickled=pack_inline(dumps_call("echo", (), {"value": Evil()})),
    )
    with grpc.insecure_channel(address.removeprefix("tcp:")) as channel:
        stub = pb_grpc.BridgeServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.ExecuteTool(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "auth=False" in (info.value.details() or "")
    assert not marker.exists()


def test_without_a_lane_large_values_travel_in_pieces(client_factory: Any) -> None:
    """Over gRPC, arguments and results larger than one message go as blobs in 1 MiB pieces:
    ``max_message_bytes`` limits each message, never the value."""
    client = client_factory(workers=1, env=NO_LANE, max_message_bytes=2 * 1024 * 1024)
    s = client.session("pieces")
    array = np.random.default_rng(2).random(30 * MB // 8)
    echoed = s.call("echo", value=array)
    assert np.array_equal(echoed, array)
    assert s.call(lambda a: a[::2].copy(), array).shape == (array.size // 2,)
    assert s.call("nbytes", n=12 * MB) == bytes(12 * MB)
    (worker,) = client.status().workers
    assert (worker.state, worker.restarts) == ("ready", 0)


def test_without_a_lane_150_mb_goes_with_default_settings(client_factory: Any) -> None:
    client = client_factory(workers=1, env=NO_LANE)
    s = client.session("big-grpc")
    array = np.ones(150 * MB // 8)
    echoed = s.call("echo", value=array)
    assert echoed.shape == array.shape
    assert float(echoed.sum()) == float(array.size)


PRINTS = r"""
import asyncio
import snakepit_nb as sp

client = sp.start(workers=1, startup_timeout=60.0, env={"SNAKEPIT_NB_LANE_DIR": ""})
client.define_tool(
    "def noisy(n: int):\n"
    "    for i in range(n):\n"
    "        print(f'chunk {i}')\n"
    "        yield i\n"
)
s = client.session("prints")

def shout(i):
    print(f"item {i}")
    return i

assert s.map(shout, range(3)) == [0, 1, 2]
assert list(s.stream("noisy", n=2)) == [0, 1]

async def main():
    session = await client.aio.session("prints")
    return await session.map(shout, [7])

assert asyncio.run(main()) == [7]
client.close()
print("end", flush=True)
"""


def test_what_maps_and_streams_print_over_grpc_reaches_the_script(tmp_path: Path) -> None:
    """Workers without a lane (the gRPC paths): a map's and a stream's prints reach the
    caller's stdout, with the worker's prefix, before the call returns."""
    proc = subprocess.run(
        [sys.executable, "-c", PRINTS],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    # A map's chunks may run at once in the worker: whole lines, in any order between them.
    assert sorted(lines[:3]) == ["[w1] item 0", "[w1] item 1", "[w1] item 2"]
    assert lines[3:] == ["[w1] chunk 0", "[w1] chunk 1", "[w1] item 7", "end"]
