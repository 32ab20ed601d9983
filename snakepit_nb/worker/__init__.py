"""The worker side: what runs inside each worker process (never imports IPython).

Write an adapter with ``@tool`` methods; the pool runs it with
``python -m snakepit_nb.worker --adapter pkg.mod:Class``::

    from snakepit_nb.worker import Adapter, SessionContext, tool

    class MyAdapter(Adapter):
        @tool
        def add(self, a: int, b: int = 0) -> int:
            \"\"\"Add two integers.\"\"\"
            return a + b

The names load on first use, so ``python -m snakepit_nb.worker`` arms its parent-death signal
before importing gRPC.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from snakepit_nb.tools.adapter import Adapter, ToolTable, tool
    from snakepit_nb.tools.definition import ToolDefinition
    from snakepit_nb.tools.source import define_tool_from_source
    from snakepit_nb.worker.context import SessionContext

__all__ = [
    "Adapter",
    "SessionContext",
    "ToolDefinition",
    "ToolTable",
    "define_tool_from_source",
    "tool",
]

_LAZY = {
    "Adapter": "snakepit_nb.tools.adapter",
    "ToolTable": "snakepit_nb.tools.adapter",
    "tool": "snakepit_nb.tools.adapter",
    "SessionContext": "snakepit_nb.worker.context",
    "ToolDefinition": "snakepit_nb.tools.definition",
    "define_tool_from_source": "snakepit_nb.tools.source",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'snakepit_nb.worker' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
