"""The one place that maps snakepit_nb's exceptions to gRPC status codes and back.

Server side: :func:`abort` (or :func:`status_code_for` and :func:`call_error_for` for the call
channel) turns an exception into a status code, a message, and trailing metadata
``x-snakepit-error`` naming the exact class (plus ``x-snakepit-current-version`` for a version
conflict). Client side: :func:`map_rpc_error` and :func:`mapping_rpc_errors` turn an
``RpcError`` back into the same class, chained with ``from``.

=====================  ==========================================================
gRPC code              exception
=====================  ==========================================================
INVALID_ARGUMENT       InvalidArgumentError (ConstraintViolationError, ConfigurationError)
NOT_FOUND              NotFoundError; Tool-/Session-/VariableNotFoundError by message
FAILED_PRECONDITION    FailedPreconditionError (WorkerFailedError)
ABORTED                VersionConflictError (with current_version)
RESOURCE_EXHAUSTED     ResourceExhaustedError (PoolSaturatedError)
DEADLINE_EXCEEDED      CallTimeoutError
UNAVAILABLE            WorkerUnavailableError (WorkerCrashedError, SessionWorkerGoneError)
INTERNAL               ProtocolError; RemoteToolError when the details are an error payload
UNAUTHENTICATED        AuthenticationError (PERMISSION_DENIED too)
CANCELLED              CancelledError
UNIMPLEMENTED          ProtocolError naming the side that serves the method
=====================  ==========================================================
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from types import TracebackType
from typing import Any, Literal, NoReturn, TypeVar

import grpc

from snakepit_nb import _errors as errors
from snakepit_nb._errors import (
    AuthenticationError,
    CallTimeoutError,
    CancelledError,
    ClosedError,
    ConfigurationError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    ProtocolError,
    RemoteToolError,
    ResourceExhaustedError,
    SessionNotFoundError,
    SnakepitError,
    StartupError,
    ToolNotFoundError,
    VariableNotFoundError,
    VersionConflictError,
    WorkerUnavailableError,
)
from snakepit_nb.protocol.payloads import error_info, remote_error_from_info

__all__ = [
    "CURRENT_VERSION_KEY",
    "ERROR_CLASS_KEY",
    "abort",
    "abort_with_tool_error",
    "amapping_rpc_errors",
    "call_error_for",
    "error_from_call_error",
    "error_from_status",
    "map_rpc_error",
    "mapped_to_status",
    "mapping_rpc_errors",
    "status_code_for",
    "status_message",
    "trailing_metadata_for",
    "unimplemented_message",
]

log = logging.getLogger(__name__)

R = TypeVar("R")

#: Trailing metadata key carrying the exact snakepit_nb exception class name.
ERROR_CLASS_KEY = "x-snakepit-error"
#: Trailing metadata key carrying a VersionConflictError's current version.
CURRENT_VERSION_KEY = "x-snakepit-current-version"

# Status details travel in an HTTP/2 trailer; gRPC's default metadata limit is 8 KiB, so long
# tracebacks are shortened for it (the unary error_message field has no such limit).
_MAX_DETAILS = 6000

SC = grpc.StatusCode

# Most specific first is not needed: the exception's MRO is walked in order.
_CODE_BY_CLASS: dict[type[BaseException], Any] = {
    InvalidArgumentError: SC.INVALID_ARGUMENT,
    ConfigurationError: SC.INVALID_ARGUMENT,
    NotFoundError: SC.NOT_FOUND,
    VersionConflictError: SC.ABORTED,
    FailedPreconditionError: SC.FAILED_PRECONDITION,
    ResourceExhaustedError: SC.RESOURCE_EXHAUSTED,
    CallTimeoutError: SC.DEADLINE_EXCEEDED,
    CancelledError: SC.CANCELLED,
    WorkerUnavailableError: SC.UNAVAILABLE,
    AuthenticationError: SC.UNAUTHENTICATED,
    ProtocolError: SC.INTERNAL,
    RemoteToolError: SC.INTERNAL,
    StartupError: SC.UNAVAILABLE,
    ClosedError: SC.UNAVAILABLE,
    # Builtins, as the published bridge maps them.
    asyncio.CancelledError: SC.CANCELLED,
    TimeoutError: SC.DEADLINE_EXCEEDED,
    NotImplementedError: SC.UNIMPLEMENTED,
    PermissionError: SC.PERMISSION_DENIED,
    FileNotFoundError: SC.NOT_FOUND,
    ValueError: SC.INVALID_ARGUMENT,
}

_CLASS_BY_CODE: dict[Any, type[SnakepitError]] = {
    SC.INVALID_ARGUMENT: InvalidArgumentError,
    SC.OUT_OF_RANGE: InvalidArgumentError,
    SC.NOT_FOUND: NotFoundError,
    SC.ALREADY_EXISTS: FailedPreconditionError,
    SC.FAILED_PRECONDITION: FailedPreconditionError,
    SC.ABORTED: VersionConflictError,
    SC.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    SC.DEADLINE_EXCEEDED: CallTimeoutError,
    SC.UNAVAILABLE: WorkerUnavailableError,
    SC.UNAUTHENTICATED: AuthenticationError,
    SC.PERMISSION_DENIED: AuthenticationError,
    SC.CANCELLED: CancelledError,
}

_NOT_FOUND_PREFIXES = (
    ("tool ", ToolNotFoundError),
    ("session ", SessionNotFoundError),
    ("variable ", VariableNotFoundError),
)

# Every concrete error class of _errors, by name (what x-snakepit-error may name).
_CLASS_BY_NAME: dict[str, type[SnakepitError]] = {
    name: cls
    for name in errors.__all__
    if isinstance(cls := getattr(errors, name), type) and issubclass(cls, SnakepitError)
}

_CODE_BY_NUMBER = {code.value[0]: code for code in SC}
_CURRENT_VERSION_RE = re.compile(r"current_version=(-?\d+)")


def status_code_for(exc: BaseException) -> Any:
    """The gRPC status code for ``exc`` (INTERNAL for anything unexpected)."""
    if isinstance(exc, grpc.RpcError) and callable(getattr(exc, "code", None)):
        rpc_code = exc.code()
        if isinstance(rpc_code, SC):
            return rpc_code
    for cls in type(exc).__mro__:
        code = _CODE_BY_CLASS.get(cls)
        if code is not None:
            return code
    return SC.INTERNAL


def status_message(exc: BaseException) -> str:
    """The status details for ``exc``: its message, or an error payload for a tool error."""
    if isinstance(exc, RemoteToolError):
        info = error_info(exc, tool_name=exc.tool_name, session_id=exc.session_id)
        return _details_json(info)
    if isinstance(exc, grpc.RpcError) and callable(getattr(exc, "details", None)):
        return str(exc.details() or "")
    message = str(exc) or type(exc).__name__
    if (
        isinstance(exc, VersionConflictError)
        and exc.current_version is not None
        and "current_version=" not in message
    ):
        message = f"{message} (current_version={exc.current_version})"
    return message


def _details_json(info: dict[str, Any]) -> str:
    """The payload JSON, shortened to fit in a status trailer (the traceback's tail is kept)."""
    text = json.dumps(info)
    if len(text) <= _MAX_DETAILS:
        return text
    message = str(info.get("message", ""))
    if len(message) > 1000:
        message = message[:1000] + " ... (shortened)"
    tb = str(info.get("traceback", ""))
    room = _MAX_DETAILS
    while True:
        head, tail = room // 4, room // 2
        short_tb = tb if len(tb) <= head + tail else f"{tb[:head]}\n...\n{tb[-tail:]}"
        text = json.dumps({**info, "message": message, "traceback": short_tb})
        if len(text) <= _MAX_DETAILS or room < 64:
            return text
        room //= 2


def trailing_metadata_for(exc: BaseException) -> tuple[tuple[str, str], ...]:
    """The trailing metadata that lets our clients rebuild ``exc``'s exact class."""
    cls = type(exc)
    if _CLASS_BY_NAME.get(cls.__name__) is not cls:
        return ()
    if isinstance(exc, VersionConflictError) and exc.current_version is not None:
        return ((ERROR_CLASS_KEY, cls.__name__), (CURRENT_VERSION_KEY, str(exc.current_version)))
    return ((ERROR_CLASS_KEY, cls.__name__),)


async def abort(context: Any, exc: BaseException) -> NoReturn:
    """Server side: end the RPC with ``exc``'s status code, message and trailing metadata."""
    await context.abort(
        status_code_for(exc), status_message(exc), trailing_metadata=trailing_metadata_for(exc)
    )
    raise AssertionError("context.abort returned")  # pragma: no cover - abort always raises


def mapped_to_status(
    handler: Callable[[Any, Any, Any], Awaitable[R]],
) -> Callable[[Any, Any, Any], Awaitable[R]]:
    """Server side: decorate a unary handler so every exception it raises ends the RPC with
    its documented status code (never UNKNOWN); unexpected ones are logged first."""

    @functools.wraps(handler)
    async def wrapper(self: Any, request: Any, context: Any) -> R:
        try:
            return await handler(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            if not isinstance(exc, SnakepitError):
                log.exception("unexpected error in %s", handler.__name__)
            await abort(context, exc)

    return wrapper


async def abort_with_tool_error(
    context: Any, exc: BaseException, *, tool_name: str, session_id: str
) -> NoReturn:
    """Server side: a streaming tool raised; end the stream INTERNAL with the error payload."""
    info = error_info(exc, tool_name=tool_name, session_id=session_id)
    await context.abort(
        SC.INTERNAL, _details_json(info), trailing_metadata=((ERROR_CLASS_KEY, "RemoteToolError"),)
    )
    raise AssertionError("context.abort returned")  # pragma: no cover - abort always raises


def unimplemented_message(method: str, served_by: str) -> str:
    """The UNIMPLEMENTED message naming the side that serves ``method``.

    ``unimplemented_message("ExecuteTool", "workers")`` ->
    ``"ExecuteTool is served by workers, not by the orchestrator"``.
    """
    other = "the orchestrator" if served_by == "workers" else "workers"
    return f"{method} is served by {served_by}, not by {other}"


def call_error_for(exc: BaseException) -> Any:
    """The ``pb.CallError`` (call channel) for ``exc``: code number, message, class name."""
    from snakepit_nb.protocol import pb

    code = status_code_for(exc)
    name = dict(trailing_metadata_for(exc)).get(ERROR_CLASS_KEY, "")
    return pb.CallError(code=code.value[0], message=status_message(exc), details=name)


def error_from_call_error(call_error: Any) -> SnakepitError:
    """The exception a ``pb.CallError`` describes."""
    return error_from_status(call_error.code, call_error.message, call_error.details)


def error_from_status(
    code: Any,
    message: str,
    details: str = "",
    *,
    error_class: str = "",
    current_version: int | None = None,
) -> SnakepitError:
    """Client side: the snakepit_nb exception for a status code and message.

    ``code`` is a ``grpc.StatusCode`` or its number. ``error_class`` (or ``details``, when it
    names a class) is the exact class sent in ``x-snakepit-error``; it wins when present.
    For NOT_FOUND without it, the message prefix picks the subclass (``"tool "``,
    ``"session "``, ``"variable "``). INTERNAL with an error payload is a RemoteToolError.
    """
    if isinstance(code, int):
        code = _CODE_BY_NUMBER.get(code, SC.UNKNOWN)
    if not error_class and details in _CLASS_BY_NAME:
        error_class = details
    if error_class == "RemoteToolError" or (code == SC.INTERNAL and message[:1] == "{"):
        remote = _remote_error(message)
        if remote is not None:
            return remote
    if current_version is None and (code == SC.ABORTED or error_class == "VersionConflictError"):
        match = _CURRENT_VERSION_RE.search(message) or _CURRENT_VERSION_RE.search(details)
        if match:
            current_version = int(match.group(1))
    cls = _CLASS_BY_NAME.get(error_class) if error_class else None
    if cls is None or cls is RemoteToolError:
        cls = _class_for_code(code, message)
    if issubclass(cls, VersionConflictError):
        return cls(message, current_version=current_version)
    if code == SC.UNIMPLEMENTED and cls is ProtocolError:
        return ProtocolError(
            f"the peer does not serve this method ({message or 'UNIMPLEMENTED'}); it may be "
            "an older or foreign worker"
        )
    if cls is ProtocolError and code not in (SC.INTERNAL, SC.UNIMPLEMENTED):
        return ProtocolError(f"{code.name}: {message}" if message else code.name)
    return cls(message or code.name.lower().replace("_", " "))


def _class_for_code(code: Any, message: str) -> type[SnakepitError]:
    if code == SC.NOT_FOUND:
        for prefix, cls in _NOT_FOUND_PREFIXES:
            if message.startswith(prefix):
                return cls
    return _CLASS_BY_CODE.get(code, ProtocolError)


def _remote_error(message: str) -> RemoteToolError | None:
    try:
        info = json.loads(message)
    except (ValueError, RecursionError):
        return None
    if not isinstance(info, dict) or "type" not in info:
        return None
    return remote_error_from_info(info)


def _metadata_pairs(metadata: Any) -> Iterable[tuple[str, Any]]:
    if metadata is None:
        return ()
    try:
        return [(str(key), value) for key, value in metadata]
    except (TypeError, ValueError):
        return ()


def map_rpc_error(err: BaseException) -> SnakepitError:
    """Client side: the snakepit_nb exception for a ``grpc.RpcError``/``AioRpcError``."""
    code_fn = getattr(err, "code", None)
    if not callable(code_fn):
        return ProtocolError(f"gRPC call failed without a status: {err}")
    code = code_fn()
    details_fn = getattr(err, "details", None)
    message = str((details_fn() if callable(details_fn) else "") or "")
    trailing_fn = getattr(err, "trailing_metadata", None)
    pairs = _metadata_pairs(trailing_fn() if callable(trailing_fn) else None)
    error_class = ""
    current_version: int | None = None
    for key, value in pairs:
        if key == ERROR_CLASS_KEY:
            error_class = value.decode() if isinstance(value, bytes) else str(value)
        elif key == CURRENT_VERSION_KEY:
            try:
                current_version = int(value)
            except (TypeError, ValueError):
                current_version = None
    return error_from_status(
        code, message, error_class=error_class, current_version=current_version
    )


class mapping_rpc_errors:
    """Re-raise ``grpc.RpcError`` inside the block as snakepit_nb errors (chained).

    Works with ``with`` and ``async with``::

        with mapping_rpc_errors():
            response = await stub.GetSession(request)
    """

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Literal[False]:
        if exc is not None and isinstance(exc, grpc.RpcError):
            raise map_rpc_error(exc) from exc
        return False

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Literal[False]:
        return self.__exit__(exc_type, exc, tb)


#: The ``async with`` spelling of :class:`mapping_rpc_errors` (the same object).
amapping_rpc_errors = mapping_rpc_errors
