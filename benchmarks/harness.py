"""Shared benchmark harness: timing helpers, JSON output, and the raw gRPC baseline server.

Baselines are started by the benchmark itself, in the same run, on the same machine: compare
ratios, never absolute numbers across runs.

``python benchmarks/harness.py serve --port-file PATH`` runs the raw baseline server: a
``grpc.aio`` server on 127.0.0.1 with a bytes-in/bytes-out unary ``/bench.Raw/Echo`` and a
server-streaming ``/bench.Raw/Stream`` (request: ASCII ``"<count>"``, answers ``count``
messages of 64 bytes, one chunk per message) and a server-streaming ``/bench.Raw/StreamBatched``
(request: ASCII ``"<count>"``; answers ``count`` small dicts ``{"i": i, "progress": f}`` taken
from an async generator like the showcase ``count`` tool's, as JSON arrays of ``BATCH`` chunks
per message: the batching snakepit_nb's workers apply to streams).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

CHUNK = b"x" * 64
#: Chunks per message of the batched raw stream (the workers' flush count).
BATCH = 1000

try:
    import orjson

    def dumps(value: Any) -> bytes:
        return orjson.dumps(value)

    loads = orjson.loads
except ImportError:  # pragma: no cover - orjson is a dependency

    def dumps(value: Any) -> bytes:
        return json.dumps(value, separators=(",", ":")).encode()

    loads = json.loads


# ---------------------------------------------------------------------------- measuring


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by nearest rank; values need not be sorted."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[rank]


def latency_summary(seconds: list[float]) -> dict[str, float]:
    """p50/p99/mean in microseconds."""
    us = [s * 1e6 for s in seconds]
    return {
        "p50_us": round(percentile(us, 50), 1),
        "p99_us": round(percentile(us, 99), 1),
        "mean_us": round(statistics.fmean(us), 1),
        "n": len(us),
    }


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "load_1m": round(os.getloadavg()[0], 2),
    }


class Report:
    """Collects cases; prints one JSON document on stdout and writes it to a file."""

    def __init__(self, name: str, *, quick: bool) -> None:
        self.data: dict[str, Any] = {
            "benchmark": name,
            "quick": quick,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "machine": machine(),
            "cases": {},
            "ratios": {},
            "targets": {},
        }

    def case(self, name: str, **metrics: Any) -> None:
        self.data["cases"][name] = metrics
        print(f"# {name}: {json.dumps(metrics)}", file=sys.stderr, flush=True)

    def ratio(self, name: str, value: float) -> None:
        self.data["ratios"][name] = round(value, 3)

    def target(self, name: str, value: float, goal: str, met: bool) -> None:
        self.data["targets"][name] = {"value": round(value, 3), "goal": goal, "met": met}

    def emit(self, path: str | None) -> None:
        self.data["machine"]["load_1m_end"] = round(os.getloadavg()[0], 2)
        text = json.dumps(self.data, indent=2)
        print(text)
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text + "\n")


# ---------------------------------------------------------------------------- raw server


async def _echo(request: bytes, context: Any) -> bytes:
    return request


async def _stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
    for _ in range(int(request or b"1")):
        yield CHUNK


async def _count(n: int) -> AsyncIterator[dict[str, Any]]:
    """The body of the showcase ``count`` tool: one small dict at a time."""
    for i in range(n):
        yield {"i": i, "progress": (i + 1) / n}


async def _stream_batched(request: bytes, context: Any) -> AsyncIterator[bytes]:
    # The same source as the tool (an async generator of dicts), sent BATCH chunks per message.
    batch: list[dict[str, Any]] = []
    async for chunk in _count(int(request or b"1")):
        batch.append(chunk)
        if len(batch) == BATCH:
            yield dumps(batch)
            batch = []
    if batch:
        yield dumps(batch)


def _identity(data: bytes) -> bytes:
    return data


async def _serve(port_file: str) -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    handler = grpc.method_handlers_generic_handler(
        "bench.Raw",
        {
            "Echo": grpc.unary_unary_rpc_method_handler(
                _echo, request_deserializer=_identity, response_serializer=_identity
            ),
            "Stream": grpc.unary_stream_rpc_method_handler(
                _stream, request_deserializer=_identity, response_serializer=_identity
            ),
            "StreamBatched": grpc.unary_stream_rpc_method_handler(
                _stream_batched, request_deserializer=_identity, response_serializer=_identity
            ),
        },
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    tmp = port_file + ".tmp"
    Path(tmp).write_text(str(port))  # noqa: ASYNC240 - once, at start-up
    os.replace(tmp, port_file)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(0.5)


@contextlib.contextmanager
def raw_server() -> Iterator[str]:
    """Start the raw baseline server in its own process; yields its address; stops it."""
    with tempfile.TemporaryDirectory() as tmp:
        port_file = os.path.join(tmp, "port")
        proc = subprocess.Popen(
            [sys.executable, __file__, "serve", "--port-file", port_file],
            stdin=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 30
            while not os.path.exists(port_file):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the raw baseline server did not start")
                time.sleep(0.01)
            yield f"127.0.0.1:{Path(port_file).read_text().strip()}"
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def raw_channel(address: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(address, options=[("grpc.enable_http_proxy", 0)])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["serve"])
    parser.add_argument("--port-file", required=True)
    args = parser.parse_args()
    asyncio.run(_serve(args.port_file))


if __name__ == "__main__":
    main()
