"""Tools defined from notebook cells: sent to every worker, replayed to later ones, atomic.

``define`` sends ``DefineTool`` to every ready worker at once. If any worker refuses (a
syntax error, a missing import in that worker's environment...), the workers that accepted are
rolled back to what they had before and the refusal is raised with that worker's traceback:
the pool never ends up with a tool that only some workers have. Definitions are remembered in
order and replayed to each worker that starts or restarts later, before it takes calls.

Removal travels as a ``DefineTool`` with an empty ``source`` and ``function`` and the metadata
``snakepit_nb.remove = "1"``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import grpc.aio

from snakepit_nb._errors import (
    FailedPreconditionError,
    ToolNotFoundError,
    WorkerUnavailableError,
)
from snakepit_nb.orchestrator.pool.handle import WorkerHandle, WorkerState
from snakepit_nb.protocol import pb
from snakepit_nb.protocol.codec import remote_error_from_payload
from snakepit_nb.protocol.names import check_tool_name
from snakepit_nb.protocol.status import map_rpc_error

if TYPE_CHECKING:
    from snakepit_nb.orchestrator.pool.host import PoolHost

__all__ = ["REMOVE_MARK", "ToolDefinitions"]

log = logging.getLogger("snakepit_nb.pool")

REMOVE_MARK = "snakepit_nb.remove"
_DEFINE_TIMEOUT = 30.0


class ToolDefinitions:
    """The cell-defined tools of one pool."""

    def __init__(self, pool: PoolHost) -> None:
        self.pool = pool
        self._defined: dict[str, pb.DefineToolRequest] = {}
        self._lock = asyncio.Lock()

    def names(self) -> list[str]:
        return list(self._defined)

    async def define(
        self,
        name: str,
        source: str,
        function: str,
        *,
        supports_streaming: bool,
        description: str,
    ) -> pb.ToolSpec:
        tool_name = check_tool_name(name or function)
        request = pb.DefineToolRequest(
            name=tool_name,
            source=source,
            function=function,
            supports_streaming=supports_streaming,
            description=description,
        )
        request.metadata["source"] = "cell"
        async with self._lock:
            targets = self._targets()
            previous = self._defined.get(tool_name)
            outcomes = await asyncio.gather(
                *(self._send(h, request) for h in targets), return_exceptions=True
            )
            failures = [
                (h, o)
                for h, o in zip(targets, outcomes, strict=True)
                if isinstance(o, BaseException)
            ]
            if failures:
                accepted = [
                    h
                    for h, o in zip(targets, outcomes, strict=True)
                    if not isinstance(o, BaseException)
                ]
                await self._roll_back(accepted, tool_name, previous)
                handle, error = failures[0]
                log.info("tool %r refused by worker %s: %s", tool_name, handle.worker_id, error)
                raise error
            spec = pb.ToolSpec()
            for handle, outcome in zip(targets, outcomes, strict=True):
                assert isinstance(outcome, pb.DefineToolResponse)
                spec = outcome.tool
                self._record(handle, spec)
            self._defined[tool_name] = request
            self.pool.registry.add_cell_tool(spec)
            return spec

    async def remove(self, name: str) -> None:
        async with self._lock:
            if name not in self._defined:
                known = ", ".join(self._defined) or "(none)"
                raise ToolNotFoundError(
                    f"tool {name!r} was not defined from a cell, so it cannot be removed; "
                    f"cell-defined tools: {known}"
                )
            targets = self._targets(require=False)
            outcomes = await asyncio.gather(
                *(self._send(h, _removal(name)) for h in targets), return_exceptions=True
            )
            del self._defined[name]
            self.pool.registry.remove_cell_tool(name)
            for handle, outcome in zip(targets, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    log.warning(
                        "removing tool %r from %s failed: %s", name, handle.worker_id, outcome
                    )
                handle.tools.pop(name, None)
                self._register(handle)

    async def replay(self, handle: WorkerHandle) -> None:
        """Send every definition to a worker that is starting (before it takes calls)."""
        if handle.foreign or not self._defined:
            return
        async with self._lock:
            for name, request in list(self._defined.items()):
                try:
                    response = await self._send(handle, request)
                except Exception as exc:
                    handle.last_error = f"replaying cell tool {name!r} failed: {exc}"
                    log.warning("worker %s: %s", handle.worker_id, handle.last_error)
                    continue
                handle.tools[response.tool.name] = response.tool

    # ------------------------------------------------------------------ internals

    def _targets(self, *, require: bool = True) -> list[WorkerHandle]:
        handles = [
            h
            for h in self.pool.handles
            if h.state in (WorkerState.READY, WorkerState.DRAINING) and h.stub is not None
        ]
        foreign = [h.worker_id for h in handles if h.foreign]
        if foreign:
            raise FailedPreconditionError(
                f"worker {foreign[0]} runs a foreign worker program (worker_command), which "
                "cannot define tools from cells; define the tool in its adapter instead"
            )
        if require and not handles:
            raise WorkerUnavailableError(
                "no worker is ready to check the tool definition; wait for the pool to start "
                "(client.status()) and try again"
            )
        return handles

    async def _send(
        self, handle: WorkerHandle, request: pb.DefineToolRequest
    ) -> pb.DefineToolResponse:
        stub = handle.stub
        if stub is None:
            raise WorkerUnavailableError(f"worker {handle.worker_id} is not connected")
        try:
            response: pb.DefineToolResponse = await stub.DefineTool(
                request, metadata=self.pool.metadata, timeout=_DEFINE_TIMEOUT
            )
        except grpc.aio.AioRpcError as exc:
            raise map_rpc_error(exc) from exc
        if not response.success:
            raise remote_error_from_payload(
                response.error_message, tool_name=request.name, worker_id=handle.worker_id
            )
        return response

    async def _roll_back(
        self, handles: list[WorkerHandle], name: str, previous: pb.DefineToolRequest | None
    ) -> None:
        restore = previous if previous is not None else _removal(name)
        outcomes = await asyncio.gather(
            *(self._send(h, restore) for h in handles), return_exceptions=True
        )
        for handle, outcome in zip(handles, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                log.warning(
                    "rolling back tool %r in %s failed: %s", name, handle.worker_id, outcome
                )

    def _record(self, handle: WorkerHandle, spec: pb.ToolSpec) -> None:
        handle.tools[spec.name] = spec
        self._register(handle)

    def _register(self, handle: WorkerHandle) -> None:
        if handle.state in (WorkerState.READY, WorkerState.DRAINING):
            self.pool.registry.register_worker_tools(handle.worker_id, list(handle.tools.values()))


def _removal(name: str) -> pb.DefineToolRequest:
    request = pb.DefineToolRequest(name=name)
    request.metadata[REMOVE_MARK] = "1"
    return request
