"""The public entry points: ``start``/``astart`` and ``Client``/``AsyncClient``.

One implementation, two facades (like httpx): ``AsyncClient`` holds the logic and runs it on
the ``snakepit-loop`` thread whatever loop awaits it; ``Client`` hands each call to that thread
and blocks, one line per method. A blocking method called on the loop thread itself refuses
(it would deadlock) and says to use the async API.

>>> import snakepit_nb as sp
>>> with sp.start(workers=2) as client:
...     s = client.session("exp1")
...     s.call("add", a=1, b=2)
3
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Callable
from typing import Any

from snakepit_nb._errors import ConfigurationError, InvalidArgumentError
from snakepit_nb._loop import EXIT_CLOSE_RUNTIMES, LoopThread, at_exit, get_loop_thread
from snakepit_nb.client.blocking import blocking_runner
from snakepit_nb.client.sessions import AsyncSession, Session
from snakepit_nb.client.streams import AsyncTelemetryFeed, TelemetryFeed, on_loop
from snakepit_nb.orchestrator.config import Config
from snakepit_nb.orchestrator.launch.base import Launcher
from snakepit_nb.orchestrator.orchestrator import Orchestrator
from snakepit_nb.orchestrator.output import LogText
from snakepit_nb.orchestrator.registry import ToolSpec
from snakepit_nb.orchestrator.service import Service
from snakepit_nb.orchestrator.sessions import SessionInfo
from snakepit_nb.orchestrator.status import ClientStatus
from snakepit_nb.protocol.names import check_tool_name
from snakepit_nb.tools.source import find_tool_function

__all__ = ["AsyncClient", "Client", "ClientStatus", "astart", "start"]


def _parse_tool_source(
    source: str, function: str | None, name: str | None
) -> tuple[str, str, bool, str]:
    """(function, tool name, is a generator, docstring) of a cell's source; checks it parses."""
    try:
        found = find_tool_function(source, function)
    except SyntaxError as exc:
        raise InvalidArgumentError(
            f"the tool's source does not parse: {exc.msg} (line {exc.lineno}); fix the source "
            "(the cell) and define it again (no tool was changed)"
        ) from None
    tool_name = check_tool_name(name or found.function)
    return found.function, tool_name, found.is_generator, found.docstring


