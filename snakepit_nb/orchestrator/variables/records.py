"""The frozen records the variable store hands out: variables, versions, locks, batch outcomes."""

from __future__ import annotations

import reprlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from snakepit_nb._errors import SnakepitError

__all__ = [
    "KERNEL_SOURCE",
    "BatchOutcome",
    "OptimizationLock",
    "VariableRecord",
    "VariableVersion",
    "short",
]

#: The writer name of the notebook side (workers write under their own ids).
KERNEL_SOURCE: Final = "kernel"

_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 60
_REPR.maxlist = _REPR.maxdict = 8
_REPR.maxlevel = 3


def short(value: object) -> str:
    """A repr that never dumps a 50 MB value into an error message."""
    return _REPR.repr(value)


@dataclass(frozen=True)
class VariableVersion:
    """One entry of a variable's history: the value it had at ``version``.

    ``source`` is ``"kernel"`` (the notebook side) or the id of the worker that wrote it;
    ``at`` is wall-clock seconds (``time.time()``).
    """

    version: int
    value: Any
    source: str
    at: float
    metadata: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def __repr__(self) -> str:
        return f"<VariableVersion {self.version}: {short(self.value)} by {self.source}>"


@dataclass(frozen=True)
class OptimizationLock:
    """A variable being optimized: only ``optimizer_id`` may write it until it stops."""

    optimizer_id: str
    optimization_id: str
    started_at: float
    config: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class VariableRecord:
    """A variable as stored: its current value, version and settings.

    >>> v = session.vars.info("temperature")
    >>> v.value, v.version, v.type
    (0.7, 3, 'float')
    """

    id: str
    name: str
    type: str
    value: Any
    version: int
    constraints: Mapping[str, Any]
    metadata: Mapping[str, str]
    source: str
    created_at: float
    updated_at: float
    access: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    optimization: OptimizationLock | None = None

    @property
    def read_only_for_workers(self) -> bool:
        return self.access.get("workers", "write") != "write"

    @property
    def updated_by(self) -> str:
        """Who wrote the current version: ``"kernel"`` or a worker id."""
        return self.source

    def _repr_html_(self) -> str:
        from snakepit_nb.display.reprs import variable_html

        return variable_html(self)

    def __repr__(self) -> str:
        lock = f", optimized by {self.optimization.optimizer_id}" if self.optimization else ""
        return (
            f"<Variable {self.name}: {self.type} = {short(self.value)} "
            f"(version {self.version}, by {self.source}{lock})>"
        )


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
