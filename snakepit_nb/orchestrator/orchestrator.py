"""The orchestrator: one runtime's server, sessions, variables, tools and pool, on the loop thread.

``Orchestrator`` wires the parts together, orders their start and stop (the gRPC server first,
since workers ping it before they are ready, then the pool; on close the pool first, so no
worker calls back into a closed server, then the server) and offers the service API
(:class:`~snakepit_nb.orchestrator.service.Service`) that the client facades and the gRPC
server use. Calls go through one :class:`~snakepit_nb.orchestrator.routing.CallRouter`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from snakepit_nb._errors import ClosedError, InvalidArgumentError, NotFoundError
from snakepit_nb._loop import get_loop_thread
from snakepit_nb.orchestrator.config import Config
from snakepit_nb.orchestrator.kernel_tools import KernelTools
from snakepit_nb.orchestrator.output import LogText, OutputRouter
from snakepit_nb.orchestrator.pool.calls.direct import NOT_DIRECT, Target
from snakepit_nb.orchestrator.registry import ToolRegistry
from snakepit_nb.orchestrator.reload import AdapterWatcher, adapter_source
from snakepit_nb.orchestrator.routing import BatchStream, CallRouter
from snakepit_nb.orchestrator.server.bridge import BridgeServer, OrchestratorServicer
from snakepit_nb.orchestrator.sessions import SessionInfo, SessionStore
from snakepit_nb.orchestrator.status import ClientStatus
from snakepit_nb.orchestrator.telemetry import TelemetryEvent, TelemetryHub, TelemetrySubscription
from snakepit_nb.orchestrator.variables.stores import VariableStores
from snakepit_nb.protocol import pb
from snakepit_nb.protocol.auth import Refusals, new_token

if TYPE_CHECKING:
    from snakepit_nb.orchestrator.launch.base import Launcher, WorkerNetwork
    from snakepit_nb.orchestrator.pool.calls.batches import MapResult
    from snakepit_nb.orchestrator.pool.pool import Pool
    from snakepit_nb.orchestrator.variables.store import VariableStore

__all__ = ["Orchestrator"]

log = logging.getLogger(__name__)


def _private_dir(prefix: str) -> str:
    """A fresh 0700 directory, short enough for unix socket paths (108 bytes)."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    if not base or not os.path.isdir(base) or len(base) > 60:
        base = tempfile.gettempdir()
    path = tempfile.mkdtemp(prefix=prefix, dir=base)
    os.chmod(path, 0o700)
    return path


