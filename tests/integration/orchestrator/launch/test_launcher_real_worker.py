"""The launcher with our real worker (``python -m snakepit_nb.worker``) and real gRPC.

The orchestrator side is a small stand-in grpc.aio server (Ping, Heartbeat, RegisterTools
behind the real token interceptor), so these tests exercise only the launcher and the worker's
process contract: start-up time, loopback-only listening, token placement, stop, and dying
with a SIGKILLed kernel (T6, T9, T14, T15 with the real thing).
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import grpc.aio
import paths
import psutil
import pytest
from launcher_standin import (
    is_loopback,
    pid_exists,
    pid_running,
    processes_with_marker,
    real_worker_argv,
    real_worker_env,
    start_standin_orchestrator,
    wait_until,
)

from snakepit_nb.orchestrator.launch.base import WorkerSpec
from snakepit_nb.orchestrator.launch.local import LocalProcessLauncher
from snakepit_nb.orchestrator.launch.registry import ProcessRegistry
from snakepit_nb.protocol import pb, pb_grpc
from snakepit_nb.protocol.auth import client_interceptors

pytestmark = pytest.mark.integration

TOKEN = "real-" + "Zq9" * 12


@pytest.fixture
def registry_dir(tmp_path: Path) -> Path:
    return tmp_path / "registry"


@pytest.fixture
def run_ids() -> Iterator[list[str]]:
    ids: list[str] = []
    yield ids
    for run_id in ids:
        for pid in processes_with_marker(run_id):
            os.kill(pid, signal.SIGKILL)


def _spec(worker_id: str, address: str, run_id: str) -> WorkerSpec:
    return WorkerSpec(
        worker_id, real_worker_argv(address, run_id), real_worker_env(TOKEN), None, 60.0
    )


def _cmdline(pid: int) -> bytes:
    return Path(f"/proc/{pid}/cmdline").read_bytes()


async def _ping(address: str) -> pb.PingResponse:
    async with grpc.aio.insecure_channel(
        address, interceptors=client_interceptors(TOKEN)
    ) as channel:
        stub = pb_grpc.BridgeServiceStub(channel)
        return await stub.Ping(pb.PingRequest(message="hi"), timeout=10)


def test_real_workers_start_fast_listen_on_loopback_and_stop(
    registry_dir: Path, run_ids: list[str]
) -> None:
    async def body() -> dict[str, float]:
        server, address = await start_standin_orchestrator(TOKEN)
        launcher = LocalProcessLauncher(registry=ProcessRegistry(registry_dir))
        run_ids.append(launcher.run_id)
        try:
            t0 = time.monotonic()
            one = await launcher.launch(_spec("w0", address, launcher.run_id))
            one_s = time.monotonic() - t0
            t0 = time.monotonic()
            code = await one.stop(grace=2.0)
            stop_one_s = time.monotonic() - t0
            assert code == 0, one.stderr_tail()  # a clean exit on SIGTERM
            assert not pid_exists(one.pid or 0)

            t0 = time.monotonic()
            workers = await asyncio.gather(
                *(launcher.launch(_spec(f"w{i}", address, launcher.run_id)) for i in range(1, 5))
            )
            four_s = time.monotonic() - t0
            for worker in workers:
                assert worker.pid is not None
                # T14: the token is in the environment only.
                assert TOKEN.encode() not in _cmdline(worker.pid)
                # T15: a real gRPC server bound to loopback only.
                listening = [
                    c
                    for c in psutil.Process(worker.pid).net_connections(kind="inet")
                    if c.status == psutil.CONN_LISTEN
                ]
                assert listening
                assert all(is_loopback(c.laddr.ip) for c in listening), listening
                reply = await _ping(worker.address)
                assert reply.message
            t0 = time.monotonic()
            codes = await asyncio.gather(*(w.stop(grace=2.0) for w in workers))
            stop_four_s = time.monotonic() - t0
            assert codes == [0, 0, 0, 0]
            assert all(not pid_exists(w.pid or 0) for w in workers)
            return {
                "real_spawn_to_ready_1_s": round(one_s, 3),
                "real_spawn_to_ready_4_s": round(four_s, 3),
                "real_stop_1_s": round(stop_one_s, 3),
                "real_stop_4_s": round(stop_four_s, 3),
            }
        finally:
            await launcher.close()
            await server.stop(None)  # type: ignore[attr-defined]

    numbers = asyncio.run(body())
    print(json.dumps(numbers))
    # Target: about 1 s on 2 cores; generous here, other tests share the machine.
    assert numbers["real_spawn_to_ready_4_s"] < 6.0


def test_real_worker_over_unix_socket(registry_dir: Path, run_ids: list[str]) -> None:
    async def body() -> None:
        server, address = await start_standin_orchestrator(TOKEN)
        launcher = LocalProcessLauncher(registry=ProcessRegistry(registry_dir), transport="unix")
        run_ids.append(launcher.run_id)
        try:
            worker = await launcher.launch(_spec("w1", address, launcher.run_id))
            assert worker.address.startswith("unix:")
            path = worker.address.removeprefix("unix:").removeprefix("//")
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
            assert stat.S_IMODE(os.stat(launcher.run_dir).st_mode) == 0o700
            assert (await _ping(worker.address)).message
            listening = [
                c
                for c in psutil.Process(worker.pid).net_connections(kind="inet")
                if c.status == psutil.CONN_LISTEN
            ]
            assert listening == []  # nothing on TCP at all
        finally:
            await launcher.close()
            await server.stop(None)  # type: ignore[attr-defined]

    asyncio.run(body())


FAKE_KERNEL = r"""
import asyncio, json, sys
from snakepit_nb.orchestrator.launch.base import WorkerSpec
from snakepit_nb.orchestrator.launch.local import LocalProcessLauncher
from snakepit_nb.orchestrator.launch.registry import ProcessRegistry
from launcher_standin import real_worker_argv, real_worker_env, start_standin_orchestrator

