"""Harness for the worker tests: a small stand-in orchestrator and a worker-process factory.

The stand-in is a real grpc.aio server (with the token interceptor) answering what a worker
calls: Ping, Heartbeat, ExecuteElixirTool (two kernel tools: ``double`` and ``explode``) and
the variable RPCs (the orchestrator's real ``VariableServicerMixin`` over ``VariableStores``).
Workers are real ``python -m snakepit_nb.worker`` processes started with the launch contract's
argv and environment; every one is stopped (and reaped) by its fixture.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import grpc
import grpc.aio
import paths
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from snakepit_nb._loop import LoopThread
from snakepit_nb.orchestrator.server.variables import VariableServicerMixin
from snakepit_nb.orchestrator.variables.stores import VariableStores
from snakepit_nb.protocol import pb, pb_grpc
from snakepit_nb.protocol.auth import TokenInterceptor, new_token, server_options
from snakepit_nb.protocol.codec import (
    binary_parameter_metadata,
    decode_any,
    decode_any_with_binary,
    encode_any,
    encode_params,
    error_payload,
)

pytestmark = pytest.mark.integration

T = TypeVar("T")
REPO = paths.ROOT
READY_DEADLINE = 30.0  # generous: other test suites share the 2 cores


async def _wrap(awaitable: Awaitable[T] | Callable[[], Awaitable[T]]) -> T:
    # A gRPC call object must be created on the loop it runs on: callers pass a factory
    # (``lambda: stub.Ping(...)``) so the call is made here, on the harness loop.
    if callable(awaitable):
        awaitable = awaitable()
    return await awaitable


class StandInOrchestrator(VariableServicerMixin, pb_grpc.BridgeServiceServicer):  # type: ignore[misc]
    """The part of the orchestrator a worker talks to (variables: the real variable servicer)."""

    def __init__(self) -> None:
        self.service = self  # the variable servicer asks its service for a session's variables
        self.variables = VariableStores()
        self.pings: list[str] = []
        self.heartbeats: list[str] = []
        self.kernel_calls: list[tuple[str, dict[str, object]]] = []

    def session_variables(self, session_id: str) -> Any:
        return self.variables.for_session(session_id)

    @property
    def max_variable_bytes(self) -> int:
        return self.variables.limits.max_value_bytes

    async def Ping(self, request: Any, context: Any) -> Any:
        self.pings.append(request.message)
        return pb.PingResponse(message=f"pong: {request.message}", pid=os.getpid())

    async def Heartbeat(self, request: Any, context: Any) -> Any:
        self.heartbeats.append(request.worker_id)
        stamp = Timestamp()
        stamp.GetCurrentTime()
        return pb.HeartbeatResponse(server_time=stamp, session_valid=True)

    async def ExecuteElixirTool(self, request: Any, context: Any) -> Any:
        kwargs = {k: decode_any(v) for k, v in request.parameters.items()}
        self.kernel_calls.append((request.tool_name, kwargs))
        if request.tool_name == "double":
            x: Any = kwargs["x"]
            return pb.ExecuteElixirToolResponse(success=True, result=encode_any(x * 2))
        if request.tool_name == "explode":
            try:
                raise RuntimeError("kernel tool exploded")
            except RuntimeError as exc:
                payload = error_payload(exc, tool_name="explode", session_id=request.session_id)
            return pb.ExecuteElixirToolResponse(success=False, error_message=payload)
        await context.abort(
            grpc.StatusCode.NOT_FOUND, f"kernel tool {request.tool_name!r} is not registered"
        )
        return None


class Harness:
    """A loop thread hosting the stand-in orchestrator and the test's gRPC clients."""

    def __init__(self) -> None:
        self.loop_thread = LoopThread(name="worker-test-loop")
        self.token = new_token()
        self.orchestrator = StandInOrchestrator()
        self.server: grpc.aio.Server | None = None
        self.address = self.run(self._start())

    async def _start(self) -> str:
        self.server = grpc.aio.server(
            interceptors=[TokenInterceptor(self.token)], options=server_options()
        )
        await self.orchestrator.variables.open()
        pb_grpc.add_BridgeServiceServicer_to_server(self.orchestrator, self.server)
        port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        return f"127.0.0.1:{port}"

    def run(self, awaitable: Awaitable[T] | Callable[[], Awaitable[T]], timeout: float = 60.0) -> T:
        """Await ``awaitable`` (a coroutine, or a factory of a gRPC call) on the loop thread."""
        return self.loop_thread.run(_wrap(awaitable), timeout=timeout)

    def close(self) -> None:
        if self.server is not None:
            self.run(self.server.stop(None))
        self.loop_thread.stop()


