"""The worker process's life: start-up contract, signals, parent death, heartbeats, auth."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from test_worker_harness import (
    Harness,
    WorkerProcess,
    harness_fixture,
    pid_alive,
    spawn_worker,
    wait_for,
    worker_argv,
    worker_env,
    worker_fixture,
)

from snakepit_nb.protocol import pb

pytestmark = pytest.mark.integration

_harness = pytest.fixture(scope="module", name="harness")(harness_fixture)
_worker = pytest.fixture(scope="module", name="worker")(worker_fixture)


def run_to_exit(argv: list[str], env: dict[str, str], timeout: float = 30.0) -> tuple[int, str]:
    done = subprocess.run(
        argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, check=False
    )
    return done.returncode, done.stderr.decode(errors="replace")


def test_sigint_is_ignored(worker: WorkerProcess) -> None:
    os.kill(worker.pid, signal.SIGINT)
    for _ in range(3):
        pong = worker.run(
            lambda: worker.stub.Ping(pb.PingRequest(), metadata=worker.metadata, timeout=5)
        )
        assert pong.pid == worker.pid
    assert worker.alive()


def test_sigterm_stops_cleanly_with_exit_code_0(harness: Harness, tmp_path: Path) -> None:
    w = spawn_worker(harness, tmp_path)
    try:
        # A sync tool blocking in a thread does not hold the exit back.
        w.run(_start_call(w, "sleep_sync", seconds=30.0))
        os.kill(w.pid, signal.SIGTERM)
        assert w.wait_exit(10) == 0, w.stderr()
    finally:
        w.stop()


async def _start_call(w: WorkerProcess, tool: str, **kwargs: object) -> None:
    channel = w.stub.CallChannel(metadata=w.metadata)
    await channel.write(
        pb.ChannelFrame(messages=[pb.ChannelMessage(call_id=1, request=w.request(tool, **kwargs))])
    )


PARENT = """
import json, os, shlex, subprocess, sys, time
argv, env, wrap = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3] == "1"
env["SNAKEPIT_NB_PARENT_PID"] = str(os.getpid())
if wrap:  # a wrapper between us and the worker: only the parent-watch thread guards us then
    argv = ["sh", "-c", " ".join(shlex.quote(a) for a in argv) + "; true"]
child = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL)
print(child.pid, flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("wrapped", [False, True], ids=["direct-child", "through-a-wrapper"])
def test_worker_dies_within_a_second_when_its_parent_is_killed(
    harness: Harness, tmp_path: Path, wrapped: bool
) -> None:
    ready = tmp_path / "ready"
    env = worker_env(harness, ready)
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, json.dumps(worker_argv(harness)), json.dumps(env),
         "1" if wrapped else "0"],
        stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    child_pid = 0
    worker_pid = 0
    try:
        assert parent.stdout is not None
        child_pid = int(parent.stdout.readline())
        wait_for(ready.exists, 30.0, "the worker's ready file")
        w = WorkerProcess.__new__(WorkerProcess)  # only for its stub: no Popen of ours
        w.harness, w.metadata = harness, (("x-snakepit-token", harness.token),)
        w.channel = harness.run(_channel(ready.read_text()))
        from snakepit_nb.protocol import pb_grpc

        w.stub = pb_grpc.BridgeServiceStub(w.channel)
        worker_pid = w.run(
            lambda: w.stub.Ping(pb.PingRequest(), metadata=w.metadata, timeout=10)
        ).pid
        harness.run(w.channel.close(None))
        assert pid_alive(worker_pid)
        parent.kill()
        parent.wait(10)
        killed = time.monotonic()
        wait_for(lambda: not pid_alive(worker_pid), 1.0, "the worker to die with its parent")
        print(f"\nworker gone {1000 * (time.monotonic() - killed):.0f} ms after its parent")
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(10)
        if parent.stdout is not None:
            parent.stdout.close()
        for pid in (worker_pid, child_pid):
            if pid and pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


async def _channel(address: str) -> Any:
    return grpc.aio.insecure_channel(address)


def test_startup_fails_when_the_orchestrator_never_answers(
    harness: Harness, tmp_path: Path
) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    argv = worker_argv(harness)
    argv[argv.index("--orchestrator-address") + 1] = dead
    env = worker_env(harness, tmp_path / "ready", SNAKEPIT_NB_PING_TIMEOUT="1")
    started = time.monotonic()
    code, stderr = run_to_exit(argv, env)
    assert code == 2
    assert f"the orchestrator at {dead} did not answer a ping within 1 s" in stderr
    assert time.monotonic() - started < 15
    assert not (tmp_path / "ready").exists()


def test_startup_fails_when_the_orchestrator_refuses_the_token(
    harness: Harness, tmp_path: Path
) -> None:
    env = worker_env(harness, tmp_path / "ready", SNAKEPIT_NB_TOKEN="wrong")
    code, stderr = run_to_exit(worker_argv(harness), env)
    assert code == 2
    assert "refused the worker's ping with UNAUTHENTICATED" in stderr


@pytest.mark.parametrize(
    ("adapter", "message"),
    [
        ("no_such_module_xyz:Adapter", "cannot import the adapter's module 'no_such_module_xyz'"),
        ("snakepit_nb.adapters.showcase:Nope", "has no adapter class 'Nope'"),
        ("collections:OrderedDict", "is not a snakepit_nb.worker.Adapter subclass"),
    ],
)
def test_startup_fails_with_a_clear_message_for_a_bad_adapter(
    harness: Harness, tmp_path: Path, adapter: str, message: str
) -> None:
    env = worker_env(harness, tmp_path / "ready")
    code, stderr = run_to_exit(worker_argv(harness, adapter), env)
    assert code == 2
    assert message in stderr