class AsyncClient:
    """A running snakepit_nb runtime, awaitable. Get one with ``await sp.astart(...)``.

    >>> aclient = await sp.astart(workers=2)
    >>> s = await aclient.session("exp1")
    >>> await s.call("echo", value=[1, 2.5, None])
    [1, 2.5, None]
    >>> await aclient.aclose()
    """

    def __init__(self, orchestrator: Orchestrator, loop_thread: LoopThread) -> None:
        self._runtime = orchestrator
        # Everything below asks the orchestrator through its service API only.
        self._orch: Service = orchestrator
        self._loop_thread = loop_thread

    @classmethod
    async def _create(cls, config: Config, launcher: Launcher | None = None) -> AsyncClient:
        orchestrator = Orchestrator(config, launcher=launcher)
        await orchestrator.start()
        client = cls(orchestrator, get_loop_thread())
        _live.add(client)
        return client

    # ------------------------------------------------------------------ properties

    @property
    def config(self) -> Config:
        return self._orch.config

    @property
    def address(self) -> str:
        """Where the orchestrator serves (workers dial it)."""
        return self._orch.address

    @property
    def run_id(self) -> str:
        return self._orch.run_id

    @property
    def closed(self) -> bool:
        return self._orch.closed

    @property
    def orchestrator(self) -> Orchestrator:
        """The runtime's internals (server, sessions, registry, pool), for tools and tests."""
        return self._runtime

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{self.config.workers} workers"
        return f"<{type(self).__name__} {self.run_id} {state}>"

    # ------------------------------------------------------------------ tools

    async def tools(self) -> list[ToolSpec]:
        """Every tool: the workers', the cell-defined ones and the kernel tools."""
        return await on_loop(self._loop_thread, self._tools())

    async def _tools(self) -> list[ToolSpec]:
        self._orch.check_open()
        return [ToolSpec.from_pb(spec) for spec in self._orch.tool_specs()]

    async def define_tool(
        self,
        source: str,
        *,
        name: str | None = None,
        function: str | None = None,
        stream: bool = False,
        description: str | None = None,
    ) -> ToolSpec:
        """Make a tool from source text (a notebook cell) in every worker, now and later.

        ``function`` names the tool's function (default: the last one defined); ``name`` the
        tool (default: the function's name). Redefining a name replaces the tool everywhere.
        A source that does not parse or import raises and changes nothing.
        """
        func, tool_name, is_gen, doc = _parse_tool_source(source, function, name)
        return await on_loop(
            self._loop_thread,
            self._define_tool(tool_name, source, func, stream or is_gen, description or doc),
        )

    async def _define_tool(
        self, name: str, source: str, function: str, streaming: bool, description: str
    ) -> ToolSpec:
        spec = await self._orch.define_tool(name, source, function, streaming, description)
        return ToolSpec.from_pb(spec)

    async def remove_tool(self, name: str) -> None:
        """Remove a cell-defined tool from every worker."""
        await on_loop(self._loop_thread, self._orch.remove_tool(name))

    async def register_kernel_tool(
        self,
        function: Callable[..., Any],
        name: str | None = None,
        description: str | None = None,
    ) -> ToolSpec:
        """Let workers call ``function`` (run here, in the kernel) as a tool.

        Sync functions run in a small thread pool, ``async def`` ones on the loop thread.
        Workers call it with ``ctx.call_kernel_tool(name, **kwargs)``.
        """
        return await on_loop(
            self._loop_thread, self._register_kernel_tool(function, name, description)
        )

    async def _register_kernel_tool(
        self, function: Callable[..., Any], name: str | None, description: str | None
    ) -> ToolSpec:
        return ToolSpec.from_pb(self._orch.register_kernel_tool(function, name, description))

    async def unregister_kernel_tool(self, name: str) -> None:
        """Remove a kernel tool."""
        await on_loop(self._loop_thread, self._unregister_kernel_tool(name))

    async def _unregister_kernel_tool(self, name: str) -> None:
        self._orch.unregister_kernel_tool(name)

    # ------------------------------------------------------------------ sessions

    async def session(
        self,
        session_id: str | None = None,
        *,
        strict_affinity: bool = False,
        timeout: float | None = None,  # noqa: ASYNC109 - the default deadline of its calls
    ) -> AsyncSession:
        """Get or create a session (``None``: a fresh id).

        ``strict_affinity=True`` keeps every call of the session on one worker (for objects
        that live in that process); ``timeout`` is the default deadline of its calls.
        """
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0
        ):
            raise InvalidArgumentError(
                f"timeout must be a positive number of seconds or None, not {timeout!r}"
            )
        return await on_loop(self._loop_thread, self._session(session_id, strict_affinity, timeout))

    async def _session(
        self, session_id: str | None, strict_affinity: bool, limit: float | None
    ) -> AsyncSession:
        orch = self._orch
        sid = orch.open_session(session_id, strict_affinity=strict_affinity)
        effective = limit if limit is not None else orch.config.call_timeout
        return AsyncSession(
            orch,
            self._loop_thread,
            sid,
            strict_affinity=orch.session_info(sid).strict_affinity,
            timeout=effective,
        )

    async def sessions(self) -> list[SessionInfo]:
        """Every live session, oldest first."""
        return await on_loop(self._loop_thread, self._sessions())

    async def _sessions(self) -> list[SessionInfo]:
        return self._orch.session_infos()

    # ------------------------------------------------------------------ status and closing

    async def status(self) -> ClientStatus:
        """Workers (pid, state, in-flight, calls, errors, restarts, memory), queue, sessions."""
        return await on_loop(self._loop_thread, self._status())

    async def _status(self) -> ClientStatus:
        return self._orch.status()

    async def reload(self) -> list[str]:
        """Replace the workers one at a time so edited adapter modules are picked up.

        Calls in flight finish on their old worker, new calls go to fresh ones, cell-defined
        tools are replayed and session variables are untouched. Returns the workers replaced;
        raises ``StartupError`` (the rest keep their old code) if a fresh worker cannot start.
        """
        return await on_loop(self._loop_thread, self._reload())

    async def _reload(self) -> list[str]:
        return await self._orch.reload()

    async def logs(self, worker: str | None = None, lines: int = 200) -> LogText:
        """The last ``lines`` lines the tools wrote: ``worker``'s (``"w1"``) or each worker's,
        prefixed ``[w1]``; stderr and logging lines start with ``! ``. Kept per worker slot,
        across its restarts, whether the cell showed them or not."""
        return await on_loop(self._loop_thread, self._logs(worker, lines))

    async def _logs(self, worker: str | None, lines: int) -> LogText:
        return self._orch.logs(worker, lines)

    async def telemetry(
        self, *, prefix: tuple[str, ...] = (), maxsize: int = 1000
    ) -> AsyncTelemetryFeed:
        """A feed of worker telemetry events (``("snakepit", "tool", "stop")``, ...).

        ``prefix`` keeps only events whose name starts with it; at most ``maxsize`` unread
        events are kept (the oldest go first). Workers send telemetry only while a feed is
        open.
        """
        return await on_loop(self._loop_thread, self._telemetry(prefix, maxsize))

    async def _telemetry(self, prefix: tuple[str, ...], maxsize: int) -> AsyncTelemetryFeed:
        subscription = self._orch.subscribe_telemetry(prefix=tuple(prefix), maxsize=maxsize)
        return AsyncTelemetryFeed(self._loop_thread, subscription)

    async def aclose(self) -> None:
        """Stop the workers and the server; idempotent."""
        await on_loop(self._loop_thread, self._orch.close())
        _live.discard(self)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class Client:
    """A running snakepit_nb runtime. Get one with ``sp.start(...)``.

    >>> client = sp.start(workers=2)
    >>> client.tools()[:2]
    [ToolSpec(name='add', ...), ...]
    >>> s = client.session("exp1")
    >>> s.call("add", a=1, b=2)
    3
    >>> client.close()
    """

    def __init__(self, inner: AsyncClient) -> None:
        self._async = inner
        self._run = blocking_runner(inner._loop_thread)

    @property
    def config(self) -> Config:
        return self._async.config

    @property
    def address(self) -> str:
        """Where the orchestrator serves (workers dial it)."""
        return self._async.address

    @property
    def run_id(self) -> str:
        return self._async.run_id

    @property
    def closed(self) -> bool:
        return self._async.closed

    @property
    def orchestrator(self) -> Orchestrator:
        """The runtime's internals (server, sessions, registry, pool), for tools and tests."""
        return self._async.orchestrator

    @property
    def aio(self) -> AsyncClient:
        """The same runtime, awaitable."""
        return self._async

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{self.config.workers} workers"
        return f"<Client {self.run_id} {state}>"

    def _repr_html_(self) -> str:
        from snakepit_nb.display.reprs import client_html

        return client_html(self, None if self.closed else self.status())

    def tools(self) -> list[ToolSpec]:
        """Every tool: the workers', the cell-defined ones and the kernel tools."""
        return self._run(self._async.tools())

    def define_tool(
        self,
        source: str,
        *,
        name: str | None = None,
        function: str | None = None,
        stream: bool = False,
        description: str | None = None,
    ) -> ToolSpec:
        """Make a tool from source text (a notebook cell) in every worker, now and later."""
        return self._run(
            self._async.define_tool(
                source, name=name, function=function, stream=stream, description=description
            )
        )

    def remove_tool(self, name: str) -> None:
        """Remove a cell-defined tool from every worker."""
        return self._run(self._async.remove_tool(name))

    def register_kernel_tool(
        self,
        function: Callable[..., Any],
        name: str | None = None,
        description: str | None = None,
    ) -> ToolSpec:
        """Let workers call ``function`` (run here, in the kernel) as a tool."""
        return self._run(self._async.register_kernel_tool(function, name, description))

    def unregister_kernel_tool(self, name: str) -> None:
        """Remove a kernel tool."""
        return self._run(self._async.unregister_kernel_tool(name))

    def session(
        self,
        session_id: str | None = None,
        *,
        strict_affinity: bool = False,
        timeout: float | None = None,
    ) -> Session:
        """Get or create a session (``None``: a fresh id)."""
        return Session(
            self._run(
                self._async.session(session_id, strict_affinity=strict_affinity, timeout=timeout)
            )
        )

    def sessions(self) -> list[SessionInfo]:
        """Every live session, oldest first."""
        return self._run(self._async.sessions())

    def status(self) -> ClientStatus:
        """Workers (pid, state, in-flight, calls, errors, restarts, memory), queue, sessions."""
        return self._run(self._async.status())

    def reload(self) -> list[str]:
        """Replace the workers one at a time so edited adapter modules are picked up."""
        return self._run(self._async.reload())

    def logs(self, worker: str | None = None, lines: int = 200) -> LogText:
        """The last ``lines`` lines the tools wrote (``client.logs("w1")``, or every worker's)."""
        return self._run(self._async.logs(worker, lines))

    def telemetry(self, *, prefix: tuple[str, ...] = (), maxsize: int = 1000) -> TelemetryFeed:
        """A feed of worker telemetry events; iterate it, ``drain()`` it, ``close()`` it."""
        return TelemetryFeed(self._run(self._async.telemetry(prefix=prefix, maxsize=maxsize)))

    def close(self) -> None:
        """Stop the workers and the server; idempotent."""
        return self._run(self._async.aclose())

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def resolve_launcher(launcher: Launcher | str | None) -> Launcher | None:
    """``launcher=`` of ``sp.start``: None or ``"local"`` (processes on this machine),
    ``"ray"`` (``sp.RayLauncher()``: ``RAY_ADDRESS``, else a local Ray) or a Launcher."""
    if launcher is None or launcher == "local":
        return None
    if launcher == "ray":
        from snakepit_nb.orchestrator.launch.ray_launcher import RayLauncher

        return RayLauncher()
    if isinstance(launcher, Launcher):
        return launcher
    raise ConfigurationError(
        f"launcher must be 'local', 'ray' or a launcher such as sp.RayLauncher(...), not "
        f"{launcher!r}"
    )