run_id, registry_dir, token = sys.argv[1:4]

async def main():
    server, address = await start_standin_orchestrator(token)
    launcher = LocalProcessLauncher(run_id=run_id, registry=ProcessRegistry(registry_dir))
    workers = await asyncio.gather(*(
        launcher.launch(WorkerSpec(f"w{i}", real_worker_argv(address, run_id),
                                   real_worker_env(token), None, 60.0))
        for i in range(2)
    ))
    print(json.dumps([w.pid for w in workers]), flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def test_real_workers_die_with_a_sigkilled_kernel(registry_dir: Path, run_ids: list[str]) -> None:
    """T9 with the real worker: PR_SET_PDEATHSIG + parent watch, then the registry sweep."""
    run_ids.append("t9real")
    env = dict(os.environ, PYTHONPATH=str(paths.SUPPORT))
    kernel = subprocess.Popen(
        [sys.executable, "-c", FAKE_KERNEL, "t9real", str(registry_dir), TOKEN],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert kernel.stdout is not None
        ready, _, _ = select.select([kernel.stdout], [], [], 60)
        assert ready, "the fake kernel did not start its workers in time"
        line = kernel.stdout.readline()
        assert line, kernel.stderr.read() if kernel.stderr else ""
        workers = [int(p) for p in json.loads(line)]
        assert all(pid_running(p) for p in workers)
        kernel.kill()
        kernel.wait()
        t0 = time.monotonic()
        assert wait_until(lambda: not any(pid_running(p) for p in workers), 1.0)
        gone_s = time.monotonic() - t0

        async def next_start() -> None:
            launcher = LocalProcessLauncher(registry=ProcessRegistry(registry_dir))
            report = await launcher.sweep_once()
            assert report is not None
            assert report.removed_rows == 2
            await launcher.close()

        asyncio.run(next_start())
        assert processes_with_marker("t9real") == []
        assert ProcessRegistry(registry_dir).rows() == []
        print(json.dumps({"real_workers_gone_after_kernel_kill_s": round(gone_s, 3)}))
    finally:
        if kernel.poll() is None:
            kernel.kill()
        kernel.wait()
        for stream in (kernel.stdout, kernel.stderr):
            if stream is not None:
                stream.close()
