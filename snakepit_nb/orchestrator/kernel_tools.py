"""Kernel tools: Python functions in the notebook kernel that workers can call.

A worker calls one through ``ExecuteElixirTool`` (the published bridge's name for an
orchestrator-side tool; ``ctx.call_kernel_tool(name, **kwargs)`` in a tool). Synchronous
functions run in a small, bounded thread pool (never on the loop thread, so a slow kernel tool
cannot stall the orchestrator); ``async def`` functions run on the loop. Generators stream.

>>> def lookup(key: str) -> str:
...     return notes[key]
>>> client.register_kernel_tool(lookup, description="Read the notebook's notes")
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from snakepit_nb._errors import InvalidArgumentError, ToolNotFoundError
from snakepit_nb.orchestrator.registry import ToolRegistry
from snakepit_nb.protocol import pb
from snakepit_nb.protocol.names import check_tool_name, did_you_mean
from snakepit_nb.tools.definition import StreamKind, ToolDefinition

__all__ = ["KernelTool", "KernelToolStream", "KernelTools"]

log = logging.getLogger(__name__)

# A sync generator is pulled in the thread pool; one hop yields up to this many chunks or runs
# this long, so a fast generator costs one thread hop per batch, not per chunk.
_BATCH_ITEMS = 1000
_BATCH_SECONDS = 0.01


@dataclass(frozen=True)
class KernelTool:
    name: str
    definition: ToolDefinition

    @property
    def spec(self) -> pb.ToolSpec:
        return self.definition.spec()

    @property
    def streaming(self) -> bool:
        return self.definition.stream is not StreamKind.NONE

    @property
    def is_async_generator(self) -> bool:
        return self.definition.stream is StreamKind.ASYNC


class KernelTools:
    """The kernel tools of one runtime (loop thread), backed by ``registry``."""

    def __init__(self, registry: ToolRegistry, *, threads: int = 4) -> None:
        self._registry = registry
        self._tools: dict[str, KernelTool] = {}
        self._threads = threads
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        # Bounds what waits for a thread: the executor's own queue is unbounded.
        self._slots: asyncio.Semaphore | None = None
        self.calls = 0
        self.errors = 0

    # ------------------------------------------------------------------ registration

    def register(
        self,
        function: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
    ) -> pb.ToolSpec:
        """Expose ``function`` to workers as kernel tool ``name`` (default: its ``__name__``).

        Registering a name again replaces the tool.
        """
        if not callable(function):
            raise InvalidArgumentError(
                f"a kernel tool must be a function, not {type(function).__name__}; pass e.g. "
                "client.register_kernel_tool(my_function)"
            )
        tool_name = check_tool_name(name or getattr(function, "__name__", ""))
        # One spec builder and argument checker for worker and kernel tools: the worker's.
        definition = ToolDefinition.from_function(function, name=tool_name, description=description)
        if definition.ctx_param is not None:
            raise InvalidArgumentError(
                f"kernel tool {tool_name!r} takes a session context ({definition.ctx_param!r}), "
                "which only worker tools get; remove that parameter"
            )
        spec = definition.spec()
        spec.metadata["kernel"] = "true"
        spec.metadata["source"] = "kernel"
        spec.metadata["module"] = str(getattr(function, "__module__", "") or "")
        self._registry.add_kernel_tool(spec)
        self._tools[tool_name] = KernelTool(name=tool_name, definition=definition)
        return spec

    def unregister(self, name: str) -> None:
        if self._tools.pop(name, None) is None:
            raise self._not_found(name)
        self._registry.remove_kernel_tool(name)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def names(self) -> list[str]:
        return sorted(self._tools)

    def get(self, name: str) -> KernelTool:
        tool = self._tools.get(name)
        if tool is None:
            raise self._not_found(name)
        return tool

    def _not_found(self, name: str) -> ToolNotFoundError:
        known = ", ".join(self.names()) or "none (register one with client.register_kernel_tool)"
        hint = did_you_mean(name, self.names())
        return ToolNotFoundError(
            f"kernel tool {name!r} is not registered{hint}; kernel tools: {known}"
        )

    # ------------------------------------------------------------------ calling

    def bind(self, tool: KernelTool, kwargs: Mapping[str, object]) -> dict[str, object]:
        """Check ``kwargs`` against the function's signature; InvalidArgumentError naming it."""
        return tool.definition.bind(kwargs)

    async def call(self, name: str, kwargs: Mapping[str, object]) -> object:
        """Run kernel tool ``name``; its exception propagates as is (callers wrap it).

        Unknown names raise ToolNotFoundError and bad arguments InvalidArgumentError before
        the function runs; ``invoke`` is the second half, for callers that bound already.
        """
        tool = self.get(name)
        return await self.invoke(tool, self.bind(tool, kwargs))

    async def invoke(self, tool: KernelTool, arguments: dict[str, object]) -> object:
        """Run an already bound call (see ``bind``)."""
        if tool.streaming:
            stream = KernelToolStream(self, tool, arguments)
            chunks: list[object] = []
            async for batch in stream:
                chunks.extend(batch)
            return chunks if stream.result is None else stream.result
        self.calls += 1
        try:
            function = tool.definition.func
            if tool.definition.is_async:
                return await function(**arguments)
            return await self._in_thread(functools.partial(function, **arguments))
        except BaseException:
            self.errors += 1
            raise

    def stream(self, name: str, kwargs: Mapping[str, object]) -> KernelToolStream:
        """Chunk batches of a generator kernel tool; ``.result`` is its return value."""
        tool = self.get(name)
        if not tool.streaming:
            raise InvalidArgumentError(
                f"kernel tool {name!r} does not stream (it returns one value); use "
                "session.call() for it, or make it a generator to stream"
            )
        return KernelToolStream(self, tool, self.bind(tool, kwargs))

    async def _in_thread(self, fn: Callable[[], Any]) -> Any:
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=self._threads, thread_name_prefix="snakepit-kernel-tool"
            )
            self._slots = asyncio.Semaphore(self._threads)
        assert self._slots is not None
        async with self._slots:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            # Threads still running a kernel tool finish on their own; do not block the loop.
            executor.shutdown(wait=False, cancel_futures=True)


