"""Where a call goes: a kernel tool runs here, in the kernel; any other tool in a worker.

This is the one routing path. The client facades (a notebook's ``s.call``) and the gRPC server
(a worker calling ``ExecuteTool`` on the orchestrator) both come through :class:`CallRouter`,
so both see the same rules:

* a name that is a kernel tool and not also a worker tool runs in the kernel (sync functions in
  a small thread pool, ``async def`` ones on the loop); its exception becomes a
  :class:`~snakepit_nb.RemoteToolError` shaped like a worker tool's (``worker_id="kernel"``);
* any other name goes to the pool, with the variables the tool declares (``required_variables``)
  sent along, so reading them costs no round trip;
* every call is counted in its session's statistics.
"""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from snakepit_nb._errors import (
    CallTimeoutError,
    ClosedError,
    InvalidArgumentError,
    RemoteToolError,
)
from snakepit_nb.orchestrator.pool.calls.direct import NOT_DIRECT, Target

if TYPE_CHECKING:
    from snakepit_nb.orchestrator.kernel_tools import KernelTools
    from snakepit_nb.orchestrator.pool.calls.batches import MapResult
    from snakepit_nb.orchestrator.pool.pool import Pool
    from snakepit_nb.orchestrator.registry import ToolRegistry
    from snakepit_nb.orchestrator.sessions import SessionStore
    from snakepit_nb.orchestrator.variables.stores import VariableStores
    from snakepit_nb.protocol import pb

__all__ = ["BatchStream", "CallRouter", "kernel_tool_error"]


class BatchStream(Protocol):
    """A streaming call in progress: ``async for batch in stream`` yields lists of chunks;
    ``result`` is the generator's return value once it ended; ``aclose()`` stops it."""

    result: object

    def __aiter__(self) -> AsyncIterator[list[object]]: ...

    async def __anext__(self) -> list[object]: ...

    async def aclose(self) -> None: ...


def kernel_tool_error(exc: BaseException, tool: str, session_id: str) -> RemoteToolError:
    """A kernel tool's exception, shaped like a worker tool's."""
    return RemoteToolError(
        type(exc).__name__,
        str(exc),
        "".join(traceback.format_exception(exc)),
        tool_name=tool,
        session_id=session_id,
        worker_id="kernel",
    )


