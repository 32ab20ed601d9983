"""The 13 variable RPCs over real gRPC against a real orchestrator (``sp.start``).

The test plays a worker: a gRPC channel to the orchestrator's address, with the runtime token
and a worker id in the metadata.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import snakepit_nb as sp
from snakepit_nb._errors import VersionConflictError
from snakepit_nb.protocol import pb, pb_grpc
from snakepit_nb.protocol.auth import channel_options, token_metadata
from snakepit_nb.protocol.codec import decode_any, encode_any
from snakepit_nb.protocol.status import map_rpc_error

pytestmark = pytest.mark.integration

SESSION = "rpc"
WORKER = "w-test"


class Bridge:
    """A worker's view of the orchestrator: stub + metadata."""

    def __init__(self, client: Any, worker_id: str = WORKER) -> None:
        orch = client.orchestrator
        self.channel = grpc.insecure_channel(client.address, options=channel_options(200 << 20))
        self.stub = pb_grpc.BridgeServiceStub(self.channel)
        self.md = (*token_metadata(orch.token), ("snakepit_nb.worker_id", worker_id))

    def register(
        self, name: str, vtype: str, value: Any, constraints: Any = None, **kw: Any
    ) -> Any:
        return self.stub.RegisterVariable(
            pb.RegisterVariableRequest(
                session_id=kw.pop("session_id", SESSION),
                name=name,
                type=vtype,
                initial_value=encode_any(value),
                constraints_json=json.dumps(constraints) if constraints else "",
                **kw,
            ),
            metadata=self.md,
            timeout=10,
        )

    def set(self, name: str, value: Any, expected: int = 0, **kw: Any) -> Any:
        return self.stub.SetVariable(
            pb.SetVariableRequest(
                session_id=SESSION,
                variable_identifier=name,
                value=encode_any(value),
                expected_version=expected,
                **kw,
            ),
            metadata=self.md,
            timeout=10,
        )

    def get(self, name: str) -> pb.Variable:
        response = self.stub.GetVariable(
            pb.GetVariableRequest(session_id=SESSION, variable_identifier=name),
            metadata=self.md,
            timeout=10,
        )
        return response.variable


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    c = sp.start(workers=1, startup_timeout=60.0)
    try:
        c.session(SESSION)
        yield c
    finally:
        c.close()


@pytest.fixture
def bridge(client: Any) -> Iterator[Bridge]:
    b = Bridge(client)
    yield b
    b.channel.close()


def _fresh(prefix: str) -> str:
    return f"{prefix}_{time.perf_counter_ns()}"


ACCEPTED = [
    ("float", {"min": 0, "max": 2}, 1.5, 1.5),
    ("float", {"allow_nan": True}, float("nan"), None),
    ("integer", {"min": 0}, 42, 42),
    ("string", {"pattern": "^a", "max_length": 5}, "abc", "abc"),
    ("boolean", None, True, True),
    ("choice", {"choices": ["fast", "slow"]}, "slow", "slow"),
    ("module", {"allowed_modules": ["Predict"]}, "Predict", "Predict"),
    ("embedding", {"dimensions": 2}, [0.5, 1.0], [0.5, 1.0]),
    ("list", {"max_length": 3}, [1, "a"], [1, "a"]),
    ("map", {"required_keys": ["k"]}, {"k": [1, 2]}, {"k": [1, 2]}),
    ("bytes", None, b"\x00\xff", b"\x00\xff"),
]
REFUSED = [
    ("float", {"max": 2}, 2.5, "constraint max"),
    ("float", None, float("inf"), "allow_inf"),
    ("float", None, float("nan"), "NaN"),
    ("integer", None, 1.5, "whole number"),
    ("string", {"enum": ["a"]}, "b", "constraint enum"),
    ("boolean", None, "yes", "True or False"),
    ("choice", {"choices": ["x"]}, "y", "constraint choices"),
    ("module", {"allowed_modules": ["Predict"]}, "ReAct", "allowed_modules"),
    ("embedding", {"dimensions": 3}, [1.0], "constraint dimensions"),
    ("tensor", {"shape": [2]}, [1, 2, 3], "constraint shape"),
    ("list", {"min_length": 2}, [1], "min_length"),
    ("map", None, [1], "needs a dict"),
]