class Orchestrator:
    """Everything one ``sp.start()`` owns. All methods run on the loop thread."""

    def __init__(
        self,
        config: Config,
        *,
        clock: Callable[[], float] = time.monotonic,
        launcher: Launcher | None = None,
    ) -> None:
        self.config = config
        self.token = new_token()
        self.run_id = f"sp-{uuid.uuid4().hex[:12]}"
        self.address = ""
        # What the pool's workers dial: ``address``, or the TLS port for workers on other
        # machines (a launcher's WorkerNetwork).
        self.worker_address = ""
        self._network: WorkerNetwork | None = None
        self.sessions = SessionStore(
            ttl=config.session_ttl, max_sessions=config.max_sessions, clock=clock
        )
        self.registry = ToolRegistry()
        self.kernel_tools = KernelTools(self.registry, threads=config.kernel_tool_threads)
        self.telemetry = TelemetryHub()
        self.variables = VariableStores(config)
        self.variables.attach_sessions(self.sessions)
        self.sessions.on_cleanup.append(self._forget_session_affinity)
        self.router = CallRouter(
            sessions=self.sessions,
            registry=self.registry,
            kernel_tools=self.kernel_tools,
            variables=self.variables,
            pool=lambda: self.pool,
        )
        #: The workers' output: to the calling cells and a tail per worker (orchestrator/output.py).
        self.output = OutputRouter(config.worker_output, tail_lines=config.log_lines)
        #: Watches the adapter's source file when ``autoreload=True``.
        self.watcher: AdapterWatcher | None = None
        self._launcher = launcher
        # Calls the server refused for want of the token: a foreign worker started without
        # auth=False shows itself there at once (the pool's start watches it).
        self.refusals = Refusals()
        self._pool: Pool | None = None
        self._server: BridgeServer | None = None
        self._socket_dir: str | None = None
        self._state = "new"
        self._close_lock: asyncio.Lock | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def pool(self) -> Pool:
        if self._pool is None:
            raise ClosedError(
                "the worker pool is not running; start one with sp.start() (or %snakepit start)"
            )
        return self._pool

    @property
    def has_pool(self) -> bool:
        return self._pool is not None

    @property
    def closed(self) -> bool:
        return self._state == "closed"

    async def start(self) -> None:
        """Serve, then start the pool; on any failure everything started so far is stopped."""
        watched = (
            adapter_source(self.config.adapter, self.config.cwd) if self.config.autoreload else None
        )
        await self.serve()
        try:
            await self._start_pool()
        except BaseException:
            await self.close()
            raise
        if watched is not None:
            self.watcher = AdapterWatcher(watched, self.reload)
            self.watcher.start()
        self._state = "running"

    async def serve(self) -> None:
        """Start the gRPC server and the session sweeper, without a pool.

        ``start`` does this first; alone, it serves workers started elsewhere (tests, a
        foreign launcher).
        """
        if self._state != "new":
            raise ClosedError("this orchestrator was started already; make a new one")
        self._state = "starting"
        try:
            await self.variables.open(self.sessions)
            await self._prepare_network()
            await self._start_server()
            self.sessions.start_sweeper()
        except BaseException:
            await self.close()
            raise
        self._state = "serving"

    async def _prepare_network(self) -> None:
        from snakepit_nb.orchestrator.launch.base import NetworkLauncher

        if isinstance(self._launcher, NetworkLauncher):
            self._network = await self._launcher.prepare_network()

    async def _start_server(self) -> None:
        socket_path = None
        if self.config.transport == "unix":
            self._socket_dir = _private_dir("snakepit-")
            socket_path = os.path.join(self._socket_dir, "orchestrator.sock")
        self._server = BridgeServer(
            OrchestratorServicer(self),
            token=self.token if self.config.auth else None,
            max_message_bytes=self.config.max_message_bytes,
            max_receive_bytes=self.config.max_callback_bytes,
            socket_path=socket_path,
            refusals=self.refusals,
            tls=self._network.tls if self._network is not None else None,
            tls_host=self._network.callback_host if self._network is not None else "127.0.0.1",
        )
        self.address = await self._server.start()
        self.worker_address = self._server.tls_address or self.address
        log.debug("orchestrator %s serving on %s", self.run_id, self.address)

    async def _start_pool(self) -> None:
        from snakepit_nb.orchestrator.pool.pool import Pool

        pool = Pool(
            self.config,
            orchestrator_address=self.worker_address,
            token=self.token,
            run_id=self.run_id,
            registry=self.registry,
            launcher=self._launcher,
            refusals=self.refusals,
            output=self.output if self.output.captures else None,
        )
        self._pool = pool
        self.telemetry.attach(self._subscribe_pool_telemetry)
        await pool.start()

    async def close(self, *, grace: float | None = None) -> None:
        """Stop the pool, then the server; idempotent and safe after a failed start.

        ``grace``: seconds a worker has between SIGTERM and SIGKILL (default: the launcher's).
        """
        if self._close_lock is None:
            self._close_lock = asyncio.Lock()
        async with self._close_lock:
            if self._state == "closed":
                return
            self._state = "closing"
            try:
                if self.watcher is not None:
                    await self.watcher.close()
                self.telemetry.close()
                pool, self._pool = self._pool, None
                if pool is not None:
                    try:
                        await pool.close(grace=grace)
                    except Exception:
                        log.exception("closing the worker pool failed")
                await self.sessions.stop_sweeper()
                server, self._server = self._server, None
                if server is not None:
                    await server.stop(grace=0.5)
                # Variables close first: a runtime stopping keeps its persisted state, while
                # closing a session deletes it.
                await self.variables.close()
                await self.sessions.clear()
                await self.kernel_tools.close()
            finally:
                if self._socket_dir is not None:
                    with contextlib.suppress(OSError):
                        shutil.rmtree(self._socket_dir)
                    self._socket_dir = None
                self._state = "closed"

    def check_open(self) -> None:
        if self._state in ("closing", "closed"):
            raise ClosedError("this client was closed; start a new one with sp.start()")

    async def reload(self) -> list[str]:
        """Replace the workers one at a time, so edited adapter modules are imported anew.

        Calls in flight finish on the worker they run on; new calls go to the others (or wait
        for a fresh one); cell-defined tools are replayed; session variables are untouched.
        Returns the ids of the workers replaced.
        """
        self.check_open()
        return await self.pool.reload()

    def logs(self, worker: str | None = None, lines: int = 200) -> LogText:
        """The last ``lines`` lines the workers' tools wrote (one worker's, or each's)."""
        if worker is not None and self._pool is not None:
            known = [h.worker_id for h in self._pool.handles]
            if worker not in known:
                raise NotFoundError(
                    f"no worker {worker!r} in this pool; its workers are {', '.join(known)}"
                )
        return self.output.logs(worker, lines)

    # ------------------------------------------------------------------ service: tools

    def tool_specs(self) -> list[pb.ToolSpec]:
        """Every tool: the workers', the cell-defined ones and the kernel tools, by name."""
        return sorted(self.registry.specs(), key=lambda s: s.name)

    def kernel_tool_specs(self) -> list[pb.ToolSpec]:
        return self.registry.kernel_tools()

    async def define_tool(
        self, name: str, source: str, function: str, streaming: bool, description: str
    ) -> pb.ToolSpec:
        """Define (or replace) a tool from source text in every worker, now and later."""
        self.check_open()
        return await self.pool.define_tool(name, source, function, streaming, description)

    async def remove_tool(self, name: str) -> None:
        """Remove a cell-defined tool from every worker."""
        self.check_open()
        cells = [s.name for s in self.registry.cell_tools()]
        if name not in cells:
            raise InvalidArgumentError(
                f"{name!r} is not a cell-defined tool, so it cannot be removed; cell-defined "
                f"tools: {', '.join(cells) or 'none'}"
            )
        await self.pool.remove_tool(name)

    def register_kernel_tool(
        self, function: Callable[..., Any], name: str | None, description: str | None
    ) -> pb.ToolSpec:
        self.check_open()
        return self.kernel_tools.register(function, name=name, description=description)

    def unregister_kernel_tool(self, name: str) -> None:
        self.check_open()
        self.kernel_tools.unregister(name)

    def register_worker_tools(
        self, owner: str, tools: Iterable[pb.ToolRegistration]
    ) -> list[pb.ToolSpec]:
        return self.registry.add_worker_tools(owner, tools)

    # ------------------------------------------------------------------ service: sessions

    def open_session(
        self,
        session_id: str | None,
        *,
        strict_affinity: bool = False,
        metadata: Mapping[str, str] | None = None,
    ) -> str:
        """Get or create a session; returns its id (a fresh one for ``None``)."""
        self.check_open()
        record = self.sessions.create(
            session_id, strict_affinity=strict_affinity, metadata=dict(metadata or {})
        )
        return record.session_id

    def session_info(self, session_id: str) -> SessionInfo:
        self.check_open()
        record = self.sessions.get(session_id)
        last_worker = record.last_worker
        if self._pool is not None:
            # The pool's dispatcher knows where the session's calls ran (its affinity hint).
            last_worker = self._pool.dispatcher.bound_worker(session_id) or last_worker
        store = self.variables.peek(session_id)
        return SessionInfo(
            session_id=record.session_id,
            created_at=record.created_at,
            idle_seconds=self.sessions.idle_seconds(record),
            call_count=record.call_count,
            error_count=record.error_count,
            last_worker=last_worker,
            strict_affinity=record.strict_affinity,
            variable_count=0 if store is None else len(store),
            metadata=dict(record.metadata),
        )

    def session_infos(self) -> list[SessionInfo]:
        """Every live session, oldest first."""
        self.check_open()
        return [self.session_info(r.session_id) for r in self.sessions.records()]

    async def close_session(self, session_id: str) -> bool:
        """Close a session (its variables go with it); False when it did not exist."""
        if self.closed:
            return False
        return await self.sessions.cleanup(session_id)

    def heartbeat(self, worker_id: str, session_id: str) -> bool:
        """A worker is alive (and uses ``session_id``); whether that session is valid."""
        if worker_id and self._pool is not None:
            self._pool.record_heartbeat(worker_id)
        return bool(session_id) and self.sessions.touch(session_id)

    # ------------------------------------------------------------------ service: calls

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
        self.check_open()
        return await self.router.call(
            session_id,
            tool,
            kwargs,
            args=args,
            timeout=timeout,
            strict_affinity=strict_affinity,
            metadata=metadata,
        )

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
        """``call`` from any thread but the loop's: over the worker's lane from this very
        thread when it can (the fast path), else through the loop."""
        self.check_open()
        result = self.router.call_direct(
            session_id,
            tool,
            args,
            kwargs,
            timeout=timeout,
            strict_affinity=strict_affinity,
            metadata=metadata,
        )
        if result is not NOT_DIRECT:
            return result
        return get_loop_thread().run(
            self.call(
                session_id,
                tool,
                kwargs,
                args=args,
                timeout=timeout,
                strict_affinity=strict_affinity,
                metadata=metadata,
            )
        )

    async def call_kernel_tool(
        self, session_id: str, tool: str, kwargs: Mapping[str, object]
    ) -> object:
        """Run a kernel tool by name (a worker's ``ExecuteElixirTool``)."""
        self.check_open()
        if session_id:
            self.sessions.get(session_id)
        return await self.router.call_kernel_tool(session_id, tool, kwargs)

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
        self.check_open()
        return self.router.stream(
            session_id,
            tool,
            kwargs,
            timeout=timeout,
            strict_affinity=strict_affinity,
            metadata=metadata,
        )

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
        self.check_open()
        return await self.router.map(
            session_id, tool, items, style=style, timeout=timeout, metadata=metadata
        )

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
        """``map`` from a thread that is not the loop's: over the lanes from this thread when
        it can, else through the loop."""
        self.check_open()
        results = self.router.map_direct(
            session_id, tool, items, style=style, timeout=timeout, metadata=metadata
        )
        if results is not NOT_DIRECT:
            return results
        return get_loop_thread().run(
            self.map(session_id, tool, items, style=style, timeout=timeout, metadata=metadata)
        )

    # ------------------------------------------------------------------ service: the rest

    def session_variables(self, session_id: str) -> VariableStore:
        """The variables of a live session (SessionNotFoundError otherwise)."""
        self.check_open()
        self.sessions.get(session_id)
        return self.variables.for_session(session_id)

    @property
    def max_variable_bytes(self) -> int:
        return self.variables.limits.max_value_bytes

    def status(self) -> ClientStatus:
        """Workers, queue, sessions and tools, as ``client.status()`` shows them."""
        self.check_open()
        pool_status = self.pool.status()
        return ClientStatus(
            run_id=self.run_id,
            address=self.address,
            workers=tuple(pool_status.workers),
            queue_length=pool_status.queue_length,
            sessions=self.sessions.stats(),
            tools=len(self.registry.specs()),
            kernel_tools=len(self.kernel_tools.names()),
            pool=pool_status,
        )

    def subscribe_telemetry(
        self, *, prefix: tuple[str, ...], maxsize: int
    ) -> TelemetrySubscription:
        self.check_open()
        return self.telemetry.subscribe(maxsize=maxsize, prefix=tuple(prefix))

    def variable_count(self, session_id: str) -> int:
        store = self.variables.peek(session_id)
        return 0 if store is None else len(store)

    # ------------------------------------------------------------------ internals

    def _subscribe_pool_telemetry(
        self, publish: Callable[[TelemetryEvent], None]
    ) -> Callable[[], None]:
        # Workers stream telemetry only while somebody listens: the hub subscribes to the pool
        # on its first subscriber and unsubscribes after its last.
        if self._pool is None:
            return lambda: None

        def forward(worker_id: str, event: pb.TelemetryEvent) -> None:
            publish(TelemetryEvent.from_pb(event, worker_id=worker_id))

        return self._pool.subscribe_telemetry(forward)

    def _forget_session_affinity(self, session_id: str, reason: str) -> None:
        if self._pool is not None:
            self._pool.forget_session(session_id)
