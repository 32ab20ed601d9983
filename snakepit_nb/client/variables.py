"""``session.vars``: the notebook side of session variables.

``AsyncVariables`` holds the logic: each method runs a coroutine on the snakepit loop thread,
where it calls the session's ``VariableStore`` directly (no gRPC to ourselves). ``Variables``
is the blocking facade with the same method names, plus mapping access::

    s.vars["temperature"] = 0.7              # define (type inferred) or set
    s.vars.define("lr", 1e-3, min=0, max=1)  # typed, constrained
    s.vars["temperature"], "lr" in s.vars, len(s.vars), list(s.vars)
    s.vars.set("lr", 2e-3, expected_version=3)      # compare-and-set
    s.vars.update("counter", lambda v: v + 1)       # retries on conflict
    with s.vars.batch():                             # atomic on exit
        s.vars["a"] = 1; s.vars["b"] = 2
    for change in s.vars.watch("temperature"): ...
    s.vars.history("lr"); s.vars.rollback("lr", version=1)

Values handed out are copies: mutating a list you got does not change the variable.
"""

from __future__ import annotations

import asyncio
import builtins
import copy
import inspect
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from snakepit_nb._errors import (
    InvalidArgumentError,
    SnakepitError,
    VariableNotFoundError,
    VersionConflictError,
)
from snakepit_nb.client.streams import on_loop
from snakepit_nb.orchestrator.variables.types import (
    KERNEL_SOURCE,
    VariableRecord,
    VariableVersion,
)
from snakepit_nb.orchestrator.variables.watchers import VariableChange, Watcher

if TYPE_CHECKING:
    from snakepit_nb._loop import LoopThread
    from snakepit_nb.orchestrator.service import Service
    from snakepit_nb.orchestrator.variables.store import VariableStore

__all__ = [
    "AsyncBatch",
    "AsyncVariableWatch",
    "AsyncVariables",
    "Batch",
    "UpdateResult",
    "Variable",
    "VariableChange",
    "VariableVersion",
    "VariableWatch",
    "Variables",
]

T = TypeVar("T")

#: The record ``info()`` returns: name, type, value, version, constraints, updated_at, source...
Variable = VariableRecord

_MISSING: Any = object()
_SCALARS = (bool, int, float, str, bytes, type(None))
_DEFAULT_RETRIES = 100


@dataclass(frozen=True)
class UpdateResult:
    """What ``vars.update(name, fn)`` did: the value written, its version, and how many
    version conflicts (other writers got there first) it retried through."""

    name: str
    value: Any
    version: int
    conflicts: int

    @property
    def attempts(self) -> int:
        return self.conflicts + 1


def _copy(value: Any) -> Any:
    return value if isinstance(value, _SCALARS) else copy.deepcopy(value)


def _copy_record(record: VariableRecord) -> VariableRecord:
    if isinstance(record.value, _SCALARS):
        return record
    return replace(record, value=copy.deepcopy(record.value))


def _copy_change(change: VariableChange) -> VariableChange:
    if isinstance(change.variable.value, _SCALARS):
        return change
    return replace(change, variable=_copy_record(change.variable))


def constraints_from(constraints: Mapping[str, Any] | None, **named: Any) -> dict[str, Any] | None:
    """Merge ``constraints=`` with the named keyword shortcuts (``min=0, max=2``...)."""
    merged = dict(constraints or {})
    for key, value in named.items():
        if value is not None:
            merged[key] = list(value) if isinstance(value, tuple) else value
    return merged or None


def _raise_batch_errors(errors: Mapping[str, SnakepitError]) -> None:
    if not errors:
        return
    first = next(iter(errors.values()))
    if len(errors) == 1:
        raise first
    others = ", ".join(repr(k) for k in list(errors)[1:])
    if isinstance(first, VersionConflictError):
        raise VersionConflictError(
            f"{first} (also refused: {others}); nothing was written",
            current_version=first.current_version,
        ) from first
    raise type(first)(f"{first} (also refused: {others}); nothing was written") from first


def _one_more_conflict(name: str, conflicts: int, retries: int, exc: VersionConflictError) -> int:
    """``update`` met another version conflict: the new count, or give up past ``retries``."""
    conflicts += 1
    if conflicts > retries:
        raise VersionConflictError(
            f"gave up updating variable {name!r} after {conflicts} version "
            f"conflicts (retries={retries}): {exc}",
            current_version=exc.current_version,
        ) from exc
    return conflicts


