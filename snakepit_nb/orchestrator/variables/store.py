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
import re
import time
import uuid
from collections import deque
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
from snakepit_nb.orchestrator.variables.persistence import StateDatabase, Statement
from snakepit_nb.orchestrator.variables.types import (
    KERNEL_SOURCE,
    OptimizationLock,
    TypeSpec,
    VariableRecord,
    VariableVersion,
    check_name,
    infer_type,
)
from snakepit_nb.orchestrator.variables.watchers import ChangeKind, VariableChange, Watcher
from snakepit_nb.protocol.codec import encode_json

__all__ = [
    "MIB",
    "BatchOutcome",
    "VariableLimits",
    "VariableStore",
]

MIB = 1024 * 1024
_EMPTY: Mapping[str, str] = MappingProxyType({})
_ACCESS_LEVELS = ("write", "read", "none")


@dataclass(frozen=True)
class VariableLimits:
    """Per-session limits of the variable store (all configurable)."""

    max_value_bytes: int = 10 * MIB
    max_variables: int = 10_000
    max_history: int = 1_000
    watch_buffer: int = 256
    max_watchers: int = 1_000

    def __post_init__(self) -> None:
        for name in ("max_value_bytes", "max_variables", "max_history", "watch_buffer"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidArgumentError(f"{name} must be a positive integer, not {value!r}")


@dataclass(frozen=True)
class BatchOutcome:
    """What a batch write did: the new records, and per-variable errors.

    With ``atomic=True`` either ``errors`` is empty and every update was applied, or nothing
    was applied and ``records`` is empty.
    """

    records: Mapping[str, VariableRecord]
    errors: Mapping[str, SnakepitError]

    @property
    def ok(self) -> bool:
        return not self.errors


class _Var:
    """The mutable state of one variable (owned by the loop thread)."""

    __slots__ = ("history", "record", "spec")

    def __init__(self, record: VariableRecord, spec: TypeSpec, max_history: int) -> None:
        self.record = record
        self.spec = spec
        self.history: deque[VariableVersion] = deque(maxlen=max_history)


@dataclass
class _Plan:
    """A validated write, ready to apply without further checks."""

    key: str
    var: _Var | None  # None: define a new variable
    name: str
    value: Any
    encoded: bytes | None
    spec: TypeSpec


def clean_metadata(metadata: Mapping[str, Any] | None, what: str = "metadata") -> Mapping[str, str]:
    """Metadata as a read-only ``{str: str}``; non-string keys or values are refused."""
    if not metadata:
        return _EMPTY
    if not isinstance(metadata, Mapping):
        raise InvalidArgumentError(
            f"{what} must be a dict of strings, not {type(metadata).__name__}"
        )
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise InvalidArgumentError(
                f"{what} must map strings to strings; got {key!r}: {type(value).__name__}; "
                "convert the value with str()"
            )
    return MappingProxyType(dict(metadata))


def clean_access(access: Mapping[str, Any] | None) -> Mapping[str, str]:
    """Access control as ``{"workers": "write" | "read" | "none"}``."""
    if not access:
        return _EMPTY
    if not isinstance(access, Mapping):
        raise InvalidArgumentError(
            'access control must be a JSON object such as {"workers": "read"}'
        )
    clean: dict[str, str] = {}
    for key, value in access.items():
        if key != "workers":
            raise InvalidArgumentError(
                f'unknown access control key {str(key)[:40]!r}; use {{"workers": "read"}} '
                '(or "write", "none")'
            )
        if value not in _ACCESS_LEVELS:
            raise InvalidArgumentError(
                f"access control workers={value!r} is not known; use 'write', 'read' or 'none'"
            )
        clean[key] = value
    if clean.get("workers") == "write":
        return _EMPTY
    return MappingProxyType(clean)


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
        self._by_name: dict[str, _Var] = {}
        self._by_id: dict[str, _Var] = {}
        # from-id -> ids of the variables that depend on it (changes flow along the edges).
        self._edges: dict[str, dict[str, str]] = {}
        self._watchers: set[Watcher] = set()
        self._closed = False
        #: Writes refused for a stale expected_version (each raised VersionConflictError).
        self.conflicts = 0

    # ================================================================= reading

    def __len__(self) -> int:
        return len(self._by_name)

    def __contains__(self, ident: object) -> bool:
        return isinstance(ident, str) and (ident in self._by_name or ident in self._by_id)

    def names(self) -> builtins.list[str]:
        return list(self._by_name)

    async def get(self, ident: str, *, source: str = KERNEL_SOURCE) -> VariableRecord:
        var = self._resolve(ident)
        self._check_read(var, source)
        return var.record

    def peek(self, ident: str) -> VariableRecord | None:
        """The record without access checks, or None (synchronous; loop thread only)."""
        var = self._by_name.get(ident) or self._by_id.get(ident)
        return None if var is None else var.record

    async def get_many(
        self, idents: Sequence[str], *, source: str = KERNEL_SOURCE
    ) -> tuple[dict[str, VariableRecord], list[str]]:
        """``({ident: record}, missing)``; variables hidden from ``source`` count as missing."""
        found: dict[str, VariableRecord] = {}
        missing: builtins.list[str] = []
        for ident in idents:
            var = self._by_name.get(ident) or self._by_id.get(ident)
            if var is None or not self._readable(var, source):
                missing.append(ident)
            else:
                found[ident] = var.record
        return found, missing

    async def list(
        self, pattern: str = "*", *, source: str = KERNEL_SOURCE
    ) -> builtins.list[VariableRecord]:
        """Variables whose name matches the wildcard ``pattern`` (``*`` and ``?``), by name."""
        if not isinstance(pattern, str):
            raise InvalidArgumentError("a variable pattern must be a string such as 'lr_*'")
        pattern = pattern or "*"
        # Only * and ? are wildcards; [ and ] match themselves.
        regex = re.compile(
            "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
            + r"\Z",
            re.DOTALL,
        )
        return [
            var.record
            for name, var in sorted(self._by_name.items())
            if regex.match(name) and self._readable(var, source)
        ]

    async def history(
        self, ident: str, limit: int | None = None, *, source: str = KERNEL_SOURCE
    ) -> builtins.list[VariableVersion]:
        """The kept versions, oldest first; ``limit`` keeps the newest ``limit`` of them."""
        var = self._resolve(ident)
        self._check_read(var, source)
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
        return [self._by_id[i].record.name for i in self._edges.get(var.record.id, {})]

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
            current = self._by_name.get(name)
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
        existing = self._by_name.get(name)
        stored, encoded = self._prepare(spec, name, value)
        now = self._clock()
        if existing is None:
            if len(self._by_name) >= self.limits.max_variables:
                raise ResourceExhaustedError(
                    f"session {self.session_id!r} has {len(self._by_name)} variables, the "
                    f"maximum (max_variables={self.limits.max_variables}); delete some first"
                )
            record = VariableRecord(
                id=f"var_{uuid.uuid4().hex[:16]}",
                name=name,
                type=spec.type,
                value=stored,
                version=1,
                constraints=spec.constraints,
                metadata=meta,
                source=source,
                created_at=now,
                updated_at=now,
                access=acl,
            )
            var = _Var(record, spec, self.limits.max_history)
            self._by_name[name] = var
            self._by_id[record.id] = var
            entry = VariableVersion(1, stored, source, now, meta)
            var.history.append(entry)
            self._notify(ChangeKind.REGISTERED, record, source, now, meta)
            await self._persist(self._write_statements(var, entry, encoded, new=True))
            return record

        old = existing.record
        self._check_write(existing, source, None)
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
        self._check_write(var, source, optimizer_id)
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
        if new_count and len(self._by_name) + new_count > self.limits.max_variables:
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
                record, more = self._define_planned(plan, source, meta)
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
        self._check_write(var, source, None)
        if var.record.optimization is not None:
            lock = var.record.optimization
            raise FailedPreconditionError(
                f"variable {var.record.name!r} is being optimized by {lock.optimizer_id!r}; "
                "stop the optimization before deleting it"
            )
        record = var.record
        del self._by_name[record.name]
        del self._by_id[record.id]
        self._edges.pop(record.id, None)
        for targets in self._edges.values():
            targets.pop(record.id, None)
        now = self._clock()
        self._notify(ChangeKind.DELETED, record, source, now, _EMPTY)
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
        self._check_write(var, source, optimizer_id)
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
        self._check_read(src, source)
        self._check_write(dst, source, None)
        a, b = src.record.id, dst.record.id
        if a == b:
            raise InvalidArgumentError(f"variable {src.record.name!r} cannot depend on itself")
        path = self._path(b, a)
        if path is not None:
            names = " -> ".join(self._by_id[i].record.name for i in [a, *path])
            raise InvalidArgumentError(
                f"variable dependency {src.record.name!r} -> {dst.record.name!r} would make a "
                f"cycle ({names}); dependencies must not loop"
            )
        if b in self._edges.get(a, {}):
            return
        self._edges.setdefault(a, {})[b] = dependency_type or ""
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
        self._check_write(var, source, None)
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
        wanted = list(idents or [])
        names: builtins.list[str] | None = None
        if wanted:
            names = []
            for ident in wanted:
                var = self._resolve(ident)
                self._check_read(var, source)
                names.append(var.record.name)
        if len(self._watchers) >= self.limits.max_watchers:
            raise ResourceExhaustedError(
                f"session {self.session_id!r} has {len(self._watchers)} watchers, the maximum; "
                "close watches you no longer read"
            )
        watcher = Watcher(
            names,
            capacity=capacity or self.limits.watch_buffer,
            on_close=self._watchers.discard,
            source=source,
        )
        if include_initial:
            now = self._clock()
            targets = names if names is not None else list(self._by_name)
            for name in dict.fromkeys(targets):
                var = self._by_name[name]
                if self._readable(var, source):
                    watcher.push(
                        VariableChange(ChangeKind.INITIAL, var.record, var.record.source, now)
                    )
        self._watchers.add(watcher)
        return watcher

    def watcher_count(self) -> int:
        return len(self._watchers)

    # ================================================================= lifecycle

    def close(self, reason: str = "session closed") -> None:
        """Close every watcher and refuse further writes (the session went away)."""
        self._closed = True
        for watcher in list(self._watchers):
            watcher.close(reason)
        self._watchers.clear()

    def restore(self, record: VariableRecord, history: Sequence[VariableVersion]) -> None:
        """Put back a persisted variable (at start-up, before any use)."""
        spec = TypeSpec.build(record.type, record.constraints)
        var = _Var(replace(record, constraints=spec.constraints), spec, self.limits.max_history)
        var.history.extend(history)
        self._by_name[record.name] = var
        self._by_id[record.id] = var

    def restore_dependency(self, from_id: str, to_id: str, dependency_type: str) -> None:
        if from_id in self._by_id and to_id in self._by_id:
            self._edges.setdefault(from_id, {})[to_id] = dependency_type

    # ================================================================= internals

    def _check_open(self) -> None:
        if self._closed:
            raise VariableNotFoundError(
                f"variables of session {self.session_id!r} are gone (the session was closed or "
                "expired); create the session again"
            )

    def _resolve(self, ident: str) -> _Var:
        if not isinstance(ident, str) or not ident:
            raise InvalidArgumentError(
                f"a variable is named by its name or id (a non-empty string), not {ident!r}"
            )
        var = self._by_name.get(ident) or self._by_id.get(ident)
        if var is None:
            self._check_open()
            shown = ident if len(ident) <= 60 else ident[:57] + "..."
            known = ", ".join(sorted(self._by_name)[:10])
            hint = (
                f" (defined: {known}{', ...' if len(self._by_name) > 10 else ''})" if known else ""
            )
            raise VariableNotFoundError(
                f"variable {shown!r} is not defined in session {self.session_id!r}{hint}; "
                f"define it first, e.g. session.vars.define({shown!r}, value)"
            )
        return var

    @staticmethod
    def _readable(var: _Var, source: str) -> bool:
        return source == KERNEL_SOURCE or var.record.access.get("workers", "write") != "none"

    def _check_read(self, var: _Var, source: str) -> None:
        if not self._readable(var, source):
            raise FailedPreconditionError(
                f"variable {var.record.name!r} is hidden from workers (access control "
                "workers=none); read it from the notebook"
            )

    def _check_write(self, var: _Var, source: str, optimizer_id: str | None) -> None:
        record = var.record
        if source != KERNEL_SOURCE and record.access.get("workers", "write") != "write":
            raise FailedPreconditionError(
                f"variable {record.name!r} is read-only for workers (access control "
                f"workers={record.access.get('workers')}); change it from the notebook"
            )
        lock = record.optimization
        if lock is not None and lock.optimizer_id not in (optimizer_id, source):
            raise FailedPreconditionError(
                f"variable {record.name!r} is being optimized by {lock.optimizer_id!r}; only it "
                "may write until the optimization stops (stop_optimization, or force=True)"
            )

    def _check_version(self, var: _Var, expected: int | None) -> None:
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
        """Validate ``value`` and check its size; returns ``(stored value, encoded JSON)``."""
        limit = self.limits.max_value_bytes
        # Fast refusal before any copy or encoding: a 50 MB string costs nothing here.
        if isinstance(value, str | bytes | bytearray) and len(value) > limit:
            raise self._too_large(name, len(value))
        nbytes = getattr(value, "nbytes", None)
        if isinstance(nbytes, int) and nbytes > limit:
            raise self._too_large(name, nbytes)
        stored = spec.validate(name, value)
        encoded: bytes | None = None
        if self._db is not None or not isinstance(stored, bool | int | float) or stored is None:
            encoded = encode_json(stored)
            if len(encoded) > limit:
                raise self._too_large(name, len(encoded))
            if spec.type in ("list", "map"):
                # An independent copy: the caller may mutate what it passed in.
                from snakepit_nb.protocol.codec import decode_json

                stored = decode_json(encoded)
        return stored, encoded

    def _too_large(self, name: str, size: int) -> ResourceExhaustedError:
        return ResourceExhaustedError(
            f"value of variable {name!r} is about {size:,} bytes, above the limit of "
            f"{self.limits.max_value_bytes:,} (max_value_bytes); store large data elsewhere "
            "(a file path, or a tool's own state) and keep a reference in the variable"
        )

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
        var = self._by_name.get(key) if isinstance(key, str) else None
        if var is None and isinstance(key, str):
            var = self._by_id.get(key)
        if var is None and define_missing and isinstance(key, str) and expected is None:
            check_name(key)
            spec = TypeSpec.build(infer_type(value), None)
            stored, encoded = self._prepare(spec, key, value)
            return _Plan(key, None, key, stored, encoded, spec)
        var = self._resolve(key)
        self._check_write(var, source, optimizer_id)
        self._check_version(var, expected)
        stored, encoded = self._prepare(var.spec, var.record.name, value)
        return _Plan(key, var, var.record.name, stored, encoded, var.spec)

    def _define_planned(
        self, plan: _Plan, source: str, meta: Mapping[str, str]
    ) -> tuple[VariableRecord, builtins.list[Statement]]:
        now = self._clock()
        record = VariableRecord(
            id=f"var_{uuid.uuid4().hex[:16]}",
            name=plan.name,
            type=plan.spec.type,
            value=plan.value,
            version=1,
            constraints=plan.spec.constraints,
            metadata=_EMPTY,
            source=source,
            created_at=now,
            updated_at=now,
        )
        var = _Var(record, plan.spec, self.limits.max_history)
        self._by_name[plan.name] = var
        self._by_id[record.id] = var
        entry = VariableVersion(1, plan.value, source, now, meta)
        var.history.append(entry)
        self._notify(ChangeKind.REGISTERED, record, source, now, meta)
        return record, self._write_statements(var, entry, plan.encoded, new=True)

    def _apply(
        self,
        var: _Var,
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
        self, var: _Var, entry: VariableVersion, encoded: bytes | None, *, new: bool = False
    ) -> builtins.list[Statement]:
        if self._db is None:
            return []
        if encoded is None:
            encoded = encode_json(entry.value)
        statements: builtins.list[Statement] = []
        if new:
            statements.append(sql.session_upsert(self.session_id, {}, self._clock()))
        statements.append(sql.variable_upsert(self.session_id, var.record, encoded))
        statements.append(sql.history_insert(self.session_id, var.record.id, entry, encoded))
        oldest = entry.version - self.limits.max_history
        if oldest >= 1 and entry.version % 64 == 0:
            # Trimming every 64th write keeps the table within max_history + 64 rows.
            statements.append(sql.history_trim(var.record.id, oldest))
        return statements

    async def _persist(self, statements: builtins.list[Statement]) -> None:
        if self._db is not None and statements:
            await self._db.execute(statements)

    def _notify(
        self, kind: str, record: VariableRecord, source: str, at: float, meta: Mapping[str, str]
    ) -> None:
        if not self._watchers:
            return
        change: VariableChange | None = None
        hidden = record.access.get("workers") == "none"
        for watcher in list(self._watchers):
            if not watcher.wants(record.name) or (hidden and watcher.source != KERNEL_SOURCE):
                continue
            if change is None:
                change = VariableChange(kind, record, source, at, meta)
            watcher.push(change)

    def _notify_dependents(self, var: _Var, source: str, at: float) -> None:
        if not self._watchers or var.record.id not in self._edges:
            return
        meta = MappingProxyType(
            {"dependency": var.record.name, "dependency_version": str(var.record.version)}
        )
        seen: set[str] = set()
        queue = list(self._edges[var.record.id])
        while queue:
            dep_id = queue.pop(0)
            if dep_id in seen or dep_id not in self._by_id:
                continue
            seen.add(dep_id)
            self._notify(ChangeKind.DEPENDENCY, self._by_id[dep_id].record, source, at, meta)
            queue.extend(self._edges.get(dep_id, {}))

    def _path(self, start: str, goal: str) -> builtins.list[str] | None:
        """Ids from ``start`` to ``goal`` following dependency edges, or None."""
        parents: dict[str, str | None] = {start: None}
        queue = [start]
        while queue:
            node = queue.pop(0)
            if node == goal:
                path: builtins.list[str] = []
                cur: str | None = node
                while cur is not None:
                    path.append(cur)
                    cur = parents[cur]
                return path[::-1]
            for nxt in self._edges.get(node, {}):
                if nxt not in parents:
                    parents[nxt] = node
                    queue.append(nxt)
        return None


def _same_value(a: object, b: object) -> bool:
    try:
        return type(a) is type(b) and bool(a == b)
    except Exception:
        return False
