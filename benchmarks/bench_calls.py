"""Calls, streams and maps through snakepit_nb, side by side with baselines started in this run.

    .venv/bin/python benchmarks/bench_calls.py            # full run, a few minutes
    .venv/bin/python benchmarks/bench_calls.py --quick    # smoke test, under a minute
    .venv/bin/python benchmarks/bench_calls.py --out results.json

Cases (every one with a warm-up first):

- raw grpc.aio unary echo between two processes, 1 and 64 calls in flight;
- raw grpc.aio server stream: first-chunk latency;
- ``session.call("noop")``: sequential p50/p99 (blocking API) and 64 in flight (async API),
  with the default ``capacity=1`` and with ``capacity=32``; ``session.call("anoop")`` (an
  async tool) 64 in flight with default settings;
- ``session.stream("count", n=...)`` into a Python consumer: chunks/s, first-chunk latency;
- ``session.map("noop", ...)``: calls/s;
- start-up: ``sp.start(workers=4)`` until every worker is ready.

The comparisons with multiprocessing, ProcessPoolExecutor, ipyparallel and a raw stream
batched the same way, each peer in its best configuration, are in ``bench_data.py``.

JSON goes to stdout and to ``--out`` (default ``benchmarks/results/bench_calls.json``); the
ratios against the targets of issue 4 are under ``"targets"``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from harness import Report, latency_summary, raw_channel, raw_server

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


async def raw_stream(address: str, n_first: int) -> dict[str, Any]:
    """First-chunk latency of one-chunk streams (throughput: ``bench_data.py``)."""
    channel = raw_channel(address)
    stream = channel.unary_stream("/bench.Raw/Stream")
    async for _ in stream(b"1000"):
        pass
    firsts = []
    for _ in range(n_first):
        started = time.perf_counter()
        call = stream(b"1")
        async for _ in call:
            firsts.append(time.perf_counter() - started)
    await channel.close()
    return {"first_chunk": latency_summary(firsts)}


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
    parser.add_argument(
        "--no-ipyparallel", action="store_true", help="accepted for old scripts; no effect"
    )
    args = parser.parse_args()
    quick = args.quick
    n_seq = 500 if quick else 3000
    n_conc = 3000 if quick else 20000
    n_chunks = 100_000 if quick else 500_000
    n_first = 30 if quick else 200
    n_map = 100_000 if quick else 500_000
    report = Report("bench_calls", quick=quick)

    with raw_server() as address:
        raw = asyncio.run(raw_unary(address, n_seq, n_conc))
        report.case("raw_grpc_unary_seq", **raw["seq"])
        report.case("raw_grpc_unary_64", **raw["inflight64"])
        report.case("raw_grpc_stream", **asyncio.run(raw_stream(address, n_first)))

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