class AsyncVariables:
    """The variables of one session, awaitable: ``await s.vars.set("t", 0.7)``.

    Same method names as the blocking ``Variables`` (``session.vars`` of a ``Session``).
    """

    def __init__(self, service: Service, loop_thread: LoopThread, session_id: str) -> None:
        self._service = service
        self._loop_thread = loop_thread
        self.session_id = session_id

    def __repr__(self) -> str:
        return f"<AsyncVariables of session {self.session_id!r}>"

    # ---------------------------------------------------------------- loop-side coroutines
    # Each ``_x`` runs on the loop thread; the public methods hand it there.

    def _store(self) -> VariableStore:
        # Using a session's variables is activity: it restarts the idle timer (or says that
        # the session expired).
        return self._service.session_variables(self.session_id)

    async def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return await on_loop(self._loop_thread, coro)

    async def _get(self, name: str, default: Any, with_version: bool) -> Any:
        try:
            record = await self._store().get(name)
        except VariableNotFoundError:
            if default is _MISSING:
                raise
            return (default, 0) if with_version else default
        value = _copy(record.value)
        return (value, record.version) if with_version else value

    async def _info(self, name: str) -> VariableRecord:
        return _copy_record(await self._store().get(name))

    async def _set(
        self,
        name: str,
        value: Any,
        expected_version: int | None,
        metadata: Mapping[str, str] | None,
        optimizer_id: str | None = None,
    ) -> VariableRecord:
        record = await self._store().set(
            name,
            value,
            expected_version=expected_version,
            metadata=metadata,
            optimizer_id=optimizer_id,
        )
        return _copy_record(record)

    async def _assign(self, name: str, value: Any) -> VariableRecord:
        # Define-or-set in one step on the loop: no other writer can slip in between.
        store = self._store()
        if name in store:
            return _copy_record(await store.set(name, value))
        return _copy_record(await store.register(name, None, value))

    async def _define(
        self, name: str, value: Any, type: str | None, **kwargs: Any
    ) -> VariableRecord:
        return _copy_record(await self._store().register(name, type, value, **kwargs))

    async def _delete(self, name: str) -> VariableRecord:
        return await self._store().delete(name)

    async def _names(self) -> builtins.list[str]:
        return self._store().names()

    async def _contains(self, name: str) -> bool:
        return name in self._store()

    async def _list(self, pattern: str) -> builtins.list[VariableRecord]:
        return [_copy_record(r) for r in await self._store().list(pattern)]

    async def _get_many(self, names: Sequence[str]) -> dict[str, Any]:
        found, missing = await self._store().get_many(list(names))
        if missing:
            raise VariableNotFoundError(
                f"variables {missing} are not defined in session {self.session_id!r}; define "
                "them first"
            )
        return {k: _copy(r.value) for k, r in found.items()}

    async def _set_many(
        self,
        updates: Mapping[str, Any],
        atomic: bool,
        expected_versions: Mapping[str, int] | None,
        define_missing: bool,
    ) -> dict[str, VariableRecord]:
        outcome = await self._store().set_many(
            dict(updates),
            atomic=atomic,
            expected_versions=expected_versions,
            define_missing=define_missing,
        )
        if atomic or outcome.errors:
            _raise_batch_errors(outcome.errors)
        return {k: _copy_record(r) for k, r in outcome.records.items()}

    async def _history(self, name: str, limit: int | None) -> builtins.list[VariableVersion]:
        entries = await self._store().history(name, limit)
        return [
            e if isinstance(e.value, _SCALARS) else replace(e, value=_copy(e.value))
            for e in entries
        ]

    async def _rollback(self, name: str, version: int) -> VariableRecord:
        return _copy_record(await self._store().rollback(name, version))

    async def _depend(self, from_name: str, to_name: str, dependency_type: str) -> None:
        await self._store().add_dependency(from_name, to_name, dependency_type)

    async def _start_optimization(
        self, name: str, optimizer_id: str, config: Mapping[str, str] | None
    ) -> VariableRecord:
        return _copy_record(await self._store().start_optimization(name, optimizer_id, config))

    async def _stop_optimization(self, name: str, optimizer_id: str, force: bool) -> VariableRecord:
        record = await self._store().stop_optimization(name, optimizer_id, force=force)
        return _copy_record(record)

    async def _watch(
        self, names: Sequence[str], include_initial: bool, buffer: int | None
    ) -> Watcher:
        return self._store().watch(
            list(names) or None, include_initial=include_initial, capacity=buffer
        )

    # ---------------------------------------------------------------- reading

    async def get(self, name: str, default: Any = _MISSING, *, with_version: bool = False) -> Any:
        """The value of ``name`` (a copy); ``(value, version)`` with ``with_version=True``.

        ``default`` is returned for an undefined variable (else ``VariableNotFoundError``).
        """
        return await self._run(self._get(name, default, with_version))

    async def info(self, name: str) -> Variable:
        """The full record: name, type, value, version, constraints, updated_at, source..."""
        return await self._run(self._info(name))

    async def keys(self) -> builtins.list[str]:
        """Names of the session's variables, in definition order."""
        return await self._run(self._names())

    async def contains(self, name: str) -> bool:
        return await self._run(self._contains(name))

    async def list(self, pattern: str = "*") -> builtins.list[Variable]:
        """Records of the variables whose names match ``pattern`` (``*`` and ``?``)."""
        return await self._run(self._list(pattern))

    async def get_many(self, names: Sequence[str]) -> dict[str, Any]:
        return await self._run(self._get_many(names))

    async def items(self) -> builtins.list[tuple[str, Any]]:
        return [(r.name, r.value) for r in await self.list()]

    async def to_dict(self) -> dict[str, Any]:
        return dict(await self.items())

    async def history(self, name: str, limit: int | None = None) -> builtins.list[VariableVersion]:
        """Kept versions, oldest first (the newest ``limit`` with a limit)."""
        return await self._run(self._history(name, limit))

    # ---------------------------------------------------------------- writing

    async def define(
        self,
        name: str,
        value: Any,
        type: str | None = None,
        *,
        min: float | None = None,
        max: float | None = None,
        choices: Sequence[Any] | None = None,
        pattern: str | None = None,
        min_length: int | None = None,
        max_length: int | None = None,
        enum: Sequence[str] | None = None,
        allowed_modules: Sequence[str] | None = None,
        dimensions: int | None = None,
        shape: Sequence[int | None] | None = None,
        allow_nan: bool | None = None,
        allow_inf: bool | None = None,
        nullable: bool | None = None,
        description: str | None = None,
        constraints: Mapping[str, Any] | None = None,
        metadata: Mapping[str, str] | None = None,
        read_only_for_workers: bool = False,
        allow_type_change: bool = False,
    ) -> Variable:
        """Define (or redefine) a typed, constrained variable; returns its record.

        >>> await s.vars.define("temperature", 0.7, "float", min=0, max=2)
        """
        merged = constraints_from(
            constraints, min=min, max=max, choices=choices, pattern=pattern,
            min_length=min_length, max_length=max_length, enum=enum,
            allowed_modules=allowed_modules, dimensions=dimensions, shape=shape,
            allow_nan=allow_nan, allow_inf=allow_inf, nullable=nullable,
            description=description,
        )  # fmt: skip
        access = {"workers": "read"} if read_only_for_workers else None
        return await self._run(
            self._define(
                name, value, type, constraints=merged, metadata=metadata, access=access,
                allow_type_change=allow_type_change,
            )
        )  # fmt: skip

    async def set(
        self,
        name: str,
        value: Any,
        expected_version: int | None = None,
        *,
        metadata: Mapping[str, str] | None = None,
    ) -> Variable:
        """Write ``value``; with ``expected_version`` only if the variable is still at it
        (else ``VersionConflictError`` with ``current_version``). Returns the new record."""
        return await self._run(self._set(name, value, expected_version, metadata))

    async def assign(self, name: str, value: Any) -> Variable:
        """Define-or-set (what ``s.vars[name] = value`` does): the type is inferred."""
        return await self._run(self._assign(name, value))

    async def delete(self, name: str) -> Variable:
        """Remove the variable (and its history); returns its last record."""
        return await self._run(self._delete(name))

    async def set_many(
        self,
        updates: Mapping[str, Any],
        *,
        atomic: bool = True,
        expected_versions: Mapping[str, int] | None = None,
    ) -> dict[str, Variable]:
        """Write several variables; ``atomic``: all or nothing (the first error is raised)."""
        return await self._run(self._set_many(updates, atomic, expected_versions, False))

    async def rollback(self, name: str, version: int) -> Variable:
        """Write the value of an earlier ``version`` as a new version."""
        return await self._run(self._rollback(name, version))

    async def update(
        self, name: str, fn: Callable[[Any], Any], *, retries: int = _DEFAULT_RETRIES
    ) -> UpdateResult:
        """Read, apply ``fn`` (sync or async), compare-and-set; retry on version conflicts.

        Returns an ``UpdateResult`` with the number of conflicts met. Gives up with the last
        ``VersionConflictError`` after ``retries`` conflicts.
        """
        conflicts = 0
        while True:
            value, version = await self.get(name, with_version=True)
            new = fn(value)
            if inspect.isawaitable(new):
                new = await new
            try:
                record = await self._run(self._set(name, new, version, None))
            except VersionConflictError as exc:
                conflicts = _one_more_conflict(name, conflicts, retries, exc)
                continue
            return UpdateResult(name, record.value, record.version, conflicts)

    def batch(self) -> AsyncBatch:
        """``async with s.vars.batch() as b: b.set("a", 1)`` — committed atomically on exit."""
        return AsyncBatch(self)

    # ---------------------------------------------------------------- dependencies, locks

    async def depend(self, from_name: str, to_name: str, dependency_type: str = "") -> None:
        """``to_name`` depends on ``from_name``: a change of ``from_name`` reaches watchers of
        ``to_name`` as a ``dependency_change``. Cycles are refused."""
        await self._run(self._depend(from_name, to_name, dependency_type))

    async def start_optimization(
        self, name: str, optimizer_id: str, config: Mapping[str, str] | None = None
    ) -> Variable:
        """Lock ``name`` for ``optimizer_id``: every other writer gets FailedPreconditionError."""
        return await self._run(self._start_optimization(name, optimizer_id, config))

    async def stop_optimization(
        self, name: str, optimizer_id: str = "", *, force: bool = False
    ) -> Variable:
        """Release the lock; returns the record with the final value."""
        return await self._run(self._stop_optimization(name, optimizer_id, force))

    def optimizing(self, name: str, optimizer_id: str) -> AsyncOptimization:
        """``async with s.vars.optimizing("lr", "opt1") as opt: await opt.set(0.1)``."""
        return AsyncOptimization(self, name, optimizer_id)

    # ---------------------------------------------------------------- watching

    def watch(
        self, *names: str, include_initial: bool = True, buffer: int | None = None
    ) -> AsyncVariableWatch:
        """An async iterator of ``VariableChange`` (no names: every variable).

        >>> async for change in s.vars.watch("temperature"):
        ...     print(change.value, change.version, change.kind)
        """
        return AsyncVariableWatch(self, names, include_initial, buffer)