@pytest.mark.parametrize(("vtype", "constraints", "value", "expected"), ACCEPTED)
def test_every_type_accepted_over_grpc(
    bridge: Bridge, vtype: str, constraints: Any, value: Any, expected: Any
) -> None:
    name = _fresh(vtype)
    response = bridge.register(name, vtype, value, constraints)
    assert response.success
    assert response.variable.version == 1
    got = decode_any(bridge.get(name).value)
    if expected is None:
        assert got != got  # NaN round-trips as NaN
    else:
        assert got == expected
        assert type(got) is type(expected)
    assert bridge.set(name, value).new_version == 2


@pytest.mark.parametrize(("vtype", "constraints", "value", "words"), REFUSED)
def test_every_type_refused_over_grpc_with_invalid_argument(
    bridge: Bridge, vtype: str, constraints: Any, value: Any, words: str
) -> None:
    name = _fresh(vtype)
    with pytest.raises(grpc.RpcError) as info:
        bridge.register(name, vtype, value, constraints)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith(f"variable {name!r}")
    assert words in info.value.details()
    with pytest.raises(grpc.RpcError) as missing:
        bridge.get(name)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


def test_stale_version_is_aborted_with_the_current_version(bridge: Bridge) -> None:
    name = _fresh("cas")
    bridge.register(name, "integer", 0)
    assert bridge.set(name, 1, expected=1).new_version == 2
    with pytest.raises(grpc.RpcError) as info:
        bridge.set(name, 5, expected=1)
    assert info.value.code() == grpc.StatusCode.ABORTED
    assert "current_version=2" in info.value.details()
    trailing = dict(info.value.trailing_metadata())
    assert trailing["x-snakepit-current-version"] == "2"
    mapped = map_rpc_error(info.value)
    assert isinstance(mapped, VersionConflictError)
    assert mapped.current_version == 2
    assert decode_any(bridge.get(name).value) == 1


def test_type_change_and_read_only_are_failed_precondition(client: Any, bridge: Bridge) -> None:
    name = _fresh("typed")
    bridge.register(name, "float", 0.5)
    with pytest.raises(grpc.RpcError) as info:
        bridge.register(name, "string", "x")
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert bridge.register(name, "string", "x", allow_type_change=True).variable.version == 2
    ro = _fresh("ro")
    client.session(SESSION).vars.define(ro, 1, read_only_for_workers=True)
    with pytest.raises(grpc.RpcError) as denied:
        bridge.set(ro, 2)
    assert denied.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "read-only for workers" in denied.value.details()
    assert decode_any(bridge.get(ro).value) == 1


def test_atomic_batch_over_grpc_is_all_or_nothing(bridge: Bridge) -> None:
    a, b = _fresh("a"), _fresh("b")
    bridge.register(a, "integer", 1)
    bridge.register(b, "float", 0.5, {"max": 1})
    request = pb.BatchSetVariablesRequest(
        session_id=SESSION, updates={a: encode_any(2), b: encode_any(9.0)}, atomic=True
    )
    response = bridge.stub.SetVariables(request, metadata=bridge.md, timeout=10)
    assert not response.success
    assert set(response.errors) == {b}
    assert response.errors[b].startswith("INVALID_ARGUMENT (ConstraintViolationError): variable")
    assert bridge.get(a).version == 1
    assert decode_any(bridge.get(a).value) == 1
    ok = bridge.stub.SetVariables(
        pb.BatchSetVariablesRequest(
            session_id=SESSION,
            updates={a: encode_any(3), b: encode_any(0.25)},
            atomic=True,
            expected_versions={a: 1},
        ),
        metadata=bridge.md,
        timeout=10,
    )
    assert ok.success
    assert dict(ok.new_versions) == {a: 2, b: 2}
    got = bridge.stub.GetVariables(
        pb.BatchGetVariablesRequest(session_id=SESSION, variable_identifiers=[a, "nope"]),
        metadata=bridge.md,
        timeout=10,
    )
    assert list(got.missing_variables) == ["nope"]
    assert got.variables[a].version == 2


