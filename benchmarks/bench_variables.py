"""Session variables: worker-side get/set latency against a raw gRPC echo, and watch fan-out.

Run: ``.venv/bin/python benchmarks/bench_variables.py [--n 2000] [--seconds 3]``; prints JSON.

* ``worker_latency``: a worker (real process) times, in one tool call, N raw grpc.aio unary
  echo calls to a bare echo server living on the orchestrator's loop (the baseline, started in
  this run), then N ``await ctx.vars.aget`` and N ``await ctx.vars.aset``; a sync tool times the
  blocking ``ctx.vars.get``/``set`` (executor thread -> worker loop -> gRPC).
* ``kernel_latency``: ``s.vars[...]`` read and write from the notebook side (no gRPC).
* ``watch_fanout``: one kernel thread writes a variable as fast as it can for S seconds while
  10 gRPC watchers in another process count the updates they receive (and the versions they
  were told they skipped because they lagged).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

import grpc

import snakepit_nb as sp
from snakepit_nb._loop import get_loop_thread

ECHO_METHOD = "/bench.Echo/Echo"

LATENCY_TOOL = """
async def bench_async(ctx, echo_address, n):
    import time, grpc
    def stats(samples):
        samples = sorted(samples)
        return {"p50_us": samples[len(samples) // 2] * 1e6,
                "p99_us": samples[int(len(samples) * 0.99)] * 1e6,
                "mean_us": sum(samples) / len(samples) * 1e6}
    out = {}
    async with grpc.aio.insecure_channel(echo_address) as channel:
        echo = channel.unary_unary("/bench.Echo/Echo")
        await echo(b"warm")
        samples = []
        for _ in range(n):
            t = time.perf_counter(); await echo(b"x" * 16); samples.append(time.perf_counter() - t)
        out["raw_grpc_echo"] = stats(samples)
    await ctx.vars.aget("t")
    samples = []
    for _ in range(n):
        t = time.perf_counter(); await ctx.vars.aget("t"); samples.append(time.perf_counter() - t)
    out["aget"] = stats(samples)
    samples = []
    for i in range(n):
        t = time.perf_counter()
        await ctx.vars.aset("t", float(i))
        samples.append(time.perf_counter() - t)
    out["aset"] = stats(samples)
    return out

def bench_sync(ctx, n):
    import time
    def stats(samples):
        samples = sorted(samples)
        return {"p50_us": samples[len(samples) // 2] * 1e6,
                "p99_us": samples[int(len(samples) * 0.99)] * 1e6,
                "mean_us": sum(samples) / len(samples) * 1e6}
    ctx.vars.get("t")
    out = {}
    samples = []
    for _ in range(n):
        t = time.perf_counter(); ctx.vars.get("t"); samples.append(time.perf_counter() - t)
    out["get"] = stats(samples)
    samples = []
    for i in range(n):
        t = time.perf_counter()
        ctx.vars.set("t", float(i))
        samples.append(time.perf_counter() - t)
    out["set"] = stats(samples)
    return out
"""

WATCHERS = textwrap.dedent(
    """
    import asyncio, json, sys, time, grpc
    from snakepit_nb.protocol import pb, pb_grpc
    from snakepit_nb.protocol.auth import token_metadata

    async def watcher(stub, md, session, name, stop_version, counts, index):
        call = stub.WatchVariables(
            pb.WatchVariablesRequest(session_id=session, variable_identifiers=[name],
                                     include_initial_values=True), metadata=md)
        received = skipped = 0
        first = None
        async for update in call:
            if update.update_type == "initial_value":
                counts["ready"] += 1
                continue
            now = time.perf_counter()
            first = first or now
            received += 1
            skipped += update.skipped_versions
            last_version = update.variable.version
            if last_version >= stop_version.get("v", 1 << 62):
                break
        call.cancel()
        counts["out"][index] = {"received": received, "skipped": skipped,
                                "seconds": (now - first) if first else 0.0,
                                "last_version": last_version}

    async def main():
        address, token, session, name, n = sys.argv[1:6]
        md = token_metadata(token)
        async with grpc.aio.insecure_channel(address) as ch:
            stub = pb_grpc.BridgeServiceStub(ch)
            counts = {"ready": 0, "out": {}}
            stop = {}
            tasks = [asyncio.create_task(watcher(stub, md, session, name, stop, counts, i))
                     for i in range(int(n))]
            while counts["ready"] < int(n):
                await asyncio.sleep(0.01)
            print("ready", flush=True)
            line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
            stop["v"] = int(line)
            await asyncio.wait_for(asyncio.gather(*tasks), 60)
            print(json.dumps(counts["out"]), flush=True)

    asyncio.run(main())
    """
)


def start_echo_server() -> tuple[Any, str]:
    """A bare grpc.aio unary echo on the snakepit loop (same loop as the orchestrator)."""

    async def echo(request: bytes, context: Any) -> bytes:
        return request

    async def serve() -> tuple[Any, str]:
        server = grpc.aio.server()
        handler = grpc.method_handlers_generic_handler(
            "bench.Echo",
            {"Echo": grpc.unary_unary_rpc_method_handler(echo)},
        )
        server.add_generic_rpc_handlers((handler,))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server, f"127.0.0.1:{port}"

    return get_loop_thread().run(serve())


def kernel_latency(s: Any, n: int) -> dict[str, Any]:
    def timed(fn: Any) -> dict[str, float]:
        samples = []
        for i in range(n):
            t = time.perf_counter()
            fn(i)
            samples.append(time.perf_counter() - t)
        samples.sort()
        return {
            "p50_us": samples[len(samples) // 2] * 1e6,
            "p99_us": samples[int(len(samples) * 0.99)] * 1e6,
            "mean_us": statistics.fmean(samples) * 1e6,
        }

    s.vars["k"] = 0.0

    def write(i: int) -> None:
        s.vars["k"] = float(i)

    return {"get": timed(lambda _i: s.vars["k"]), "set": timed(write)}


def watch_fanout(client: Any, s: Any, seconds: float, watchers: int) -> dict[str, Any]:
    s.vars["hot"] = 0
    proc = subprocess.Popen(
        [sys.executable, "-c", WATCHERS, client.address, client.orchestrator.token,
         s.session_id, "hot", str(watchers)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ},
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert proc.stdin is not None
        assert proc.stdout.readline().strip() == "ready"
        writes = 0
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            writes += 1
            s.vars["hot"] = writes
        elapsed = time.perf_counter() - started
        final_version = writes + 1
        proc.stdin.write(f"{final_version}\n")
        proc.stdin.flush()
        per_watcher = json.loads(proc.stdout.readline())
    finally:
        if proc.poll() is None:
            proc.wait(60)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()
    rates = [w["received"] / max(w["seconds"], 1e-9) for w in per_watcher.values()]
    return {
        "writer_writes": writes,
        "writer_rate_per_s": writes / elapsed,
        "watchers": len(per_watcher),
        "every_watcher_got_latest": all(
            w["last_version"] == final_version for w in per_watcher.values()
        ),
        "received_per_watcher": [w["received"] for w in per_watcher.values()],
        "skipped_per_watcher": [w["skipped"] for w in per_watcher.values()],
        "update_rate_per_watcher_per_s": [round(r) for r in rates],
        "min_update_rate_per_s": round(min(rates)),
        "all_accounted": all(w["received"] + w["skipped"] == writes for w in per_watcher.values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--watchers", type=int, default=10)
    args = parser.parse_args()

    echo_server, echo_address = start_echo_server()
    client = sp.start(workers=1)
    try:
        client.define_tool(LATENCY_TOOL, function="bench_async")
        client.define_tool(LATENCY_TOOL, function="bench_sync")
        s = client.session("bench")
        s.vars["t"] = 0.0
        worker_async = s.call("bench_async", echo_address=echo_address, n=args.n, _timeout=300)
        worker_sync = s.call("bench_sync", n=args.n, _timeout=300)
        result = {
            "benchmark": "variables",
            "cpus": os.cpu_count(),
            "n": args.n,
            "worker_latency": {**worker_async, **{f"sync_{k}": v for k, v in worker_sync.items()}},
            "kernel_latency": kernel_latency(s, args.n),
            "watch_fanout": watch_fanout(client, s, args.seconds, args.watchers),
        }
    finally:
        client.close()
        get_loop_thread().run(echo_server.stop(None))
    json.dump(result, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    threading.current_thread().name = "bench-main"
    main()