class AsyncBatch:
    """Collects writes; ``async with`` commits them atomically (an exception: nothing)."""

    def __init__(self, variables: AsyncVariables) -> None:
        self._vars = variables
        self._updates: dict[str, Any] = {}
        self._expected: dict[str, int] = {}
        self.records: dict[str, VariableRecord] = {}

    def set(self, name: str, value: Any, expected_version: int | None = None) -> None:
        self._updates[name] = value
        if expected_version is not None:
            self._expected[name] = expected_version

    def __setitem__(self, name: str, value: Any) -> None:
        self.set(name, value)

    def pending(self) -> dict[str, Any]:
        return dict(self._updates)

    async def commit(self) -> dict[str, VariableRecord]:
        updates, self._updates = self._updates, {}
        expected, self._expected = self._expected, {}
        if updates:
            self.records = await self._vars._run(
                self._vars._set_many(updates, True, expected, True)
            )
        return self.records

    async def __aenter__(self) -> AsyncBatch:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        if et is None:
            await self.commit()
        else:
            self._updates.clear()


class AsyncOptimization:
    """A held optimization lock; ``set`` writes as the optimizer."""

    def __init__(self, variables: AsyncVariables, name: str, optimizer_id: str) -> None:
        self._vars = variables
        self.name = name
        self.optimizer_id = optimizer_id
        self.final: VariableRecord | None = None

    async def set(self, value: Any, expected_version: int | None = None) -> Variable:
        v = self._vars
        return await v._run(v._set(self.name, value, expected_version, None, self.optimizer_id))

    async def __aenter__(self) -> AsyncOptimization:
        await self._vars.start_optimization(self.name, self.optimizer_id)
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.final = await self._vars.stop_optimization(self.name, self.optimizer_id)


