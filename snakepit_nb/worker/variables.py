"""``ctx.vars``: a tool's access to its session's variables on the orchestrator.

Async tools await the ``a``-prefixed methods (``await ctx.vars.aget("t")``); sync tools, which
run in executor threads, call the plain ones (``ctx.vars.get("t")``): those hand the gRPC call
to the worker's loop and wait for it, so the loop is never blocked.

Reads see the latest committed value. The variables a tool declares in ``required_variables``
arrive with the call; the first read of each uses that snapshot (no round trip), later reads
ask the orchestrator, so a tool polling a flag sees the notebook change it. A tool's own write
is visible to its next read. Writes with ``expected_version`` fail with
``VersionConflictError`` (``current_version`` set) when another writer got there first.

>>> @tool(required_variables=["temperature"])
... def scale(self, ctx: SessionContext, x: float) -> float:
...     return x * ctx.vars.get("temperature")
"""

from __future__ import annotations

import asyncio
import builtins
import re
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeVar

import grpc
import grpc.aio

from snakepit_nb._errors import (
    InvalidArgumentError,
    ProtocolError,
    SnakepitError,
    VariableNotFoundError,
    VersionConflictError,
)
from snakepit_nb._loop import running_on
from snakepit_nb.protocol import pb, pb_grpc
from snakepit_nb.protocol.codec import decode_any_with_binary, encode_any
from snakepit_nb.protocol.status import error_from_status, map_rpc_error

__all__ = ["WorkerVariable", "WorkerVariableChange", "WorkerVariables"]

T = TypeVar("T")

WORKER_ID_KEY = "snakepit_nb.worker_id"
EXPECTED_VERSION_KEY = "snakepit_nb.expected_version"
OPTIMIZER_ID_KEY = "optimizer_id"
UPDATED_BY_KEY = "snakepit_nb.updated_by"
_DEFAULT_TIMEOUT = 30.0
_MISSING: Any = object()
_BATCH_ERROR_RE = re.compile(r"^([A-Z_]+)(?: \((\w+)\))?: (.*)\Z", re.DOTALL)


@dataclass(frozen=True)
class WorkerVariable:
    """A variable as a worker sees it: value, version, type, constraints, who wrote it."""

    name: str
    type: str
    value: Any
    version: int
    id: str = ""
    constraints: str = ""
    metadata: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    updated_by: str = ""
    updated_at: float = 0.0
    optimizer_id: str = ""

    @classmethod
    def from_pb(cls, message: pb.Variable) -> WorkerVariable:
        metadata = dict(message.metadata)
        updated_by = metadata.pop(UPDATED_BY_KEY, "")
        status = message.optimization_status
        return cls(
            name=message.name,
            type=message.type,
            value=decode_any_with_binary(message.value, message.binary_value),
            version=message.version,
            id=message.id,
            constraints=message.constraints_json,
            metadata=MappingProxyType(metadata),
            updated_by=updated_by or ("kernel" if message.source == 0 else "worker"),
            updated_at=message.last_updated_at.ToNanoseconds() / 1e9,
            optimizer_id=status.optimizer_id if status.optimizing else "",
        )


@dataclass(frozen=True)
class WorkerVariableChange:
    """One update from ``watch``: ``kind`` is ``initial_value``, ``value_change``,
    ``dependency_change``, ``deleted``...; ``skipped`` counts versions this watcher missed."""

    kind: str
    variable: WorkerVariable
    source: str
    skipped: int = 0

    @property
    def name(self) -> str:
        return self.variable.name

    @property
    def value(self) -> Any:
        return self.variable.value

    @property
    def version(self) -> int:
        return self.variable.version


def _batch_error(text: str) -> SnakepitError:
    match = _BATCH_ERROR_RE.match(text)
    if match is None:
        return ProtocolError(text)
    code = getattr(grpc.StatusCode, match.group(1), grpc.StatusCode.UNKNOWN)
    return error_from_status(code, match.group(3), error_class=match.group(2) or "")


