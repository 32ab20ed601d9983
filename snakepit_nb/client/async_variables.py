"""``await s.vars...``: the awaitable face of session variables (``AsyncSession.vars``).

Same method names as the blocking :class:`~snakepit_nb.client.variables.Variables`; each runs
its :class:`~snakepit_nb.client.variable_ops.VariableOps` coroutine on the snakepit loop
thread, whatever loop awaits it.
"""

from __future__ import annotations

import builtins
import inspect
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from snakepit_nb._errors import VersionConflictError
from snakepit_nb.client.streams import on_loop
from snakepit_nb.client.variable_ops import (
    DEFAULT_RETRIES,
    MISSING,
    UpdateResult,
    VariableOps,
    WatchCursor,
    constraints_from,
    one_more_conflict,
)
from snakepit_nb.orchestrator.variables.records import VariableRecord, VariableVersion
from snakepit_nb.orchestrator.variables.watchers import VariableChange

if TYPE_CHECKING:
    from snakepit_nb._loop import LoopThread
    from snakepit_nb.orchestrator.service import Service

__all__ = ["AsyncBatch", "AsyncOptimization", "AsyncVariableWatch", "AsyncVariables"]

T = TypeVar("T")

#: The record ``info()`` returns: name, type, value, version, constraints, updated_at, source...
Variable = VariableRecord


class AsyncVariables:
    """The variables of one session, awaitable: ``await s.vars.set("t", 0.7)``.

    Same method names as the blocking ``Variables`` (``session.vars`` of a ``Session``).
    """

    def __init__(self, service: Service, loop_thread: LoopThread, session_id: str) -> None:
        self.ops = VariableOps(service, session_id)
        self.loop_thread = loop_thread
        self.session_id = session_id

    def __repr__(self) -> str:
        return f"<AsyncVariables of session {self.session_id!r}>"

    async def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return await on_loop(self.loop_thread, coro)

    # ---------------------------------------------------------------- reading

    async def get(self, name: str, default: Any = MISSING, *, with_version: bool = False) -> Any:
        """The value of ``name`` (a copy); ``(value, version)`` with ``with_version=True``.

        ``default`` is returned for an undefined variable (else ``VariableNotFoundError``).
        """
        return await self._run(self.ops.get(name, default, with_version))

    async def info(self, name: str) -> Variable:
        """The full record: name, type, value, version, constraints, updated_at, source..."""
        return await self._run(self.ops.info(name))

    async def keys(self) -> builtins.list[str]:
        """Names of the session's variables, in definition order."""
        return await self._run(self.ops.names())

    async def contains(self, name: str) -> bool:
        return await self._run(self.ops.contains(name))

    async def list(self, pattern: str = "*") -> builtins.list[Variable]:
        """Records of the variables whose names match ``pattern`` (``*`` and ``?``)."""
        return await self._run(self.ops.list(pattern))

    async def get_many(self, names: Sequence[str]) -> dict[str, Any]:
        return await self._run(self.ops.get_many(names))

    async def items(self) -> builtins.list[tuple[str, Any]]:
        return [(r.name, r.value) for r in await self.list()]

    async def to_dict(self) -> dict[str, Any]:
        return dict(await self.items())

    async def history(self, name: str, limit: int | None = None) -> builtins.list[VariableVersion]:
        """Kept versions, oldest first (the newest ``limit`` with a limit)."""
        return await self._run(self.ops.history(name, limit))

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
            self.ops.define(
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
        return await self._run(self.ops.set(name, value, expected_version, metadata))

    async def assign(self, name: str, value: Any) -> Variable:
        """Define-or-set (what ``s.vars[name] = value`` does): the type is inferred."""
        return await self._run(self.ops.assign(name, value))

    async def delete(self, name: str) -> Variable:
        """Remove the variable (and its history); returns its last record."""
        return await self._run(self.ops.delete(name))

    async def set_many(
        self,
        updates: Mapping[str, Any],
        *,
        atomic: bool = True,
        expected_versions: Mapping[str, int] | None = None,
    ) -> dict[str, Variable]:
        """Write several variables; ``atomic``: all or nothing (the first error is raised)."""
        return await self._run(self.ops.set_many(updates, atomic, expected_versions, False))

    async def rollback(self, name: str, version: int) -> Variable:
        """Write the value of an earlier ``version`` as a new version."""
        return await self._run(self.ops.rollback(name, version))

    async def update(
        self, name: str, fn: Callable[[Any], Any], *, retries: int = DEFAULT_RETRIES
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
                record = await self._run(self.ops.set(name, new, version, None))
            except VersionConflictError as exc:
                conflicts = one_more_conflict(name, conflicts, retries, exc)
                continue
            return UpdateResult(name, record.value, record.version, conflicts)

    def batch(self) -> AsyncBatch:
        """``async with s.vars.batch() as b: b.set("a", 1)`` — committed atomically on exit."""
        return AsyncBatch(self)

    # ---------------------------------------------------------------- dependencies, locks

    async def depend(self, from_name: str, to_name: str, dependency_type: str = "") -> None:
        """``to_name`` depends on ``from_name``: a change of ``from_name`` reaches watchers of
        ``to_name`` as a ``dependency_change``. Cycles are refused."""
        await self._run(self.ops.depend(from_name, to_name, dependency_type))

    async def start_optimization(
        self, name: str, optimizer_id: str, config: Mapping[str, str] | None = None
    ) -> Variable:
        """Lock ``name`` for ``optimizer_id``: every other writer gets FailedPreconditionError."""
        return await self._run(self.ops.start_optimization(name, optimizer_id, config))

    async def stop_optimization(
        self, name: str, optimizer_id: str = "", *, force: bool = False
    ) -> Variable:
        """Release the lock; returns the record with the final value."""
        return await self._run(self.ops.stop_optimization(name, optimizer_id, force))

    async def set_as_optimizer(
        self, name: str, value: Any, optimizer_id: str, expected_version: int | None = None
    ) -> Variable:
        """Write ``value`` as the optimizer that holds ``name``'s optimization lock."""
        return await self._run(self.ops.set(name, value, expected_version, None, optimizer_id))

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
                self._vars.ops.set_many(updates, True, expected, True)
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
        return await self._vars.set_as_optimizer(
            self.name, value, self.optimizer_id, expected_version
        )

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
        self.cursor = WatchCursor(variables.ops, names, include_initial, buffer)

    async def next(self, timeout: float | None = None) -> VariableChange:  # noqa: ASYNC109
        """The next change; ``TimeoutError`` after ``timeout`` s, ``StopAsyncIteration`` when
        the watch was closed."""
        change = await self._vars._run(self.cursor.next(timeout))
        if change is None:
            raise StopAsyncIteration
        return change

    def __aiter__(self) -> AsyncIterator[VariableChange]:
        return self

    async def __anext__(self) -> VariableChange:
        return await self.next()

    async def aclose(self) -> None:
        await self._vars._run(self.cursor.close())

    async def __aenter__(self) -> AsyncVariableWatch:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