class AsyncVariableWatch:
    """Changes of watched variables, as an async iterator; ``aclose()`` stops it."""

    def __init__(
        self,
        variables: AsyncVariables,
        names: Sequence[str],
        include_initial: bool,
        buffer: int | None,
    ) -> None:
        self._vars = variables
        self._names = list(names)
        self._include_initial = include_initial
        self._buffer = buffer
        self._watcher: Watcher | None = None
        self._closed = False

    async def _next(self, timeout: float | None) -> VariableChange | None:  # noqa: ASYNC109
        await self._next_start()
        if self._watcher is None:  # closed before it started
            return None
        try:
            if timeout is None:
                return _copy_change(await self._watcher.next())
            return _copy_change(await asyncio.wait_for(self._watcher.next(), timeout))
        except StopAsyncIteration:
            return None

    async def _next_start(self) -> None:
        if self._watcher is None and not self._closed:
            self._watcher = await self._vars._watch(
                self._names, self._include_initial, self._buffer
            )

    def _close_now(self) -> None:
        # Loop thread only.
        self._closed = True
        if self._watcher is not None:
            self._watcher.close()

    async def _close(self) -> None:
        self._close_now()

    async def next(self, timeout: float | None = None) -> VariableChange:  # noqa: ASYNC109
        """The next change; ``TimeoutError`` after ``timeout`` s, ``StopAsyncIteration`` when
        the watch was closed."""
        change = await self._vars._run(self._next(timeout))
        if change is None:
            raise StopAsyncIteration
        return change

    def __aiter__(self) -> AsyncIterator[VariableChange]:
        return self

    async def __anext__(self) -> VariableChange:
        return await self.next()

    async def aclose(self) -> None:
        await self._vars._run(self._close())

    async def __aenter__(self) -> AsyncVariableWatch:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


