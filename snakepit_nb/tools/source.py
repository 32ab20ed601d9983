"""Tools defined at run time from source text (a notebook's ``%%snakepit_tool`` cell).

The source is compiled and run in a fresh module of its own (its imports and helpers stay
private to the tool), and the named function becomes the tool. Tracebacks show the cell's lines:
the source is registered with ``linecache`` under a name like ``<snakepit-cell square#3>``.
A syntax error or a failing import raises, and nothing changes; defining a name again replaces
the previous definition.
"""

from __future__ import annotations

import ast
import builtins
import collections
import inspect
import itertools
import linecache
import re
import sys
import types
from collections.abc import Mapping
from dataclasses import dataclass

from snakepit_nb._errors import InvalidArgumentError, SnakepitError
from snakepit_nb.protocol.names import check_tool_name
from snakepit_nb.tools.definition import ToolDefinition

__all__ = [
    "MAX_SOURCE_BYTES",
    "SourceTool",
    "define_tool_from_source",
    "find_tool_function",
    "is_generator_def",
    "trim_to_cell",
]

MAX_SOURCE_BYTES = 1024 * 1024
CELL_PREFIX = "<snakepit-cell "
_serial = itertools.count(1)
# Sources of failed definitions stay readable for their tracebacks, the most recent few only.
_failed_sources: collections.deque[str] = collections.deque()
_KEEP_FAILED = 16


@dataclass(frozen=True)
class SourceTool:
    """What the source text of a tool says about it, read without running it."""

    function: str
    is_generator: bool
    docstring: str


def find_tool_function(
    source: str, function: str | None = None, *, filename: str = "<snakepit_tool cell>"
) -> SourceTool:
    """The tool function of a cell's source: ``function``, or the last one defined (helpers
    first, the tool last: the usual shape of a cell).

    Raises SyntaxError (located in ``filename``) when the source does not parse, and
    InvalidArgumentError when it is empty or defines no such function.
    """
    if not isinstance(source, str) or not source.strip():
        raise InvalidArgumentError(
            "the source is empty; write the tool's function definition, e.g. `def my_tool(x):`"
        )
    module = ast.parse(source, filename=filename)
    defs = [n for n in module.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    if not defs:
        raise InvalidArgumentError(
            "the source defines no function; write `def my_tool(...):` in it"
        )
    if function is None:
        node = defs[-1]
    else:
        found = [n for n in defs if n.name == function]
        if not found:
            names = ", ".join(n.name for n in defs)
            raise InvalidArgumentError(
                f"the source defines no function {function!r}; it defines: {names}"
            )
        node = found[-1]
    return SourceTool(node.name, is_generator_def(node), ast.get_docstring(node) or "")


def is_generator_def(func: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """Whether ``func`` is a generator: its own body yields (nested functions don't count)."""
    own: list[ast.AST] = []
    stack: list[ast.AST] = list(func.body)
    while stack:
        node = stack.pop()
        own.append(node)
        for child in ast.iter_child_nodes(node):
            if not isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                stack.append(child)
    return any(isinstance(n, ast.Yield | ast.YieldFrom) for n in own)


def define_tool_from_source(
    source: str,
    function: str = "",
    *,
    name: str | None = None,
    supports_streaming: bool = False,
    description: str | None = None,
    metadata: Mapping[str, str] | None = None,
) -> ToolDefinition:
    """Compile ``source``, run it in a fresh module, and describe its ``function`` as a tool.

    ``function`` defaults to ``name``; with neither, the source must define exactly one
    function. ``supports_streaming=True`` declares a function that returns an iterator
    (generators are detected anyway). Raises SyntaxError, the source's own import errors, or
    InvalidArgumentError; on any error nothing is registered.
    """
    if not isinstance(source, str) or not source.strip():
        raise InvalidArgumentError("the tool's source is empty; send the function's definition")
    size = len(source.encode("utf-8", "surrogatepass"))
    if size > MAX_SOURCE_BYTES:
        raise InvalidArgumentError(
            f"the tool's source is {size} bytes, over the {MAX_SOURCE_BYTES} byte limit; move "
            "large code into a module the workers import"
        )
    function = function or name or ""
    if function and not function.isidentifier():
        raise InvalidArgumentError(
            f"{function!r} is not a Python function name; name the function the source defines"
        )
    label = name or function or "tool"
    serial = next(_serial)
    filename = f"{CELL_PREFIX}{label}#{serial}>"
    code = compile(source, filename, "exec", dont_inherit=True)
    # Tracebacks (and inspect.getsource) then show the cell's lines.
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    module_name = "snakepit_nb_cell_" + re.sub(r"\W", "_", label)
    module = types.ModuleType(module_name)
    module.__dict__["__builtins__"] = builtins
    previous = sys.modules.get(module_name)
    # Registered while it runs: dataclasses and typing look classes' modules up in sys.modules.
    sys.modules[module_name] = module
    try:
        exec(code, module.__dict__)
        func = _pick_function(module, function, source_label=label)
        definition = ToolDefinition.from_function(
            func,
            name=name or func.__name__,
            description=description or None,
            streaming=True if supports_streaming else None,
            metadata={"source": "cell", "module": module_name, **dict(metadata or {})},
        )
    except BaseException:
        if previous is None:
            sys.modules.pop(module_name, None)
        else:
            sys.modules[module_name] = previous
        _failed_sources.append(filename)
        while len(_failed_sources) > _KEEP_FAILED:
            linecache.cache.pop(_failed_sources.popleft(), None)
        raise
    check_tool_name(definition.name)
    return definition


def trim_to_cell(exc: BaseException) -> BaseException:
    """Cut the worker's own frames off ``exc``'s traceback: it starts in the cell's code.

    A SyntaxError, or our own complaint about the source, keeps no frames at all: its message
    says where the problem is.
    """
    tb = exc.__traceback__
    while tb is not None and not tb.tb_frame.f_code.co_filename.startswith(CELL_PREFIX):
        tb = tb.tb_next
    if tb is not None or isinstance(exc, SyntaxError | SnakepitError):
        exc.__traceback__ = tb
    return exc


def _pick_function(
    module: types.ModuleType, function: str, *, source_label: str
) -> types.FunctionType:
    namespace = module.__dict__
    defined = [
        value
        for value in namespace.values()
        if inspect.isfunction(value) and value.__module__ == module.__name__
    ]
    if function:
        func = namespace.get(function)
        if func is None:
            names = ", ".join(f.__name__ for f in defined) or "no functions"
            raise InvalidArgumentError(
                f"the source of tool {source_label!r} does not define {function!r}; it defines "
                f"{names}"
            )
        if not callable(func):
            raise InvalidArgumentError(
                f"{function!r} in the source of tool {source_label!r} is a "
                f"{type(func).__name__}, not a function"
            )
        return func  # type: ignore[no-any-return]
    if len(defined) != 1:
        names = ", ".join(f.__name__ for f in defined) or "none"
        raise InvalidArgumentError(
            f"say which function is the tool: the source defines {len(defined)} functions ({names})"
        )
    return defined[0]
