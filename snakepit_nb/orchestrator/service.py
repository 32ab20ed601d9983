"""The orchestrator's service API: the one way in for the client facades and the gRPC server.

:class:`~snakepit_nb.orchestrator.orchestrator.Orchestrator` implements :class:`Service`. The
client (``snakepit_nb.client``) and the server (``orchestrator.server``) are typed against this
protocol, not against the orchestrator's parts, so neither can reach into the pool, the
registry or the stores, and a call routed by either takes the same path
(:mod:`~snakepit_nb.orchestrator.routing`). Every method runs on the loop thread.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from snakepit_nb.orchestrator.config import Config
    from snakepit_nb.orchestrator.output import LogText, OutputRouter
    from snakepit_nb.orchestrator.pool.calls.batches import MapResult
    from snakepit_nb.orchestrator.pool.calls.direct import Target
    from snakepit_nb.orchestrator.routing import BatchStream
    from snakepit_nb.orchestrator.sessions import SessionInfo
    from snakepit_nb.orchestrator.status import ClientStatus
    from snakepit_nb.orchestrator.telemetry import TelemetrySubscription
    from snakepit_nb.orchestrator.variables.store import VariableStore
    from snakepit_nb.protocol import pb

__all__ = ["Service"]


class Service(Protocol):
    """What a runtime offers its callers (see the module docstring)."""

    @property
    def config(self) -> Config: ...

    @property
    def run_id(self) -> str: ...

    @property
    def address(self) -> str:
        """Where the orchestrator serves (workers dial it)."""

    @property
    def closed(self) -> bool: ...

    @property
    def output(self) -> OutputRouter:
        """The workers' output: scopes for callers' cells, the per-worker tails."""

    def check_open(self) -> None:
        """Raise ClosedError once the runtime is closing or closed."""

    async def close(self, *, grace: float | None = None) -> None:
        """Stop the workers (SIGTERM, then SIGKILL after ``grace`` s; default: the launcher's
        stop grace) and the server; idempotent."""

    # ---- tools
    def tool_specs(self) -> list[pb.ToolSpec]:
        """Every tool: the workers', the cell-defined ones and the kernel tools, by name."""

    def kernel_tool_specs(self) -> list[pb.ToolSpec]: ...

    async def define_tool(
        self, name: str, source: str, function: str, streaming: bool, description: str
    ) -> pb.ToolSpec:
        """Define (or replace) a tool from source text in every worker, now and later."""

    async def remove_tool(self, name: str) -> None:
        """Remove a cell-defined tool from every worker."""

    def register_kernel_tool(
        self, function: Callable[..., Any], name: str | None, description: str | None
    ) -> pb.ToolSpec: ...

    def unregister_kernel_tool(self, name: str) -> None: ...

    def register_worker_tools(
        self, owner: str, tools: Iterable[pb.ToolRegistration]
    ) -> list[pb.ToolSpec]:
        """Tools a worker announced itself (the published bridge's RegisterTools)."""

    # ---- sessions
    def open_session(
        self,
        session_id: str | None,
        *,
        strict_affinity: bool = False,
        metadata: Mapping[str, str] | None = None,
    ) -> str:
        """Get or create a session; returns its id (a fresh one for ``None``)."""

    def session_info(self, session_id: str) -> SessionInfo: ...

    def session_infos(self) -> list[SessionInfo]:
        """Every live session, oldest first."""

    async def close_session(self, session_id: str) -> bool:
        """Close a session (its variables go with it); False when it did not exist."""

    def heartbeat(self, worker_id: str, session_id: str) -> bool:
        """A worker is alive (and uses ``session_id``); whether that session is valid."""

    # ---- calls
    async def call(
        self,
        session_id: str,
        tool: Target,
        kwargs: Mapping[str, object],
        *,
        args: Sequence[object] = (),
        timeout: float | None,  # noqa: ASYNC109 - the call's deadline
        strict_affinity: bool = False,
        metadata: Mapping[str, str] | None = None,
    ) -> object:
        """Run a tool (by name) or a Python function in a worker, or a kernel tool here."""

    def call_blocking(
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
        """``call`` from a thread that is not the loop's, blocking (the fast path)."""

    async def call_kernel_tool(
        self, session_id: str, tool: str, kwargs: Mapping[str, object]
    ) -> object:
        """Run a kernel tool by name (a worker's ``ExecuteElixirTool``)."""

    def stream(
        self,
        session_id: str,
        tool: str,
        kwargs: Mapping[str, object],
        *,
        timeout: float | None,
        strict_affinity: bool = False,
        metadata: Mapping[str, str] | None = None,
    ) -> BatchStream: ...

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
        """``(ok, value_or_error)`` per item (``style``: ``kwargs``, ``args`` or ``value``)."""

    def map_blocking(
        self,
        session_id: str,
        tool: Target,
        items: Sequence[Any],
        *,
        style: str = "kwargs",
        timeout: float | None,
        metadata: Mapping[str, str] | None = None,
    ) -> list[MapResult]:
        """``map`` from a thread that is not the loop's, blocking (the fast path)."""

    # ---- variables, status, telemetry
    def session_variables(self, session_id: str) -> VariableStore:
        """The variables of a live session (SessionNotFoundError otherwise)."""

    @property
    def max_variable_bytes(self) -> int: ...

    def status(self) -> ClientStatus: ...

    async def reload(self) -> list[str]:
        """Replace the workers one at a time (edited adapter modules are imported anew)."""

    def logs(self, worker: str | None = None, lines: int = 200) -> LogText:
        """The last lines the workers' tools wrote."""

    def subscribe_telemetry(
        self, *, prefix: tuple[str, ...], maxsize: int
    ) -> TelemetrySubscription: ...