def test_history_rollback_list_delete_over_grpc(bridge: Bridge) -> None:
    name = _fresh("hist")
    bridge.register(name, "integer", 10)
    for value in (11, 12, 13):
        bridge.set(name, value, metadata={"why": f"v{value}"})
    history = bridge.stub.GetVariableHistory(
        pb.GetVariableHistoryRequest(session_id=SESSION, variable_identifier=name, limit=2),
        metadata=bridge.md,
        timeout=10,
    )
    assert [(e.version, decode_any(e.value), e.changed_by) for e in history.entries] == [
        (3, 12, WORKER),
        (4, 13, WORKER),
    ]
    assert history.entries[-1].metadata["why"] == "v13"
    rolled = bridge.stub.RollbackVariable(
        pb.RollbackVariableRequest(session_id=SESSION, variable_identifier=name, target_version=1),
        metadata=bridge.md,
        timeout=10,
    )
    assert rolled.variable.version == 5
    assert decode_any(rolled.variable.value) == 10
    listed = bridge.stub.ListVariables(
        pb.ListVariablesRequest(session_id=SESSION, pattern="hist_*"),
        metadata=bridge.md,
        timeout=10,
    )
    assert name in [v.name for v in listed.variables]
    bridge.stub.DeleteVariable(
        pb.DeleteVariableRequest(session_id=SESSION, variable_identifier=name),
        metadata=bridge.md,
        timeout=10,
    )
    with pytest.raises(grpc.RpcError) as info:
        bridge.get(name)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert info.value.details().startswith("variable ")


def test_optimization_lock_over_grpc(bridge: Bridge, client: Any) -> None:
    name = _fresh("lr")
    bridge.register(name, "float", 0.1)
    started = bridge.stub.StartOptimization(
        pb.StartOptimizationRequest(
            session_id=SESSION, variable_identifier=name, optimizer_id="opt"
        ),
        metadata=bridge.md,
        timeout=10,
    )
    assert started.success
    assert started.optimization_id
    assert bridge.get(name).optimization_status.optimizer_id == "opt"
    with pytest.raises(grpc.RpcError) as info:
        bridge.set(name, 0.2)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(sp.FailedPreconditionError):
        client.session(SESSION).vars[name] = 0.3
    bridge.set(name, 0.4, metadata={"optimizer_id": "opt"})
    stopped = bridge.stub.StopOptimization(
        pb.StopOptimizationRequest(
            session_id=SESSION, variable_identifier=name, optimizer_id="opt"
        ),
        metadata=bridge.md,
        timeout=10,
    )
    assert decode_any(stopped.final_value) == 0.4
    assert bridge.set(name, 0.5).new_version == 3