class WorkerVariables:
    """The session's variables, for one tool call (``ctx.vars``).

    Bound to the worker's loop (the running one, or ``loop``); sync methods may be called from
    any other thread.
    """

    def __init__(
        self,
        stub: pb_grpc.BridgeServiceStub,
        session_id: str,
        token_metadata: Sequence[tuple[str, str]],
        prefetched: Sequence[pb.Variable] = (),
        worker_id: str = "",
        *,
        timeout: float = _DEFAULT_TIMEOUT,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self._stub = stub
        self.session_id = session_id
        self.worker_id = worker_id
        self._metadata = (*token_metadata, (WORKER_ID_KEY, worker_id or "worker"))
        self._snapshot: dict[str, pb.Variable] = {}
        for message in prefetched:
            self._snapshot[message.name] = message
        self._timeout = timeout
        self._loop: asyncio.AbstractEventLoop | None = loop
        if loop is None:
            try:
                self._loop = asyncio.get_running_loop()
            except RuntimeError:
                self._loop = None

    def __repr__(self) -> str:
        return f"<WorkerVariables of session {self.session_id!r}>"

    # ---------------------------------------------------------------- plumbing

    def _sync(self, coro: Coroutine[Any, Any, T]) -> T:
        loop = self._loop
        if loop is None or loop.is_closed():
            coro.close()
            raise RuntimeError("ctx.vars is not bound to a running worker loop")
        if running_on(loop):
            coro.close()
            raise RuntimeError(
                "a blocking ctx.vars method was called on the worker's event loop, where it "
                "would deadlock; in an async tool use the awaitable twin (await ctx.vars.aget)"
            )
        return asyncio.run_coroutine_threadsafe(coro, loop).result()

    async def _call(self, method: Callable[..., Any], request: Any, **extra: Any) -> Any:
        try:
            return await method(request, metadata=self._metadata, timeout=self._timeout, **extra)
        except grpc.aio.AioRpcError as err:
            raise map_rpc_error(err) from err

    def _fresh_snapshot(self, name: str) -> WorkerVariable | None:
        # The call's snapshot serves the first read only; later reads ask the orchestrator.
        message = self._snapshot.pop(name, None)
        return None if message is None else WorkerVariable.from_pb(message)

    # ---------------------------------------------------------------- async API

    async def aget_record(self, name: str, default: Any = _MISSING) -> WorkerVariable | Any:
        """The variable's record (value, version, type...); ``default`` if it is undefined."""
        cached = self._fresh_snapshot(name)
        if cached is not None:
            return cached
        try:
            response = await self._call(
                self._stub.GetVariable,
                pb.GetVariableRequest(session_id=self.session_id, variable_identifier=name),
            )
        except VariableNotFoundError:
            if default is _MISSING:
                raise
            return default
        return WorkerVariable.from_pb(response.variable)

    async def aget(self, name: str, default: Any = _MISSING, *, with_version: bool = False) -> Any:
        """The value (``(value, version)`` with ``with_version=True``); ``default`` if undefined."""
        record = await self.aget_record(name, _MISSING if default is _MISSING else None)
        if record is None:
            return (default, 0) if with_version else default
        return (record.value, record.version) if with_version else record.value

    async def aset(
        self,
        name: str,
        value: Any,
        expected_version: int | None = None,
        *,
        metadata: Mapping[str, str] | None = None,
        optimizer_id: str | None = None,
    ) -> int:
        """Write ``value``; returns the new version. ``expected_version`` makes it a
        compare-and-set (``VersionConflictError`` with ``current_version`` when stale)."""
        if expected_version is not None and (
            isinstance(expected_version, bool)
            or not isinstance(expected_version, int)
            or expected_version < 1
        ):
            raise InvalidArgumentError(
                f"expected_version must be a positive integer, not {expected_version!r}"
            )
        meta = dict(metadata or {})
        if optimizer_id:
            meta[OPTIMIZER_ID_KEY] = optimizer_id
        self._snapshot.pop(name, None)
        response = await self._call(
            self._stub.SetVariable,
            pb.SetVariableRequest(
                session_id=self.session_id,
                variable_identifier=name,
                value=encode_any(value),
                metadata=meta,
                expected_version=expected_version or 0,
            ),
        )
        return int(response.new_version)

    async def adefine(
        self,
        name: str,
        value: Any,
        type: str | None = None,
        *,
        constraints: Mapping[str, Any] | None = None,
        metadata: Mapping[str, str] | None = None,
        overwrite: bool = False,
    ) -> WorkerVariable:
        """Define a variable. If the name is taken, ``VersionConflictError`` (someone defined it
        first) unless ``overwrite=True``, which redefines it."""
        import json

        meta = dict(metadata or {})
        if not overwrite:
            meta[EXPECTED_VERSION_KEY] = "0"
        try:
            constraints_json = json.dumps(dict(constraints)) if constraints else ""
        except (TypeError, ValueError) as exc:
            raise InvalidArgumentError(f"constraints must be JSON-encodable: {exc}") from exc
        self._snapshot.pop(name, None)
        response = await self._call(
            self._stub.RegisterVariable,
            pb.RegisterVariableRequest(
                session_id=self.session_id,
                name=name,
                type=type or "",
                initial_value=encode_any(value, type_hint=type),
                constraints_json=constraints_json,
                metadata=meta,
            ),
        )
        return WorkerVariable.from_pb(response.variable)

    async def adelete(self, name: str) -> None:
        self._snapshot.pop(name, None)
        await self._call(
            self._stub.DeleteVariable,
            pb.DeleteVariableRequest(session_id=self.session_id, variable_identifier=name),
        )

    async def aget_many(self, names: Sequence[str]) -> dict[str, Any]:
        """Values of ``names`` in one round trip; ``VariableNotFoundError`` if any is missing."""
        response = await self._call(
            self._stub.GetVariables,
            pb.BatchGetVariablesRequest(
                session_id=self.session_id, variable_identifiers=list(names)
            ),
        )
        if response.missing_variables:
            raise VariableNotFoundError(
                f"variables {list(response.missing_variables)} are not defined in session "
                f"{self.session_id!r}"
            )
        for name in names:
            self._snapshot.pop(name, None)
        return {k: WorkerVariable.from_pb(v).value for k, v in response.variables.items()}

    async def aset_many(
        self,
        updates: Mapping[str, Any],
        *,
        atomic: bool = True,
        expected_versions: Mapping[str, int] | None = None,
    ) -> dict[str, int | SnakepitError]:
        """Write several variables in one round trip; returns ``{name: new version}``.

        ``atomic=True``: all or nothing, and the first refusal is raised. Otherwise each
        refused name maps to its error instead of a version.
        """
        for name in updates:
            self._snapshot.pop(name, None)
        response = await self._call(
            self._stub.SetVariables,
            pb.BatchSetVariablesRequest(
                session_id=self.session_id,
                updates={k: encode_any(v) for k, v in updates.items()},
                atomic=atomic,
                expected_versions=dict(expected_versions or {}),
            ),
        )
        errors = {k: _batch_error(v) for k, v in response.errors.items()}
        if atomic and errors:
            raise next(iter(errors.values()))
        result: dict[str, int | SnakepitError] = dict(response.new_versions)
        result.update(errors)
        return result

    async def alist(self, pattern: str = "*") -> builtins.list[WorkerVariable]:
        response = await self._call(
            self._stub.ListVariables,
            pb.ListVariablesRequest(session_id=self.session_id, pattern=pattern),
        )
        return [WorkerVariable.from_pb(v) for v in response.variables]

    async def ahistory(self, name: str, limit: int = 0) -> builtins.list[tuple[int, Any, str]]:
        """``(version, value, changed_by)`` of the kept versions, oldest first."""
        response = await self._call(
            self._stub.GetVariableHistory,
            pb.GetVariableHistoryRequest(
                session_id=self.session_id, variable_identifier=name, limit=limit
            ),
        )
        return [
            (e.version, decode_any_with_binary(e.value, b""), e.changed_by)
            for e in response.entries
        ]

    async def aupdate(
        self, name: str, fn: Callable[[Any], Any], *, retries: int = 100
    ) -> tuple[Any, int, int]:
        """Read, apply ``fn``, compare-and-set, retrying on conflicts.

        Returns ``(new value, new version, conflicts met)``.
        """
        conflicts = 0
        while True:
            record = await self.aget_record(name)
            new = fn(record.value)
            try:
                version = await self.aset(name, new, expected_version=record.version)
            except VersionConflictError:
                conflicts += 1
                if conflicts > retries:
                    raise
                continue
            return new, version, conflicts

    def awatch(
        self, *names: str, include_initial: bool = True
    ) -> AsyncIterator[WorkerVariableChange]:
        """Changes of ``names`` (none: all) as they happen; break out of the loop to stop."""
        return self._watch_stream(list(names), include_initial)

    async def _watch_stream(
        self, names: builtins.list[str], include_initial: bool
    ) -> AsyncIterator[WorkerVariableChange]:
        call = self._stub.WatchVariables(
            pb.WatchVariablesRequest(
                session_id=self.session_id,
                variable_identifiers=names,
                include_initial_values=include_initial,
            ),
            metadata=self._metadata,
        )
        try:
            async for update in call:
                yield WorkerVariableChange(
                    kind=update.update_type,
                    variable=WorkerVariable.from_pb(update.variable),
                    source=update.update_source,
                    skipped=update.skipped_versions,
                )
        except grpc.aio.AioRpcError as err:
            if err.code() is not grpc.StatusCode.CANCELLED:
                raise map_rpc_error(err) from err
        finally:
            call.cancel()

    # ---------------------------------------------------------------- blocking twins

    def get_record(self, name: str, default: Any = _MISSING) -> WorkerVariable | Any:
        return self._sync(self.aget_record(name, default))

    def get(self, name: str, default: Any = _MISSING, *, with_version: bool = False) -> Any:
        return self._sync(self.aget(name, default, with_version=with_version))

    def set(
        self,
        name: str,
        value: Any,
        expected_version: int | None = None,
        *,
        metadata: Mapping[str, str] | None = None,
        optimizer_id: str | None = None,
    ) -> int:
        return self._sync(
            self.aset(name, value, expected_version, metadata=metadata, optimizer_id=optimizer_id)
        )

    def define(
        self,
        name: str,
        value: Any,
        type: str | None = None,
        *,
        constraints: Mapping[str, Any] | None = None,
        metadata: Mapping[str, str] | None = None,
        overwrite: bool = False,
    ) -> WorkerVariable:
        return self._sync(
            self.adefine(
                name, value, type, constraints=constraints, metadata=metadata, overwrite=overwrite
            )
        )

    def delete(self, name: str) -> None:
        self._sync(self.adelete(name))

    def get_many(self, names: Sequence[str]) -> dict[str, Any]:
        return self._sync(self.aget_many(names))

    def set_many(
        self,
        updates: Mapping[str, Any],
        *,
        atomic: bool = True,
        expected_versions: Mapping[str, int] | None = None,
    ) -> dict[str, int | SnakepitError]:
        return self._sync(
            self.aset_many(updates, atomic=atomic, expected_versions=expected_versions)
        )

    def list(self, pattern: str = "*") -> builtins.list[WorkerVariable]:
        return self._sync(self.alist(pattern))

    def history(self, name: str, limit: int = 0) -> builtins.list[tuple[int, Any, str]]:
        return self._sync(self.ahistory(name, limit))

    def update(
        self, name: str, fn: Callable[[Any], Any], *, retries: int = 100
    ) -> tuple[Any, int, int]:
        """Like ``aupdate``; ``fn`` runs in the calling thread."""
        conflicts = 0
        while True:
            record = self.get_record(name)
            new = fn(record.value)
            try:
                version = self.set(name, new, expected_version=record.version)
            except VersionConflictError:
                conflicts += 1
                if conflicts > retries:
                    raise
                continue
            return new, version, conflicts

    def watch(self, *names: str, include_initial: bool = True) -> WorkerVariableWatch:
        """A blocking iterator of changes for sync tools; ``close()`` (or ``with``) stops it."""
        return WorkerVariableWatch(self, self.awatch(*names, include_initial=include_initial))

    # Mapping-style reads for convenience: ``ctx.vars["temperature"]``.
    def __getitem__(self, name: str) -> Any:
        return self.get(name)

    def __setitem__(self, name: str, value: Any) -> None:
        self.set(name, value)


class WorkerVariableWatch:
    """Blocking iteration over an async watch stream, for sync tools."""

    def __init__(self, owner: WorkerVariables, stream: AsyncIterator[WorkerVariableChange]) -> None:
        self._owner = owner
        self._stream = stream
        self._closed = False

    def __iter__(self) -> Iterator[WorkerVariableChange]:
        return self

    def __next__(self) -> WorkerVariableChange:
        if self._closed:
            raise StopIteration

        async def step() -> WorkerVariableChange | None:
            try:
                return await self._stream.__anext__()
            except StopAsyncIteration:
                return None

        change = self._owner._sync(step())
        if change is None:
            self._closed = True
            raise StopIteration
        return change

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        aclose = getattr(self._stream, "aclose", None)
        if aclose is not None:
            self._owner._sync(aclose())

    def __enter__(self) -> WorkerVariableWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
