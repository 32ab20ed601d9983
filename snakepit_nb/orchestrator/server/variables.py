"""The 13 variable RPCs of ``BridgeService``, served by the orchestrator to workers.

``VariableServicerMixin`` is inherited by the orchestrator's servicer, which provides
``self.service`` (the orchestrator's service API, with ``session_variables``). Every handler
maps its failures to the documented status codes through ``snakepit_nb.protocol.status.abort``
(never UNKNOWN). Callers are workers: their source is the id in the request metadata
``snakepit_nb.worker_id`` (``"worker"`` when a foreign worker sends none), so access control
for workers applies to every RPC.

Records become proto messages through :mod:`snakepit_nb.orchestrator.variables.wire`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc
from google.protobuf.any_pb2 import Any as PbAny

from snakepit_nb._errors import (
    InvalidArgumentError,
    ResourceExhaustedError,
    SnakepitError,
)
from snakepit_nb.orchestrator.variables.records import KERNEL_SOURCE
from snakepit_nb.orchestrator.variables.wire import (
    record_to_pb,
    update_for,
    version_to_pb,
)
from snakepit_nb.protocol import pb
from snakepit_nb.protocol.codec import decode_any, decode_any_with_binary, encode_any
from snakepit_nb.protocol.status import (
    abort,
    mapped_to_status,
    status_code_for,
    status_message,
)

if TYPE_CHECKING:
    from snakepit_nb.orchestrator.service import Service
    from snakepit_nb.orchestrator.variables.store import VariableStore

__all__ = [
    "EXPECTED_VERSION_KEY",
    "OPTIMIZER_ID_KEY",
    "WORKER_ID_KEY",
    "VariableServicerMixin",
    "VariableSizeGuard",
    "batch_error_text",
]

log = logging.getLogger(__name__)

#: Request metadata naming the calling worker (its writes are attributed to it).
WORKER_ID_KEY = "snakepit_nb.worker_id"
#: Write metadata naming the optimizer that holds a variable's optimization lock.
OPTIMIZER_ID_KEY = "optimizer_id"
#: RegisterVariable metadata: "0" defines only if the name is free (else ABORTED).
EXPECTED_VERSION_KEY = "snakepit_nb.expected_version"
_ANONYMOUS_WORKER = "worker"

Ctx: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


def batch_error_text(exc: BaseException) -> str:
    """A per-variable batch error as ``"CODE (Class): message"`` (workers map it back)."""
    code = status_code_for(exc)
    return f"{code.name} ({type(exc).__name__}): {status_message(exc)}"


def _check_size(size: int, limit: int, name: str) -> None:
    if size > limit:
        raise ResourceExhaustedError(
            f"value of variable {name!r} is about {size:,} bytes, above the limit of {limit:,} "
            "(max_value_bytes); store large data elsewhere and keep a reference in the variable"
        )


def _decode_value(any_value: PbAny, binary: bytes, limit: int, name: str) -> object:
    # Refuse oversize values before decoding them: a 50 MB string never becomes a Python str.
    # ByteSize() reads the size without copying the bytes out of the message.
    size = any_value.ByteSize() + len(binary)
    if size > limit:
        raise ResourceExhaustedError(
            f"value of variable {name!r} is {size:,} bytes, above the limit of {limit:,} "
            "(max_value_bytes); store large data elsewhere and keep a reference in the variable"
        )
    if binary or any_value.type_url.endswith(".binary"):
        return decode_any_with_binary(any_value, binary)
    return decode_any(any_value)


def _parse_json_object(text: str, what: str) -> dict[str, Any] | None:
    if not text:
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise InvalidArgumentError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidArgumentError(f"{what} must be a JSON object, not {type(value).__name__}")
    return value


def _expected_on_register(metadata: Mapping[str, str]) -> int | None:
    raw = metadata.get(EXPECTED_VERSION_KEY)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise InvalidArgumentError(
            f"metadata {EXPECTED_VERSION_KEY}={raw[:20]!r} is not an integer version"
        ) from None


def _source(context: Ctx) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == WORKER_ID_KEY and isinstance(value, str) and value and value != KERNEL_SOURCE:
            return value
    return _ANONYMOUS_WORKER


# ---------------------------------------------------------------------------- size guard

_GUARDED = {
    "/snakepit.bridge.BridgeService/SetVariable",
    "/snakepit.bridge.BridgeService/RegisterVariable",
    "/snakepit.bridge.BridgeService/SetVariables",
}
# Room for the request's other fields (names, metadata) around an allowed value.
_SLACK = 64 * 1024


class _Oversize:
    __slots__ = ("size",)

    def __init__(self, size: int) -> None:
        self.size = size


class VariableSizeGuard(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Refuses oversize variable writes from their raw size, before protobuf decodes them.

    gRPC has the raw request bytes in hand already; decoding a 50 MB request would copy the
    value twice more. Install it on the orchestrator's server: ``interceptors=[...,
    VariableSizeGuard(lambda: stores.limits.max_value_bytes)]``.
    """

    def __init__(self, limit: Callable[[], int]) -> None:
        self._limit = limit
        self._handlers: dict[str, Any] = {}

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[Any]], details: Any
    ) -> Any:
        method = details.method
        if method not in _GUARDED:
            return await continuation(details)
        cached = self._handlers.get(method)
        if cached is not None:
            return cached
        handler = await continuation(details)
        if handler is None or handler.request_deserializer is None or handler.unary_unary is None:
            return handler
        guarded = self._wrap(handler, method.rsplit("/", 1)[-1])
        self._handlers[method] = guarded
        return guarded

    def _wrap(self, handler: Any, rpc: str) -> Any:
        decode = handler.request_deserializer
        inner = handler.unary_unary
        limit = self._limit

        def sized_decode(data: bytes) -> Any:
            if len(data) > limit() + _SLACK:
                return _Oversize(len(data))
            return decode(data)

        async def unary_unary(request: Any, context: Any) -> Any:
            if isinstance(request, _Oversize):
                await abort(
                    context,
                    ResourceExhaustedError(
                        f"the {rpc} request is {request.size:,} bytes, above the variable value "
                        f"limit of {limit():,} (max_value_bytes); store large data elsewhere "
                        "and keep a reference in the variable"
                    ),
                )
            return await inner(request, context)

        return grpc.unary_unary_rpc_method_handler(
            unary_unary,
            request_deserializer=sized_decode,
            response_serializer=handler.response_serializer,
        )


