"""The orchestrator: one runtime's server, sessions, variables, tools and pool, on the loop thread.

``Orchestrator`` only wires the parts together and orders their start and stop: the gRPC
server first (workers ping it before they are ready), then the pool; on close the pool first
(no worker calls back into a closed server), then the server.
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
from collections.abc import Callable
from typing import TYPE_CHECKING

from snakepit_nb._errors import ClosedError
from snakepit_nb.orchestrator.config import Config
from snakepit_nb.orchestrator.kernel_tools import KernelTools
from snakepit_nb.orchestrator.registry import ToolRegistry
from snakepit_nb.orchestrator.server.bridge import BridgeServer, OrchestratorServicer
from snakepit_nb.orchestrator.sessions import SessionStore
from snakepit_nb.orchestrator.telemetry import TelemetryEvent, TelemetryHub
from snakepit_nb.orchestrator.variables.stores import VariableStores
from snakepit_nb.protocol import pb
from snakepit_nb.protocol.auth import new_token

if TYPE_CHECKING:
    from snakepit_nb.orchestrator.launch.base import Launcher
    from snakepit_nb.orchestrator.pool.pool import Pool

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
        self.sessions = SessionStore(
            ttl=config.session_ttl, max_sessions=config.max_sessions, clock=clock
        )
        self.registry = ToolRegistry()
        self.kernel_tools = KernelTools(self.registry, threads=config.kernel_tool_threads)
        self.telemetry = TelemetryHub()
        self.variables = VariableStores(config)
        self.variables.attach_sessions(self.sessions)
        self.sessions.on_cleanup.append(self._forget_session_affinity)
        self._launcher = launcher
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
        await self.serve()
        try:
            await self._start_pool()
        except BaseException:
            await self.close()
            raise
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
            await self._start_server()
            self.sessions.start_sweeper()
        except BaseException:
            await self.close()
            raise
        self._state = "serving"

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
        )
        self.address = await self._server.start()
        log.debug("orchestrator %s serving on %s", self.run_id, self.address)

    async def _start_pool(self) -> None:
        from snakepit_nb.orchestrator.pool.pool import Pool

        pool = Pool(
            self.config,
            orchestrator_address=self.address,
            token=self.token,
            run_id=self.run_id,
            registry=self.registry,
            launcher=self._launcher,
        )
        self._pool = pool
        self.telemetry.attach(self._subscribe_pool_telemetry)
        await pool.start()

    async def close(self) -> None:
        """Stop the pool, then the server; idempotent and safe after a failed start."""
        if self._close_lock is None:
            self._close_lock = asyncio.Lock()
        async with self._close_lock:
            if self._state == "closed":
                return
            self._state = "closing"
            try:
                self.telemetry.close()
                pool, self._pool = self._pool, None
                if pool is not None:
                    try:
                        await pool.close()
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

    # ------------------------------------------------------------------ routing helpers

    def is_kernel_call(self, name: str) -> bool:
        """True when ``name`` runs in the kernel (a kernel tool no worker also serves)."""
        return name in self.kernel_tools and self.registry.worker_tool(name) is None

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