class KernelToolStream:
    """Async iterator over chunk batches of a streaming kernel tool."""

    def __init__(self, tools: KernelTools, tool: KernelTool, arguments: dict[str, object]) -> None:
        self._tools = tools
        self._tool = tool
        self._arguments = arguments
        self.result: object = None
        tools.calls += 1
        self._sync_gen: Iterator[object] | None = None
        self._async_gen: AsyncIterator[object] | None = None
        self._done = False
        self._pending_error: Exception | None = None

    def __aiter__(self) -> KernelToolStream:
        return self

    async def __anext__(self) -> list[object]:
        if self._done:
            raise StopAsyncIteration
        try:
            if self._tool.is_async_generator:
                batch = await self._next_async()
            else:
                batch = await self._tools._in_thread(self._next_sync)
        except BaseException:
            self._done = True
            await self.aclose()
            raise
        if not batch and self._done:
            raise StopAsyncIteration
        return batch

    def _next_sync(self) -> list[object]:
        if self._pending_error is not None:
            error, self._pending_error = self._pending_error, None
            raise error
        if self._sync_gen is None:
            self._sync_gen = iter(self._tool.definition.func(**self._arguments))
        gen = self._sync_gen
        batch: list[object] = []
        deadline = time.monotonic() + _BATCH_SECONDS
        while True:
            try:
                batch.append(next(gen))
            except StopIteration as stop:
                self.result = stop.value
                self._done = True
                return batch
            except Exception as exc:
                if not batch:
                    raise
                # Deliver what was produced before the error; raise it at the next read.
                self._pending_error = exc
                return batch
            if len(batch) >= _BATCH_ITEMS or time.monotonic() >= deadline:
                return batch

    async def _next_async(self) -> list[object]:
        if self._async_gen is None:
            self._async_gen = aiter(self._tool.definition.func(**self._arguments))
        assert self._async_gen is not None
        try:
            return [await self._async_gen.__anext__()]
        except StopAsyncIteration:
            self._done = True
            return []

    async def aclose(self) -> None:
        """Stop the generator (its ``finally`` runs)."""
        self._done = True
        agen, self._async_gen = self._async_gen, None
        if agen is not None:
            await agen.aclose()  # type: ignore[attr-defined]
        gen, self._sync_gen = self._sync_gen, None
        if gen is not None:
            close = getattr(gen, "close", None)
            if close is not None:
                await self._tools._in_thread(close)
