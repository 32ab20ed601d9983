"""``%%snakepit_tool``: a notebook cell becomes a tool.

Worker tools: the cell's source goes to the runtime's ``define_tool``, which ships it to every
worker now and to every worker started later; a redefinition replaces it everywhere. The cell
is checked here first (it must parse and define a function; ``--stream`` needs a generator),
so a typo never reaches a worker. A failing import is only seen by a worker: the worker's
traceback is shown and no worker keeps a half-defined tool.

Kernel tools (``--kernel``): the cell runs in the notebook's namespace, like any cell, and the
function is registered as a kernel tool that workers call through ``ExecuteElixirTool``.
"""

from __future__ import annotations

from typing import Any

from IPython.core.error import UsageError

from snakepit_nb._errors import InvalidArgumentError
from snakepit_nb.tools.source import find_tool_function

CELL_FILENAME = "<snakepit_tool cell>"


def inspect_cell(source: str, function: str | None) -> tuple[str, bool]:
    """(function name, is a generator) of the cell's tool function; UsageError if none."""
    if not source.strip():
        raise UsageError("the cell is empty; write the tool's function below %%snakepit_tool")
    try:
        found = find_tool_function(source, function, filename=CELL_FILENAME)
    except InvalidArgumentError as exc:
        raise UsageError(str(exc)) from None
    return found.function, found.is_generator


def define_cell_tool(
    client: Any,
    source: str,
    *,
    name: str | None,
    function: str | None,
    stream: bool,
    kernel: bool,
    description: str | None,
    namespace: dict[str, Any],
) -> Any:
    """Define the cell's tool; returns its ``ToolSpec``."""
    func_name, generator = inspect_cell(source, function)
    if stream and not generator:
        raise UsageError(
            f"--stream needs a generator: {func_name}() has no `yield`; yield the chunks, or "
            "drop --stream for a tool that returns one value"
        )
    if not kernel:
        return client.define_tool(
            source,
            name=name,
            function=func_name,
            stream=stream or generator,
            description=description,
        )
    code = compile(source, CELL_FILENAME, "exec")
    exec(code, namespace)  # the cell runs here, like any cell: that is what --kernel means
    target = namespace.get(func_name)
    if not callable(target):
        raise UsageError(f"after running the cell, {func_name!r} is not a function")
    return client.register_kernel_tool(target, name=name or func_name, description=description)
