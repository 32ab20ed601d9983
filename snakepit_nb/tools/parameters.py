"""Tool parameters: what a signature declares, and checking what a caller sends against it.

A tool's signature is the contract: ``def add(self, a: int, b: int = 0)`` makes ``a`` a required
``integer`` and ``b`` an optional one. Every annotation becomes a *checker*, a small function
built once per tool that accepts a decoded argument (returning it, sometimes converted) or raises
:class:`InvalidArgumentError` naming the parameter. Checkers are built ahead of time because
``session.map`` binds arguments tens of thousands of times a second.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import inspect
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from snakepit_nb._errors import InvalidArgumentError

__all__ = [
    "PASSING_TYPES",
    "Checker",
    "Parameter",
    "build_checker",
    "parse_docstring",
    "type_label",
]

Checker = Callable[[object], object]
"""Returns the accepted (possibly converted) value or raises ``_Mismatch``."""


class _Mismatch(Exception):
    """A value does not fit an annotation; turned into an InvalidArgumentError by the caller."""


_NO_DEFAULT: Any = inspect.Parameter.empty


@dataclass(frozen=True)
class Parameter:
    """One parameter of a tool, as the caller sees it."""

    name: str
    annotation: object
    type_label: str
    expects: str
    required: bool
    default: object
    description: str
    checker: Checker | None  # None: any value is accepted

    def check(self, tool_name: str, value: object) -> object:
        if self.checker is None:
            return value
        try:
            return self.checker(value)
        except _Mismatch:
            raise InvalidArgumentError(
                f"tool {tool_name!r}: parameter {self.name!r} expects {self.expects}, "
                f"got {_describe(value)}; pass a value of that type"
            ) from None


def _describe(value: object) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} ({text})"


# ---------------------------------------------------------------------------- labels

_LABELS: dict[object, str] = {
    int: "integer",
    float: "float",
    str: "string",
    bool: "boolean",
    bytes: "bytes",
    bytearray: "bytes",
    list: "list",
    tuple: "list",
    set: "list",
    frozenset: "list",
    dict: "map",
    type(None): "null",
}


def type_label(annotation: object) -> str:
    """The wire type name (``integer``, ``float``, ``string``, ``list``, ``map``...) of a hint."""
    if annotation is _NO_DEFAULT or annotation is Any or annotation is object:
        return "any"
    if isinstance(annotation, str):
        return "any"
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        labels = [type_label(a) for a in typing.get_args(annotation) if a is not type(None)]
        return "|".join(dict.fromkeys(labels)) or "null"
    if origin is typing.Literal:
        values = typing.get_args(annotation)
        return "|".join(dict.fromkeys(type_label(type(v)) for v in values))
    if origin is typing.Annotated:
        return type_label(typing.get_args(annotation)[0])
    if origin is not None:
        annotation = origin
    if annotation in _LABELS:
        return _LABELS[annotation]
    if isinstance(annotation, type):
        if issubclass(annotation, collections.abc.Mapping):
            return "map"
        if issubclass(annotation, bytes | bytearray | memoryview):
            return "bytes"
        if issubclass(annotation, collections.abc.Sequence | collections.abc.Set) and not (
            issubclass(annotation, str)
        ):
            return "list"
        if annotation.__name__ == "ndarray":
            return "tensor"
        if dataclasses.is_dataclass(annotation):
            return "map"
    return "any"


def _expects(annotation: object) -> str:
    """How an error message names a hint: ``int``, ``list[int]``, ``int | None``."""
    if isinstance(annotation, type) and typing.get_origin(annotation) is None:
        return annotation.__name__
    text = repr(annotation).replace("typing.", "")
    return re.sub(r"<class '([\w.]+)'>", r"\1", text)


# ---------------------------------------------------------------------------- checkers


def _check_int(v: object) -> object:
    if type(v) is int:
        return v
    if isinstance(v, bool):
        raise _Mismatch
    if isinstance(v, int):
        return v
    # The published bridge sends integers as JSON floats (42.0); accept exact ones.
    if isinstance(v, float) and v.is_integer():
        return int(v)
    raise _Mismatch


def _check_float(v: object) -> object:
    # Like Python itself: an int is acceptable where a float is expected, and is kept as is.
    if type(v) is float or (isinstance(v, int | float) and not isinstance(v, bool)):
        return v
    raise _Mismatch


def _check_str(v: object) -> object:
    if isinstance(v, str):
        return v
    raise _Mismatch


def _check_bool(v: object) -> object:
    if isinstance(v, bool):
        return v
    raise _Mismatch


def _check_bytes(v: object) -> object:
    if isinstance(v, bytes):
        return v
    if isinstance(v, bytearray | memoryview):
        return bytes(v)
    raise _Mismatch


def _check_none(v: object) -> object:
    if v is None:
        return v
    raise _Mismatch


_SIMPLE: dict[object, Checker] = {
    int: _check_int,
    float: _check_float,
    str: _check_str,
    bool: _check_bool,
    bytes: _check_bytes,
    type(None): _check_none,
    None: _check_none,
}


#: Exact types each simple checker passes through unchanged (a bind fast path may skip it).
PASSING_TYPES: dict[Checker, frozenset[type]] = {
    _check_int: frozenset({int}),
    _check_float: frozenset({float, int}),
    _check_str: frozenset({str}),
    _check_bool: frozenset({bool}),
    _check_bytes: frozenset({bytes}),
    _check_none: frozenset({type(None)}),
}


def build_checker(annotation: object) -> Checker | None:
    """A checker for ``annotation``, or None when any value is acceptable."""
    if annotation is _NO_DEFAULT or annotation is Any or annotation is object:
        return None
    if isinstance(annotation, str | typing.ForwardRef | typing.TypeVar):
        return None  # an unresolvable forward reference: do not guess
    simple = _SIMPLE.get(annotation)
    if simple is not None:
        return simple
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return build_checker(args[0])
    if origin is typing.Union or origin is types.UnionType:
        return _union_checker(args)
    if origin is typing.Literal:
        return _literal_checker(args)
    if origin in (list, collections.abc.Sequence, collections.abc.Iterable, tuple, set, frozenset):
        return _sequence_checker(origin, args)
    if origin in (dict, collections.abc.Mapping, collections.abc.MutableMapping):
        return _mapping_checker(args)
    if origin is not None:
        return build_checker(origin)
    if annotation in (list, tuple, set, frozenset):
        return _sequence_checker(annotation, ())
    if annotation in (dict, collections.abc.Mapping):
        return _mapping_checker(())
    if isinstance(annotation, type):
        return _class_checker(annotation)
    return None


def _union_checker(args: tuple[object, ...]) -> Checker | None:
    checkers = [build_checker(a) for a in args]
    if any(c is None for c in checkers):
        return None
    members = [c for c in checkers if c is not None]

    def check(v: object) -> object:
        for c in members:
            try:
                return c(v)
            except _Mismatch:
                continue
        raise _Mismatch

    return check


def _literal_checker(args: tuple[object, ...]) -> Checker:
    allowed = list(args)

    def check(v: object) -> object:
        for a in allowed:
            if v == a and type(v) is type(a):
                return v
        raise _Mismatch

    return check


def _sequence_checker(origin: object, args: tuple[object, ...]) -> Checker:
    element: Checker | None = None
    if args and not (origin is tuple and len(args) == 2 and args[1] is Ellipsis):
        if origin is tuple:
            fixed = [build_checker(a) for a in args]

            def check_tuple(v: object) -> object:
                if not isinstance(v, list | tuple) or len(v) != len(fixed):
                    raise _Mismatch
                return tuple(
                    item if c is None else c(item) for c, item in zip(fixed, v, strict=True)
                )

            return check_tuple
        element = build_checker(args[0])
    elif args:
        element = build_checker(args[0])
    convert: Callable[[list[object]], object] = list
    if origin is tuple:
        convert = tuple
    elif origin is set:
        convert = set
    elif origin is frozenset:
        convert = frozenset

    def check(v: object) -> object:
        if not isinstance(v, list | tuple):
            raise _Mismatch
        items = list(v) if element is None else [element(item) for item in v]
        return items if convert is list else convert(items)

    return check


def _mapping_checker(args: tuple[object, ...]) -> Checker:
    key = build_checker(args[0]) if args else None
    value = build_checker(args[1]) if len(args) > 1 else None

    def check(v: object) -> object:
        if not isinstance(v, dict):
            raise _Mismatch
        if key is None and value is None:
            return v
        return {
            (k if key is None else key(k)): (x if value is None else value(x)) for k, x in v.items()
        }

    return check


def _class_checker(cls: type) -> Checker:
    if dataclasses.is_dataclass(cls):

        def check_dataclass(v: object) -> object:
            if isinstance(v, cls):
                return v
            if isinstance(v, dict):
                try:
                    return cls(**v)
                except TypeError:
                    raise _Mismatch from None
            raise _Mismatch

        return check_dataclass

    def check(v: object) -> object:
        if isinstance(v, cls):
            return v
        raise _Mismatch

    return check


# ---------------------------------------------------------------------------- docstrings

_SECTION = re.compile(
    r"^(Args|Arguments|Parameters|Params|Keyword Args|Returns|Yields|Raises|Examples?|Notes?)"
    r"\s*:\s*$"
)
_ARG_SECTIONS = ("Args", "Arguments", "Parameters", "Params", "Keyword Args")
_ARG_LINE = re.compile(r"^(\*{0,2}\w+)\s*(?:\(([^)]*)\))?\s*:\s*(.*)$")


def parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """Split a Google-style docstring into (description, {parameter: description}).

    The description is everything before the first section header (``Args:``, ``Returns:``...);
    parameter descriptions come from the ``Args:`` section, continuation lines joined.
    """
    if not doc:
        return "", {}
    description: list[str] = []
    params: dict[str, str] = {}
    section: str | None = None
    current: str | None = None
    base_indent: int | None = None
    for line in inspect.cleandoc(doc).splitlines():
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        header = _SECTION.match(stripped) if indent == 0 else None
        if header:
            section, current, base_indent = header.group(1), None, None
            continue
        if section is None:
            description.append(line)
            continue
        if section not in _ARG_SECTIONS or not stripped:
            continue
        if base_indent is None:
            base_indent = indent
        match = _ARG_LINE.match(stripped)
        if match and indent <= base_indent:
            current = match.group(1).lstrip("*")
            params[current] = match.group(3).strip()
        elif current is not None:
            params[current] = (params[current] + " " + stripped).strip()
    return "\n".join(description).strip(), params


def resolve_hints(func: Callable[..., object]) -> Mapping[str, object]:
    """Type hints of ``func`` with string annotations resolved where possible."""
    try:
        return typing.get_type_hints(func, include_extras=True)
    except Exception:
        hints: dict[str, object] = {}
        for name, value in getattr(func, "__annotations__", {}).items():
            hints[name] = value
        return hints


def expects_text(annotation: object) -> str:
    return "any value" if annotation is _NO_DEFAULT else _expects(annotation)
