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

import builtins
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

from snakepit_nb._errors import InvalidArgumentError, SnakepitError, VersionConflictError
from snakepit_nb.client.async_variables import AsyncVariables
from snakepit_nb.client.variable_ops import (
    DEFAULT_RETRIES,
    MISSING,
    UpdateResult,
    VariableOps,
    WatchCursor,
    copy_value,
    one_more_conflict,
    pending_record,
)
from snakepit_nb.orchestrator.variables.records import VariableRecord, VariableVersion
from snakepit_nb.orchestrator.variables.watchers import VariableChange

if TYPE_CHECKING:
    from snakepit_nb._loop import LoopThread

__all__ = [
    "Batch",
    "UpdateResult",
    "Variable",
    "VariableChange",
    "VariableVersion",
    "VariableWatch",
    "Variables",
]

#: The record ``info()`` returns: name, type, value, version, constraints, updated_at, source...
Variable = VariableRecord


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
        self._ops = inner.ops
        self._loop_thread = inner.loop_thread
        self._run = inner.loop_thread.run
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
        if batch is not None and name in batch.updates:
            return copy_value(batch.updates[name])
        return self._run(self._ops.get(name, MISSING, False))

    def __setitem__(self, name: str, value: Any) -> None:
        batch = self._batch()
        if batch is not None:
            batch.set(name, value)
            return
        self._run(self._ops.assign(name, value))

    def __delitem__(self, name: str) -> None:
        self._run(self._ops.delete(name))

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        return self._run(self._ops.contains(name))

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())

    def items(self) -> builtins.list[tuple[str, Any]]:
        return [(r.name, r.value) for r in self.list()]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.items())

    # ---------------------------------------------------------------- reading

    def get(self, name: str, default: Any = MISSING, *, with_version: bool = False) -> Any:
        """The value of ``name`` (a copy); ``(value, version)`` with ``with_version=True``."""
        return self._run(self._ops.get(name, default, with_version))

    def info(self, name: str) -> Variable:
        return self._run(self._ops.info(name))

    def keys(self) -> builtins.list[str]:
        return self._run(self._ops.names())

    def contains(self, name: str) -> bool:
        return self._run(self._ops.contains(name))

    def list(self, pattern: str = "*") -> builtins.list[Variable]:
        return self._run(self._ops.list(pattern))

    def get_many(self, names: Sequence[str]) -> dict[str, Any]:
        return self._run(self._ops.get_many(names))

    def history(self, name: str, limit: int | None = None) -> builtins.list[VariableVersion]:
        return self._run(self._ops.history(name, limit))

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
            return pending_record(name, value)
        return self._run(self._ops.set(name, value, expected_version, metadata))

    def assign(self, name: str, value: Any) -> Variable:
        return self._run(self._ops.assign(name, value))

    def delete(self, name: str) -> Variable:
        return self._run(self._ops.delete(name))

    def set_many(
        self,
        updates: Mapping[str, Any],
        *,
        atomic: bool = True,
        expected_versions: Mapping[str, int] | None = None,
    ) -> dict[str, Variable]:
        return self._run(self._ops.set_many(updates, atomic, expected_versions, False))

    def rollback(self, name: str, version: int) -> Variable:
        return self._run(self._ops.rollback(name, version))

    def update(
        self, name: str, fn: Callable[[Any], Any], *, retries: int = DEFAULT_RETRIES
    ) -> UpdateResult:
        """Read, apply ``fn`` here, compare-and-set; retry on conflicts (counted)."""
        conflicts = 0
        while True:
            value, version = self._run(self._ops.get(name, MISSING, True))
            new = fn(value)
            try:
                record = self._run(self._ops.set(name, new, version, None))
            except VersionConflictError as exc:
                conflicts = one_more_conflict(name, conflicts, retries, exc)
                continue
            return UpdateResult(name, record.value, record.version, conflicts)

    def batch(self) -> Batch:
        """``with s.vars.batch(): s.vars["a"] = 1; s.vars["b"] = 2`` — atomic on exit.

        Writes made in this thread inside the block are collected; reads by ``s.vars[name]``
        see them. An exception in the block discards them all.
        """
        return Batch(self._local, self._ops, self._run)

    # ---------------------------------------------------------------- dependencies, locks

    def depend(self, from_name: str, to_name: str, dependency_type: str = "") -> None:
        self._run(self._ops.depend(from_name, to_name, dependency_type))

    def start_optimization(
        self, name: str, optimizer_id: str, config: Mapping[str, str] | None = None
    ) -> Variable:
        return self._run(self._ops.start_optimization(name, optimizer_id, config))

    def stop_optimization(
        self, name: str, optimizer_id: str = "", *, force: bool = False
    ) -> Variable:
        return self._run(self._ops.stop_optimization(name, optimizer_id, force))

    def set_as_optimizer(
        self, name: str, value: Any, optimizer_id: str, expected_version: int | None = None
    ) -> Variable:
        """Write ``value`` as the optimizer that holds ``name``'s optimization lock."""
        return self._run(self._ops.set(name, value, expected_version, None, optimizer_id))

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
        cursor = WatchCursor(self._ops, names, include_initial, buffer)
        # Start watching now, so no change between this call and the first next() is lost.
        self._run(cursor.start())
        return VariableWatch(cursor, self._loop_thread)


class Batch:
    """Collected writes of ``with s.vars.batch():``; committed atomically on exit."""

    def __init__(self, local: threading.local, ops: VariableOps, run: Callable[..., Any]) -> None:
        self._local = local
        self._ops = ops
        self._run = run
        #: The writes collected so far (reads of ``s.vars[name]`` in the block see them).
        self.updates: dict[str, Any] = {}
        self._expected: dict[str, int] = {}
        self.records: dict[str, VariableRecord] = {}

    def set(self, name: str, value: Any, expected_version: int | None = None) -> None:
        self.updates[name] = value
        if expected_version is not None:
            self._expected[name] = expected_version

    def pending(self) -> dict[str, Any]:
        return dict(self.updates)

    def __enter__(self) -> Batch:
        if getattr(self._local, "batch", None) is not None:
            raise InvalidArgumentError("a batch is already open in this thread; nest nothing")
        self._local.batch = self
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._local.batch = None
        updates, self.updates = self.updates, {}
        expected, self._expected = self._expected, {}
        if et is None and updates:
            self.records = self._run(self._ops.set_many(updates, True, expected, True))


class Optimization:
    """A held optimization lock (``with s.vars.optimizing(...) as opt``); ``set`` writes as
    the optimizer, ``final`` is the record after the lock was released."""

    def __init__(self, variables: Variables, name: str, optimizer_id: str) -> None:
        self._vars = variables
        self.name = name
        self.optimizer_id = optimizer_id
        self.final: VariableRecord | None = None

    def set(self, value: Any, expected_version: int | None = None) -> Variable:
        return self._vars.set_as_optimizer(self.name, value, self.optimizer_id, expected_version)

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

    def __init__(self, cursor: WatchCursor, loop_thread: LoopThread) -> None:
        self._cursor = cursor
        self._loop_thread = loop_thread

    def next(self, timeout: float | None = None) -> VariableChange:
        change = self._loop_thread.run(self._cursor.next(timeout))
        if change is None:
            raise StopIteration
        return change

    def __iter__(self) -> Iterator[VariableChange]:
        return self

    def __next__(self) -> VariableChange:
        return self.next()

    def close(self) -> None:
        if self._loop_thread.in_loop_thread():
            self._cursor.close_now()
            return
        self._loop_thread.loop.call_soon_threadsafe(self._cursor.close_now)

    def __enter__(self) -> VariableWatch:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
