"""The adapter base class, the ``@tool`` decorator, and the table of tools a worker serves.

An adapter is a plain class whose ``@tool`` methods are the tools; dispatch is built in (there
is no ``execute_tool`` to write)::

    from snakepit_nb.worker import Adapter, SessionContext, tool

    class MyAdapter(Adapter):
        @tool
        def add(self, a: int, b: int = 0) -> int:
            \"\"\"Add two integers.\"\"\"
            return a + b

        @tool(name="count", idempotent=True)
        async def count(self, ctx: SessionContext, n: int):
            \"\"\"Count to n, yielding progress.\"\"\"
            for i in range(n):
                yield {"i": i, "progress": (i + 1) / n}

Run it with ``sp.start(adapter="mypkg.mymod:MyAdapter")``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, overload

from snakepit_nb._errors import InvalidArgumentError, ToolNotFoundError
from snakepit_nb.protocol import pb
from snakepit_nb.protocol.names import did_you_mean
from snakepit_nb.tools.definition import ToolDefinition

__all__ = ["Adapter", "ToolOptions", "ToolTable", "tool"]

F = TypeVar("F", bound=Callable[..., Any])

_TOOL_ATTR = "__snakepit_tool__"


@dataclass(frozen=True)
class ToolOptions:
    """What ``@tool(...)`` recorded on a function."""

    name: str | None = None
    description: str | None = None
    idempotent: bool = False
    required_variables: tuple[str, ...] = ()
    streaming: bool | None = None


@overload
def tool(func: F, /) -> F: ...


@overload
def tool(
    name: str | None = None,
    /,
    *,
    description: str | None = None,
    idempotent: bool = False,
    required_variables: Sequence[str] = (),
    streaming: bool | None = None,
) -> Callable[[F], F]: ...


@overload
def tool(
    *,
    name: str | None = None,
    description: str | None = None,
    idempotent: bool = False,
    required_variables: Sequence[str] = (),
    streaming: bool | None = None,
) -> Callable[[F], F]: ...


def tool(
    func: Any = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    idempotent: bool = False,
    required_variables: Sequence[str] = (),
    streaming: bool | None = None,
) -> Any:
    """Mark an adapter method as a tool; bare (``@tool``) or with options (``@tool(name=...)``).

    Args:
        name: the tool's name (default: the function's name).
        description: shown to users (default: the docstring, without its ``Args:`` section).
        idempotent: safe to run twice; the pool may then retry it on another worker after a crash.
        required_variables: session variables the orchestrator sends along with each call,
            so ``ctx.vars.get(name)`` costs no round trip.
        streaming: None detects generators; True for a function that returns an iterator.

    A parameter named ``ctx`` or annotated ``SessionContext`` receives the call's context and is
    not part of the tool's parameters. Generators and async generators are streaming tools.
    """
    if isinstance(required_variables, str):
        required_variables = [required_variables]
    if isinstance(func, str):  # @tool("name")
        name, func = func, None
    options = ToolOptions(
        name=name,
        description=description,
        idempotent=idempotent,
        required_variables=tuple(required_variables),
        streaming=streaming,
    )

    def mark(f: F) -> F:
        if not callable(f):
            raise TypeError(f"@tool decorates functions, not {type(f).__name__}")
        setattr(f, _TOOL_ATTR, options)
        return f

    if func is not None:
        return mark(func)
    return mark


def tool_options(obj: object) -> ToolOptions | None:
    """The options ``@tool`` put on ``obj``, if any."""
    options = getattr(obj, _TOOL_ATTR, None)
    return options if isinstance(options, ToolOptions) else None


class Adapter:
    """Base class of worker adapters: subclass it and decorate methods with ``@tool``.

    Override ``setup`` (sync or async) to load models or open connections once per worker,
    before the worker reports ready; ``teardown`` runs on a graceful stop.
    """

    def setup(self) -> Any:
        """Called once in the worker before it serves calls (may be ``async def``)."""
        return None

    def teardown(self) -> Any:
        """Called once when the worker stops gracefully (may be ``async def``)."""
        return None

    def tool_definitions(self) -> dict[str, ToolDefinition]:
        """The adapter's tools by name (built once per instance)."""
        cached: dict[str, ToolDefinition] | None = self.__dict__.get("_snakepit_tools")
        if cached is not None:
            return cached
        tools: dict[str, ToolDefinition] = {}
        cls = type(self)
        seen: set[str] = set()
        for klass in cls.__mro__:
            for attr, raw in vars(klass).items():
                if attr in seen:
                    continue
                seen.add(attr)
                options = tool_options(raw)
                if options is None:
                    continue
                definition = ToolDefinition.from_function(
                    getattr(self, attr),
                    name=options.name or attr,
                    description=options.description,
                    idempotent=options.idempotent,
                    required_variables=options.required_variables,
                    streaming=options.streaming,
                    metadata={
                        "source": "adapter",
                        "adapter_class": cls.__qualname__,
                        "module": cls.__module__,
                    },
                )
                if definition.name in tools:
                    raise InvalidArgumentError(
                        f"adapter {cls.__qualname__} defines tool {definition.name!r} twice; "
                        "give one of them another name"
                    )
                tools[definition.name] = definition
        self.__dict__["_snakepit_tools"] = tools
        return tools


class ToolTable:
    """The tools one worker serves: its adapter's, plus tools defined from cells at run time."""

    def __init__(self, adapter_tools: Mapping[str, ToolDefinition], *, worker_id: str) -> None:
        self._adapter_names = frozenset(adapter_tools)
        self._tools: dict[str, ToolDefinition] = dict(adapter_tools)
        self.worker_id = worker_id

    def get(self, name: str) -> ToolDefinition:
        definition = self._tools.get(name)
        if definition is None:
            raise self._not_found(name)
        return definition

    def _not_found(self, name: str) -> ToolNotFoundError:
        names = ", ".join(sorted(self._tools)) or "(none)"
        return ToolNotFoundError(
            f"tool {name!r} is not registered{did_you_mean(name, self._tools)}; registered: {names}"
        )

    def define(self, definition: ToolDefinition) -> None:
        """Add or replace a cell-defined tool. Adapter tools cannot be replaced."""
        if definition.name in self._adapter_names:
            raise InvalidArgumentError(
                f"tool {definition.name!r} is defined by the worker's adapter and cannot be "
                "replaced from a cell; choose another name"
            )
        self._tools[definition.name] = definition

    def remove(self, name: str) -> bool:
        """Remove a cell-defined tool; False if there was none of that name."""
        if name in self._adapter_names:
            raise InvalidArgumentError(
                f"tool {name!r} is defined by the worker's adapter and cannot be removed"
            )
        return self._tools.pop(name, None) is not None

    def names(self) -> list[str]:
        return sorted(self._tools)

    def specs(self) -> list[pb.ToolSpec]:
        return [self._tools[name].spec() for name in sorted(self._tools)]


def is_adapter_class(obj: object) -> bool:
    return inspect.isclass(obj) and issubclass(obj, Adapter)
