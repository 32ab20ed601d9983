"""Workers on Ray next to local workers and next to Ray's own actor calls and put/get, one run.

    .venv/bin/python benchmarks/bench_ray.py            # full run, about a minute
    .venv/bin/python benchmarks/bench_ray.py --quick    # smoke test
    .venv/bin/python benchmarks/bench_ray.py --out results.json

A Ray of one node starts here (loopback, no dashboard), then, each with a warm-up first:

- ``session.call("noop")`` one at a time (p50/p99) on four pools of 2 workers: local workers
  (``sp_local``, over the lane), local workers without the lane (``sp_local_grpc``: every call
  over plain gRPC), workers as Ray actors on this machine (``sp_ray``: the lane too) and Ray
  actors taken for workers on another machine (``sp_ray_remote_tls``: no lane, TLS with the
  runtime's certificate, large values in chunked gRPC: what a real cluster's other nodes get);
  and a Ray actor's own ``noop.remote()`` awaited with ``ray.get``;
- 100 MB from a worker to the kernel, ``session.call("nbytes", n=100_000_000)``, on the same
  four pools; Ray: an actor returning 100 MB through the object store (``ray.get``), and
  ``ray.get(ray.put(data))`` of 100 MB in the driver.

JSON goes to stdout and to ``--out`` (default ``benchmarks/results/bench_ray.json``); the ratios
of each pool against the local one and against Ray's own figures are under ``"ratios"``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # Ray on loopback
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # and no usage report

sys.path.insert(0, str(Path(__file__).parent))

import ray
from harness import Report, latency_summary

import snakepit_nb as sp

BIG = 100_000_000


@ray.remote(num_cpus=0)
class Peer:
    """Ray's own baseline: an actor with a no-op method and one returning bytes."""

    def noop(self) -> None:
        return None

    def nbytes(self, n: int) -> bytes:
        return bytes(n)


def sequential(call: Any, n: int) -> dict[str, Any]:
    for _ in range(min(200, n)):
        call()
    latencies = []
    for _ in range(n):
        started = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - started)
    summary = latency_summary(latencies)
    summary["calls_per_s"] = round(n / sum(latencies))
    return summary


def transfer(fetch: Any, repeats: int) -> dict[str, Any]:
    fetch()  # warm-up (and the check that the size is right)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        data = fetch()
        best = min(best, time.perf_counter() - started)
        assert len(data) == BIG, len(data)
        del data
    return {"bytes": BIG, "best_s": round(best, 4), "mb_per_s": round(BIG / best / 1e6, 1)}


def pool_cases(report: Report, name: str, n_seq: int, repeats: int, **start: Any) -> None:
    client = sp.start(workers=2, startup_timeout=120, **start)
    try:
        session = client.session("bench")
        report.case(f"{name}_call_seq", **sequential(lambda: session.call("noop"), n_seq))
        report.case(
            f"{name}_100MB_to_kernel",
            **transfer(lambda: session.call("nbytes", n=BIG), repeats),
        )
    finally:
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke test")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_ray.json"))
    args = parser.parse_args()
    n_seq = 300 if args.quick else 2000
    repeats = 2 if args.quick else 5
    report = Report("bench_ray", quick=args.quick)
    started = time.perf_counter()
    ray.init(
        num_cpus=4,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        object_store_memory=600 * 2**20,
        logging_level=logging.WARNING,
        log_to_driver=False,
    )
    report.case("ray_init", seconds=round(time.perf_counter() - started, 2))
    report.data["machine"]["ray"] = ray.__version__
    try:
        pool_cases(report, "sp_local", n_seq, repeats)
        pool_cases(report, "sp_local_grpc", n_seq, repeats, env={"SNAKEPIT_NB_LANE_DIR": ""})
        pool_cases(report, "sp_ray", n_seq, repeats, launcher=sp.RayLauncher(tls=False))
        remote = sp.RayLauncher(tls=True)
        remote._kernel_machine = "another-machine"  # what a node on another machine sees
        pool_cases(report, "sp_ray_remote_tls", n_seq, repeats, launcher=remote)
        peer = Peer.remote()  # type: ignore[attr-defined]
        ray.get(peer.noop.remote())
        report.case("ray_actor_call_seq", **sequential(lambda: ray.get(peer.noop.remote()), n_seq))
        report.case(
            "ray_actor_100MB_to_driver",
            **transfer(lambda: ray.get(peer.nbytes.remote(BIG)), repeats),
        )
        payload = bytes(BIG)
        report.case("ray_put_get_100MB", **transfer(lambda: ray.get(ray.put(payload)), repeats))
        ray.kill(peer)
    finally:
        ray.shutdown()

    cases = report.data["cases"]
    local = cases["sp_local_call_seq"]["p50_us"]
    actor = cases["ray_actor_call_seq"]["p50_us"]
    for name in ("sp_local_grpc", "sp_ray", "sp_ray_remote_tls"):
        p50 = cases[f"{name}_call_seq"]["p50_us"]
        report.ratio(f"{name}_call_p50_vs_local", p50 / local)
        report.ratio(f"{name}_call_p50_vs_ray_actor", p50 / actor)
        mbs = cases[f"{name}_100MB_to_kernel"]["mb_per_s"]
        report.ratio(f"{name}_100MB_vs_local", mbs / cases["sp_local_100MB_to_kernel"]["mb_per_s"])
        report.ratio(
            f"{name}_100MB_vs_ray_actor", mbs / cases["ray_actor_100MB_to_driver"]["mb_per_s"]
        )
    report.ratio("sp_local_call_p50_vs_ray_actor", local / actor)
    report.emit(args.out)


if __name__ == "__main__":
    main()
