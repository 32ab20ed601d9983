"""The orchestrator's gRPC server over real loopback gRPC (no pool: the RPCs workers call back).

The server runs on snakepit_nb's loop thread, as in a notebook; the tests call it from the
test thread with a plain blocking grpc channel, like a worker process would.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from snakepit_nb._loop import get_loop_thread
from snakepit_nb.orchestrator.config import Config
from snakepit_nb.orchestrator.orchestrator import Orchestrator
from snakepit_nb.protocol import pb, pb_grpc
from snakepit_nb.protocol.auth import token_metadata
from snakepit_nb.protocol.codec import decode_any, decode_chunk, encode_any

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Served:
    """An orchestrator serving on the loop thread, and a stub that carries the token."""

    def __init__(self, orch: Orchestrator, clock: FakeClock) -> None:
        self.orch = orch
        self.clock = clock
        target = orch.address
        self.channel = grpc.insecure_channel(target)
        self.stub = pb_grpc.BridgeServiceStub(self.channel)
        self.md = token_metadata(orch.token)

    def on_loop(self, fn: Callable[[], Any]) -> Any:
        async def call() -> Any:
            return fn()

        return get_loop_thread().run(call(), timeout=30)


def serve(**config: Any) -> Served:
    clock = FakeClock()
    orch = Orchestrator(Config(**config), clock=clock)
    get_loop_thread().run(orch.serve(), timeout=30)
    return Served(orch, clock)


@pytest.fixture
def served() -> Iterator[Served]:
    s = serve()
    yield s
    s.channel.close()
    get_loop_thread().run(s.orch.close(), timeout=30)
    assert s.orch.closed


def code_of(exc_info: pytest.ExceptionInfo[grpc.RpcError]) -> grpc.StatusCode:
    code: grpc.StatusCode = exc_info.value.code()
    return code


def details_of(exc_info: pytest.ExceptionInfo[grpc.RpcError]) -> str:
    return str(exc_info.value.details())


# ---------------------------------------------------------------------- health and auth


def test_ping_answers_and_binds_loopback_only(served: Served) -> None:
    reply = served.stub.Ping(pb.PingRequest(message="hi"), metadata=served.md)
    assert reply.message == "pong: hi"
    assert reply.pid == os.getpid()
    assert served.orch.address.startswith("127.0.0.1:")


def test_calls_without_or_with_a_wrong_token_are_unauthenticated(served: Served) -> None:
    with pytest.raises(grpc.RpcError) as info:
        served.stub.Ping(pb.PingRequest(message="x"))
    assert code_of(info) == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as info:
        served.stub.InitializeSession(
            pb.InitializeSessionRequest(session_id="s"), metadata=token_metadata("wrong")
        )
    assert code_of(info) == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as info:
        list(served.stub.ExecuteStreamingTool(pb.ExecuteToolRequest(session_id="s")))
    assert code_of(info) == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as info:
        list(served.stub.WatchVariables(pb.WatchVariablesRequest(session_id="s")))
    assert code_of(info) == grpc.StatusCode.UNAUTHENTICATED
    # Nothing was created by the refused calls.
    assert len(served.orch.sessions) == 0


def test_auth_false_lets_tokenless_calls_in() -> None:
    s = serve(auth=False)
    try:
        assert s.stub.Ping(pb.PingRequest(message="x")).message == "pong: x"
    finally:
        s.channel.close()
        get_loop_thread().run(s.orch.close(), timeout=30)


def test_worker_side_rpcs_are_unimplemented_naming_the_side(served: Served) -> None:
    with pytest.raises(grpc.RpcError) as info:
        served.stub.DescribeTools(pb.DescribeToolsRequest(), metadata=served.md)
    assert code_of(info) == grpc.StatusCode.UNIMPLEMENTED
    assert "served by workers, not by the orchestrator" in details_of(info)
    with pytest.raises(grpc.RpcError) as info:
        served.stub.DefineTool(pb.DefineToolRequest(name="x"), metadata=served.md)
    assert code_of(info) == grpc.StatusCode.UNIMPLEMENTED
    with pytest.raises(grpc.RpcError) as info:
        list(served.stub.StreamTelemetry(iter([pb.TelemetryControl()]), metadata=served.md))
    assert code_of(info) == grpc.StatusCode.UNIMPLEMENTED
    assert "StreamTelemetry is served by workers" in details_of(info)


def test_unix_transport_uses_a_private_socket() -> None:
    s = serve(transport="unix")
    try:
        assert s.orch.address.startswith("unix:")
        path = s.orch.address[len("unix:") :]
        assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
        assert stat.S_ISSOCK(os.stat(path).st_mode)
        assert s.stub.Ping(pb.PingRequest(message="u"), metadata=s.md).message == "pong: u"
    finally:
        s.channel.close()
        get_loop_thread().run(s.orch.close(), timeout=30)
    assert not os.path.exists(os.path.dirname(path))


def test_garbage_bytes_never_give_unknown(served: Served) -> None:
    methods = ["InitializeSession", "GetSession", "Heartbeat", "RegisterTools", "ExecuteElixirTool"]
    for method in methods:
        call = served.channel.unary_unary(
            f"/snakepit.bridge.BridgeService/{method}",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        for payload in (b"\xff\xff\xff", b"\x0a\x05ab", os.urandom(64)):
            code = grpc.StatusCode.OK
            try:
                call(payload, metadata=served.md, timeout=10)
            except grpc.RpcError as err:
                code = err.code()
            assert code != grpc.StatusCode.UNKNOWN, method
    assert served.stub.Ping(pb.PingRequest(message="still"), metadata=served.md).message


# ---------------------------------------------------------------------- sessions


def test_session_lifecycle(served: Served) -> None:
    stub, md = served.stub, served.md
    for _ in range(3):  # idempotent, and cheap enough to call per tool call
        reply = stub.InitializeSession(
            pb.InitializeSessionRequest(session_id="exp1", metadata={"who": "test"}), metadata=md
        )
        assert reply.success
    assert served.orch.sessions.stats().created == 1
    info = stub.GetSession(pb.GetSessionRequest(session_id="exp1"), metadata=md)
    assert info.session_id == "exp1"
    assert dict(info.metadata) == {"who": "test"}
    assert info.created_at.seconds > 0
    beat = stub.Heartbeat(pb.HeartbeatRequest(session_id="exp1"), metadata=md)
    assert beat.session_valid
    assert beat.server_time.seconds > 0
    cleaned = stub.CleanupSession(pb.CleanupSessionRequest(session_id="exp1"), metadata=md)
    assert cleaned.success
    assert cleaned.resources_cleaned == 1
    again = stub.CleanupSession(pb.CleanupSessionRequest(session_id="exp1"), metadata=md)
    assert again.success
    assert again.resources_cleaned == 0
    assert not stub.Heartbeat(pb.HeartbeatRequest(session_id="exp1"), metadata=md).session_valid
    with pytest.raises(grpc.RpcError) as info_err:
        stub.GetSession(pb.GetSessionRequest(session_id="exp1"), metadata=md)
    assert code_of(info_err) == grpc.StatusCode.NOT_FOUND
    assert "session 'exp1' does not exist" in details_of(info_err)


def test_bad_session_id_is_invalid_argument(served: Served) -> None:
    with pytest.raises(grpc.RpcError) as info:
        served.stub.InitializeSession(
            pb.InitializeSessionRequest(session_id=""), metadata=served.md
        )
    assert code_of(info) == grpc.StatusCode.INVALID_ARGUMENT
    assert "session id" in details_of(info)


def test_expired_session_over_grpc_with_a_fake_clock(served: Served) -> None:
    stub, md = served.stub, served.md
    stub.InitializeSession(pb.InitializeSessionRequest(session_id="old"), metadata=md)
    served.clock.now += served.orch.config.session_ttl + 5
    with pytest.raises(grpc.RpcError) as info:
        stub.GetSession(pb.GetSessionRequest(session_id="old"), metadata=md)
    assert code_of(info) == grpc.StatusCode.NOT_FOUND
    assert "session 'old' expired after 3605 s idle" in details_of(info)


def test_closing_a_session_drops_its_variables(served: Served) -> None:
    stub, md = served.stub, served.md
    stub.InitializeSession(pb.InitializeSessionRequest(session_id="v"), metadata=md)
    reply = stub.RegisterVariable(
        pb.RegisterVariableRequest(
            session_id="v", name="t", type="float", initial_value=encode_any(0.5)
        ),
        metadata=md,
    )
    assert reply.success
    assert served.on_loop(lambda: served.orch.variable_count("v")) == 1
    stub.CleanupSession(pb.CleanupSessionRequest(session_id="v"), metadata=md)
    assert served.on_loop(lambda: served.orch.variables.peek("v")) is None
    with pytest.raises(grpc.RpcError) as info:
        stub.GetVariable(
            pb.GetVariableRequest(session_id="v", variable_identifier="t"), metadata=md
        )
    assert code_of(info) == grpc.StatusCode.NOT_FOUND


def test_worker_heartbeats_reach_the_pool(served: Served) -> None:
    seen: list[str] = []

    class PoolStandIn:
        def record_heartbeat(self, worker_id: str) -> None:
            seen.append(worker_id)

        async def close(self) -> None:
            pass

    served.orch._pool = PoolStandIn()  # type: ignore[assignment]
    beat = served.stub.Heartbeat(pb.HeartbeatRequest(worker_id="w7"), metadata=served.md)
    assert not beat.session_valid  # no session named
    assert seen == ["w7"]


# ---------------------------------------------------------------------- tools


def test_register_tools_from_a_published_style_worker(served: Served) -> None:
    reg = pb.ToolRegistration(name="add", description="Add", supports_streaming=False)
    reg.parameters.add(name="a", type="integer", required=True)
    reply = served.stub.RegisterTools(
        pb.RegisterToolsRequest(session_id="s", tools=[reg], worker_id="w1"), metadata=served.md
    )
    assert reply.success
    assert reply.tool_ids["add"] == "w1:add"
    assert served.on_loop(lambda: served.orch.registry.workers_for("add")) == ["w1"]
    bad = pb.ToolRegistration(name="bad name")
    with pytest.raises(grpc.RpcError) as info:
        served.stub.RegisterTools(
            pb.RegisterToolsRequest(tools=[bad], worker_id="w1"), metadata=served.md
        )
    assert code_of(info) == grpc.StatusCode.INVALID_ARGUMENT
    assert "tool name 'bad name' is not valid" in details_of(info)
    assert served.on_loop(served.orch.registry.names) == ["add"]


def register_kernel_tools(served: Served) -> dict[str, str]:
    where: dict[str, str] = {}

    def lookup(key: str, times: int = 1) -> str:
        """Repeat a key."""
        where["lookup"] = threading.current_thread().name
        return key * times

    async def alookup(key: str) -> dict[str, Any]:
        where["alookup"] = threading.current_thread().name
        await asyncio.sleep(0)
        return {"key": key, "n": None, "f": 1.5}

    def explode(message: str) -> None:
        raise KeyError(message)

    def countdown(n: int):  # type: ignore[no-untyped-def]
        try:
            for i in range(n, 0, -1):
                yield {"i": i}
            return "liftoff"
        finally:
            where["countdown_closed"] = "yes"

    def register() -> None:
        tools = served.orch.kernel_tools
        tools.register(lookup)
        tools.register(alookup)
        tools.register(explode, name="explode", description="Always raises")
        tools.register(countdown)

    served.on_loop(register)
    return where


def execute_elixir(served: Served, tool: str, **kwargs: Any) -> pb.ExecuteElixirToolResponse:
    request = pb.ExecuteElixirToolRequest(session_id="", tool_name=tool)
    for key, value in kwargs.items():
        request.parameters[key].CopyFrom(encode_any(value))
    return served.stub.ExecuteElixirTool(request, metadata=served.md)  # type: ignore[no-any-return]


def test_exposed_kernel_tools_are_listed_with_specs(served: Served) -> None:
    register_kernel_tools(served)
    reply = served.stub.GetExposedElixirTools(pb.GetExposedElixirToolsRequest(), metadata=served.md)
    by_name = {t.name: t for t in reply.tools}
    assert sorted(by_name) == ["alookup", "countdown", "explode", "lookup"]
    lookup = by_name["lookup"]
    assert lookup.description == "Repeat a key."
    assert [(p.name, p.required) for p in lookup.parameters] == [("key", True), ("times", False)]
    assert lookup.metadata["kernel"] == "true"
    assert by_name["countdown"].supports_streaming


def test_kernel_tools_run_sync_in_threads_and_async_on_the_loop(served: Served) -> None:
    where = register_kernel_tools(served)
    reply = execute_elixir(served, "lookup", key="ab", times=3)
    assert reply.success
    assert decode_any(reply.result) == "ababab"
    assert where["lookup"].startswith("snakepit-kernel-tool")
    reply = execute_elixir(served, "alookup", key="k")
    assert reply.success
    assert decode_any(reply.result) == {"key": "k", "n": None, "f": 1.5}
    assert where["alookup"] == "snakepit-loop"


def test_kernel_tool_errors_travel_in_the_payload(served: Served) -> None:
    register_kernel_tools(served)
    reply = execute_elixir(served, "explode", message="nope")
    assert not reply.success
    payload = json.loads(reply.error_message)
    assert payload["type"] == "KeyError"
    assert "nope" in payload["message"]
    assert "raise KeyError(message)" in payload["traceback"]
    assert payload["context"]["tool_name"] == "explode"
    # The server is fine afterwards.
    assert execute_elixir(served, "lookup", key="x").success


def test_kernel_tool_infrastructure_errors_are_status_codes(served: Served) -> None:
    register_kernel_tools(served)
    with pytest.raises(grpc.RpcError) as info:
        execute_elixir(served, "nope")
    assert code_of(info) == grpc.StatusCode.NOT_FOUND
    assert "kernel tool 'nope' is not registered; kernel tools: alookup, countdown" in (
        details_of(info)
    )
    with pytest.raises(grpc.RpcError) as info:
        execute_elixir(served, "lookup")
    assert code_of(info) == grpc.StatusCode.INVALID_ARGUMENT
    assert "missing required parameter 'key'" in details_of(info)
    with pytest.raises(grpc.RpcError) as info:
        execute_elixir(served, "lookup", key="a", times="3")
    assert code_of(info) == grpc.StatusCode.INVALID_ARGUMENT
    assert "'times'" in details_of(info)
    with pytest.raises(grpc.RpcError) as info:
        execute_elixir(served, "lookup", key="a", extra=1)
    assert code_of(info) == grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown parameter 'extra'" in details_of(info)


def test_kernel_tool_with_unknown_session_is_not_found(served: Served) -> None:
    register_kernel_tools(served)
    request = pb.ExecuteElixirToolRequest(session_id="ghost", tool_name="lookup")
    request.parameters["key"].CopyFrom(encode_any("k"))
    with pytest.raises(grpc.RpcError) as info:
        served.stub.ExecuteElixirTool(request, metadata=served.md)
    assert code_of(info) == grpc.StatusCode.NOT_FOUND
    assert "session 'ghost'" in details_of(info)


def test_execute_tool_serves_kernel_tools_with_correlation(served: Served) -> None:
    register_kernel_tools(served)
    served.stub.InitializeSession(pb.InitializeSessionRequest(session_id="s"), metadata=served.md)
    request = pb.ExecuteToolRequest(
        session_id="s", tool_name="lookup", metadata={"correlation_id": "corr-1"}
    )
    request.parameters["key"].CopyFrom(encode_any("z"))
    reply, call = served.stub.ExecuteTool.with_call(request, metadata=served.md)
    assert reply.success
    assert decode_any(reply.result) == "z"
    assert reply.metadata["correlation_id"] == "corr-1"
    assert ("x-snakepit-correlation-id", "corr-1") in tuple(call.initial_metadata())
    # The header alone works too.
    request.metadata.clear()
    _, call = served.stub.ExecuteTool.with_call(
        request, metadata=(*served.md, ("x-snakepit-correlation-id", "corr-2"))
    )
    assert ("x-snakepit-correlation-id", "corr-2") in tuple(call.initial_metadata())


def test_streaming_kernel_tool_over_execute_streaming_tool(served: Served) -> None:
    where = register_kernel_tools(served)
    served.stub.InitializeSession(pb.InitializeSessionRequest(session_id="s"), metadata=served.md)
    request = pb.ExecuteToolRequest(session_id="s", tool_name="countdown", stream=True)
    request.parameters["n"].CopyFrom(encode_any(3))
    chunks = list(served.stub.ExecuteStreamingTool(request, metadata=served.md))
    values = [decode_chunk(c.data, c.metadata) for c in chunks if not c.is_final]
    assert values == [{"i": 3}, {"i": 2}, {"i": 1}]
    assert [c.chunk_id for c in chunks] == [
        "countdown-1",
        "countdown-2",
        "countdown-3",
        "countdown-4",
    ]
    final = chunks[-1]
    assert final.is_final
    assert final.metadata["snakepit_nb.return"] == "1"
    assert decode_chunk(final.data, final.metadata) == "liftoff"
    assert where["countdown_closed"] == "yes"
    # Batched form, as our orchestrator asks its workers.
    request.metadata["snakepit_nb.chunk_batching"] = "1"
    batched = list(served.stub.ExecuteStreamingTool(request, metadata=served.md))
    assert sum(c.batch_count for c in batched) == 3
    assert batched[-1].is_final


def test_streaming_kernel_tool_error_ends_with_internal_and_payload(served: Served) -> None:
    def broken(n: int):  # type: ignore[no-untyped-def]
        yield 1
        raise ValueError(f"broke at {n}")

    served.on_loop(lambda: served.orch.kernel_tools.register(broken))
    served.stub.InitializeSession(pb.InitializeSessionRequest(session_id="s"), metadata=served.md)
    request = pb.ExecuteToolRequest(session_id="s", tool_name="broken")
    request.parameters["n"].CopyFrom(encode_any(7))
    received: list[pb.ToolChunk] = []

    def read_all() -> None:
        received.extend(served.stub.ExecuteStreamingTool(request, metadata=served.md))

    with pytest.raises(grpc.RpcError) as info:
        read_all()
    assert code_of(info) == grpc.StatusCode.INTERNAL
    payload = json.loads(details_of(info))
    assert payload["type"] == "ValueError"
    assert payload["message"] == "broke at 7"
    assert [decode_chunk(c.data, c.metadata) for c in received] == [1]