def test_the_published_bridges_extra_flags_are_accepted(harness: Harness, tmp_path: Path) -> None:
    # The published form: a dotted adapter path, --elixir-address, and flags we do not use.
    argv = [*worker_argv(harness, "snakepit_nb.adapters.showcase.ShowcaseAdapter"),
            "--snakepit-instance-name", "x", "--elixir-address", harness.address]  # fmt: skip
    ready = tmp_path / "ready"
    stderr = tmp_path / "stderr"
    with stderr.open("wb") as err:
        proc = subprocess.Popen(argv, env=worker_env(harness, ready), stderr=err)
    try:
        wait_for(lambda: ready.exists() or proc.poll() is not None, 30.0, "ready or exit")
        assert ready.exists(), stderr.read_text()
    finally:
        proc.terminate()
        assert proc.wait(10) == 0


def test_calls_without_the_token_are_unauthenticated(worker: WorkerProcess) -> None:
    stub = worker.stub

    async def attempt(kind: str, metadata: tuple[tuple[str, str], ...]) -> grpc.StatusCode:
        try:
            if kind == "unary":
                await stub.ExecuteTool(worker.request("add", a=1, b=2), metadata=metadata)
            elif kind == "ping":
                await stub.Ping(pb.PingRequest(), metadata=metadata)
            elif kind == "server-stream":
                async for _ in stub.ExecuteStreamingTool(
                    worker.request("count", n=2), metadata=metadata
                ):
                    pass
            elif kind == "bidi":
                call = stub.CallChannel(metadata=metadata)
                await call.write(pb.ChannelFrame())
                await call.read()
            elif kind == "telemetry":
                call = stub.StreamTelemetry(metadata=metadata)
                await call.read()
        except grpc.aio.AioRpcError as err:
            return err.code()
        return grpc.StatusCode.OK

    for kind in ("unary", "ping", "server-stream", "bidi", "telemetry"):
        for metadata in ((), (("x-snakepit-token", "wrong"),)):
            code = worker.run(attempt(kind, metadata), timeout=15)
            assert code is grpc.StatusCode.UNAUTHENTICATED, (kind, metadata, code)


def test_the_token_is_not_on_the_command_line(harness: Harness, worker: WorkerProcess) -> None:
    cmdline = Path(f"/proc/{worker.pid}/cmdline").read_bytes()
    assert harness.token.encode() not in cmdline


def test_orchestrator_rpcs_answer_unimplemented_naming_the_orchestrator(
    worker: WorkerProcess,
) -> None:
    err = worker.rpc_error(
        lambda: worker.stub.GetVariable(
            pb.GetVariableRequest(session_id="s", variable_identifier="x"),
            metadata=worker.metadata,
            timeout=10,
        )
    )
    assert err.code() is grpc.StatusCode.UNIMPLEMENTED
    assert "served by the orchestrator" in err.details()


def test_heartbeats_reach_the_orchestrator(harness: Harness, tmp_path: Path) -> None:
    harness.orchestrator.heartbeats.clear()
    w = spawn_worker(
        harness,
        tmp_path,
        env={"SNAKEPIT_NB_HEARTBEAT_INTERVAL": "0.05", "SNAKEPIT_NB_WORKER_ID": "hb"},
    )
    try:
        wait_for(lambda: harness.orchestrator.heartbeats.count("hb") >= 3, 10.0, "3 heartbeats")
    finally:
        w.stop()


def test_worker_exits_when_the_orchestrator_is_gone(tmp_path: Path) -> None:
    own = Harness()
    try:
        w = spawn_worker(
            own, tmp_path,
            env={"SNAKEPIT_NB_HEARTBEAT_INTERVAL": "0.1", "SNAKEPIT_NB_HEARTBEAT_MISSES": "3"},
        )  # fmt: skip
        try:
            assert own.server is not None
            own.run(own.server.stop(None))
            code = w.wait_exit(15)
            assert code == 4, w.stderr()
            assert "missed 3 heartbeats" in w.stderr()
        finally:
            w.stop()
    finally:
        own.close()


def test_unix_socket_transport(harness: Harness, tmp_path: Path) -> None:
    sockets = tmp_path / "s"
    sockets.mkdir(mode=0o700)
    w = spawn_worker(harness, tmp_path / "w", env={"SNAKEPIT_NB_SOCKET_DIR": str(sockets)})
    try:
        assert w.address == f"unix:{sockets}/w1.sock"
        mode = stat.S_IMODE((sockets / "w1.sock").stat().st_mode)
        assert mode == 0o600
        assert w.call("add", a=1, b=2) == 3
    finally:
        w.stop()


def test_spawn_to_ready_time(harness: Harness, tmp_path: Path) -> None:
    one = spawn_worker(harness, tmp_path / "one")
    one.stop()
    started = time.perf_counter()
    procs = []
    for i in range(4):
        ready = tmp_path / f"r{i}"
        procs.append(
            (
                ready,
                subprocess.Popen(
                    worker_argv(harness),
                    env=worker_env(harness, ready, SNAKEPIT_NB_WORKER_ID=f"w{i}"),
                    stdin=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                ),
            )
        )
    try:
        wait_for(lambda: all(r.exists() for r, _ in procs), 30.0, "4 workers ready")
        four = time.perf_counter() - started
    finally:
        for _, p in procs:
            p.terminate()
        for _, p in procs:
            assert p.wait(10) == 0
    print(
        f"\nspawn->ready: 1 worker {one.ready_seconds * 1000:.0f} ms; "
        f"4 at once {four * 1000:.0f} ms"
    )
    assert one.ready_seconds < 10