# ============================================================================ blocking facade


class Variables:
    """The variables of one session (``session.vars``), with mapping access.

    >>> s.vars["temperature"] = 0.7
    >>> s.vars.define("lr", 1e-3, "float", min=0, max=1)
    >>> s.vars["temperature"]
    0.7
    >>> s.vars.history("temperature")
    [<VariableVersion 1: 0.7 by kernel>]
    """

    def __init__(self, inner: AsyncVariables) -> None:
        self._async = inner
        self._run = inner._loop_thread.run
        self._local = threading.local()

    @property
    def session_id(self) -> str:
        return self._async.session_id

    def __repr__(self) -> str:
        try:
            names = self.keys()
        except SnakepitError:
            return f"<Variables of session {self.session_id!r}>"
        return f"<Variables of session {self.session_id!r}: {', '.join(names) or 'none'}>"

    def _batch(self) -> Batch | None:
        batch: Batch | None = getattr(self._local, "batch", None)
        return batch

    # ---------------------------------------------------------------- mapping access

    def __getitem__(self, name: str) -> Any:
        batch = self._batch()
        if batch is not None and name in batch._updates:
            return _copy(batch._updates[name])
        return self._run(self._async._get(name, _MISSING, False))

    def __setitem__(self, name: str, value: Any) -> None:
        batch = self._batch()
        if batch is not None:
            batch.set(name, value)
            return
        self._run(self._async._assign(name, value))

    def __delitem__(self, name: str) -> None:
        self._run(self._async._delete(name))

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        return self._run(self._async._contains(name))

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())

    def items(self) -> builtins.list[tuple[str, Any]]:
        return [(r.name, r.value) for r in self.list()]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.items())

    # ---------------------------------------------------------------- reading

    def get(self, name: str, default: Any = _MISSING, *, with_version: bool = False) -> Any:
        """The value of ``name`` (a copy); ``(value, version)`` with ``with_version=True``."""
        return self._run(self._async._get(name, default, with_version))

    def info(self, name: str) -> Variable:
        return self._run(self._async._info(name))

    def keys(self) -> builtins.list[str]:
        return self._run(self._async._names())

    def contains(self, name: str) -> bool:
        return self._run(self._async._contains(name))

    def list(self, pattern: str = "*") -> builtins.list[Variable]:
        return self._run(self._async._list(pattern))

    def get_many(self, names: Sequence[str]) -> dict[str, Any]:
        return self._run(self._async._get_many(names))

    def history(self, name: str, limit: int | None = None) -> builtins.list[VariableVersion]:
        return self._run(self._async._history(name, limit))

    # ---------------------------------------------------------------- writing

    def define(
        self,
        name: str,
        value: Any,
        type: str | None = None,
        *,
        min: float | None = None,
        max: float | None = None,
        choices: Sequence[Any] | None = None,
        pattern: str | None = None,
        min_length: int | None = None,
        max_length: int | None = None,
        enum: Sequence[str] | None = None,
        allowed_modules: Sequence[str] | None = None,
        dimensions: int | None = None,
        shape: Sequence[int | None] | None = None,
        allow_nan: bool | None = None,
        allow_inf: bool | None = None,
        nullable: bool | None = None,
        description: str | None = None,
        constraints: Mapping[str, Any] | None = None,
        metadata: Mapping[str, str] | None = None,
        read_only_for_workers: bool = False,
        allow_type_change: bool = False,
    ) -> Variable:
        """Define (or redefine) a typed, constrained variable; returns its record."""
        return self._run(
            self._async.define(
                name, value, type, min=min, max=max, choices=choices, pattern=pattern,
                min_length=min_length, max_length=max_length, enum=enum,
                allowed_modules=allowed_modules, dimensions=dimensions, shape=shape,
                allow_nan=allow_nan, allow_inf=allow_inf, nullable=nullable,
                description=description, constraints=constraints, metadata=metadata,
                read_only_for_workers=read_only_for_workers,
                allow_type_change=allow_type_change,
            )
        )  # fmt: skip

    def set(
        self,
        name: str,
        value: Any,
        expected_version: int | None = None,
        *,
        metadata: Mapping[str, str] | None = None,
    ) -> Variable:
        """Write ``value`` (compare-and-set with ``expected_version``); returns the record.

        Inside ``with s.vars.batch():`` the write is collected and the current record returned.
        """
        batch = self._batch()
        if batch is not None:
            batch.set(name, value, expected_version)
            # Not written yet: a placeholder record (version 0) until the batch commits.
            return _pending_record(name, value)
        return self._run(self._async._set(name, value, expected_version, metadata))

    def assign(self, name: str, value: Any) -> Variable:
        return self._run(self._async._assign(name, value))

    def delete(self, name: str) -> Variable:
        return self._run(self._async._delete(name))

    def set_many(
        self,
        updates: Mapping[str, Any],
        *,
        atomic: bool = True,
        expected_versions: Mapping[str, int] | None = None,
    ) -> dict[str, Variable]:
        return self._run(self._async._set_many(updates, atomic, expected_versions, False))

    def rollback(self, name: str, version: int) -> Variable:
        return self._run(self._async._rollback(name, version))

    def update(
        self, name: str, fn: Callable[[Any], Any], *, retries: int = _DEFAULT_RETRIES
    ) -> UpdateResult:
        """Read, apply ``fn`` here, compare-and-set; retry on conflicts (counted)."""
        conflicts = 0
        while True:
            value, version = self._run(self._async._get(name, _MISSING, True))
            new = fn(value)
            try:
                record = self._run(self._async._set(name, new, version, None))
            except VersionConflictError as exc:
                conflicts = _one_more_conflict(name, conflicts, retries, exc)
                continue
            return UpdateResult(name, record.value, record.version, conflicts)

    def batch(self) -> Batch:
        """``with s.vars.batch(): s.vars["a"] = 1; s.vars["b"] = 2`` — atomic on exit.

        Writes made in this thread inside the block are collected; reads by ``s.vars[name]``
        see them. An exception in the block discards them all.
        """
        return Batch(self)

    # ---------------------------------------------------------------- dependencies, locks

    def depend(self, from_name: str, to_name: str, dependency_type: str = "") -> None:
        self._run(self._async._depend(from_name, to_name, dependency_type))

    def start_optimization(
        self, name: str, optimizer_id: str, config: Mapping[str, str] | None = None
    ) -> Variable:
        return self._run(self._async._start_optimization(name, optimizer_id, config))

    def stop_optimization(
        self, name: str, optimizer_id: str = "", *, force: bool = False
    ) -> Variable:
        return self._run(self._async._stop_optimization(name, optimizer_id, force))

    def optimizing(self, name: str, optimizer_id: str) -> Optimization:
        """``with s.vars.optimizing("lr", "opt1") as opt: opt.set(0.1)`` — others are locked out."""
        return Optimization(self, name, optimizer_id)

    # ---------------------------------------------------------------- watching

    def watch(
        self, *names: str, include_initial: bool = True, buffer: int | None = None
    ) -> VariableWatch:
        """A blocking iterator of ``VariableChange``; ``close()`` (or ``with``) stops it.

        >>> for change in s.vars.watch("temperature"):
        ...     print(change.value, change.version)
        """
        inner = AsyncVariableWatch(self._async, names, include_initial, buffer)
        # Start watching now, so no change between this call and the first next() is lost.
        self._run(inner._next_start())
        return VariableWatch(inner, self._run)


