"""The rules every variable write and read obeys: limits, metadata, access control.

Checked before anything changes, so a refused write changes nothing. Access control is
``{"workers": "write" | "read" | "none"}``: the kernel always reads and writes; workers may be
limited to reading, or not see a variable at all.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from snakepit_nb._errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    ResourceExhaustedError,
)
from snakepit_nb.orchestrator.variables.records import KERNEL_SOURCE, VariableRecord
from snakepit_nb.orchestrator.variables.types import TypeSpec
from snakepit_nb.protocol.codec import decode_json, encode_json

__all__ = [
    "EMPTY",
    "MIB",
    "VariableLimits",
    "admit",
    "check_read",
    "check_write",
    "clean_access",
    "clean_metadata",
    "readable",
]

MIB = 1024 * 1024
#: An empty read-only mapping (metadata, access) shared by every record that has none.
EMPTY: Mapping[str, str] = MappingProxyType({})
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


def clean_metadata(metadata: Mapping[str, Any] | None, what: str = "metadata") -> Mapping[str, str]:
    """Metadata as a read-only ``{str: str}``; non-string keys or values are refused."""
    if not metadata:
        return EMPTY
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
        return EMPTY
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
        return EMPTY
    return MappingProxyType(clean)


def readable(record: VariableRecord, source: str) -> bool:
    """Whether ``source`` (the kernel or a worker id) may see the variable."""
    return source == KERNEL_SOURCE or record.access.get("workers", "write") != "none"


def check_read(record: VariableRecord, source: str) -> None:
    if not readable(record, source):
        raise FailedPreconditionError(
            f"variable {record.name!r} is hidden from workers (access control "
            "workers=none); read it from the notebook"
        )


def check_write(record: VariableRecord, source: str, optimizer_id: str | None) -> None:
    """Refuse a write by ``source`` that access control or an optimization lock forbids."""
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


def admit(
    spec: TypeSpec, name: str, value: Any, limit: int, *, encode: bool
) -> tuple[Any, bytes | None]:
    """Validate ``value`` for a variable and check its size: ``(stored value, encoded JSON)``.

    The JSON is made when ``encode`` (it will be persisted) or the value is not a plain number;
    lists and maps are stored as an independent copy (the caller may mutate what it passed).
    """
    # Fast refusal before any copy or encoding: a 50 MB string costs nothing here.
    if isinstance(value, str | bytes | bytearray) and len(value) > limit:
        raise _too_large(name, len(value), limit)
    nbytes = getattr(value, "nbytes", None)
    if isinstance(nbytes, int) and nbytes > limit:
        raise _too_large(name, nbytes, limit)
    stored = spec.validate(name, value)
    encoded: bytes | None = None
    if encode or not isinstance(stored, bool | int | float) or stored is None:
        encoded = encode_json(stored)
        if len(encoded) > limit:
            raise _too_large(name, len(encoded), limit)
        if spec.type in ("list", "map"):
            stored = decode_json(encoded)
    return stored, encoded


def _too_large(name: str, size: int, limit: int) -> ResourceExhaustedError:
    return ResourceExhaustedError(
        f"value of variable {name!r} is about {size:,} bytes, above the limit of "
        f"{limit:,} (max_value_bytes); store large data elsewhere "
        "(a file path, or a tool's own state) and keep a reference in the variable"
    )
