"""The loop side of ``session.vars``: every variable operation, as a coroutine on the loop.

:class:`VariableOps` calls the session's ``VariableStore`` directly (no gRPC to ourselves) with
the kernel as the writer, and hands out copies: mutating a list you got does not change the
variable. Both facades, ``AsyncVariables`` (awaitable) and ``Variables`` (blocking), run these
coroutines on the ``snakepit-loop`` thread; :class:`WatchCursor` is the same for a watch.
"""

from __future__ import annotations

import asyncio
import builtins
import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from snakepit_nb._errors import SnakepitError, VariableNotFoundError, VersionConflictError
from snakepit_nb.orchestrator.variables.records import (
    KERNEL_SOURCE,
    VariableRecord,
    VariableVersion,
)
from snakepit_nb.orchestrator.variables.watchers import VariableChange, Watcher

if TYPE_CHECKING:
    from snakepit_nb.orchestrator.service import Service
    from snakepit_nb.orchestrator.variables.store import VariableStore

__all__ = [
    "DEFAULT_RETRIES",
    "MISSING",
    "UpdateResult",
    "VariableOps",
    "WatchCursor",
    "constraints_from",
    "copy_value",
    "one_more_conflict",
    "pending_record",
]

#: "No default given" for ``get``.
MISSING: Any = object()
_SCALARS = (bool, int, float, str, bytes, type(None))
DEFAULT_RETRIES = 100


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


def copy_value(value: Any) -> Any:
    return value if isinstance(value, _SCALARS) else copy.deepcopy(value)


def copy_record(record: VariableRecord) -> VariableRecord:
    if isinstance(record.value, _SCALARS):
        return record
    return replace(record, value=copy.deepcopy(record.value))


def copy_change(change: VariableChange) -> VariableChange:
    if isinstance(change.variable.value, _SCALARS):
        return change
    return replace(change, variable=copy_record(change.variable))


def constraints_from(constraints: Mapping[str, Any] | None, **named: Any) -> dict[str, Any] | None:
    """Merge ``constraints=`` with the named keyword shortcuts (``min=0, max=2``...)."""
    merged = dict(constraints or {})
    for key, value in named.items():
        if value is not None:
            merged[key] = list(value) if isinstance(value, tuple) else value
    return merged or None


def raise_batch_errors(errors: Mapping[str, SnakepitError]) -> None:
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


def one_more_conflict(name: str, conflicts: int, retries: int, exc: VersionConflictError) -> int:
    """``update`` met another version conflict: the new count, or give up past ``retries``."""
    conflicts += 1
    if conflicts > retries:
        raise VersionConflictError(
            f"gave up updating variable {name!r} after {conflicts} version "
            f"conflicts (retries={retries}): {exc}",
            current_version=exc.current_version,
        ) from exc
    return conflicts


def pending_record(name: str, value: Any) -> VariableRecord:
    return VariableRecord(
        id="", name=name, type="", value=value, version=0, constraints={}, metadata={},
        source=KERNEL_SOURCE, created_at=0.0, updated_at=0.0,
    )  # fmt: skip


