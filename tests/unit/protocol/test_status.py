"""Exceptions <-> gRPC status codes, both directions, for every mapping."""

from __future__ import annotations

import asyncio
import json

import grpc
import grpc.aio
import pytest

from snakepit_nb import _errors as E
from snakepit_nb.protocol import pb
from snakepit_nb.protocol.status import (
    CURRENT_VERSION_KEY,
    ERROR_CLASS_KEY,
    amapping_rpc_errors,
    call_error_for,
    error_from_call_error,
    error_from_status,
    map_rpc_error,
    mapping_rpc_errors,
    status_code_for,
    status_message,
    trailing_metadata_for,
    unimplemented_message,
)

SC = grpc.StatusCode


def rpc_error(
    code: grpc.StatusCode, details: str, trailing: tuple[tuple[str, str], ...] = ()
) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing), details=details
    )


# Every exception class a server raises, the code it travels as, and the class a client
# rebuilds from the code alone (no x-snakepit-error header: a foreign or older server).
MAPPINGS = [
    (E.InvalidArgumentError("bad"), SC.INVALID_ARGUMENT, E.InvalidArgumentError),
    (E.ConstraintViolationError("bad"), SC.INVALID_ARGUMENT, E.InvalidArgumentError),
    (E.ConfigurationError("bad"), SC.INVALID_ARGUMENT, E.InvalidArgumentError),
    (E.NotFoundError("thing 'x' is missing"), SC.NOT_FOUND, E.NotFoundError),
    (E.ToolNotFoundError("tool 'x' is not registered"), SC.NOT_FOUND, E.ToolNotFoundError),
    (E.SessionNotFoundError("session 's' does not exist"), SC.NOT_FOUND, E.SessionNotFoundError),
    (E.VariableNotFoundError("variable 'v' not found"), SC.NOT_FOUND, E.VariableNotFoundError),
    (E.FailedPreconditionError("locked"), SC.FAILED_PRECONDITION, E.FailedPreconditionError),
    (E.WorkerFailedError("gave up"), SC.FAILED_PRECONDITION, E.FailedPreconditionError),
    (E.VersionConflictError("stale", current_version=7), SC.ABORTED, E.VersionConflictError),
    (E.ResourceExhaustedError("too big"), SC.RESOURCE_EXHAUSTED, E.ResourceExhaustedError),
    (E.PoolSaturatedError("queue full"), SC.RESOURCE_EXHAUSTED, E.ResourceExhaustedError),
    (E.CallTimeoutError("late"), SC.DEADLINE_EXCEEDED, E.CallTimeoutError),
    (E.CancelledError("stop"), SC.CANCELLED, E.CancelledError),
    (E.WorkerUnavailableError("none"), SC.UNAVAILABLE, E.WorkerUnavailableError),
    (E.WorkerCrashedError("died", exit_code=-9), SC.UNAVAILABLE, E.WorkerUnavailableError),
    (E.SessionWorkerGoneError("gone"), SC.UNAVAILABLE, E.WorkerUnavailableError),
    (E.AuthenticationError("no token"), SC.UNAUTHENTICATED, E.AuthenticationError),
    (E.ProtocolError("garbled"), SC.INTERNAL, E.ProtocolError),
    (E.StartupError("no start"), SC.UNAVAILABLE, E.WorkerUnavailableError),
    (E.ClosedError("closed"), SC.UNAVAILABLE, E.WorkerUnavailableError),
]


@pytest.mark.parametrize(("exc", "code", "client_class"), MAPPINGS)
def test_server_side_codes(exc: Exception, code: grpc.StatusCode, client_class: type) -> None:
    assert status_code_for(exc) == code


@pytest.mark.parametrize(("exc", "code", "client_class"), MAPPINGS)
def test_client_side_from_code_alone(
    exc: Exception, code: grpc.StatusCode, client_class: type
) -> None:
    err = map_rpc_error(rpc_error(code, status_message(exc)))
    assert type(err) is client_class
    assert str(exc) in str(err)