# ---------------------------------------------------------------------------- the mixin


class VariableServicerMixin:
    """The variable half of the orchestrator's ``BridgeService`` servicer."""

    service: Service

    def _variable_store(self, session_id: str) -> VariableStore:
        return self.service.session_variables(session_id)

    def _value_limit(self) -> int:
        return self.service.max_variable_bytes

    @mapped_to_status
    async def RegisterVariable(
        self, request: pb.RegisterVariableRequest, context: Ctx
    ) -> pb.RegisterVariableResponse:
        store = self._variable_store(request.session_id)
        _check_size(request.ByteSize() - 4096, self._value_limit(), request.name)
        value = _decode_value(
            request.initial_value, request.initial_binary_value, self._value_limit(), request.name
        )
        record = await store.register(
            request.name,
            request.type or None,
            value,
            constraints=_parse_json_object(request.constraints_json, "constraints_json"),
            metadata={k: v for k, v in request.metadata.items() if k != EXPECTED_VERSION_KEY},
            access=_parse_json_object(request.access_control_json, "access_control_json"),
            allow_type_change=request.allow_type_change,
            expected_version=_expected_on_register(request.metadata),
            source=_source(context),
        )
        return pb.RegisterVariableResponse(
            success=True, variable_id=record.id, variable=record_to_pb(record)
        )

    @mapped_to_status
    async def GetVariable(
        self, request: pb.GetVariableRequest, context: Ctx
    ) -> pb.GetVariableResponse:
        store = self._variable_store(request.session_id)
        record = await store.get(request.variable_identifier, source=_source(context))
        return pb.GetVariableResponse(variable=record_to_pb(record), from_cache=False)

    @mapped_to_status
    async def SetVariable(
        self, request: pb.SetVariableRequest, context: Ctx
    ) -> pb.SetVariableResponse:
        store = self._variable_store(request.session_id)
        ident = request.variable_identifier
        _check_size(request.ByteSize() - 4096, self._value_limit(), ident)
        value = _decode_value(request.value, request.binary_value, self._value_limit(), ident)
        metadata = dict(request.metadata)
        record = await store.set(
            ident,
            value,
            expected_version=request.expected_version or None,
            metadata=metadata,
            source=_source(context),
            optimizer_id=metadata.get(OPTIMIZER_ID_KEY),
        )
        return pb.SetVariableResponse(
            success=True, new_version=record.version, variable=record_to_pb(record)
        )

    @mapped_to_status
    async def GetVariables(
        self, request: pb.BatchGetVariablesRequest, context: Ctx
    ) -> pb.BatchGetVariablesResponse:
        store = self._variable_store(request.session_id)
        found, missing = await store.get_many(
            list(request.variable_identifiers), source=_source(context)
        )
        return pb.BatchGetVariablesResponse(
            variables={k: record_to_pb(r) for k, r in found.items()}, missing_variables=missing
        )

    @mapped_to_status
    async def SetVariables(
        self, request: pb.BatchSetVariablesRequest, context: Ctx
    ) -> pb.BatchSetVariablesResponse:
        store = self._variable_store(request.session_id)
        limit = self._value_limit()
        values: dict[str, object] = {}
        errors: dict[str, str] = {}
        keys = list(dict.fromkeys([*request.updates, *request.binary_updates]))
        for key in keys:
            try:
                values[key] = _decode_value(
                    request.updates[key] if key in request.updates else PbAny(),
                    request.binary_updates.get(key, b""),
                    limit,
                    key,
                )
            except SnakepitError as exc:
                errors[key] = batch_error_text(exc)
        if errors and request.atomic:
            return pb.BatchSetVariablesResponse(success=False, errors=errors)
        metadata = dict(request.metadata)
        expected = {k: v for k, v in request.expected_versions.items() if v}
        outcome = await store.set_many(
            values,
            atomic=request.atomic,
            expected_versions=expected,
            metadata=metadata,
            source=_source(context),
            optimizer_id=metadata.get(OPTIMIZER_ID_KEY),
        )
        errors.update({k: batch_error_text(e) for k, e in outcome.errors.items()})
        return pb.BatchSetVariablesResponse(
            success=not errors,
            errors=errors,
            new_versions={k: r.version for k, r in outcome.records.items()},
        )

    @mapped_to_status
    async def ListVariables(
        self, request: pb.ListVariablesRequest, context: Ctx
    ) -> pb.ListVariablesResponse:
        store = self._variable_store(request.session_id)
        records = await store.list(request.pattern or "*", source=_source(context))
        return pb.ListVariablesResponse(variables=[record_to_pb(r) for r in records])

    @mapped_to_status
    async def DeleteVariable(
        self, request: pb.DeleteVariableRequest, context: Ctx
    ) -> pb.DeleteVariableResponse:
        store = self._variable_store(request.session_id)
        await store.delete(request.variable_identifier, source=_source(context))
        return pb.DeleteVariableResponse(success=True)

    async def WatchVariables(
        self, request: pb.WatchVariablesRequest, context: Ctx
    ) -> AsyncIterator[pb.VariableUpdate]:
        try:
            store = self._variable_store(request.session_id)
            watcher = store.watch(
                list(request.variable_identifiers),
                include_initial=request.include_initial_values,
                source=_source(context),
            )
        except Exception as exc:
            if not isinstance(exc, SnakepitError):
                log.exception("unexpected error in WatchVariables")
            await abort(context, exc)
        try:
            async for change in watcher:
                yield update_for(change)
        finally:
            watcher.close()

    @mapped_to_status
    async def AddDependency(
        self, request: pb.AddDependencyRequest, context: Ctx
    ) -> pb.AddDependencyResponse:
        store = self._variable_store(request.session_id)
        await store.add_dependency(
            request.from_variable,
            request.to_variable,
            request.dependency_type,
            source=_source(context),
        )
        return pb.AddDependencyResponse(success=True)

    @mapped_to_status
    async def StartOptimization(
        self, request: pb.StartOptimizationRequest, context: Ctx
    ) -> pb.StartOptimizationResponse:
        store = self._variable_store(request.session_id)
        record = await store.start_optimization(
            request.variable_identifier,
            request.optimizer_id,
            dict(request.optimizer_config),
            source=_source(context),
        )
        lock = record.optimization
        return pb.StartOptimizationResponse(
            success=True, optimization_id=lock.optimization_id if lock else ""
        )

    @mapped_to_status
    async def StopOptimization(
        self, request: pb.StopOptimizationRequest, context: Ctx
    ) -> pb.StopOptimizationResponse:
        store = self._variable_store(request.session_id)
        record = await store.stop_optimization(
            request.variable_identifier,
            request.optimizer_id,
            force=request.force,
            source=_source(context),
        )
        return pb.StopOptimizationResponse(
            success=True, final_value=encode_any(record.value, type_hint=record.type)
        )

    @mapped_to_status
    async def GetVariableHistory(
        self, request: pb.GetVariableHistoryRequest, context: Ctx
    ) -> pb.GetVariableHistoryResponse:
        store = self._variable_store(request.session_id)
        if request.limit < 0:
            raise InvalidArgumentError(f"history limit must be >= 0 (0: all), not {request.limit}")
        source = _source(context)
        entries = await store.history(
            request.variable_identifier, request.limit or None, source=source
        )
        record = await store.get(request.variable_identifier, source=source)
        return pb.GetVariableHistoryResponse(
            entries=[version_to_pb(e, record.type) for e in entries]
        )

    @mapped_to_status
    async def RollbackVariable(
        self, request: pb.RollbackVariableRequest, context: Ctx
    ) -> pb.RollbackVariableResponse:
        store = self._variable_store(request.session_id)
        metadata: Mapping[str, str] = dict(context.invocation_metadata() or ())
        record = await store.rollback(
            request.variable_identifier,
            request.target_version,
            source=_source(context),
            optimizer_id=metadata.get(OPTIMIZER_ID_KEY),
        )
        return pb.RollbackVariableResponse(success=True, variable=record_to_pb(record))
