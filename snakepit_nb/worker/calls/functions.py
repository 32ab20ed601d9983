"""Functions shipped from the notebook: unpickled once per worker, kept by digest.

``s.call(f, ...)`` and ``s.map(f, items)`` send ``f`` as a :class:`FunctionRef`: its pickle the
first time a worker incarnation sees it, only its digest after that. A worker that no longer
has it (evicted, or a new incarnation) answers ``FUNCTION_UNKNOWN`` and the kernel sends the
body again.
"""

from __future__ import annotations

import collections
import functools
import inspect
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from snakepit_nb._errors import InvalidArgumentError
from snakepit_nb.protocol import pickling
from snakepit_nb.protocol.pickling import FunctionRef
from snakepit_nb.tools.definition import StreamKind, ToolDefinition

__all__ = ["FunctionCache", "function_definition"]

#: Functions kept per worker (least recently used go first).
KEPT = 256


class FunctionCache:
    """Shipped functions by digest (thread-safe)."""

    def __init__(self, kept: int = KEPT) -> None:
        self._kept = kept
        self._functions: collections.OrderedDict[str, Callable[..., Any]] = (
            collections.OrderedDict()
        )
        self._lock = threading.Lock()

    def get(self, ref: FunctionRef) -> Callable[..., Any] | None:
        """The function ``ref`` names (unpickled from its blob, or cached); None when it came
        without a blob and is not cached: the kernel must send it again."""
        with self._lock:
            cached = self._functions.get(ref.digest)
            if cached is not None:
                self._functions.move_to_end(ref.digest)
                return cached
        if ref.blob is None:
            return None
        func: Callable[..., Any] = pickling.loads(ref.blob, what=f"function {ref.name!r}")
        if not callable(func):
            raise InvalidArgumentError(
                f"{ref.name!r} arrived as a {type(func).__name__}, not a callable"
            )
        with self._lock:
            self._functions[ref.digest] = func
            while len(self._functions) > self._kept:
                self._functions.popitem(last=False)
        return func


def function_definition(
    func: Callable[..., Any], name: str, args: Sequence[Any], kwargs: Mapping[str, Any]
) -> ToolDefinition:
    """A one-off tool for one call of a shipped function (the gRPC path runs it like a tool):
    its arguments already bound; a generator function's items are collected into a list."""
    if inspect.isasyncgenfunction(func):
        stream = StreamKind.ASYNC
    elif inspect.isgeneratorfunction(func):
        stream = StreamKind.SYNC
    else:
        stream = StreamKind.NONE
    return ToolDefinition(
        name=name,
        func=functools.partial(func, *args, **kwargs),
        description="",
        parameters=(),
        ctx_param=None,
        var_keyword=False,
        is_async=inspect.iscoroutinefunction(func) or stream is StreamKind.ASYNC,
        stream=stream,
    )
