"""Session variables: typed, constrained, versioned, watchable, shared by notebook and workers.

One ``VariableStore`` per session, all of them in the orchestrator's ``VariableStores``. The
stores live on the orchestrator's loop thread: every method is a coroutine that runs there,
and in-memory state needs no locks because nothing awaits between a check and the change it
guards. A write is validated (type, constraints, size, version, access, optimization lock)
before anything changes; a refused write changes nothing. With opt-in persistence
(``sp.start(state="exploration.db")``) a write returns only once SQLite has committed it.

Sources: ``"kernel"`` for the notebook side; a worker id (or ``"worker"``) for gRPC callers.

>>> store = stores.for_session("exp1")
>>> await store.register("temperature", "float", 0.7, constraints={"min": 0, "max": 2})
>>> (await store.set("temperature", 0.9, expected_version=1)).version
2
"""

from __future__ import annotations

import builtins
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any

from snakepit_nb._errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    SnakepitError,
    VariableNotFoundError,
    VersionConflictError,
)
from snakepit_nb.orchestrator.variables import persistence as sql
from snakepit_nb.orchestrator.variables.graph import DependencyGraph
from snakepit_nb.orchestrator.variables.persistence import StateDatabase, Statement
from snakepit_nb.orchestrator.variables.policy import (
    EMPTY,
    VariableLimits,
    admit,
    check_read,
    check_write,
    clean_access,
    clean_metadata,
    readable,
)
from snakepit_nb.orchestrator.variables.records import (
    KERNEL_SOURCE,
    BatchOutcome,
    OptimizationLock,
    VariableRecord,
    VariableVersion,
)
from snakepit_nb.orchestrator.variables.table import Entry, VariableTable
from snakepit_nb.orchestrator.variables.types import TypeSpec, check_name, infer_type
from snakepit_nb.orchestrator.variables.watchers import ChangeKind, Watcher, WatcherSet

__all__ = ["VariableStore"]


@dataclass
class _Plan:
    """A validated write, ready to apply without further checks."""

    key: str
    var: Entry | None  # None: define a new variable
    name: str
    value: Any
    encoded: bytes | None
    spec: TypeSpec


