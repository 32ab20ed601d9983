"""Hostile values over the wire (reliability.md T21, T22, T17's gaps), against ``sp.start``.

T21: NaN and +/-Infinity into a float variable without ``allow_nan``/``allow_inf`` are
INVALID_ARGUMENT and change nothing; NaN or Infinity nested anywhere in an ``Any`` payload
(tool arguments, variable values), in our tagged form or as bare JSON tokens, never give UNKNOWN.
T22: JSON nested 10,000 deep in a tool argument or a variable value is INVALID_ARGUMENT
"nested too deeply" within 1 s, on every path that carries one, and the runtime stays healthy.
Oversize: what T17 (test_reliability_pool.py) does not cover -- streaming arguments, streamed
chunks and return values, map items, a kernel tool's result -- is RESOURCE_EXHAUSTED with a
message that says what to do, and the worker stays the same.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2

import snakepit_nb as sp
from snakepit_nb._errors import (
    InvalidArgumentError,
    RemoteToolError,
    ResourceExhaustedError,
)
from snakepit_nb.protocol import pb, pb_grpc
from snakepit_nb.protocol.auth import channel_options, token_metadata
from snakepit_nb.protocol.codec import decode_any, encode_any

pytestmark = pytest.mark.integration

SESSION = "values"
MIB = 1 << 20
DEEP = 10_000
NONFINITE = [float("nan"), float("inf"), float("-inf")]


def _label(name: str) -> str:
    return f"type.googleapis.com/snakepit.{name}"


def _raw(label: str, data: bytes) -> any_pb2.Any:
    return any_pb2.Any(type_url=_label(label), value=data)


DEEP_JSON = {
    "list": b"[" * DEEP + b"]" * DEEP,
    "map": b'{"a":' * DEEP + b"1" + b"}" * DEEP,
}


@dataclass
class Wire:
    """Raw gRPC stubs to the orchestrator and to the worker, with the token."""

    client: Any
    orchestrator: pb_grpc.BridgeServiceStub
    worker: pb_grpc.BridgeServiceStub
    metadata: tuple[tuple[str, str], ...]
    worker_pid: int

    def code(self, call: Callable[[], Any]) -> tuple[Any, str, Any]:
        """(status code, details, response or None) of one call."""
        try:
            response = call()
        except grpc.RpcError as err:
            failed: Any = err  # a grpc.Call as well as an RpcError
            return failed.code(), failed.details() or "", None
        return grpc.StatusCode.OK, "", response

    def assert_healthy(self) -> None:
        s = self.client.session("health")
        assert s.call("add", a=1, b=2) == 3
        (worker,) = self.client.status().workers
        assert (worker.state, worker.pid, worker.restarts) == ("ready", self.worker_pid, 0)


@pytest.fixture(scope="module")
def wire() -> Iterator[Wire]:
    client = sp.start(workers=1, startup_timeout=60.0)
    channels: list[grpc.Channel] = []
    try:
        s = client.session(SESSION)
        s.vars.define("temperature", 0.5, type="float")
        s.vars.define("tolerant", 0.5, type="float", allow_nan=True)
        s.vars.define("series", [1.0], type="list")
        s.vars.define("config", {"a": 1}, type="map")
        s.vars.define("doc", "small", type="string")
        (worker,) = client.status().workers
        stubs = []
        for address in (client.address, worker.address):
            channel = grpc.insecure_channel(address, options=channel_options())
            channels.append(channel)
            stubs.append(pb_grpc.BridgeServiceStub(channel))
        yield Wire(
            client, stubs[0], stubs[1], token_metadata(client.orchestrator.token), worker.pid
        )
    finally:
        for channel in channels:
            channel.close()
        client.close()


# ---------------------------------------------------------------------------------- T21


@pytest.mark.parametrize("value", NONFINITE, ids=["nan", "inf", "-inf"])
def test_t21_nonfinite_into_a_float_variable_is_refused_and_changes_nothing(
    wire: Wire, value: float
) -> None:
    s = wire.client.session(SESSION)
    before = s.vars.info("temperature")
    # As a worker writes it (the SetVariable RPC), in our encoding and as bare JSON tokens.
    token = {"nan": b"NaN", "inf": b"Infinity", "-inf": b"-Infinity"}[repr(value).strip("'")]
    for any_value in (encode_any(value, type_hint="float"), _raw("float", token)):
        request = pb.SetVariableRequest(
            session_id=SESSION, variable_identifier="temperature", value=any_value
        )
        code, details, _ = wire.code(
            functools.partial(
                wire.orchestrator.SetVariable, request, metadata=wire.metadata, timeout=10
            )
        )
        assert code is grpc.StatusCode.INVALID_ARGUMENT, (any_value, code, details)
        assert details.startswith("variable 'temperature'"), details
        assert ("NaN" if math.isnan(value) else "allow_inf") in details, details
    # From the notebook: the same rule, the same words.
    with pytest.raises(InvalidArgumentError, match="temperature"):
        s.vars["temperature"] = value
    after = s.vars.info("temperature")
    assert (after.value, after.version) == (before.value, before.version)


def test_t21_allow_nan_lets_nan_in_but_still_refuses_infinity(wire: Wire) -> None:
    s = wire.client.session(SESSION)
    s.vars["tolerant"] = float("nan")
    assert math.isnan(s.vars["tolerant"])
    version = s.vars.info("tolerant").version
    with pytest.raises(InvalidArgumentError, match="allow_inf"):
        s.vars["tolerant"] = float("inf")
    assert s.vars.info("tolerant").version == version


NESTED_NONFINITE = {
    "tagged": encode_any({"x": [1, float("nan"), {"y": float("-inf")}], "z": float("inf")}),
    "bare tokens in a list": _raw("list", b"[1, NaN, [Infinity, -Infinity]]"),
    "bare tokens in a map": _raw("map", b'{"x": {"y": NaN}}'),
    "bare token as a float": _raw("float", b"NaN"),
    "string label": _raw("string", b'"NaN"'),
    "published float": _raw("float", b'"Infinity"'),
}


@pytest.mark.parametrize("any_value", NESTED_NONFINITE.values(), ids=NESTED_NONFINITE.keys())
def test_t21_nonfinite_nested_in_tool_arguments_never_unknown(
    wire: Wire, any_value: any_pb2.Any
) -> None:
    request = pb.ExecuteToolRequest(
        session_id=SESSION, tool_name="echo", parameters={"value": any_value}
    )
    for stub in (wire.orchestrator, wire.worker):
        code, details, response = wire.code(
            functools.partial(stub.ExecuteTool, request, metadata=wire.metadata, timeout=10)
        )
        # Either the value is carried exactly, or the request is refused as malformed.
        assert code in (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT), (code, details)
        if code is grpc.StatusCode.OK:
            assert response.success, response.error_message
            echoed = decode_any(response.result)
            assert repr(echoed) == repr(decode_any(any_value))  # NaN included
    wire.assert_healthy()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("series", [1.0, float("nan")]),
        ("series", [[1.0], [float("inf")]]),
        ("config", {"a": {"b": float("nan")}}),
        ("config", {"a": [float("-inf")]}),
    ],
)
def test_t21_nonfinite_nested_in_a_variable_value_is_refused(
    wire: Wire, name: str, value: Any
) -> None:
    before = wire.client.session(SESSION).vars.info(name)
    code, details, _ = wire.code(
        lambda: wire.orchestrator.SetVariable(
            pb.SetVariableRequest(
                session_id=SESSION, variable_identifier=name, value=encode_any(value)
            ),
            metadata=wire.metadata,
            timeout=10,
        )
    )
    assert code is grpc.StatusCode.INVALID_ARGUMENT, (code, details)
    assert "NaN" in details or "inf" in details.lower(), details
    after = wire.client.session(SESSION).vars.info(name)
    assert after.version == before.version


# ---------------------------------------------------------------------------------- T22


def _timed(call: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    result = call()
    return result, time.perf_counter() - started


@pytest.mark.parametrize("shape", DEEP_JSON)
def test_t22_deep_json_in_a_tool_argument_is_refused_on_every_path(wire: Wire, shape: str) -> None:
    deep = _raw(shape, DEEP_JSON[shape])
    request = pb.ExecuteToolRequest(
        session_id=SESSION, tool_name="echo", parameters={"value": deep}
    )
    elixir = pb.ExecuteElixirToolRequest(
        session_id=SESSION, tool_name="deep_sink", parameters={"value": deep}
    )
    wire.client.register_kernel_tool(lambda value=None: value, name="deep_sink")
    md = wire.metadata
    paths: dict[str, Callable[[], Any]] = {
        "orchestrator ExecuteTool": lambda: wire.orchestrator.ExecuteTool(
            request, metadata=md, timeout=10
        ),
        "orchestrator ExecuteStreamingTool": lambda: list(
            wire.orchestrator.ExecuteStreamingTool(request, metadata=md, timeout=10)
        ),
        "orchestrator ExecuteElixirTool": lambda: wire.orchestrator.ExecuteElixirTool(
            elixir, metadata=md, timeout=10
        ),
        "worker ExecuteTool": lambda: wire.worker.ExecuteTool(request, metadata=md, timeout=10),
        "worker ExecuteStreamingTool": lambda: list(
            wire.worker.ExecuteStreamingTool(request, metadata=md, timeout=10)
        ),
    }
    for path, call in paths.items():
        (code, details, _), seconds = _timed(functools.partial(wire.code, call))
        assert code is grpc.StatusCode.INVALID_ARGUMENT, (path, code, details)
        assert "nested too deeply" in details, (path, details)
        assert seconds < 1.0, (path, seconds)
    # The call channel answers the same for the one call, as a CallError in its frame.
    frames = [
        pb.ChannelFrame(messages=[pb.ChannelMessage(call_id=7, request=request)]),
        pb.ChannelFrame(
            messages=[
                pb.ChannelMessage(
                    call_id=8,
                    batch=pb.BatchCall(
                        session_id=SESSION,
                        tool_name="echo",
                        arguments=b'[{"value":' + DEEP_JSON[shape] + b"}]",
                    ),
                )
            ]
        ),
    ]
    replies, seconds = _timed(
        lambda: list(wire.worker.CallChannel(iter(frames), metadata=md, timeout=10))
    )
    errors = {m.call_id: m.error for frame in replies for m in frame.messages}
    assert set(errors) == {7, 8}, replies
    for error in errors.values():
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0], error
        assert "nested too deeply" in error.message, error
    assert seconds < 1.0
    wire.assert_healthy()


@pytest.mark.parametrize("shape", DEEP_JSON)
def test_t22_deep_json_in_a_variable_value_is_refused_and_changes_nothing(
    wire: Wire, shape: str
) -> None:
    deep = _raw(shape, DEEP_JSON[shape])
    target = "series" if shape == "list" else "config"
    before = wire.client.session(SESSION).vars.info(target)
    md = wire.metadata
    calls: dict[str, Callable[[], Any]] = {
        "SetVariable": lambda: wire.orchestrator.SetVariable(
            pb.SetVariableRequest(session_id=SESSION, variable_identifier=target, value=deep),
            metadata=md,
            timeout=10,
        ),
        "SetVariables": lambda: wire.orchestrator.SetVariables(
            pb.BatchSetVariablesRequest(session_id=SESSION, updates={target: deep}, atomic=True),
            metadata=md,
            timeout=10,
        ),
        "RegisterVariable": lambda: wire.orchestrator.RegisterVariable(
            pb.RegisterVariableRequest(
                session_id=SESSION, name=f"deep_{shape}", type=shape, initial_value=deep
            ),
            metadata=md,
            timeout=10,
        ),
    }
    for rpc, call in calls.items():
        (code, details, response), seconds = _timed(functools.partial(wire.code, call))
        if rpc == "SetVariables" and code is grpc.StatusCode.OK:
            # A batch reports per-variable errors in its response.
            assert not response.success, response
            details = response.errors[target]
        else:
            assert code is grpc.StatusCode.INVALID_ARGUMENT, (rpc, code, details)
        assert "nested too deeply" in details, (rpc, details)
        assert seconds < 1.0, (rpc, seconds)
    s = wire.client.session(SESSION)
    assert s.vars.info(target).version == before.version
    assert f"deep_{shape}" not in s.vars


def test_t22_deep_values_from_the_notebook_are_refused_before_sending(wire: Wire) -> None:
    deep: Any = 1
    for _ in range(DEEP):
        deep = [deep]
    s = wire.client.session(SESSION)
    for attempt in (
        lambda: s.call("echo", value=deep),
        lambda: list(s.stream("count", n=2, delay=deep)),
        lambda: s.map("echo", [{"value": 1}, {"value": deep}]),
    ):
        started = time.perf_counter()
        with pytest.raises(InvalidArgumentError, match="nested too deeply"):
            attempt()
        assert time.perf_counter() - started < 1.0
    version = s.vars.info("series").version
    with pytest.raises(InvalidArgumentError, match="nested too deeply"):
        s.vars["series"] = deep
    assert s.vars.info("series").version == version
    wire.assert_healthy()


# ---------------------------------------------------------------------------------- oversize

REMEDIES = ("file or shared memory", "smaller chunks", "larger max_message_bytes")


def test_oversize_paths_t17_does_not_cover_say_what_to_do(
    client_factory: Callable[..., Any],
) -> None:
    client = client_factory(workers=1, max_message_bytes=MIB)
    client.define_tool("def big_chunks(n: int):\n    yield b'a'\n    yield bytes(n)\n")
    client.define_tool("def big_return(n: int):\n    yield b'a'\n    return bytes(n)\n")

    def kernel_bytes(n: int) -> bytes:
        return bytes(n)

    client.register_kernel_tool(kernel_bytes)
    s = client.session("oversize")
    pid = s.call("whoami")["pid"]
    big = 2 * MIB
    attempts: dict[str, tuple[Callable[[], Any], str]] = {
        "streaming argument": (
            lambda: list(s.stream("count", n=2, delay="x" * big)),
            "arguments are",
        ),
        "streamed chunk": (lambda: list(s.stream("big_chunks", n=big)), "a chunk of tool"),
        "stream's return value": (
            lambda: list(s.stream("big_return", n=big)),
            "the return value of tool 'big_return'",
        ),
    }
    for what, (attempt, words) in attempts.items():
        with pytest.raises(ResourceExhaustedError) as info:
            attempt()
        message = str(info.value)
        assert words in message, (what, message)
        assert any(remedy in message for remedy in REMEDIES), (what, message)
        assert "Sent message larger than max" not in message, (what, message)
        # Nothing broke: the next call works, on the same worker.
        assert s.call("whoami")["pid"] == pid, what
    # A kernel tool's result too large for the worker that asked for it: the worker's tool
    # fails with the reason and the remedy; nothing else happens.
    with pytest.raises(RemoteToolError) as remote:
        s.call("ask_kernel", tool="kernel_bytes", n=big)
    assert remote.value.remote_type == "ResourceExhaustedError"
    assert "tool 'kernel_bytes' returned" in str(remote.value)
    assert "file or shared memory" in str(remote.value)
    # Maps travel over the workers' lane, where the message limit does not apply: what is
    # too big for one gRPC message still goes.
    assert s.map("echo", [{"value": 1}, {"value": b"x" * big}]) == [1, b"x" * big]
    assert s.map("nbytes", [{"n": 1}, {"n": big}]) == [bytes(1), bytes(big)]
    # Just under the limit still streams.
    assert len(list(s.stream("big_chunks", n=MIB // 2))) == 2
    (worker,) = client.status().workers
    assert (worker.state, worker.pid, worker.restarts) == ("ready", pid, 0)