@pytest.mark.parametrize(("exc", "code", "client_class"), MAPPINGS)
def test_client_side_exact_class_from_trailing_metadata(
    exc: Exception, code: grpc.StatusCode, client_class: type
) -> None:
    trailing = trailing_metadata_for(exc)
    assert dict(trailing)[ERROR_CLASS_KEY] == type(exc).__name__
    err = map_rpc_error(rpc_error(code, status_message(exc), trailing))
    assert type(err) is type(exc)
    assert str(err).startswith(str(exc))


@pytest.mark.parametrize(("exc", "code", "client_class"), MAPPINGS)
def test_call_error_round_trip(exc: Exception, code: grpc.StatusCode, client_class: type) -> None:
    call_error = call_error_for(exc)
    assert isinstance(call_error, pb.CallError)
    assert call_error.code == code.value[0]
    wire = pb.CallError.FromString(call_error.SerializeToString())
    err = error_from_call_error(wire)
    assert type(err) is type(exc)


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (asyncio.CancelledError(), SC.CANCELLED),
        (TimeoutError("t"), SC.DEADLINE_EXCEEDED),
        (NotImplementedError("n"), SC.UNIMPLEMENTED),
        (PermissionError("p"), SC.PERMISSION_DENIED),
        (FileNotFoundError("f"), SC.NOT_FOUND),
        (ValueError("v"), SC.INVALID_ARGUMENT),
        (KeyError("k"), SC.INTERNAL),
        (RuntimeError("r"), SC.INTERNAL),
        (E.RemoteToolError("ValueError", "boom"), SC.INTERNAL),
        (rpc_error(SC.NOT_FOUND, "passed through"), SC.NOT_FOUND),
    ],
)
def test_builtins_and_unexpected_errors(exc: BaseException, code: grpc.StatusCode) -> None:
    assert status_code_for(exc) == code


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (SC.UNAUTHENTICATED, E.AuthenticationError),
        (SC.PERMISSION_DENIED, E.AuthenticationError),
        (SC.CANCELLED, E.CancelledError),
        (SC.DEADLINE_EXCEEDED, E.CallTimeoutError),
        (SC.UNAVAILABLE, E.WorkerUnavailableError),
        (SC.RESOURCE_EXHAUSTED, E.ResourceExhaustedError),
        (SC.OUT_OF_RANGE, E.InvalidArgumentError),
        (SC.ALREADY_EXISTS, E.FailedPreconditionError),
        (SC.UNKNOWN, E.ProtocolError),
        (SC.DATA_LOSS, E.ProtocolError),
        (SC.INTERNAL, E.ProtocolError),
        (SC.UNIMPLEMENTED, E.ProtocolError),
    ],
)
def test_every_code_maps_to_a_snakepit_error(code: grpc.StatusCode, cls: type) -> None:
    err = map_rpc_error(rpc_error(code, "it failed"))
    assert type(err) is cls
    assert "it failed" in str(err)
    # The numeric code (the call channel's CallError) maps the same way.
    assert type(error_from_status(code.value[0], "it failed")) is cls


def test_not_found_subclass_from_message_prefix() -> None:
    cases = {
        "tool 'x' is not registered in worker w1; registered: a, b": E.ToolNotFoundError,
        "session 'abc' does not exist or expired": E.SessionNotFoundError,
        "variable 'temperature' is not defined in session 's'": E.VariableNotFoundError,
        "no such thing": E.NotFoundError,
    }
    for message, cls in cases.items():
        err = error_from_status(SC.NOT_FOUND, message)
        assert type(err) is cls
        assert isinstance(err, LookupError)
        assert str(err) == message


def test_trailing_metadata_wins_over_the_message_prefix() -> None:
    err = map_rpc_error(
        rpc_error(SC.NOT_FOUND, "tool-like wording", ((ERROR_CLASS_KEY, "SessionNotFoundError"),))
    )
    assert type(err) is E.SessionNotFoundError


def test_unknown_class_names_fall_back_to_the_code() -> None:
    for name in ("NoSuchError", "RuntimeError", "Exception", "__class__"):
        err = map_rpc_error(rpc_error(SC.UNAVAILABLE, "x", ((ERROR_CLASS_KEY, name),)))
        assert type(err) is E.WorkerUnavailableError