def _pending_record(name: str, value: Any) -> VariableRecord:
    return VariableRecord(
        id="", name=name, type="", value=value, version=0, constraints={}, metadata={},
        source=KERNEL_SOURCE, created_at=0.0, updated_at=0.0,
    )  # fmt: skip


class Batch:
    """Collected writes of ``with s.vars.batch():``; committed atomically on exit."""

    def __init__(self, variables: Variables) -> None:
        self._vars = variables
        self._updates: dict[str, Any] = {}
        self._expected: dict[str, int] = {}
        self._outer: Batch | None = None
        self.records: dict[str, VariableRecord] = {}

    def set(self, name: str, value: Any, expected_version: int | None = None) -> None:
        self._updates[name] = value
        if expected_version is not None:
            self._expected[name] = expected_version

    def pending(self) -> dict[str, Any]:
        return dict(self._updates)

    def __enter__(self) -> Batch:
        local = self._vars._local
        self._outer = getattr(local, "batch", None)
        if self._outer is not None:
            raise InvalidArgumentError("a batch is already open in this thread; nest nothing")
        local.batch = self
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._vars._local.batch = None
        updates, self._updates = self._updates, {}
        expected, self._expected = self._expected, {}
        if et is None and updates:
            inner = self._vars._async
            self.records = self._vars._run(inner._set_many(updates, True, expected, True))