def test_watch_delivers_every_change_in_order_and_dependency_changes(
    bridge: Bridge, client: Any
) -> None:
    src, dst = _fresh("src"), _fresh("dst")
    bridge.register(src, "integer", 0)
    bridge.register(dst, "integer", 0)
    bridge.stub.AddDependency(
        pb.AddDependencyRequest(session_id=SESSION, from_variable=src, to_variable=dst),
        metadata=bridge.md,
        timeout=10,
    )
    with pytest.raises(grpc.RpcError) as cycle:
        bridge.stub.AddDependency(
            pb.AddDependencyRequest(session_id=SESSION, from_variable=dst, to_variable=src),
            metadata=bridge.md,
            timeout=10,
        )
    assert cycle.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    stream = bridge.stub.WatchVariables(
        pb.WatchVariablesRequest(
            session_id=SESSION, variable_identifiers=[src, dst], include_initial_values=True
        ),
        metadata=bridge.md,
        timeout=30,
    )
    seen: list[tuple[str, str, int, int]] = []
    try:
        for update in stream:
            seen.append(
                (update.update_type, update.variable.name, update.variable.version,
                 update.skipped_versions)
            )  # fmt: skip
            if len(seen) == 2:
                s = client.session(SESSION)
                for i in range(1, 51):
                    s.vars[src] = i
            if len(seen) == 2 + 100:
                break
    finally:
        stream.cancel()
    assert seen[:2] == [("initial_value", src, 1, 0), ("initial_value", dst, 1, 0)]
    values = [(k, n, v) for k, n, v, _ in seen[2:]]
    expected = []
    for version in range(2, 52):
        expected += [("value_change", src, version), ("dependency_change", dst, 1)]
    assert values == expected
    assert all(skipped == 0 for *_, skipped in seen)


def test_slow_watcher_gets_the_latest_value_and_the_writer_is_not_blocked(
    bridge: Bridge, client: Any, run_on_loop: Any
) -> None:
    name = _fresh("fast")
    bridge.register(name, "integer", 0)
    stream = bridge.stub.WatchVariables(
        pb.WatchVariablesRequest(
            session_id=SESSION, variable_identifiers=[name], include_initial_values=True
        ),
        metadata=bridge.md,
        timeout=60,
    )
    first = next(stream)  # the watch is live
    assert first.update_type == "initial_value"
    total = 20_000
    store = client.orchestrator.variables.for_session(SESSION)

    async def write_all() -> float:
        started = time.perf_counter()
        for i in range(1, total + 1):
            await store.set(name, i)
        return time.perf_counter() - started

    elapsed = run_on_loop(write_all())
    assert elapsed < 10, f"the writer took {elapsed:.1f} s: it waited for a slow watcher"
    received, skipped, last = 0, 0, None
    try:
        for update in stream:
            received += 1
            skipped += update.skipped_versions
            last = update.variable
            if last.version == total + 1:
                break
    finally:
        stream.cancel()
    assert last is not None
    assert decode_any(last.value) == total
    assert received + skipped == total
    assert skipped > 0  # it lagged, and got the latest value rather than every version


_SENDER = textwrap.dedent(
    """
    import sys, time, grpc
    from snakepit_nb.protocol import pb, pb_grpc
    from snakepit_nb.protocol.auth import channel_options, token_metadata
    from snakepit_nb.protocol.codec import encode_any
    address, token, session, name = sys.argv[1:5]
    ch = grpc.insecure_channel(address, options=channel_options(200 << 20))
    stub = pb_grpc.BridgeServiceStub(ch)
    req = pb.SetVariableRequest(session_id=session, variable_identifier=name,
                                value=encode_any("x" * (50 * 1024 * 1024)))
    t = time.perf_counter()
    try:
        stub.SetVariable(req, metadata=token_metadata(token), timeout=30)
        print("OK", 0.0)
    except grpc.RpcError as err:
        print(err.code().name, time.perf_counter() - t)
    """
)


def _send_fifty_megabytes(client: Any, session: str, name: str) -> tuple[str, float, int]:
    """Send a 50 MB SetVariable from another process (so this process's RSS is the
    orchestrator's); returns (status, seconds, peak RSS growth in bytes)."""
    me = psutil.Process()
    rss_before = me.memory_info().rss
    peak = [rss_before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], me.memory_info().rss)
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        out = subprocess.run(
            [sys.executable, "-c", _SENDER, client.address, client.orchestrator.token, session,
             name],
            capture_output=True, text=True, timeout=60, env={**os.environ}, check=False,
        )  # fmt: skip
    finally:
        done.set()
        sampler.join()
    code, seconds = out.stdout.split()
    assert code == "RESOURCE_EXHAUSTED", out.stderr
    return code, float(seconds), peak[0] - rss_before


