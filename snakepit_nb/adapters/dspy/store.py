"""The adapter's reads and writes of session variables (through ``ctx.vars``).

Everything the DSPy adapter keeps lives in the orchestrator's session variables; this module
is the one place that talks to them, so the rest of the adapter deals in plain values and
versions.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from snakepit_nb._errors import NotFoundError, VersionConflictError
from snakepit_nb.orchestrator.variables.types import infer_type

__all__ = ["Definition", "Entry", "VariableStore"]


@dataclass(frozen=True)
class Entry:
    """A variable's value and version as read."""

    value: Any
    version: int
    updated_by: str = ""  # "kernel", "worker" or an optimizer's id


@dataclass(frozen=True)
class Definition:
    """How to define a variable the first time it is written."""

    type: str
    constraints: Mapping[str, Any] | None = None
    description: str = ""


class VariableStore:
    """Reads with versions and define-or-set writes, over a tool call's ``ctx.vars``."""

    def __init__(self, variables: Any) -> None:
        self._vars = variables

    async def read(self, names: Sequence[str]) -> dict[str, Entry]:
        """The named variables that exist, with their versions (missing ones are left out).

        The reads go out concurrently on the worker's one channel to the orchestrator, so a
        handful of names costs about one round trip.
        """
        unique = list(dict.fromkeys(names))
        records = await asyncio.gather(*(self._vars.aget_record(n, None) for n in unique))
        return {
            name: Entry(record.value, int(record.version), str(record.updated_by))
            for name, record in zip(unique, records, strict=True)
            if record is not None
        }

    async def read_prefix(self, prefix: str) -> dict[str, Entry]:
        """Every variable named ``<prefix>.*``, in one round trip."""
        records = await self._vars.alist(f"{prefix}.*")
        return {r.name: Entry(r.value, int(r.version), str(r.updated_by)) for r in records}

    async def write(
        self,
        values: Mapping[str, Any],
        definitions: Mapping[str, Definition] | None = None,
        *,
        skip_unchanged: bool = False,
        only_missing: bool = False,
    ) -> dict[str, int]:
        """Write ``values``: existing variables in one atomic batch, missing ones defined.

        ``definitions`` give the type and constraints of variables that do not exist yet
        (default: the type of the value). ``skip_unchanged`` leaves variables that already
        hold the value alone (no new version, no watcher churn); ``only_missing`` defines
        the missing variables and leaves existing ones alone. Returns the version of each
        variable.
        """
        definitions = definitions or {}
        if not (skip_unchanged or only_missing):
            # The usual case (the variables exist): one round trip.
            try:
                written = await self._vars.aset_many(dict(values), atomic=True)
            except NotFoundError:
                pass  # some are missing: define them below
            else:
                return {k: int(v) for k, v in written.items() if isinstance(v, int)}
        existing = await self.read(list(values))
        versions: dict[str, int] = {}
        for name, value in values.items():
            if name in existing:
                continue
            spec = definitions.get(name) or Definition(infer_type(value))
            constraints = dict(spec.constraints or {})
            if spec.description:
                constraints["description"] = spec.description
            try:
                record = await self._vars.adefine(
                    name, value, spec.type, constraints=constraints or None
                )
            except VersionConflictError:  # defined by someone else meanwhile: just write it
                existing[name] = Entry(None, 0)
            else:
                versions[name] = int(record.version)
        remaining = {k: v for k, v in values.items() if k in existing}
        if only_missing:
            versions.update({k: existing[k].version for k in remaining})
            return versions
        if skip_unchanged:
            for name in [k for k, v in remaining.items() if existing[k].value == v]:
                versions[name] = existing[name].version
                del remaining[name]
        if remaining:
            written = await self._vars.aset_many(remaining, atomic=True)
            versions.update({k: int(v) for k, v in written.items() if isinstance(v, int)})
        return versions