class Optimization:
    """A held optimization lock (``with s.vars.optimizing(...) as opt``); ``set`` writes as
    the optimizer, ``final`` is the record after the lock was released."""

    def __init__(self, variables: Variables, name: str, optimizer_id: str) -> None:
        self._vars = variables
        self.name = name
        self.optimizer_id = optimizer_id
        self.final: VariableRecord | None = None

    def set(self, value: Any, expected_version: int | None = None) -> Variable:
        inner = self._vars._async
        return self._vars._run(
            inner._set(self.name, value, expected_version, None, self.optimizer_id)
        )

    def __enter__(self) -> Optimization:
        self._vars.start_optimization(self.name, self.optimizer_id)
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.final = self._vars.stop_optimization(self.name, self.optimizer_id)


class VariableWatch:
    """Changes of watched variables as a blocking iterator.

    ``next(timeout=...)`` waits at most ``timeout`` seconds (``TimeoutError``); ``close()``
    from any thread ends the iteration.
    """

    def __init__(self, inner: AsyncVariableWatch, run: Callable[..., Any]) -> None:
        self._inner = inner
        self._run = run

    def next(self, timeout: float | None = None) -> VariableChange:
        change = self._run(self._inner._next(timeout))
        if change is None:
            raise StopIteration
        return change  # type: ignore[no-any-return]

    def __iter__(self) -> Iterator[VariableChange]:
        return self

    def __next__(self) -> VariableChange:
        return self.next()

    def close(self) -> None:
        loop_thread = self._inner._vars._loop_thread
        if loop_thread.in_loop_thread():
            self._inner._close_now()
            return
        loop_thread.loop.call_soon_threadsafe(self._inner._close_now)

    def __enter__(self) -> VariableWatch:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