class CallRouter:
    """Routes calls, streams and maps to the kernel or to the pool (loop thread only)."""

    def __init__(
        self,
        *,
        sessions: SessionStore,
        registry: ToolRegistry,
        kernel_tools: KernelTools,
        variables: VariableStores,
        pool: Callable[[], Pool],
    ) -> None:
        self._sessions = sessions
        self._registry = registry
        self._kernel = kernel_tools
        self._variables = variables
        self._pool = pool

    def is_kernel_call(self, name: str) -> bool:
        """True when ``name`` runs in the kernel (a kernel tool no worker also serves)."""
        return name in self._kernel and self._registry.worker_tool(name) is None

    def _prefetch(self, session_id: str, tool: str) -> Sequence[pb.Variable]:
        spec = self._registry.worker_tool(tool)
        required = spec.required_variables if spec is not None else ()
        return self._variables.prefetch(session_id, required) if required else ()

    # ------------------------------------------------------------------ calls

    async def call(
        self,
        session_id: str,
        tool: Target,
        kwargs: Mapping[str, object],
        *,
        args: Sequence[object] = (),
        timeout: float | None,  # noqa: ASYNC109 - the call's deadline, queueing included
        strict_affinity: bool = False,
        metadata: Mapping[str, str] | None = None,
    ) -> object:
        self._sessions.get(session_id)
        if isinstance(tool, str) and self.is_kernel_call(tool):
            if args:
                raise InvalidArgumentError(
                    f"kernel tool {tool!r} takes its arguments by name; pass them as name=value"
                )
            return await self.call_kernel_tool(session_id, tool, kwargs, timeout=timeout)
        try:
            result = await self._pool().call(
                session_id,
                tool,
                kwargs,
                args=args,
                timeout=timeout,
                affinity="strict" if strict_affinity else "hint",
                metadata=metadata,
                variables=self._prefetch(session_id, tool) if isinstance(tool, str) else (),
            )
        except Exception:
            self._sessions.record_call(session_id, failed=True)
            raise
        self._sessions.record_call(session_id)
        return result

    def call_direct(
        self,
        session_id: str,
        tool: Target,
        args: Sequence[object],
        kwargs: Mapping[str, object],
        *,
        timeout: float | None,
        strict_affinity: bool = False,
        metadata: Mapping[str, str] | None = None,
    ) -> object:
        """The call from this thread over a worker's lane, or NOT_DIRECT (then use ``call``).

        Not for kernel tools, tools that read declared variables (those are prefetched on the
        loop), unknown or expired sessions (the loop path says which), or a closed pool.
        """
        if isinstance(tool, str):
            if self.is_kernel_call(tool):
                return NOT_DIRECT
            spec = self._registry.worker_tool(tool)
            if spec is not None and spec.required_variables:
                return NOT_DIRECT
        if not self._sessions.touch_live(session_id):
            return NOT_DIRECT
        try:
            pool = self._pool()
        except ClosedError:
            return NOT_DIRECT
        try:
            result = pool.call_direct(
                session_id,
                tool,
                args,
                kwargs,
                timeout=timeout,
                affinity="strict" if strict_affinity else "hint",
                metadata=metadata or {},
            )
        except Exception:
            self._sessions.record_call(session_id, failed=True)
            raise
        if result is not NOT_DIRECT:
            self._sessions.record_call(session_id)
        return result

    async def call_kernel_tool(
        self,
        session_id: str,
        tool: str,
        kwargs: Mapping[str, object],
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - the call's deadline
    ) -> object:
        """Run kernel tool ``tool``; its own exception becomes a RemoteToolError."""
        kernel = self._kernel
        spec = kernel.get(tool)
        arguments = kernel.bind(spec, kwargs)
        self._sessions.record_call(session_id, "kernel")
        try:
            async with asyncio.timeout(timeout):
                return await kernel.invoke(spec, arguments)
        except TimeoutError as exc:
            raise CallTimeoutError(
                f"kernel tool {tool!r} did not finish within {timeout} s; pass a larger "
                "_timeout= or make the tool faster"
            ) from exc
        except Exception as exc:
            self._sessions.record_call(session_id, None, failed=True, calls=0)
            raise kernel_tool_error(exc, tool, session_id) from exc

    # ------------------------------------------------------------------ streams

    def stream(
        self,
        session_id: str,
        tool: str,
        kwargs: Mapping[str, object],
        *,
        timeout: float | None,
        strict_affinity: bool = False,
        metadata: Mapping[str, str] | None = None,
    ) -> BatchStream:
        self._sessions.get(session_id)
        if self.is_kernel_call(tool):
            return _KernelStream(self._kernel, session_id, tool, kwargs)
        self._sessions.record_call(session_id)
        return self._pool().stream(
            session_id,
            tool,
            kwargs,
            timeout=timeout,
            affinity="strict" if strict_affinity else "hint",
            metadata=metadata,
            variables=self._prefetch(session_id, tool),
        )

    # ------------------------------------------------------------------ maps

    async def map(
        self,
        session_id: str,
        tool: Target,
        items: Sequence[Any],
        *,
        style: str = "kwargs",
        timeout: float | None,  # noqa: ASYNC109 - one deadline for the whole map
        metadata: Mapping[str, str] | None = None,
    ) -> list[MapResult]:
        """``(ok, value_or_error)`` per item, in input order.

        ``style``: items are dicts of keyword arguments (``"kwargs"``, the only one for
        tools), tuples of positional arguments (``"args"``) or single arguments (``"value"``).
        """
        self._sessions.get(session_id)
        if not items:
            return []
        if isinstance(tool, str) and self.is_kernel_call(tool):
            outcomes = await asyncio.gather(
                *(self.call_kernel_tool(session_id, tool, kw, timeout=timeout) for kw in items),
                return_exceptions=True,
            )
            return [(not isinstance(o, BaseException), o) for o in outcomes]
        results = await self._pool().map(
            session_id, tool, items, style=style, timeout=timeout, metadata=metadata
        )
        self._count(session_id, results)
        return results

    def map_direct(
        self,
        session_id: str,
        tool: Target,
        items: Sequence[Any],
        *,
        style: str,
        timeout: float | None,
        metadata: Mapping[str, str] | None = None,
    ) -> list[MapResult] | Any:
        """The map from this thread over the workers' lanes, or NOT_DIRECT (see call_direct)."""
        if isinstance(tool, str) and self.is_kernel_call(tool):
            return NOT_DIRECT
        if not items or not self._sessions.touch_live(session_id):
            return NOT_DIRECT
        try:
            pool = self._pool()
        except ClosedError:
            return NOT_DIRECT
        results = pool.map_direct(
            session_id, tool, items, style=style, timeout=timeout, metadata=metadata
        )
        if results is not NOT_DIRECT:
            self._count(session_id, results)
        return results

    def _count(self, session_id: str, results: Sequence[MapResult]) -> None:
        failures = sum(1 for ok, _ in results if not ok)
        self._sessions.record_call(session_id, calls=len(results), failures=failures)


class _KernelStream:
    """Batches of a streaming kernel tool, with its errors shaped like a worker's."""

    def __init__(
        self, kernel: KernelTools, session_id: str, tool: str, kwargs: Mapping[str, object]
    ) -> None:
        self._inner = kernel.stream(tool, kwargs)
        self._tool = tool
        self._session_id = session_id
        self.result: object = None

    def __aiter__(self) -> _KernelStream:
        return self

    async def __anext__(self) -> list[object]:
        try:
            batch = await self._inner.__anext__()
        except StopAsyncIteration:
            self.result = self._inner.result
            raise
        except Exception as exc:
            raise kernel_tool_error(exc, self._tool, self._session_id) from exc
        return batch

    async def aclose(self) -> None:
        await self._inner.aclose()