def test_version_conflict_carries_the_current_version() -> None:
    exc = E.VersionConflictError("expected version 3 of 'x'", current_version=5)
    message = status_message(exc)
    assert "current_version=5" in message
    trailing = trailing_metadata_for(exc)
    assert (CURRENT_VERSION_KEY, "5") in trailing
    from_metadata = map_rpc_error(rpc_error(SC.ABORTED, "stale", trailing))
    assert isinstance(from_metadata, E.VersionConflictError)
    assert from_metadata.current_version == 5
    from_message = map_rpc_error(rpc_error(SC.ABORTED, message))
    assert isinstance(from_message, E.VersionConflictError)
    assert from_message.current_version == 5
    unknown = error_from_status(SC.ABORTED, "aborted for another reason")
    assert isinstance(unknown, E.VersionConflictError)
    assert unknown.current_version is None
    # The call channel carries it in the message.
    via_channel = error_from_call_error(call_error_for(exc))
    assert isinstance(via_channel, E.VersionConflictError)
    assert via_channel.current_version == 5


def test_internal_with_an_error_payload_is_a_remote_tool_error() -> None:
    payload = json.dumps(
        {
            "type": "ZeroDivisionError",
            "message": "division by zero",
            "traceback": "Traceback...\nZeroDivisionError: division by zero\n",
            "context": {"tool_name": "divide", "session_id": "s1"},
        }
    )
    err = map_rpc_error(rpc_error(SC.INTERNAL, payload))
    assert isinstance(err, E.RemoteToolError)
    assert (err.remote_type, err.remote_message, err.tool_name, err.session_id) == (
        "ZeroDivisionError",
        "division by zero",
        "divide",
        "s1",
    )
    # A RemoteToolError re-raised by a server (a kernel tool's) travels the same way.
    again = map_rpc_error(rpc_error(SC.INTERNAL, status_message(err)))
    assert isinstance(again, E.RemoteToolError)
    assert again.remote_type == "ZeroDivisionError"
    assert again.tool_name == "divide"
    # INTERNAL with text that merely looks like JSON stays a protocol error.
    assert type(map_rpc_error(rpc_error(SC.INTERNAL, "{broken"))) is E.ProtocolError


def test_long_tracebacks_are_shortened_for_status_details() -> None:
    err = E.RemoteToolError("ValueError", "x" * 20_000, "frame\n" * 20_000, tool_name="t")
    details = status_message(err)
    assert len(details.encode()) < 8 * 1024
    assert json.loads(details)["type"] == "ValueError"


def test_unimplemented_names_the_serving_side() -> None:
    assert unimplemented_message("ExecuteTool", "workers") == (
        "ExecuteTool is served by workers, not by the orchestrator"
    )
    assert unimplemented_message("GetVariable", "the orchestrator") == (
        "GetVariable is served by the orchestrator, not by workers"
    )
    err = map_rpc_error(rpc_error(SC.UNIMPLEMENTED, "CallChannel is served by workers"))
    assert isinstance(err, E.ProtocolError)
    assert "CallChannel is served by workers" in str(err)


def test_rpc_errors_without_a_status() -> None:
    class Bare(grpc.RpcError):
        pass

    assert isinstance(map_rpc_error(Bare("odd")), E.ProtocolError)


def test_mapping_context_managers_chain_the_original() -> None:
    original = rpc_error(SC.NOT_FOUND, "session 'q' does not exist")
    with pytest.raises(E.SessionNotFoundError) as info, mapping_rpc_errors():
        raise original
    assert info.value.__cause__ is original
    # Other exceptions pass through untouched.
    with pytest.raises(KeyError), mapping_rpc_errors():
        raise KeyError("k")

    async def body() -> None:
        async with amapping_rpc_errors():
            await asyncio.sleep(0)
            raise rpc_error(SC.DEADLINE_EXCEEDED, "took too long")

    with pytest.raises(E.CallTimeoutError) as timeout_info:
        asyncio.run(body())
    assert isinstance(timeout_info.value, TimeoutError)
    assert isinstance(timeout_info.value.__cause__, grpc.aio.AioRpcError)


def test_server_messages_keep_their_text() -> None:
    assert status_message(E.InvalidArgumentError("parameter 'n' must be an int")) == (
        "parameter 'n' must be an int"
    )
    assert status_message(RuntimeError()) == "RuntimeError"
    assert trailing_metadata_for(RuntimeError("x")) == ()
