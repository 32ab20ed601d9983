"""The peers of ``bench_data.py`` that need more than a line: ipyparallel, Ray, the
shared-memory floor; and the timing helpers both use.

Functions handed to snakepit_nb must live in the benchmark's ``__main__`` (they travel by
value there); these take them as arguments.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from multiprocessing import shared_memory
from pathlib import Path
from typing import Any

import numpy as np

#: The multiprocessing start method of the peers: a spawned child does not inherit the
#: runtime's gRPC threads (fork would); steady-state speed does not depend on it.
MP = multiprocessing.get_context("spawn")


def median(values: list[float]) -> float:
    return statistics.median(values)


def timed(run: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = run()
    return time.perf_counter() - started, result


def time_round_trips(run: Callable[[], Any], repeats: int) -> dict[str, Any]:
    """A warm-up, then ``repeats`` timed runs: their median and every one, in ms."""
    run()
    seconds = [timed(run)[0] for _ in range(repeats)]
    return {
        "ms_p50": round(median(seconds) * 1000, 2),
        "ms_all": [round(s * 1000, 2) for s in seconds],
    }


# ---------------------------------------------------------------------------- ipyparallel


def ipyparallel_map(fn: Callable[[int], int], n: int) -> dict[str, Any]:
    """``DirectView.map_sync(fn, range(n))`` on 2 engines (one even partition per engine: its
    best case; ``fn(i)`` must be ``i + 1``), an ipcluster on loopback in a private profile
    directory, always stopped."""
    try:
        import ipyparallel as ipp
    except ImportError:
        return {"skipped": "ipyparallel is not installed"}
    ipcluster = shutil.which("ipcluster", path=str(Path(sys.executable).parent))
    if ipcluster is None:
        return {"skipped": "ipcluster is not installed"}
    with tempfile.TemporaryDirectory() as profile_dir:
        cmd = [ipcluster, "start", "-n", "2", "--profile-dir", profile_dir, "--ip", "127.0.0.1"]
        started = time.perf_counter()
        proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        try:
            client = None
            deadline = time.monotonic() + 90
            while client is None:
                try:
                    # ipyparallel prints on stdout, where our JSON goes.
                    with contextlib.redirect_stdout(sys.stderr):
                        client = ipp.Client(profile_dir=profile_dir, timeout=5)
                except (OSError, TimeoutError):
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise
                    time.sleep(0.5)
            client.wait_for_engines(2, timeout=90)
            startup = time.perf_counter() - started
            view = client[:]
            items = list(range(n))
            assert view.map_sync(fn, items) == [i + 1 for i in items]
            rates = [n / timed(lambda: view.map_sync(fn, items))[0] for _ in range(3)]
            client.close()
        finally:
            subprocess.run(
                [ipcluster, "stop", "--profile-dir", profile_dir],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=60,
                check=False,
            )
            try:
                rc = proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                rc = proc.wait()
    return {
        "items_per_s": round(median(rates)),
        "items_per_s_rounds": [round(x) for x in rates],
        "n": n,
        "startup_s": round(startup, 2),
        "ipcluster_exit": rc,
    }


# ---------------------------------------------------------------------------- shared memory


def shm_child(conn: multiprocessing.connection.Connection) -> None:
    """The floor's peer: copy segment ``a`` into segment ``b`` on request.

    Reused segments stay open; fresh ones (``keep`` false) are closed after the copy.
    """
    segments: dict[str, shared_memory.SharedMemory] = {}
    try:
        while True:
            message = conn.recv()
            if message is None:
                break
            src_name, dst_name, nbytes, keep = message
            for name in (src_name, dst_name):
                if name not in segments:
                    segments[name] = shared_memory.SharedMemory(name=name)
            src = segments[src_name].buf[:nbytes]
            dst = segments[dst_name].buf[:nbytes]
            dst[:] = src
            del src, dst
            if not keep:
                segments.pop(src_name).close()
                segments.pop(dst_name).close()
            conn.send(nbytes)
    finally:
        for segment in segments.values():
            segment.close()


class ShmFloor:
    """Round trip through two reused shared-memory segments and a pipe for the signal.

    The parent writes the array into segment A, the child copies it into segment B, the
    parent views B as an array (zero copy, like snakepit_nb's arrays on arrival).
    :meth:`round_trip` reuses two segments created once and pre-faulted: the cheapest round
    trip of a value two processes can do without sharing the caller's own memory.
    :meth:`round_trip_fresh` creates both segments for each round trip (and frees them), as
    a transport that hands every value its own memory must: the page faults are included.
    """

    def __init__(self, nbytes: int) -> None:
        self.a = shared_memory.SharedMemory(create=True, size=nbytes)
        self.b = shared_memory.SharedMemory(create=True, size=nbytes)
        self.a.buf[:] = b"\0" * nbytes
        self.b.buf[:] = b"\0" * nbytes
        self.conn, child_conn = MP.Pipe()
        self.proc = MP.Process(target=shm_child, args=(child_conn,), daemon=True)
        self.proc.start()
        child_conn.close()
        self._last: list[shared_memory.SharedMemory] = []

    def round_trip(self, arr: np.ndarray) -> np.ndarray:
        src = np.ndarray(arr.shape, arr.dtype, buffer=self.a.buf)
        np.copyto(src, arr)
        del src
        self.conn.send((self.a.name, self.b.name, arr.nbytes, True))
        self.conn.recv()
        return np.ndarray(arr.shape, arr.dtype, buffer=self.b.buf)

    def round_trip_fresh(self, arr: np.ndarray) -> np.ndarray:
        self._release()
        a = shared_memory.SharedMemory(create=True, size=arr.nbytes)
        b = shared_memory.SharedMemory(create=True, size=arr.nbytes)
        self._last = [a, b]
        src = np.ndarray(arr.shape, arr.dtype, buffer=a.buf)
        np.copyto(src, arr)
        del src
        self.conn.send((a.name, b.name, arr.nbytes, False))
        self.conn.recv()
        # The caller holds the result until its next call: the segments are freed then.
        return np.ndarray(arr.shape, arr.dtype, buffer=b.buf)

    def _release(self) -> None:
        for segment in self._last:
            segment.close()
            segment.unlink()
        self._last = []

    def close(self) -> None:
        self._release()
        self.conn.send(None)
        self.proc.join(10)
        for segment in (self.a, self.b):
            segment.close()
            segment.unlink()


# ---------------------------------------------------------------------------- Ray


def ray_case(nbytes: int, repeats: int) -> dict[str, Any]:
    try:
        import ray
    except ImportError:
        return {"skipped": "ray not installed"}
    # Loopback only, and no usage report: this run attempts no internet access.
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
        configure_logging=False,
    )
    try:

        @ray.remote
        class Echo:
            def echo(self, value: Any) -> Any:
                return value

        arr = np.random.default_rng(2).random(nbytes // 8)
        put_get = time_round_trips(lambda: ray.get(ray.put(arr)), repeats)
        actor = Echo.remote()  # type: ignore[attr-defined]
        ray.get(actor.echo.remote(0))
        actor_echo = time_round_trips(lambda: ray.get(actor.echo.remote(arr)), repeats)
        return {"put_get_100MB": put_get, "actor_echo_100MB": actor_echo}
    finally:
        ray.shutdown()
