"""A tool as the worker holds it: the function, its parameters, how it runs, and its ToolSpec.

Built once from a function's signature and docstring (an adapter's ``@tool`` method or a
function defined from a notebook cell); binding a call's arguments uses the prepared checkers.
"""

from __future__ import annotations

import enum
import inspect
import json
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from snakepit_nb._errors import InvalidArgumentError
from snakepit_nb.protocol import pb
from snakepit_nb.protocol.names import check_tool_name
from snakepit_nb.tools.parameters import (
    PASSING_TYPES,
    Parameter,
    build_checker,
    expects_text,
    parse_docstring,
    resolve_hints,
    type_label,
)

__all__ = ["StreamKind", "ToolDefinition"]


class StreamKind(enum.Enum):
    """How a tool produces its result."""

    NONE = "none"  # returns one value (sync function or coroutine function)
    SYNC = "sync"  # a generator (or returns an iterator): driven in a worker thread
    ASYNC = "async"  # an async generator (or returns an async iterator): driven on the loop


def _is_context_annotation(annotation: object) -> bool:
    if isinstance(annotation, str):
        return annotation.rsplit(".", 1)[-1].strip("'\"") == "SessionContext"
    return getattr(annotation, "__name__", "") == "SessionContext"


@dataclass(eq=False)
class ToolDefinition:
    """A callable tool: the function plus everything needed to bind, run and describe it."""

    name: str
    func: Callable[..., Any]
    description: str
    parameters: tuple[Parameter, ...]
    ctx_param: str | None
    var_keyword: bool
    is_async: bool
    stream: StreamKind
    idempotent: bool = False
    required_variables: tuple[str, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)
    _by_name: dict[str, Parameter] = field(init=False, repr=False)
    _required: frozenset[str] = field(init=False, repr=False)
    _spec: pb.ToolSpec | None = field(init=False, repr=False, default=None)
    # (name, exact types that need no check, or None for any) of every parameter, when each
    # parameter's check is that simple: ``bind`` then takes a shortcut for complete calls.
    _fast: tuple[tuple[str, frozenset[type] | None], ...] | None = field(
        init=False, repr=False, default=None
    )

    def __post_init__(self) -> None:
        self._by_name = {p.name: p for p in self.parameters}
        self._required = frozenset(p.name for p in self.parameters if p.required)
        fast: list[tuple[str, frozenset[type] | None]] = []
        for param in self.parameters:
            if param.checker is None:
                fast.append((param.name, None))
            elif param.checker in PASSING_TYPES:
                fast.append((param.name, PASSING_TYPES[param.checker]))
            else:
                break
        else:
            if self.parameters:
                self._fast = tuple(fast)

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_function(
        cls,
        func: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        idempotent: bool = False,
        required_variables: Sequence[str] = (),
        streaming: bool | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> ToolDefinition:
        """Describe ``func`` (a bound method or a plain function) as a tool.

        ``streaming=None`` detects generators and async generators; ``True`` declares a
        function that returns an iterator; ``False`` refuses a generator function.
        """
        tool_name = check_tool_name(str(name or getattr(func, "__name__", "")))
        doc_description, doc_params = parse_docstring(inspect.getdoc(func))
        hints = resolve_hints(func)
        signature = inspect.signature(func)
        params: list[Parameter] = []
        ctx_param: str | None = None
        var_keyword = False
        for p in signature.parameters.values():
            annotation = hints.get(p.name, p.annotation)
            if p.kind is inspect.Parameter.VAR_KEYWORD:
                var_keyword = True
                continue
            if p.kind is inspect.Parameter.VAR_POSITIONAL:
                continue  # never filled by keyword calls
            if p.kind is inspect.Parameter.POSITIONAL_ONLY:
                raise InvalidArgumentError(
                    f"tool {tool_name!r}: parameter {p.name!r} is positional-only; tools are "
                    "called with keyword arguments, so drop the '/' from the signature"
                )
            if ctx_param is None and (
                _is_context_annotation(annotation)
                or _is_context_annotation(p.annotation)
                or (p.name == "ctx" and p.annotation is inspect.Parameter.empty)
            ):
                ctx_param = p.name
                continue
            params.append(
                Parameter(
                    name=p.name,
                    annotation=annotation,
                    type_label=type_label(annotation),
                    expects=expects_text(annotation),
                    required=p.default is inspect.Parameter.empty,
                    default=p.default,
                    description=doc_params.get(p.name, ""),
                    checker=build_checker(annotation),
                )
            )
        if inspect.isasyncgenfunction(func):
            stream = StreamKind.ASYNC
        elif inspect.isgeneratorfunction(func):
            stream = StreamKind.SYNC
        elif streaming:
            stream = StreamKind.ASYNC if inspect.iscoroutinefunction(func) else StreamKind.SYNC
        else:
            stream = StreamKind.NONE
        if streaming is False and stream is not StreamKind.NONE:
            raise InvalidArgumentError(
                f"tool {tool_name!r} is a generator function but was declared "
                "streaming=False; remove the flag or return a value instead of yielding"
            )
        return cls(
            name=tool_name,
            func=func,
            description=(description if description is not None else doc_description),
            parameters=tuple(params),
            ctx_param=ctx_param,
            var_keyword=var_keyword,
            is_async=inspect.iscoroutinefunction(func) or stream is StreamKind.ASYNC,
            stream=stream,
            idempotent=idempotent,
            required_variables=tuple(required_variables),
            metadata=dict(metadata or {}),
        )

    # ------------------------------------------------------------------ binding

    def bind(self, arguments: Mapping[str, object], *, owned: bool = False) -> dict[str, object]:
        """Check ``arguments`` against the signature; return the keyword arguments to call with.

        Raises InvalidArgumentError naming the first missing, unknown or mistyped parameter.
        ``owned``: ``arguments`` is a fresh dict the caller gives away (it may be returned).
        """
        fast = self._fast
        if fast is not None and type(arguments) is dict and len(arguments) == len(fast):
            # Every parameter given, each of a type its check passes as is (a map's items).
            for name, types in fast:
                if name not in arguments or (
                    types is not None and type(arguments[name]) not in types
                ):
                    break
            else:
                return arguments if owned else dict(arguments)
        by_name = self._by_name
        bound: dict[str, object] = {}
        for key, value in arguments.items():
            param = by_name.get(key)
            if param is None:
                if self.var_keyword and key != self.ctx_param:
                    bound[key] = value
                    continue
                raise self._unknown(key)
            bound[key] = value if param.checker is None else param.check(self.name, value)
        if not self._required <= bound.keys():
            missing = [p for p in self.parameters if p.required and p.name not in bound]
            first = missing[0]
            raise InvalidArgumentError(
                f"tool {self.name!r}: missing required parameter {first.name!r} "
                f"(expects {first.expects}); pass it as {first.name}=..."
            )
        return bound

    def _unknown(self, key: str) -> InvalidArgumentError:
        if key == self.ctx_param:
            return InvalidArgumentError(
                f"tool {self.name!r}: parameter {key!r} is the session context, which the "
                "worker injects; do not pass it"
            )
        names = ", ".join(p.name for p in self.parameters) or "(none)"
        return InvalidArgumentError(
            f"tool {self.name!r}: unknown parameter {key!r}; its parameters are: {names}"
        )

    # ------------------------------------------------------------------ description

    def spec(self) -> pb.ToolSpec:
        """The ToolSpec that DescribeTools and DefineTool answer with (built once)."""
        if self._spec is None:
            self._spec = self._build_spec()
        return self._spec

    def _build_spec(self) -> pb.ToolSpec:
        from snakepit_nb.protocol.codec import encode_any

        parameters = []
        for p in self.parameters:
            validation: dict[str, object] = {"annotation": p.expects}
            if typing.get_origin(p.annotation) is typing.Literal:
                validation["enum"] = list(typing.get_args(p.annotation))
            spec = pb.ParameterSpec(
                name=p.name,
                type=p.type_label,
                description=p.description,
                required=p.required,
            )
            if not p.required:
                try:
                    spec.default_value.CopyFrom(encode_any(p.default))
                except Exception:
                    validation["default_repr"] = repr(p.default)[:200]
            try:
                spec.validation_json = json.dumps(validation)
            except (TypeError, ValueError):
                spec.validation_json = json.dumps({"annotation": p.expects})
            parameters.append(spec)
        metadata = {
            "idempotent": "true" if self.idempotent else "false",
            "supports_streaming": "true" if self.stream is not StreamKind.NONE else "false",
            # Runs on the worker's event loop (coroutine function or async generator): the pool
            # counts such calls against `async_capacity`, not the sync `capacity`.
            "async": "true" if self.is_async else "false",
            **self.metadata,
        }
        if self.required_variables:
            metadata["required_variables"] = ",".join(self.required_variables)
        if self.var_keyword:
            metadata["var_keyword"] = "true"
        return pb.ToolSpec(
            name=self.name,
            description=self.description,
            parameters=parameters,
            metadata=metadata,
            supports_streaming=self.stream is not StreamKind.NONE,
            required_variables=list(self.required_variables),
        )
