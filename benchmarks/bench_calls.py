"""Calls, streams and maps through snakepit_nb, side by side with baselines started in this run.

    .venv/bin/python benchmarks/bench_calls.py            # full run, a few minutes
    .venv/bin/python benchmarks/bench_calls.py --quick    # smoke test, under a minute
    .venv/bin/python benchmarks/bench_calls.py --out results.json

Cases (every one with a warm-up first):

- raw grpc.aio unary echo between two processes, 1 and 64 calls in flight;
- raw grpc.aio server stream, one 64-byte chunk per message: chunks/s and first-chunk latency;
- ``session.call("noop")``: sequential p50/p99 (blocking API) and 64 in flight (async API),
  with the default ``capacity=1`` and with ``capacity=32``; ``session.call("anoop")`` (an
  async tool) 64 in flight with default settings;
- ``session.stream("count", n=...)`` into a Python consumer: chunks/s, first-chunk latency;
- ``session.map("noop", ...)``: calls/s;
- multiprocessing.Pool(2).apply_async and ProcessPoolExecutor(2).submit of a trivial function;
- ipyparallel with 2 engines (an ipcluster started here on loopback, then stopped);
- start-up: ``sp.start(workers=4)`` until every worker is ready.

JSON goes to stdout and to ``--out`` (default ``benchmarks/results/bench_calls.json``); the
ratios against the targets of issue 4 are under ``"targets"``.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from harness import CHUNK, Report, latency_summary, raw_channel, raw_server

import snakepit_nb as sp

PAYLOAD = b"x" * 32


def trivial(x: int) -> int:
    return x + 1


# ---------------------------------------------------------------------------- raw gRPC


async def raw_unary(address: str, n_seq: int, n_conc: int) -> dict[str, Any]:
    channel = raw_channel(address)
    echo = channel.unary_unary("/bench.Raw/Echo")
    for _ in range(200):
        await echo(PAYLOAD)
    latencies = []
    for _ in range(n_seq):
        started = time.perf_counter()
        await echo(PAYLOAD)
        latencies.append(time.perf_counter() - started)
    seq = latency_summary(latencies)
    seq["calls_per_s"] = round(n_seq / sum(latencies))
    remaining = n_conc

    async def loop() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await echo(PAYLOAD)

    started = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(64)))
    conc = {"calls_per_s": round(n_conc / (time.perf_counter() - started)), "n": n_conc}
    await channel.close()
    return {"seq": seq, "inflight64": conc}


async def raw_stream(address: str, n_chunks: int, n_first: int) -> dict[str, Any]:
    channel = raw_channel(address)
    stream = channel.unary_stream("/bench.Raw/Stream")
    async for _ in stream(b"1000"):
        pass
    started = time.perf_counter()
    count = 0
    async for message in stream(str(n_chunks).encode()):
        count += len(message) // len(CHUNK)
    elapsed = time.perf_counter() - started
    firsts = []
    for _ in range(n_first):
        started = time.perf_counter()
        call = stream(b"1")
        async for _ in call:
            firsts.append(time.perf_counter() - started)
    await channel.close()
    return {
        "chunks_per_s": round(count / elapsed),
        "chunks": count,
        "first_chunk": latency_summary(firsts),
    }


# ---------------------------------------------------------------------------- snakepit_nb


def sp_sequential(session: sp.Session, n: int) -> dict[str, Any]:
    for _ in range(200):
        session.call("noop")
    latencies = []
    for _ in range(n):
        started = time.perf_counter()
        session.call("noop")
        latencies.append(time.perf_counter() - started)
    result = latency_summary(latencies)
    result["calls_per_s"] = round(n / sum(latencies))
    return result


async def sp_inflight(
    session: sp.AsyncSession, n: int, inflight: int = 64, tool: str = "noop"
) -> dict[str, Any]:
    for _ in range(100):
        await session.call(tool)
    remaining = n

    async def loop() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await session.call(tool)

    started = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(inflight)))
    return {"calls_per_s": round(n / (time.perf_counter() - started)), "n": n}


def sp_stream(session: sp.Session, n_chunks: int, n_first: int) -> dict[str, Any]:
    list(session.stream("count", n=1000))
    started = time.perf_counter()
    count = 0
    for _ in session.stream("count", n=n_chunks):
        count += 1
    elapsed = time.perf_counter() - started
    firsts = []
    for _ in range(n_first):
        started = time.perf_counter()
        stream = session.stream("count", n=1)
        next(iter(stream))
        firsts.append(time.perf_counter() - started)
        stream.close()
    return {
        "chunks_per_s": round(count / elapsed),
        "chunks": count,
        "first_chunk": latency_summary(firsts),
    }


def sp_map(session: sp.Session, n: int) -> dict[str, Any]:
    session.map("noop", [{}] * 2000)
    items: list[dict[str, Any]] = [{} for _ in range(n)]
    started = time.perf_counter()
    results = session.map("noop", items)
    elapsed = time.perf_counter() - started
    assert len(results) == n
    return {"calls_per_s": round(n / elapsed), "n": n}


def sp_startup(workers: int, repeats: int) -> dict[str, Any]:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        client = sp.start(workers=workers)
        elapsed = time.perf_counter() - started
        ready = sum(1 for w in client.status().workers if w.state == "ready")
        client.close()
        assert ready == workers
        times.append(elapsed)
    return {"seconds_best": round(min(times), 3), "seconds_all": [round(t, 3) for t in times]}


# ---------------------------------------------------------------------------- peers


def peer_multiprocessing(n: int) -> dict[str, Any]:
    with multiprocessing.Pool(2) as pool:
        for r in [pool.apply_async(trivial, (i,)) for i in range(200)]:
            r.get()
        started = time.perf_counter()
        results = [pool.apply_async(trivial, (i,)) for i in range(n)]
        for r in results:
            r.get()
        elapsed = time.perf_counter() - started
    return {"tasks_per_s": round(n / elapsed), "n": n}


def peer_process_pool(n: int) -> dict[str, Any]:
    with concurrent.futures.ProcessPoolExecutor(2) as executor:
        for f in [executor.submit(trivial, i) for i in range(200)]:
            f.result()
        started = time.perf_counter()
        futures = [executor.submit(trivial, i) for i in range(n)]
        for f in futures:
            f.result()
        elapsed = time.perf_counter() - started
    return {"tasks_per_s": round(n / elapsed), "n": n}


def peer_ipyparallel(n: int) -> dict[str, Any]:
    """2 engines, controller on loopback, in a private profile dir; always stopped."""
    import ipyparallel as ipp

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
            rc = None
            client = None
            deadline = time.monotonic() + 90
            while client is None:
                try:
                    # ipyparallel prints "Waiting for connection file" on stdout, where our
                    # JSON goes: send its chatter to stderr.
                    with contextlib.redirect_stdout(sys.stderr):
                        client = ipp.Client(profile_dir=profile_dir, timeout=5)
                except (OSError, TimeoutError):
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise
                    time.sleep(0.5)
            client.wait_for_engines(2, timeout=90)
            startup = time.perf_counter() - started
            view = client.load_balanced_view()
            view.apply_sync(trivial, 0)
            lat = []
            for i in range(min(200, n)):
                t = time.perf_counter()
                view.apply_sync(trivial, i)
                lat.append(time.perf_counter() - t)
            t = time.perf_counter()
            results = [view.apply_async(trivial, i) for i in range(n)]
            for r in results:
                r.get()
            rate = n / (time.perf_counter() - t)
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
        "tasks_per_s": round(rate),
        "n": n,
        "seq": latency_summary(lat),
        "startup_s": round(startup, 2),
        "ipcluster_exit": rc,
    }


# ---------------------------------------------------------------------------- the run


async def run_async_cases(aclient: sp.AsyncClient, n: int, tool: str = "noop") -> dict[str, Any]:
    session = await aclient.session("bench-async")
    return await sp_inflight(session, n, tool=tool)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke test, under a minute")
    parser.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "bench_calls.json")
    )
    parser.add_argument("--no-ipyparallel", action="store_true")
    args = parser.parse_args()
    quick = args.quick
    n_seq = 500 if quick else 3000
    n_conc = 3000 if quick else 20000
    n_chunks = 100_000 if quick else 500_000
    n_raw_chunks = 20_000 if quick else 100_000
    n_first = 30 if quick else 200
    n_map = 100_000 if quick else 500_000
    n_peer = 3000 if quick else 20000
    report = Report("bench_calls", quick=quick)

    with raw_server() as address:
        raw = asyncio.run(raw_unary(address, n_seq, n_conc))
        report.case("raw_grpc_unary_seq", **raw["seq"])
        report.case("raw_grpc_unary_64", **raw["inflight64"])
        report.case("raw_grpc_stream", **asyncio.run(raw_stream(address, n_raw_chunks, n_first)))

    report.case("sp_start_4_workers", **sp_startup(4, 1 if quick else 3))

    for capacity in (1, 32):
        aclient = asyncio.run(sp.astart(workers=2, capacity=capacity))
        client = sp.Client(aclient)
        try:
            session = client.session("bench")
            suffix = "" if capacity == 1 else f"_capacity{capacity}"
            report.case(f"sp_call_seq{suffix}", **sp_sequential(session, n_seq))
            report.case(f"sp_call_64{suffix}", **asyncio.run(run_async_cases(aclient, n_conc)))
            if capacity == 1:
                # An async tool overlaps in a worker (async_capacity) whatever `capacity` is.
                report.case(
                    "sp_call_64_async",
                    **asyncio.run(run_async_cases(aclient, n_conc, tool="anoop")),
                )
                report.case("sp_stream", **sp_stream(session, n_chunks, n_first))
                report.case("sp_map", **sp_map(session, n_map))
        finally:
            client.close()

    report.case("multiprocessing_apply_async", **peer_multiprocessing(n_peer))
    report.case("process_pool_submit", **peer_process_pool(n_peer // 2))
    if not (quick or args.no_ipyparallel):
        report.case("ipyparallel_2_engines", **peer_ipyparallel(1000))

    cases = report.data["cases"]
    raw_seq = cases["raw_grpc_unary_seq"]["p50_us"]
    raw_64 = cases["raw_grpc_unary_64"]["calls_per_s"]
    report.ratio("call_64_vs_raw_64", cases["sp_call_64"]["calls_per_s"] / raw_64)
    report.ratio("call_64_async_vs_raw_64", cases["sp_call_64_async"]["calls_per_s"] / raw_64)
    report.ratio(
        "call_64_capacity32_vs_raw_64", cases["sp_call_64_capacity32"]["calls_per_s"] / raw_64
    )
    report.ratio("call_seq_p50_vs_raw_p50", cases["sp_call_seq"]["p50_us"] / raw_seq)
    report.ratio(
        "call_seq_p99_vs_raw_p99",
        cases["sp_call_seq"]["p99_us"] / cases["raw_grpc_unary_seq"]["p99_us"],
    )
    report.ratio(
        "stream_vs_raw_stream",
        cases["sp_stream"]["chunks_per_s"] / cases["raw_grpc_stream"]["chunks_per_s"],
    )
    report.ratio(
        "map_vs_multiprocessing",
        cases["sp_map"]["calls_per_s"] / cases["multiprocessing_apply_async"]["tasks_per_s"],
    )
    report.ratio(
        "map_vs_process_pool",
        cases["sp_map"]["calls_per_s"] / cases["process_pool_submit"]["tasks_per_s"],
    )
    if "ipyparallel_2_engines" in cases and "tasks_per_s" in cases["ipyparallel_2_engines"]:
        report.ratio(
            "map_vs_ipyparallel",
            cases["sp_map"]["calls_per_s"] / cases["ipyparallel_2_engines"]["tasks_per_s"],
        )
    # Default settings, an async tool: calls overlap in each worker (async_capacity=64) and
    # share its call channel, many per frame. A sync tool runs one call at a time per worker
    # by default (capacity=1), which caps 64 in flight at workers x round trips.
    ratio_64 = cases["sp_call_64_async"]["calls_per_s"] / raw_64
    report.target("call_64_async_vs_raw_unary_64", ratio_64, ">= 1.0x", ratio_64 >= 1.0)
    seq = cases["sp_call_seq"]["p50_us"] / raw_seq
    report.target("call_seq_p50_vs_raw_p50", seq, "<= 1.3x", seq <= 1.3)
    rate = cases["sp_map"]["calls_per_s"]
    report.target("map_calls_per_s", rate, ">= 100000", rate >= 100_000)
    chunks = cases["sp_stream"]["chunks_per_s"]
    report.target("stream_chunks_per_s", chunks, ">= 250000", chunks >= 250_000)
    first = cases["sp_stream"]["first_chunk"]["p50_us"] / 1000
    report.target("stream_first_chunk_p50_ms", first, "< 2 ms", first < 2.0)
    start = cases["sp_start_4_workers"]["seconds_best"]
    report.target("start_4_workers_s", start, "<= 1.0 s", start <= 1.0)
    report.emit(args.out)


if __name__ == "__main__":
    main()