class VariableOps:
    """One session's variable operations; every method runs on the loop thread."""

    def __init__(self, service: Service, session_id: str) -> None:
        self._service = service
        self.session_id = session_id

    def store(self) -> VariableStore:
        # Using a session's variables is activity: it restarts the idle timer (or says that
        # the session expired).
        return self._service.session_variables(self.session_id)

    async def get(self, name: str, default: Any, with_version: bool) -> Any:
        try:
            record = await self.store().get(name)
        except VariableNotFoundError:
            if default is MISSING:
                raise
            return (default, 0) if with_version else default
        value = copy_value(record.value)
        return (value, record.version) if with_version else value

    async def info(self, name: str) -> VariableRecord:
        return copy_record(await self.store().get(name))

    async def set(
        self,
        name: str,
        value: Any,
        expected_version: int | None,
        metadata: Mapping[str, str] | None,
        optimizer_id: str | None = None,
    ) -> VariableRecord:
        record = await self.store().set(
            name,
            value,
            expected_version=expected_version,
            metadata=metadata,
            optimizer_id=optimizer_id,
        )
        return copy_record(record)

    async def assign(self, name: str, value: Any) -> VariableRecord:
        # Define-or-set in one step on the loop: no other writer can slip in between.
        store = self.store()
        if name in store:
            return copy_record(await store.set(name, value))
        return copy_record(await store.register(name, None, value))

    async def define(
        self, name: str, value: Any, type: str | None, **kwargs: Any
    ) -> VariableRecord:
        return copy_record(await self.store().register(name, type, value, **kwargs))

    async def delete(self, name: str) -> VariableRecord:
        return await self.store().delete(name)

    async def names(self) -> builtins.list[str]:
        return self.store().names()

    async def contains(self, name: str) -> bool:
        return name in self.store()

    async def list(self, pattern: str) -> builtins.list[VariableRecord]:
        return [copy_record(r) for r in await self.store().list(pattern)]

    async def get_many(self, names: Sequence[str]) -> dict[str, Any]:
        found, missing = await self.store().get_many(list(names))
        if missing:
            raise VariableNotFoundError(
                f"variables {missing} are not defined in session {self.session_id!r}; define "
                "them first"
            )
        return {k: copy_value(r.value) for k, r in found.items()}

    async def set_many(
        self,
        updates: Mapping[str, Any],
        atomic: bool,
        expected_versions: Mapping[str, int] | None,
        define_missing: bool,
    ) -> dict[str, VariableRecord]:
        outcome = await self.store().set_many(
            dict(updates),
            atomic=atomic,
            expected_versions=expected_versions,
            define_missing=define_missing,
        )
        if atomic or outcome.errors:
            raise_batch_errors(outcome.errors)
        return {k: copy_record(r) for k, r in outcome.records.items()}

    async def history(self, name: str, limit: int | None) -> builtins.list[VariableVersion]:
        entries = await self.store().history(name, limit)
        return [
            e if isinstance(e.value, _SCALARS) else replace(e, value=copy_value(e.value))
            for e in entries
        ]

    async def rollback(self, name: str, version: int) -> VariableRecord:
        return copy_record(await self.store().rollback(name, version))

    async def depend(self, from_name: str, to_name: str, dependency_type: str) -> None:
        await self.store().add_dependency(from_name, to_name, dependency_type)

    async def start_optimization(
        self, name: str, optimizer_id: str, config: Mapping[str, str] | None
    ) -> VariableRecord:
        return copy_record(await self.store().start_optimization(name, optimizer_id, config))

    async def stop_optimization(self, name: str, optimizer_id: str, force: bool) -> VariableRecord:
        record = await self.store().stop_optimization(name, optimizer_id, force=force)
        return copy_record(record)

    async def watch(
        self, names: Sequence[str], include_initial: bool, buffer: int | None
    ) -> Watcher:
        return self.store().watch(
            list(names) or None, include_initial=include_initial, capacity=buffer
        )


class WatchCursor:
    """The loop side of one watch: started lazily, read with a timeout, closed from anywhere
    (through the loop)."""

    def __init__(
        self, ops: VariableOps, names: Sequence[str], include_initial: bool, buffer: int | None
    ) -> None:
        self._ops = ops
        self._names = list(names)
        self._include_initial = include_initial
        self._buffer = buffer
        self._watcher: Watcher | None = None
        self._closed = False

    async def start(self) -> None:
        if self._watcher is None and not self._closed:
            self._watcher = await self._ops.watch(self._names, self._include_initial, self._buffer)

    async def next(self, timeout: float | None) -> VariableChange | None:  # noqa: ASYNC109
        """The next change (a copy), or None once the watch is closed."""
        await self.start()
        if self._watcher is None:  # closed before it started
            return None
        try:
            if timeout is None:
                return copy_change(await self._watcher.next())
            return copy_change(await asyncio.wait_for(self._watcher.next(), timeout))
        except StopAsyncIteration:
            return None
        except TimeoutError:
            watched = ", ".join(repr(n) for n in self._names) or "any variable"
            raise TimeoutError(f"no change to {watched} within {timeout:g} s") from None

    def close_now(self) -> None:
        """Stop the watch (loop thread only)."""
        self._closed = True
        if self._watcher is not None:
            self._watcher.close()

    async def close(self) -> None:
        self.close_now()