def test_fifty_megabyte_string_is_resource_exhausted_fast_and_memory_stays_flat(
    bridge: Bridge, client: Any
) -> None:
    name = _fresh("doc")
    bridge.register(name, "string", "small")
    _, seconds, growth = _send_fifty_megabytes(client, SESSION, name)
    # Sending 50 MB over loopback is most of this (about 0.3 s when idle); 2 busy cores are slower.
    assert seconds < 3.0
    # The orchestrator's receive limit (max_callback_bytes, 16 MiB by default) refuses the
    # message as it arrives, so the kernel never holds the payload: growth < 2x the payload.
    assert growth < 100 * 1024 * 1024
    assert decode_any(bridge.get(name).value) == "small"


def test_a_larger_callback_limit_still_refuses_oversize_values_from_their_raw_size(
    client_factory: Any,
) -> None:
    big = client_factory(workers=1, max_callback_bytes=100 * 1024 * 1024)
    big.session("big").vars["doc"] = "small"
    _, seconds, growth = _send_fifty_megabytes(big, "big", "doc")
    assert seconds < 3.0
    # gRPC buffers the whole request (about 2.7x) before VariableSizeGuard refuses it from its
    # raw size; no decoded copy is ever made.
    assert growth < 150 * 1024 * 1024
    assert big.session("big").vars["doc"] == "small"


def test_unknown_session_and_variable_are_not_found(bridge: Bridge) -> None:
    with pytest.raises(grpc.RpcError) as info:
        bridge.register("x", "integer", 1, session_id="no-such-session")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "session 'no-such-session'" in info.value.details()
    with pytest.raises(grpc.RpcError) as var:
        bridge.get("never_defined")
    assert var.value.code() == grpc.StatusCode.NOT_FOUND
    assert var.value.details().startswith("variable 'never_defined'")


# ---------------------------------------------------------------------------- hypothesis

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=12,
)
_types = st.sampled_from(
    ["float", "integer", "string", "boolean", "choice", "module", "embedding", "tensor", "list",
     "map", "bytes", "", "int", "bogus", "FLOAT"]
)  # fmt: skip
_constraint = st.dictionaries(
    st.sampled_from(
        ["min", "max", "min_length", "max_length", "pattern", "enum", "choices",
         "allowed_modules", "dimensions", "shape", "allow_nan", "allow_inf", "nullable", "junk"]
    ),
    _json,
    max_size=3,
)  # fmt: skip
_ident = st.one_of(st.text(max_size=12), st.sampled_from(["h0", "h1", "h2"]))
_any_value = st.one_of(
    _json.map(encode_any),
    st.builds(
        lambda label, data: pb.Variable().value.__class__(
            type_url=f"type.googleapis.com/snakepit.{label}", value=data
        ),
        st.sampled_from(["float", "integer", "string", "tensor", "bytes", "x.binary", "null"]),
        st.binary(max_size=30) | st.sampled_from([b'"NaN"', b"[[1],[2,3]]", b"1e999", b"[" * 300]),
    ),
)

ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}