class VariableStore:
    """The variables of one session. Every method runs on the orchestrator's loop."""

    def __init__(
        self,
        session_id: str,
        limits: VariableLimits | None = None,
        *,
        db: StateDatabase | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.session_id = session_id
        self.limits = limits or VariableLimits()
        self._db = db
        self._clock = clock
        self._table = VariableTable(session_id)
        # Changes flow along its edges, from a variable to those that depend on it.
        self._graph = DependencyGraph()
        self._watchers = WatcherSet(self.session_id, self.limits.max_watchers)
        self._closed = False
        #: Writes refused for a stale expected_version (each raised VersionConflictError).
        self.conflicts = 0

    # ================================================================= reading

    def __len__(self) -> int:
        return len(self._table)

    def __contains__(self, ident: object) -> bool:
        return ident in self._table

    def names(self) -> builtins.list[str]:
        return self._table.names()

    async def get(self, ident: str, *, source: str = KERNEL_SOURCE) -> VariableRecord:
        var = self._resolve(ident)
        check_read(var.record, source)
        return var.record

    def peek(self, ident: str) -> VariableRecord | None:
        """The record without access checks, or None (synchronous; loop thread only)."""
        var = self._table.find(ident)
        return None if var is None else var.record

    async def get_many(
        self, idents: Sequence[str], *, source: str = KERNEL_SOURCE
    ) -> tuple[dict[str, VariableRecord], list[str]]:
        """``({ident: record}, missing)``; variables hidden from ``source`` count as missing."""
        found: dict[str, VariableRecord] = {}
        missing: builtins.list[str] = []
        for ident in idents:
            var = self._table.find(ident)
            if var is None or not readable(var.record, source):
                missing.append(ident)
            else:
                found[ident] = var.record
        return found, missing

    async def list(
        self, pattern: str = "*", *, source: str = KERNEL_SOURCE
    ) -> builtins.list[VariableRecord]:
        """Variables whose name matches the wildcard ``pattern`` (``*`` and ``?``), by name."""
        return [e.record for e in self._table.matching(pattern) if readable(e.record, source)]

    async def history(
        self, ident: str, limit: int | None = None, *, source: str = KERNEL_SOURCE
    ) -> builtins.list[VariableVersion]:
        """The kept versions, oldest first; ``limit`` keeps the newest ``limit`` of them."""
        var = self._resolve(ident)
        check_read(var.record, source)
        entries = list(var.history)
        if limit is not None:
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
                raise InvalidArgumentError(
                    f"history limit must be a non-negative integer, not {limit!r}"
                )
            if limit:
                entries = entries[-limit:]
        return entries

    def dependencies(self, ident: str) -> builtins.list[str]:
        """Names of the variables that depend on ``ident`` (directly)."""
        var = self._resolve(ident)
        return [self._table.resolve(i).record.name for i in self._graph.direct(var.record.id)]

    # ================================================================= registering

    async def register(
        self,
        name: str,
        type: str | None = None,
        value: Any = None,
        *,
        constraints: Mapping[str, Any] | None = None,
        metadata: Mapping[str, str] | None = None,
        access: Mapping[str, str] | None = None,
        allow_type_change: bool = False,
        expected_version: int | None = None,
        source: str = KERNEL_SOURCE,
    ) -> VariableRecord:
        """Define a variable, or redefine an existing one (a new version).

        Redefining with another type raises ``FailedPreconditionError`` unless
        ``allow_type_change``. Redefining with the same settings and value changes nothing.
        ``expected_version=0`` defines only if the name is free (``VersionConflictError``
        with the current version otherwise); a positive one redefines only at that version.
        """
        self._check_open()
        check_name(name)
        if expected_version is not None:
            current = self._table.by_name(name)
            at = 0 if current is None else current.record.version
            if expected_version != at:
                raise VersionConflictError(
                    f"variable {name!r} is at version {at}, not {expected_version} "
                    f"(current_version={at})"
                    + ("; it is defined already" if at else "; it is not defined yet"),
                    current_version=at,
                )
        vtype = infer_type(value) if type is None or type == "" else type
        spec = TypeSpec.build(vtype, constraints)
        meta = clean_metadata(metadata)
        acl = clean_access(access)
        existing = self._table.by_name(name)
        stored, encoded = self._prepare(spec, name, value)
        now = self._clock()
        if existing is None:
            if len(self._table) >= self.limits.max_variables:
                raise ResourceExhaustedError(
                    f"session {self.session_id!r} has {len(self._table)} variables, the "
                    f"maximum (max_variables={self.limits.max_variables}); delete some first"
                )
            record, statements = self._create(
                name, spec, stored, encoded, source, meta, metadata=meta, access=acl
            )
            await self._persist(statements)
            return record

        old = existing.record
        check_write(existing.record, source, None)
        if old.type != spec.type and not allow_type_change:
            raise FailedPreconditionError(
                f"variable {name!r} is a {old.type}; redefining it as {spec.type} needs "
                "allow_type_change=True (or delete it first)"
            )
        same_settings = (
            old.type == spec.type
            and dict(old.constraints) == dict(spec.constraints)
            and dict(old.metadata) == dict(meta)
            and dict(old.access) == dict(acl)
        )
        if same_settings and _same_value(old.value, stored):
            return old
        version = old.version + 1
        record = replace(
            old,
            type=spec.type,
            value=stored,
            version=version,
            constraints=spec.constraints,
            metadata=meta,
            access=acl,
            source=source,
            updated_at=now,
        )
        existing.record, existing.spec = record, spec
        entry = VariableVersion(version, stored, source, now, MappingProxyType({"redefined": "1"}))
        existing.history.append(entry)
        kind = ChangeKind.VALUE if same_settings else ChangeKind.CONSTRAINTS
        self._notify(kind, record, source, now, entry.metadata)
        self._notify_dependents(existing, source, now)
        await self._persist(self._write_statements(existing, entry, encoded))
        return record

    # ================================================================= writing

    async def set(
        self,
        ident: str,
        value: Any,
        *,
        expected_version: int | None = None,
        metadata: Mapping[str, str] | None = None,
        source: str = KERNEL_SOURCE,
        optimizer_id: str | None = None,
    ) -> VariableRecord:
        """Write a new value; ``expected_version`` makes it a compare-and-set.

        Raises ``VersionConflictError`` (ABORTED; ``current_version`` set) when the variable is
        no longer at ``expected_version``, ``ConstraintViolationError`` when the value does not
        fit, ``FailedPreconditionError`` when locked or read-only. Nothing changes on error.
        """
        self._check_open()
        var = self._resolve(ident)
        meta = clean_metadata(metadata)
        check_write(var.record, source, optimizer_id)
        self._check_version(var, expected_version)
        stored, encoded = self._prepare(var.spec, var.record.name, value)
        record, statements = self._apply(var, stored, encoded, source, meta)
        await self._persist(statements)
        return record

    async def set_many(
        self,
        updates: Mapping[str, Any],
        *,
        atomic: bool = True,
        expected_versions: Mapping[str, int] | None = None,
        metadata: Mapping[str, str] | None = None,
        source: str = KERNEL_SOURCE,
        optimizer_id: str | None = None,
        define_missing: bool = False,
    ) -> BatchOutcome:
        """Write several variables. ``atomic``: all or nothing; otherwise per-variable errors.

        ``define_missing`` defines unknown names with the type inferred from the value (the
        notebook's ``with s.vars.batch(): s.vars["new"] = 1``).
        """
        self._check_open()
        meta = clean_metadata(metadata)
        expected = dict(expected_versions or {})
        plans: builtins.list[_Plan] = []
        errors: dict[str, SnakepitError] = {}
        seen: set[str] = set()
        for key, value in updates.items():
            try:
                plan = self._plan(
                    key,
                    value,
                    expected.get(key),
                    source=source,
                    optimizer_id=optimizer_id,
                    define_missing=define_missing,
                )
                if plan.name in seen:
                    raise InvalidArgumentError(f"variable {plan.name!r} appears twice in the batch")
                seen.add(plan.name)
                plans.append(plan)
            except SnakepitError as exc:
                errors[key] = exc
        new_count = sum(1 for p in plans if p.var is None)
        if new_count and len(self._table) + new_count > self.limits.max_variables:
            for plan in plans:
                if plan.var is None:
                    errors[plan.key] = ResourceExhaustedError(
                        f"session {self.session_id!r} would exceed max_variables="
                        f"{self.limits.max_variables}; delete some variables first"
                    )
            plans = [p for p in plans if p.var is not None]
        if atomic and errors:
            return BatchOutcome(MappingProxyType({}), MappingProxyType(errors))
        records: dict[str, VariableRecord] = {}
        statements: builtins.list[Statement] = []
        for plan in plans:
            if plan.var is None:
                record, more = self._create(
                    plan.name, plan.spec, plan.value, plan.encoded, source, meta
                )
            else:
                record, more = self._apply(plan.var, plan.value, plan.encoded, source, meta)
            records[plan.key] = record
            statements.extend(more)
        await self._persist(statements)
        return BatchOutcome(MappingProxyType(records), MappingProxyType(errors))

    async def delete(self, ident: str, *, source: str = KERNEL_SOURCE) -> VariableRecord:
        """Remove a variable, its history and its dependency edges; watchers see ``deleted``."""
        self._check_open()
        var = self._resolve(ident)
        check_write(var.record, source, None)
        if var.record.optimization is not None:
            lock = var.record.optimization
            raise FailedPreconditionError(
                f"variable {var.record.name!r} is being optimized by {lock.optimizer_id!r}; "
                "stop the optimization before deleting it"
            )
        record = var.record
        self._table.remove(record)
        self._graph.remove_node(record.id)
        now = self._clock()
        self._notify(ChangeKind.DELETED, record, source, now, EMPTY)
        await self._persist(sql.variable_delete(self.session_id, record.id))
        return record

    async def rollback(
        self,
        ident: str,
        version: int,
        *,
        source: str = KERNEL_SOURCE,
        optimizer_id: str | None = None,
    ) -> VariableRecord:
        """Write the value of an earlier ``version`` as a new version."""
        self._check_open()
        var = self._resolve(ident)
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise InvalidArgumentError(f"a version is a positive integer, not {version!r}")
        check_write(var.record, source, optimizer_id)
        target = next((e for e in var.history if e.version == version), None)
        if target is None:
            kept = [e.version for e in var.history]
            name = var.record.name
            if version > var.record.version:
                raise NotFoundError(
                    f"variable {name!r} has no version {version}; it is at version "
                    f"{var.record.version}"
                )
            raise NotFoundError(
                f"version {version} of variable {name!r} is no longer kept (history keeps the "
                f"last {self.limits.max_history}; oldest kept: {kept[0] if kept else 'none'})"
            )
        stored, encoded = self._prepare(var.spec, var.record.name, target.value)
        meta = MappingProxyType({"rollback_to": str(version)})
        record, statements = self._apply(var, stored, encoded, source, meta)
        await self._persist(statements)
        return record

    # ================================================================= dependencies, locks

    async def add_dependency(
        self,
        from_ident: str,
        to_ident: str,
        dependency_type: str = "",
        *,
        source: str = KERNEL_SOURCE,
    ) -> None:
        """``to`` depends on ``from``: a change of ``from`` notifies watchers of ``to``.

        Cycles are refused (``InvalidArgumentError`` showing the cycle).
        """
        self._check_open()
        src, dst = self._resolve(from_ident), self._resolve(to_ident)
        check_read(src.record, source)
        check_write(dst.record, source, None)
        a, b = src.record.id, dst.record.id
        if a == b:
            raise InvalidArgumentError(f"variable {src.record.name!r} cannot depend on itself")
        path = self._graph.path(b, a)
        if path is not None:
            names = " -> ".join(self._table.resolve(i).record.name for i in [a, *path])
            raise InvalidArgumentError(
                f"variable dependency {src.record.name!r} -> {dst.record.name!r} would make a "
                f"cycle ({names}); dependencies must not loop"
            )
        if self._graph.has_edge(a, b):
            return
        self._graph.add(a, b, dependency_type or "")
        await self._persist([sql.dependency_insert(self.session_id, a, b, dependency_type or "")])

    async def start_optimization(
        self,
        ident: str,
        optimizer_id: str,
        config: Mapping[str, str] | None = None,
        *,
        source: str = KERNEL_SOURCE,
    ) -> VariableRecord:
        """Lock the variable for ``optimizer_id``: other writers get FAILED_PRECONDITION."""
        self._check_open()
        if not isinstance(optimizer_id, str) or not optimizer_id:
            raise InvalidArgumentError("an optimizer id is a non-empty string, e.g. 'optuna-1'")
        var = self._resolve(ident)
        lock = var.record.optimization
        if lock is not None and lock.optimizer_id == optimizer_id:
            return var.record
        check_write(var.record, source, None)
        cfg = clean_metadata(config, "optimizer config")
        now = self._clock()
        lock = OptimizationLock(optimizer_id, f"opt_{uuid.uuid4().hex[:12]}", now, cfg)
        var.record = replace(var.record, optimization=lock)
        self._notify(
            ChangeKind.OPTIMIZATION_STARTED,
            var.record,
            source,
            now,
            MappingProxyType({"optimizer_id": optimizer_id}),
        )
        await self._persist([sql.variable_upsert(self.session_id, var.record, None)])
        return var.record

    async def stop_optimization(
        self,
        ident: str,
        optimizer_id: str = "",
        *,
        force: bool = False,
        source: str = KERNEL_SOURCE,
    ) -> VariableRecord:
        """Unlock; returns the record with the final value. Another optimizer needs ``force``."""
        self._check_open()
        var = self._resolve(ident)
        lock = var.record.optimization
        name = var.record.name
        if lock is None:
            raise FailedPreconditionError(f"variable {name!r} is not being optimized")
        if optimizer_id and optimizer_id != lock.optimizer_id and not force:
            raise FailedPreconditionError(
                f"variable {name!r} is being optimized by {lock.optimizer_id!r}, not "
                f"{optimizer_id!r}; pass force=True to stop it anyway"
            )
        now = self._clock()
        var.record = replace(var.record, optimization=None)
        self._notify(
            ChangeKind.OPTIMIZATION_STOPPED,
            var.record,
            source,
            now,
            MappingProxyType({"optimizer_id": lock.optimizer_id}),
        )
        await self._persist([sql.variable_upsert(self.session_id, var.record, None)])
        return var.record

    # ================================================================= watching

    def watch(
        self,
        idents: Iterable[str] | None = None,
        *,
        include_initial: bool = True,
        capacity: int | None = None,
        source: str = KERNEL_SOURCE,
    ) -> Watcher:
        """A ``Watcher`` (async iterator of ``VariableChange``) of ``idents`` (None/empty: all).

        Close it (``watcher.close()``) to stop; closing the session closes it too.
        """
        self._check_open()
        names: builtins.list[str] | None = None
        if idents:
            names = []
            for ident in idents:
                var = self._resolve(ident)
                check_read(var.record, source)
                names.append(var.record.name)
        initial: builtins.list[VariableRecord] = []
        if include_initial:
            targets = names if names is not None else self._table.names()
            initial = [self._table.resolve(name).record for name in dict.fromkeys(targets)]
        return self._watchers.open(
            names,
            initial,
            capacity=capacity or self.limits.watch_buffer,
            source=source,
            at=self._clock(),
        )

    def watcher_count(self) -> int:
        return len(self._watchers)

    # ================================================================= lifecycle

    def close(self, reason: str = "session closed") -> None:
        """Close every watcher and refuse further writes (the session went away)."""
        self._closed = True
        self._watchers.close(reason)

    def restore(self, record: VariableRecord, history: Sequence[VariableVersion]) -> None:
        """Put back a persisted variable (at start-up, before any use)."""
        spec = TypeSpec.build(record.type, record.constraints)
        var = Entry(replace(record, constraints=spec.constraints), spec, self.limits.max_history)
        var.history.extend(history)
        self._table.add(var)

    def restore_dependency(self, from_id: str, to_id: str, dependency_type: str) -> None:
        if self._table.by_id(from_id) and self._table.by_id(to_id):
            self._graph.add(from_id, to_id, dependency_type)

    # ================================================================= internals

    def _check_open(self) -> None:
        if self._closed:
            raise VariableNotFoundError(
                f"variables of session {self.session_id!r} are gone (the session was closed or "
                "expired); create the session again"
            )

    def _resolve(self, ident: str) -> Entry:
        if self._table.find(ident) is None:
            self._check_open()
        return self._table.resolve(ident)

    def _check_version(self, var: Entry, expected: int | None) -> None:
        if expected is None:
            return
        if isinstance(expected, bool) or not isinstance(expected, int):
            raise InvalidArgumentError(f"expected_version must be an integer, not {expected!r}")
        current = var.record.version
        if expected != current:
            self.conflicts += 1
            raise VersionConflictError(
                f"variable {var.record.name!r} is at version {current}, not {expected} "
                f"(current_version={current}); re-read it and retry, or use "
                "session.vars.update(name, fn), which retries for you",
                current_version=current,
            )

    def _prepare(self, spec: TypeSpec, name: str, value: Any) -> tuple[Any, bytes | None]:
        return admit(spec, name, value, self.limits.max_value_bytes, encode=self._db is not None)

    def _plan(
        self,
        key: str,
        value: Any,
        expected: int | None,
        *,
        source: str,
        optimizer_id: str | None,
        define_missing: bool,
    ) -> _Plan:
        var = self._table.find(key)
        if var is None and define_missing and isinstance(key, str) and expected is None:
            check_name(key)
            spec = TypeSpec.build(infer_type(value), None)
            stored, encoded = self._prepare(spec, key, value)
            return _Plan(key, None, key, stored, encoded, spec)
        var = self._resolve(key)
        check_write(var.record, source, optimizer_id)
        self._check_version(var, expected)
        stored, encoded = self._prepare(var.spec, var.record.name, value)
        return _Plan(key, var, var.record.name, stored, encoded, var.spec)

    def _create(  # noqa: PLR0917
        self,
        name: str,
        spec: TypeSpec,
        stored: Any,
        encoded: bytes | None,
        source: str,
        meta: Mapping[str, str],
        *,
        metadata: Mapping[str, str] = EMPTY,
        access: Mapping[str, str] = EMPTY,
    ) -> tuple[VariableRecord, builtins.list[Statement]]:
        """Define a new variable at version 1 (``meta`` is the write's, ``metadata`` its own)."""
        now = self._clock()
        record = VariableRecord(
            id=f"var_{uuid.uuid4().hex[:16]}",
            name=name,
            type=spec.type,
            value=stored,
            version=1,
            constraints=spec.constraints,
            metadata=metadata,
            source=source,
            created_at=now,
            updated_at=now,
            access=access,
        )
        var = Entry(record, spec, self.limits.max_history)
        self._table.add(var)
        entry = VariableVersion(1, stored, source, now, meta)
        var.history.append(entry)
        self._notify(ChangeKind.REGISTERED, record, source, now, meta)
        return record, self._write_statements(var, entry, encoded, new=True)

    def _apply(
        self,
        var: Entry,
        stored: Any,
        encoded: bytes | None,
        source: str,
        meta: Mapping[str, str],
    ) -> tuple[VariableRecord, builtins.list[Statement]]:
        now = self._clock()
        version = var.record.version + 1
        record = replace(var.record, value=stored, version=version, source=source, updated_at=now)
        var.record = record
        entry = VariableVersion(version, stored, source, now, meta)
        var.history.append(entry)
        self._notify(ChangeKind.VALUE, record, source, now, meta)
        self._notify_dependents(var, source, now)
        return record, self._write_statements(var, entry, encoded)

    def _write_statements(
        self, var: Entry, entry: VariableVersion, encoded: bytes | None, *, new: bool = False
    ) -> builtins.list[Statement]:
        if self._db is None:
            return []
        return sql.write_statements(
            self.session_id,
            var.record,
            entry,
            encoded,
            new=new,
            max_history=self.limits.max_history,
            now=self._clock(),
        )

    async def _persist(self, statements: builtins.list[Statement]) -> None:
        if self._db is not None and statements:
            await self._db.execute(statements)

    def _notify(
        self, kind: str, record: VariableRecord, source: str, at: float, meta: Mapping[str, str]
    ) -> None:
        self._watchers.notify(kind, record, source, at, meta)

    def _notify_dependents(self, var: Entry, source: str, at: float) -> None:
        if not self._watchers or var.record.id not in self._graph:
            return
        meta = MappingProxyType(
            {"dependency": var.record.name, "dependency_version": str(var.record.version)}
        )
        for dep_id in self._graph.downstream(var.record.id):
            dep = self._table.by_id(dep_id)
            if dep is not None:
                self._notify(ChangeKind.DEPENDENCY, dep.record, source, at, meta)


def _same_value(a: object, b: object) -> bool:
    try:
        return type(a) is type(b) and bool(a == b)
    except Exception:
        return False