class WorkerProcess:
    """A running worker process and a client stub to it (on the harness loop)."""

    def __init__(
        self,
        harness: Harness,
        popen: subprocess.Popen[bytes],
        address: str,
        stderr: Path,
        ready_seconds: float,
    ) -> None:
        self.harness = harness
        self.popen = popen
        self.pid = popen.pid
        self.address = address
        self.stderr_path = stderr
        self.ready_seconds = ready_seconds
        self.metadata = (("x-snakepit-token", harness.token),)
        self.channel: grpc.aio.Channel = harness.run(self._open())
        self.stub = pb_grpc.BridgeServiceStub(self.channel)

    async def _open(self) -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(self.address)

    def run(self, awaitable: Awaitable[T] | Callable[[], Awaitable[T]], timeout: float = 60.0) -> T:
        return self.harness.run(awaitable, timeout)

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # ------------------------------------------------------------------ calls

    def request(self, tool: str, /, **kwargs: object) -> pb.ExecuteToolRequest:
        params, binary = encode_params(kwargs)
        return pb.ExecuteToolRequest(
            session_id="s1",
            tool_name=tool,
            parameters=params,
            binary_parameters=binary,
            metadata=binary_parameter_metadata(binary),
        )

    def execute(self, tool: str, /, **kwargs: object) -> pb.ExecuteToolResponse:
        request = self.request(tool, **kwargs)
        return self.run(lambda: self.stub.ExecuteTool(request, metadata=self.metadata, timeout=30))

    def call(self, tool: str, /, **kwargs: object) -> object:
        response = self.execute(tool, **kwargs)
        assert response.success, response.error_message
        return decode_any_with_binary(response.result, response.binary_result)

    def rpc_error(
        self, coro_factory: Callable[[], Coroutine[Any, Any, Any]]
    ) -> grpc.aio.AioRpcError:
        async def go() -> grpc.aio.AioRpcError:
            try:
                await coro_factory()
            except grpc.aio.AioRpcError as err:
                return err
            raise AssertionError("the RPC succeeded; an error was expected")

        return self.run(go())

    async def stream_messages(
        self, tool: str, /, *, batching: bool = False, **kwargs: object
    ) -> AsyncIterator[pb.ToolChunk]:
        request = self.request(tool, **kwargs)
        if batching:
            request.metadata["snakepit_nb.chunk_batching"] = "1"
        async for message in self.stub.ExecuteStreamingTool(
            request, metadata=self.metadata, timeout=60
        ):
            yield message

    def define(self, source: str, function: str = "", **fields: Any) -> pb.DefineToolResponse:
        request = pb.DefineToolRequest(source=source, function=function, **fields)
        return self.run(lambda: self.stub.DefineTool(request, metadata=self.metadata, timeout=30))

    # ------------------------------------------------------------------ stopping

    def alive(self) -> bool:
        return self.popen.poll() is None

    def wait_exit(self, timeout: float) -> int | None:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> None:
        with contextlib.suppress(Exception):  # the process is stopped below either way
            self.run(self.channel.close(None), timeout=10)
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            if self.wait_exit(10) is None:
                self.popen.kill()
                self.popen.wait(10)


def worker_env(harness: Harness, ready: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        SNAKEPIT_READY_FILE=str(ready),
        SNAKEPIT_NB_TOKEN=harness.token,
        SNAKEPIT_NB_WORKER_ID="w1",
        SNAKEPIT_NB_POOL="worker-tests",
        SNAKEPIT_NB_PARENT_PID=str(os.getpid()),
        PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    )
    env.update(extra)
    return env


def worker_argv(
    harness: Harness, adapter: str = "snakepit_nb.adapters.showcase:ShowcaseAdapter"
) -> list[str]:
    return [
        sys.executable, "-m", "snakepit_nb.worker", "--adapter", adapter, "--port", "0",
        "--orchestrator-address", harness.address, "--snakepit-run-id", "worker-tests",
    ]  # fmt: skip


def wait_ready(ready: Path, popen: subprocess.Popen[bytes], stderr: Path) -> str:
    """The worker's address once its ready file appears (fails with its stderr otherwise)."""
    deadline = time.monotonic() + READY_DEADLINE
    while time.monotonic() < deadline:
        if ready.exists():
            return ready.read_text()
        if popen.poll() is not None:
            raise AssertionError(
                f"worker exited with {popen.returncode} before ready:\n{stderr.read_text()}"
            )
        time.sleep(0.005)
    popen.kill()
    popen.wait(10)
    raise AssertionError(f"worker not ready within {READY_DEADLINE} s:\n{stderr.read_text()}")


def spawn_worker(
    harness: Harness,
    tmp: Path,
    *,
    adapter: str = "snakepit_nb.adapters.showcase:ShowcaseAdapter",
    env: Mapping[str, str] | None = None,
) -> WorkerProcess:
    tmp.mkdir(parents=True, exist_ok=True)
    ready = tmp / "ready"
    stderr = tmp / "stderr.txt"
    started = time.perf_counter()
    with stderr.open("wb") as err:
        popen = subprocess.Popen(
            worker_argv(harness, adapter),
            env=worker_env(harness, ready, **dict(env or {})),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            cwd=str(tmp),
            start_new_session=True,
        )
    try:
        address = wait_ready(ready, popen, stderr)
    except BaseException:
        if popen.poll() is None:
            popen.kill()
            popen.wait(10)
        raise
    return WorkerProcess(harness, popen, address, stderr, time.perf_counter() - started)


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` until true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


async def gather_stream(agen: AsyncIterator[pb.ToolChunk]) -> list[pb.ToolChunk]:
    return [message async for message in agen]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0): read its state.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def harness_fixture() -> Iterator[Harness]:
    """Module fixture body: one stand-in orchestrator per test module."""
    h = Harness()
    yield h
    h.close()


def worker_fixture(
    harness: Harness, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    """Module fixture body: one showcase worker per test module (tests that kill or stop a
    worker start their own)."""
    w = spawn_worker(harness, tmp_path_factory.mktemp("worker"))
    yield w
    w.stop()


# Test modules declare the fixtures the same way.
_harness = pytest.fixture(scope="module", name="harness")(harness_fixture)
_worker = pytest.fixture(scope="module", name="worker")(worker_fixture)


def test_worker_serves_ping_with_its_identity(harness: Harness, worker: WorkerProcess) -> None:
    response = worker.run(
        lambda: worker.stub.Ping(pb.PingRequest(message="hi"), metadata=worker.metadata, timeout=10)
    )
    assert response.pid == worker.pid
    assert response.worker_id == "w1"
    assert response.message == "pong: hi"
    # The worker pinged the stand-in orchestrator before it reported ready.
    assert any("w1" in message for message in harness.orchestrator.pings)