def _request(data: st.DataObject) -> tuple[str, Any]:
    rpc = data.draw(
        st.sampled_from(
            ["RegisterVariable", "SetVariable", "GetVariable", "GetVariables", "SetVariables",
             "ListVariables", "DeleteVariable", "AddDependency", "StartOptimization",
             "StopOptimization", "GetVariableHistory", "RollbackVariable", "WatchVariables"]
        )
    )  # fmt: skip
    session = data.draw(st.sampled_from([SESSION, SESSION, "", "nope"]))
    ident = data.draw(_ident)
    if rpc == "RegisterVariable":
        constraints = data.draw(_constraint | st.just("not json"))
        return rpc, pb.RegisterVariableRequest(
            session_id=session,
            name=ident,
            type=data.draw(_types),
            initial_value=data.draw(_any_value),
            constraints_json=constraints if isinstance(constraints, str)
            else json.dumps(constraints, allow_nan=True),
            access_control_json=data.draw(st.sampled_from(["", '{"workers":"read"}', "[1]", "{"])),
            allow_type_change=data.draw(st.booleans()),
            metadata=data.draw(
                st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2)
            ),
        )  # fmt: skip
    if rpc == "SetVariable":
        return rpc, pb.SetVariableRequest(
            session_id=session, variable_identifier=ident, value=data.draw(_any_value),
            expected_version=data.draw(st.integers(-5, 5)),
            metadata=data.draw(st.sampled_from([{}, {"optimizer_id": "o"}])),
        )  # fmt: skip
    if rpc == "GetVariables":
        return rpc, pb.BatchGetVariablesRequest(
            session_id=session, variable_identifiers=data.draw(st.lists(_ident, max_size=3))
        )
    if rpc == "SetVariables":
        keys = data.draw(st.lists(_ident, max_size=3))
        return rpc, pb.BatchSetVariablesRequest(
            session_id=session, updates={k: data.draw(_any_value) for k in keys},
            atomic=data.draw(st.booleans()),
            expected_versions={k: data.draw(st.integers(-2, 4)) for k in keys},
        )  # fmt: skip
    if rpc == "ListVariables":
        return rpc, pb.ListVariablesRequest(
            session_id=session, pattern=data.draw(st.text(max_size=6))
        )
    if rpc == "AddDependency":
        return rpc, pb.AddDependencyRequest(
            session_id=session, from_variable=ident, to_variable=data.draw(_ident)
        )
    if rpc == "StartOptimization":
        return rpc, pb.StartOptimizationRequest(
            session_id=session,
            variable_identifier=ident,
            optimizer_id=data.draw(st.text(max_size=3)),
        )
    if rpc == "StopOptimization":
        return rpc, pb.StopOptimizationRequest(
            session_id=session, variable_identifier=ident, force=data.draw(st.booleans()),
            optimizer_id=data.draw(st.text(max_size=3)),
        )  # fmt: skip
    if rpc == "GetVariableHistory":
        return rpc, pb.GetVariableHistoryRequest(
            session_id=session, variable_identifier=ident, limit=data.draw(st.integers(-3, 3))
        )
    if rpc == "RollbackVariable":
        return rpc, pb.RollbackVariableRequest(
            session_id=session,
            variable_identifier=ident,
            target_version=data.draw(st.integers(-2, 5)),
        )
    if rpc == "WatchVariables":
        return rpc, pb.WatchVariablesRequest(
            session_id=session, variable_identifiers=data.draw(st.lists(_ident, max_size=2)),
            include_initial_values=True,
        )  # fmt: skip
    cls = {"GetVariable": pb.GetVariableRequest, "DeleteVariable": pb.DeleteVariableRequest}[rpc]
    return rpc, cls(session_id=session, variable_identifier=ident)


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_random_variable_requests_never_yield_unknown(bridge: Bridge, data: st.DataObject) -> None:
    rpc, request = _request(data)
    method = getattr(bridge.stub, rpc)
    status, details = grpc.StatusCode.OK, "ok"
    try:
        if rpc == "WatchVariables":
            stream = method(request, metadata=bridge.md, timeout=10)
            try:
                next(stream)
            except StopIteration:
                pass
            finally:
                stream.cancel()
        else:
            method(request, metadata=bridge.md, timeout=10)
    except grpc.RpcError as err:
        status, details = err.code(), err.details()
    if rpc == "WatchVariables" and status == grpc.StatusCode.CANCELLED:
        return  # our own cancel of the stream
    assert status in ALLOWED, f"{rpc}: {status} {details}"
    assert details


def test_server_still_serves_after_the_fuzzing(bridge: Bridge) -> None:
    pong = bridge.stub.Ping(pb.PingRequest(message="x"), metadata=bridge.md, timeout=10)
    assert pong.message
