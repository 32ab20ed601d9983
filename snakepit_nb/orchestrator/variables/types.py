"""Variable types, their constraints, and the frozen records the variable store hands out.

A variable has one of the types below; its constraints (a JSON object) are checked on every
write, before anything changes. A refused value raises ``ConstraintViolationError`` naming
the variable and the constraint; a bad constraint set (unknown key, ``min > max``) raises
``InvalidArgumentError`` at registration.

========== ================================================ ===================================
type       values                                           constraints
========== ================================================ ===================================
float      int or float (stored as float)                   min, max, allow_nan, allow_inf
integer    int (a float with no fraction is accepted)       min, max
string     str                                              min_length, max_length, pattern,
                                                            enum
boolean    bool                                             (none)
choice     one of ``choices`` (str, number or bool)         choices (required)
module     str, e.g. a DSPy module name                     allowed_modules
embedding  list of numbers (or a 1-d numpy array)           dimensions, min, max, allow_nan,
                                                            allow_inf
tensor     ``{"shape": [...], "data": [...]}``, a nested    shape (``None``/-1: any size),
           list, or a numpy array; stored flat              allow_nan, allow_inf
list       list or tuple of encodable values                min_length, max_length, allow_nan,
                                                            allow_inf
map        dict of encodable values                         min_length, max_length,
                                                            required_keys, allow_nan, allow_inf
bytes      bytes                                            min_length, max_length
========== ================================================ ===================================

Every type also takes ``nullable`` (``None`` is then a valid value) and ``description``.
Non-finite floats (NaN, ±Infinity) are refused anywhere in a value unless ``allow_nan`` /
``allow_inf`` say otherwise.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from snakepit_nb._errors import ConstraintViolationError, InvalidArgumentError
from snakepit_nb.orchestrator.variables.records import short
from snakepit_nb.protocol.codec import infer_type_label

__all__ = [
    "VARIABLE_TYPES",
    "TypeSpec",
    "check_name",
    "infer_type",
    "normalize_type",
]

VARIABLE_TYPES: Final = (
    "float",
    "integer",
    "string",
    "boolean",
    "choice",
    "module",
    "embedding",
    "tensor",
    "list",
    "map",
    "bytes",
)

_ALIASES: Final = {
    "double": "float",
    "number": "float",
    "int": "integer",
    "str": "string",
    "text": "string",
    "bool": "boolean",
    "dict": "map",
    "object": "map",
    "array": "list",
    "enum": "choice",
}

_NONFINITE = ("allow_nan", "allow_inf")
_COMMON = ("nullable", "description")
_CONSTRAINT_KEYS: Final[dict[str, tuple[str, ...]]] = {
    "float": ("min", "max", *_NONFINITE),
    "integer": ("min", "max"),
    "string": ("min_length", "max_length", "pattern", "enum"),
    "boolean": (),
    "choice": ("choices",),
    "module": ("allowed_modules",),
    "embedding": ("dimensions", "min", "max", *_NONFINITE),
    "tensor": ("shape", *_NONFINITE),
    "list": ("min_length", "max_length", *_NONFINITE),
    "map": ("min_length", "max_length", "required_keys", *_NONFINITE),
    "bytes": ("min_length", "max_length"),
}

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")
MAX_NAME_LENGTH: Final = 128
_MAX_DEPTH = 100


# ---------------------------------------------------------------------------- names and types


def check_name(name: object) -> str:
    """A usable variable name, or ``InvalidArgumentError`` saying what is wrong."""
    if not isinstance(name, str) or not name:
        raise InvalidArgumentError(
            f"a variable name must be a non-empty string, not {name!r}; e.g. 'temperature'"
        )
    if len(name) > MAX_NAME_LENGTH or not _NAME_RE.match(name):
        shown = name if len(name) <= 60 else name[:57] + "..."
        raise InvalidArgumentError(
            f"variable name {shown!r} is not usable; use at most {MAX_NAME_LENGTH} letters, "
            "digits, '_', '.' or '-', starting with a letter or '_'"
        )
    return name


def normalize_type(type_name: object) -> str:
    """The canonical type name for ``type_name`` (aliases such as ``int`` accepted)."""
    if not isinstance(type_name, str):
        raise InvalidArgumentError(
            f"a variable type must be a string, not {type(type_name).__name__}; "
            f"use one of {', '.join(VARIABLE_TYPES)}"
        )
    lowered = type_name.strip().lower()
    canonical = _ALIASES.get(lowered, lowered)
    if canonical not in VARIABLE_TYPES:
        raise InvalidArgumentError(
            f"unknown variable type {type_name[:40]!r}; use one of {', '.join(VARIABLE_TYPES)}"
        )
    return canonical


def infer_type(value: object) -> str:
    """The type a value gets when it is defined without one (``s.vars["x"] = 0.7``)."""
    label = infer_type_label(value)
    if label == "tensor":
        return "embedding" if getattr(value, "ndim", None) == 1 else "tensor"
    if label is not None and label != "null":
        return label
    if value is None:
        raise InvalidArgumentError(
            "None has no type to infer; define the variable with an explicit type, e.g. "
            "s.vars.define('x', None, type='float', nullable=True)"
        )
    raise InvalidArgumentError(
        f"cannot infer a variable type from a {type(value).__name__}; pass one of "
        f"{', '.join(VARIABLE_TYPES)} as type= (values must be JSON-like)"
    )


# ---------------------------------------------------------------------------- the type spec


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _as_count(key: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidArgumentError(
            f"constraint {key!r} must be a non-negative integer, not {value!r}"
        )
    return value


@dataclass(frozen=True)
class TypeSpec:
    """A type and its checked constraints; ``validate`` accepts or refuses a value."""

    type: str
    constraints: Mapping[str, Any]
    _pattern: re.Pattern[str] | None = None

    @classmethod
    def build(cls, type_name: object, constraints: Mapping[str, Any] | None) -> TypeSpec:
        """Check ``constraints`` for ``type_name``; raises ``InvalidArgumentError``."""
        vtype = normalize_type(type_name)
        raw = dict(constraints or {})
        allowed = _CONSTRAINT_KEYS[vtype] + _COMMON
        for key in raw:
            if key not in allowed:
                known = ", ".join(allowed)
                raise InvalidArgumentError(
                    f"constraint {str(key)[:40]!r} does not apply to type {vtype!r}; "
                    f"known constraints: {known}"
                )
        clean: dict[str, Any] = {}
        for key, value in raw.items():
            clean[key] = _check_constraint(vtype, key, value)
        if "min" in clean and "max" in clean and clean["min"] > clean["max"]:
            raise InvalidArgumentError(
                f"constraint min={clean['min']!r} is above max={clean['max']!r}; swap them"
            )
        if (
            "min_length" in clean
            and "max_length" in clean
            and clean["min_length"] > clean["max_length"]
        ):
            raise InvalidArgumentError(
                f"constraint min_length={clean['min_length']} is above "
                f"max_length={clean['max_length']}"
            )
        if vtype == "choice" and "choices" not in clean:
            raise InvalidArgumentError(
                "a 'choice' variable needs the constraint 'choices', e.g. "
                "choices=['fast', 'accurate']"
            )
        pattern = None
        if "pattern" in clean:
            try:
                pattern = re.compile(clean["pattern"])
            except re.error as exc:
                raise InvalidArgumentError(
                    f"constraint pattern={clean['pattern']!r} is not a valid regular "
                    f"expression: {exc}"
                ) from exc
        return cls(vtype, MappingProxyType(clean), pattern)

    def validate(self, name: str, value: object) -> Any:
        """The value as stored (normalised: tuples to lists, ints to floats for ``float``...).

        Raises ``ConstraintViolationError`` naming the variable and the constraint.
        """
        c = self.constraints
        if value is None:
            if c.get("nullable"):
                return None
            raise ConstraintViolationError(
                f"variable {name!r} ({self.type}) does not accept None; pass a value, or "
                "define it with nullable=True"
            )
        checker = _CHECKERS[self.type]
        return checker(self, name, value)

    # -- helpers used by the checkers

    def refuse(self, name: str, what: str) -> ConstraintViolationError:
        return ConstraintViolationError(f"variable {name!r} ({self.type}) {what}")

    def check_finite(self, name: str, number: float, where: str = "") -> None:
        if math.isnan(number) and not self.constraints.get("allow_nan"):
            raise self.refuse(
                name,
                f"does not accept NaN{where}; define it with allow_nan=True to allow it",
            )
        if math.isinf(number) and not self.constraints.get("allow_inf"):
            raise self.refuse(
                name,
                f"does not accept {number}{where}; define it with allow_inf=True to allow it",
            )

    def check_range(self, name: str, number: float, where: str = "") -> None:
        lo, hi = self.constraints.get("min"), self.constraints.get("max")
        if lo is not None and number < lo:
            raise self.refuse(name, f"must be >= {lo} (constraint min){where}; got {number!r}")
        if hi is not None and number > hi:
            raise self.refuse(name, f"must be <= {hi} (constraint max){where}; got {number!r}")

    def check_length(self, name: str, length: int, unit: str) -> None:
        lo, hi = self.constraints.get("min_length"), self.constraints.get("max_length")
        if lo is not None and length < lo:
            raise self.refuse(
                name, f"needs at least {lo} {unit} (constraint min_length); got {length}"
            )
        if hi is not None and length > hi:
            raise self.refuse(
                name, f"allows at most {hi} {unit} (constraint max_length); got {length}"
            )

    def check_nested_finite(self, name: str, value: object) -> None:
        """Walk containers iteratively (no recursion limit surprises) for non-finite floats."""
        stack: list[tuple[object, int]] = [(value, 0)]
        while stack:
            item, depth = stack.pop()
            if isinstance(item, float):
                if not math.isfinite(item):
                    self.check_finite(name, item, " inside the value")
            elif isinstance(item, list | tuple):
                if depth >= _MAX_DEPTH:
                    raise self.refuse(name, f"is nested too deeply (max depth {_MAX_DEPTH})")
                stack.extend((x, depth + 1) for x in item)
            elif isinstance(item, Mapping):
                if depth >= _MAX_DEPTH:
                    raise self.refuse(name, f"is nested too deeply (max depth {_MAX_DEPTH})")
                stack.extend((x, depth + 1) for x in item.values())


def _check_constraint(vtype: str, key: str, value: object) -> object:
    if key in ("nullable", "allow_nan", "allow_inf"):
        if not isinstance(value, bool):
            raise InvalidArgumentError(f"constraint {key!r} must be true or false, not {value!r}")
        return value
    if key == "description":
        if not isinstance(value, str):
            raise InvalidArgumentError("constraint 'description' must be a string")
        return value
    if key in ("min", "max"):
        if not _is_number(value) or not math.isfinite(float(value)):  # type: ignore[arg-type]
            raise InvalidArgumentError(
                f"constraint {key!r} of a {vtype} variable must be a finite number, not {value!r}"
            )
        if vtype == "integer" and isinstance(value, float):
            return value if not value.is_integer() else int(value)
        return value
    if key in ("min_length", "max_length", "dimensions"):
        return _as_count(key, value)
    if key == "pattern":
        if not isinstance(value, str):
            raise InvalidArgumentError(f"constraint 'pattern' must be a string, not {value!r}")
        return value
    if key in ("enum", "allowed_modules", "required_keys"):
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise InvalidArgumentError(
                f"constraint {key!r} must be a list of strings, not {value!r}"
            )
        return list(value)
    if key == "choices":
        if (
            not isinstance(value, list | tuple)
            or not value
            or not all(
                isinstance(v, str | bool) or (_is_number(v) and math.isfinite(float(v)))
                for v in value
            )
        ):
            raise InvalidArgumentError(
                f"constraint 'choices' must be a non-empty list of strings or numbers, not "
                f"{value!r}"
            )
        return list(value)
    if key == "shape":
        if not isinstance(value, list | tuple) or not all(
            v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= -1) for v in value
        ):
            raise InvalidArgumentError(
                f"constraint 'shape' must be a list of sizes (int, or None/-1 for any), not "
                f"{value!r}"
            )
        return [None if v is None or v == -1 else v for v in value]
    raise InvalidArgumentError(f"constraint {key!r} is not known")  # pragma: no cover


# ---------------------------------------------------------------------------- checkers


def _float(spec: TypeSpec, name: str, value: object) -> float:
    if not _is_number(value):
        raise spec.refuse(name, f"needs a number; got {type(value).__name__} {short(value)}")
    try:
        number = float(value)  # type: ignore[arg-type]
    except OverflowError as exc:
        raise spec.refuse(name, "got an integer too large for a float") from exc
    spec.check_finite(name, number)
    if math.isfinite(number):
        spec.check_range(name, number)
    return number


def _integer(spec: TypeSpec, name: str, value: object) -> int:
    if isinstance(value, float) and not isinstance(value, bool):
        if not value.is_integer():
            raise spec.refuse(name, f"needs a whole number; got {value!r}")
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise spec.refuse(name, f"needs an integer; got {type(value).__name__} {short(value)}")
    spec.check_range(name, value)
    return value


def _string(spec: TypeSpec, name: str, value: object) -> str:
    if not isinstance(value, str):
        raise spec.refuse(name, f"needs a string; got {type(value).__name__} {short(value)}")
    spec.check_length(name, len(value), "characters")
    enum = spec.constraints.get("enum")
    if enum is not None and value not in enum:
        raise spec.refuse(name, f"must be one of {enum} (constraint enum); got {short(value)}")
    if spec._pattern is not None and spec._pattern.search(value) is None:
        raise spec.refuse(
            name,
            f"must match pattern {spec.constraints['pattern']!r} (constraint pattern); "
            f"got {short(value)}",
        )
    return value


def _boolean(spec: TypeSpec, name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise spec.refuse(name, f"needs True or False; got {type(value).__name__} {short(value)}")
    return value


def _choice(spec: TypeSpec, name: str, value: object) -> object:
    for option in spec.constraints["choices"]:
        # True == 1 in Python; a choice must match in kind as well as in value.
        if option == value and isinstance(option, bool) == isinstance(value, bool):
            return option
    raise spec.refuse(
        name,
        f"must be one of {spec.constraints['choices']} (constraint choices); got {short(value)}",
    )


def _module(spec: TypeSpec, name: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise spec.refuse(name, f"needs a module name (a string); got {short(value)}")
    allowed = spec.constraints.get("allowed_modules")
    if allowed is not None and value not in allowed:
        raise spec.refuse(
            name, f"must be one of {allowed} (constraint allowed_modules); got {value!r}"
        )
    return value


def _numbers(spec: TypeSpec, name: str, items: Sequence[object], kind: str) -> list[float]:
    out: list[float] = []
    for index, item in enumerate(items):
        if not _is_number(item):
            raise spec.refuse(
                name, f"needs numbers; item {index} is {type(item).__name__} {short(item)}"
            )
        try:
            number = float(item)  # type: ignore[arg-type]
        except OverflowError as exc:
            raise spec.refuse(name, f"item {index} is too large for a float") from exc
        if not math.isfinite(number):
            spec.check_finite(name, number, f" (item {index} of the {kind})")
        elif kind == "embedding":
            spec.check_range(name, number, f" (item {index})")
        out.append(number)
    return out


def _tolist(value: object) -> object:
    tolist = getattr(value, "tolist", None)
    if callable(tolist) and hasattr(value, "ndim"):
        return tolist()
    return value


def _embedding(spec: TypeSpec, name: str, value: object) -> list[float]:
    value = _tolist(value)
    if not isinstance(value, list | tuple):
        raise spec.refuse(name, f"needs a list of numbers; got {type(value).__name__}")
    numbers = _numbers(spec, name, value, "embedding")
    dims = spec.constraints.get("dimensions")
    if dims is not None and len(numbers) != dims:
        raise spec.refuse(
            name, f"needs exactly {dims} numbers (constraint dimensions); got {len(numbers)}"
        )
    return numbers


def _tensor(spec: TypeSpec, name: str, value: object) -> dict[str, object]:
    value = _tolist(value)
    if isinstance(value, Mapping):
        if set(value) - {"shape", "data", "dtype"} or "shape" not in value or "data" not in value:
            raise spec.refuse(
                name, 'needs {"shape": [...], "data": [...]}, a nested list or an array'
            )
        shape_raw, data = value["shape"], _tolist(value["data"])
        if not isinstance(shape_raw, list | tuple) or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape_raw
        ):
            raise spec.refuse(name, f"has a bad shape {short(shape_raw)}; use a list of sizes")
        shape = list(shape_raw)
        flat = _flatten(spec, name, data, shape)
    elif isinstance(value, list | tuple):
        shape = _infer_shape(spec, name, value)
        flat = _flatten(spec, name, value, shape)
    else:
        raise spec.refuse(name, f"needs a tensor; got {type(value).__name__}")
    expected = math.prod(shape)
    if len(flat) != expected:
        raise spec.refuse(name, f"has {len(flat)} numbers for shape {shape} ({expected} needed)")
    want = spec.constraints.get("shape")
    if want is not None and (
        len(want) != len(shape)
        or any(w is not None and w != s for w, s in zip(want, shape, strict=True))
    ):
        shown = ["*" if w is None else w for w in want]
        raise spec.refuse(name, f"needs shape {shown} (constraint shape); got {shape}")
    return {"shape": shape, "data": _numbers(spec, name, flat, "tensor")}


def _infer_shape(spec: TypeSpec, name: str, value: Sequence[object]) -> list[int]:
    shape: list[int] = []
    level: object = value
    while isinstance(level, list | tuple):
        if len(shape) >= _MAX_DEPTH:
            raise spec.refuse(name, f"is nested too deeply (max depth {_MAX_DEPTH})")
        shape.append(len(level))
        if not level:
            break
        level = level[0]
    return shape


def _flatten(spec: TypeSpec, name: str, data: object, shape: list[int]) -> list[object]:
    """Flat data of a flat list, or of nested lists that match ``shape`` exactly."""
    if not isinstance(data, list | tuple):
        raise spec.refuse(name, "needs its data as a list of numbers")
    rank = len(shape)
    if rank <= 1 or not any(isinstance(x, list | tuple) for x in data):
        return list(data)
    out: list[object] = []
    stack: list[tuple[object, int]] = [(data, 0)]
    # Depth-first, left to right: reverse pushes keep the order.
    while stack:
        item, depth = stack.pop()
        if isinstance(item, list | tuple):
            if depth >= rank or len(item) != shape[depth]:
                raise spec.refuse(name, f"is not rectangular: it does not match its shape {shape}")
            stack.extend((x, depth + 1) for x in reversed(item))
        else:
            if depth != rank:
                raise spec.refuse(name, f"is not rectangular: it does not match its shape {shape}")
            out.append(item)
    return out


def _list(spec: TypeSpec, name: str, value: object) -> list[object]:
    value = _tolist(value)
    if not isinstance(value, list | tuple):
        raise spec.refuse(name, f"needs a list; got {type(value).__name__} {short(value)}")
    spec.check_length(name, len(value), "items")
    spec.check_nested_finite(name, value)
    return list(value)


def _map(spec: TypeSpec, name: str, value: object) -> dict[object, object]:
    if not isinstance(value, Mapping):
        raise spec.refuse(name, f"needs a dict; got {type(value).__name__} {short(value)}")
    spec.check_length(name, len(value), "keys")
    required = spec.constraints.get("required_keys")
    if required:
        missing = [k for k in required if k not in value]
        if missing:
            raise spec.refuse(name, f"misses keys {missing} (constraint required_keys)")
    spec.check_nested_finite(name, value)
    return dict(value)


def _bytes(spec: TypeSpec, name: str, value: object) -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise spec.refuse(name, f"needs bytes; got {type(value).__name__} {short(value)}")
    data = bytes(value)
    spec.check_length(name, len(data), "bytes")
    return data


_CHECKERS: Final[dict[str, Any]] = {
    "float": _float,
    "integer": _integer,
    "string": _string,
    "boolean": _boolean,
    "choice": _choice,
    "module": _module,
    "embedding": _embedding,
    "tensor": _tensor,
    "list": _list,
    "map": _map,
    "bytes": _bytes,
}