def start(*, launcher: Launcher | str | None = None, **config: Any) -> Client:
    """Start an orchestrator and its workers; returns a ``Client``.

    Settings are those of :class:`snakepit_nb.orchestrator.config.Config` (``workers``,
    ``adapter``, ``python``, ``worker_command``, ``env``, ``startup_timeout``,
    ``call_timeout``, ``max_queue``, ``session_ttl``, ...). A worker that does not become ready
    within ``startup_timeout`` raises ``StartupError`` with its stderr tail, and nothing is
    left running. ``launcher``: where the workers run: ``"local"`` (default), ``"ray"`` or
    ``sp.RayLauncher(address=..., num_cpus=..., ...)`` (workers as Ray actors).
    """
    settings = Config.from_kwargs(**config)
    chosen = resolve_launcher(launcher)
    return Client(get_loop_thread().run(AsyncClient._create(settings, chosen)))


async def astart(*, launcher: Launcher | str | None = None, **config: Any) -> AsyncClient:
    """``start``, awaitable: ``aclient = await sp.astart(workers=2)``."""
    settings = Config.from_kwargs(**config)
    chosen = resolve_launcher(launcher)
    return await on_loop(get_loop_thread(), AsyncClient._create(settings, chosen))


# Clients still open at interpreter exit are closed (their workers stopped) once, here: first
# in the one exit path of _loop.at_exit, before the launcher's backup and the loop's stop.
_live: weakref.WeakSet[AsyncClient] = weakref.WeakSet()
_exit_lock = threading.Lock()
#: At exit a worker gets this long between SIGTERM and SIGKILL.
EXIT_GRACE = 0.5


def _close_all_at_exit() -> None:
    with _exit_lock:
        clients = list(_live)
        _live.clear()
        for client in clients:
            loop_thread = client._loop_thread
            if not loop_thread.is_alive() or loop_thread.in_loop_thread():
                continue
            with contextlib.suppress(BaseException):  # best effort at exit
                loop_thread.run(client._orch.close(grace=EXIT_GRACE), timeout=EXIT_GRACE + 2.0)


at_exit(_close_all_at_exit, order=EXIT_CLOSE_RUNTIMES)
