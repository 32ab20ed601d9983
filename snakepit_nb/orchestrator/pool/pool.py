"""The worker pool: N supervised worker processes, and every way to call a tool in them.

>>> pool = Pool(config, orchestrator_address=server.address, token=token, run_id=run_id,
...             registry=registry)
>>> await pool.start()                                  # N workers, started concurrently
>>> await pool.call("s1", "add", {"a": 1, "b": 2}, timeout=5.0)
3
>>> async for batch in pool.stream("s1", "count", {"n": 3}, timeout=None):
...     print(batch)                                    # decoded chunks, in batches
>>> await pool.map("s1", "add", [{"a": i, "b": 1} for i in range(10_000)], timeout=None)
[(True, 1), (True, 2), ...]
>>> pool.status().workers[0].state
'ready'

Calls to our workers travel over one multiplexed call channel per worker (see
:mod:`~snakepit_nb.orchestrator.pool.channel`); workers that do not serve it (the published Snakepit
worker, run with ``worker_command=[...]``) get one plain ``ExecuteTool`` RPC per call.
Each worker runs up to ``capacity`` calls of sync tools (in its threads; 1 by default) and,
besides, up to ``async_capacity`` calls of async tools (on its event loop), as the tool's spec
(``async`` metadata) says; tools whose spec is unknown count as sync.
Semantics: at-most-once by default; a call of a tool whose spec says ``idempotent`` is retried
once on another (or the replacement) worker when its worker dies.

Foreign workers and the token: every RPC between the orchestrator and our workers carries the
runtime's secret token, so no other local process can call either side. A foreign worker
(``worker_command=[...]``, e.g. the published ``grpc_server.py``) cannot send it, so running
one needs ``auth=False``: then any process on this machine that finds the orchestrator's
loopback port can call it (read and write session variables, call kernel tools). Opt in only
for workers you trust, on a machine you do not share. Foreign workers get no call channel, no
batching and no cell-defined tools; their tools appear once they register them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import grpc
import grpc.aio

from snakepit_nb._errors import (
    CallTimeoutError,
    ClosedError,
    StartupError,
    WorkerCrashedError,
)
from snakepit_nb._loop import running_on
from snakepit_nb.orchestrator.pool.calls.batches import MapResult, run_map
from snakepit_nb.orchestrator.pool.calls.direct import NOT_DIRECT, Target, direct_call, target_name
from snakepit_nb.orchestrator.pool.calls.direct_map import direct_map
from snakepit_nb.orchestrator.pool.calls.requests import build_request
from snakepit_nb.orchestrator.pool.calls.streams import StreamCall
from snakepit_nb.orchestrator.pool.calls.unary import Call, call_once
from snakepit_nb.orchestrator.pool.definitions import ToolDefinitions
from snakepit_nb.orchestrator.pool.dispatch import Dispatcher
from snakepit_nb.orchestrator.pool.handle import WorkerGone, WorkerHandle, WorkerState, WorkerStatus
from snakepit_nb.orchestrator.pool.supervision import Supervisor
from snakepit_nb.protocol import pb

if TYPE_CHECKING:
    from snakepit_nb.orchestrator.config import Config
    from snakepit_nb.orchestrator.launch.base import Launcher
    from snakepit_nb.orchestrator.output import OutputRouter
    from snakepit_nb.orchestrator.registry import ToolRegistry
    from snakepit_nb.protocol.auth import Refusals

__all__ = ["MapResult", "Pool", "PoolStatus", "StreamCall", "WorkerStatus"]

log = logging.getLogger("snakepit_nb.pool")
# A library stays quiet unless the application configures logging (no "last resort" output).
logging.getLogger("snakepit_nb").addHandler(logging.NullHandler())

#: Extra attempts for a tool marked idempotent whose worker died during the call.
IDEMPOTENT_RETRIES = 1
# After the first refused call while foreign workers start: how long to let them finish.
_REFUSAL_SETTLE = 1.0
_REFUSED = "the orchestrator refused"

TelemetryCallback = Callable[[str, pb.TelemetryEvent], None]


@dataclass(frozen=True)
class PoolStatus:
    """A snapshot of the pool, as ``client.status()`` shows it."""

    workers: list[WorkerStatus]
    queue_length: int
    max_queue: int
    capacity: int
    uptime: float
    closed: bool = False
    totals: dict[str, int] = field(default_factory=dict)
    async_capacity: int = 64

    @property
    def ready(self) -> int:
        return sum(1 for w in self.workers if w.state == WorkerState.READY.value)


class Pool:
    """N supervised workers; see the module docstring."""

    def __init__(
        self,
        config: Config,
        *,
        orchestrator_address: str,
        token: str | None,
        run_id: str,
        registry: ToolRegistry,
        launcher: Launcher | None = None,
        refusals: Refusals | None = None,
        output: OutputRouter | None = None,
    ) -> None:
        self.config = config
        #: Where the workers' output goes (None: not read).
        self.output = output
        self.refusals = refusals
        self.registry = registry
        self.run_id = run_id
        self.token = token if config.auth else None
        if launcher is None:
            from snakepit_nb.orchestrator.launch.local import LocalProcessLauncher

            transport: Literal["tcp", "unix"] = "unix" if config.transport == "unix" else "tcp"
            launcher = LocalProcessLauncher(run_id=run_id, transport=transport)
        self.launcher = launcher
        self.handles = [
            WorkerHandle(
                f"w{i + 1}", capacity=config.capacity, async_capacity=config.async_capacity
            )
            for i in range(config.workers)
        ]
        self.dispatcher = Dispatcher(self.handles, max_queue=config.max_queue)
        self.supervisor = Supervisor(
            config,
            handles=self.handles,
            dispatcher=self.dispatcher,
            launcher=launcher,
            orchestrator_address=orchestrator_address,
            token=self.token,
            run_id=run_id,
            prepare=self._prepare_worker,
            on_gone=self._worker_gone,
        )
        self.metadata = self.supervisor.metadata
        self.definitions = ToolDefinitions(self)
        self._telemetry_callbacks: list[TelemetryCallback] = []
        self._telemetry_tasks: dict[str, asyncio.Task[None]] = {}
        self._started_at = 0.0
        self._closed = False
        self._loop = asyncio.get_running_loop()
        # Threads that run lane calls started on the loop (encoding, I/O, decoding).
        self.lane_executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=max(4, min(64, config.workers * (config.capacity + 2))),
            thread_name_prefix="snakepit-lane",
        )
        self._reload_lock = asyncio.Lock()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start every worker concurrently. StartupError (with the stderr tail) if one fails;
        then nothing is left running."""
        if self._closed:
            raise ClosedError("this pool was closed; start a new one with sp.start()")
        self._started_at = time.monotonic()
        try:
            if self.config.worker_command and self.config.auth and self.refusals is not None:
                await self._start_foreign(self.refusals)
            else:
                await self.supervisor.start_all()
        except StartupError as exc:
            await self.close()
            if (
                self.config.worker_command
                and self.config.auth
                and not exc.args[0].startswith(_REFUSED)
            ):
                raise StartupError(
                    f"{exc}\nA foreign worker program cannot send the runtime token; if this one "
                    "does not, start with auth=False (see the security note in the docs)."
                ) from exc
            raise
        except BaseException:
            await self.close()
            raise

    async def _start_foreign(self, refusals: Refusals) -> None:
        """Start foreign workers with auth on, failing at once if they cannot send the token.

        A worker program that does not know the runtime token calls the orchestrator without
        it (the published worker's first Ping): the server refuses that call, and waiting out
        ``startup_timeout`` would only hide why.
        """
        starting = asyncio.ensure_future(self.supervisor.start_all())
        refused = asyncio.ensure_future(refusals.wait())
        try:
            await asyncio.wait((starting, refused), return_when=asyncio.FIRST_COMPLETED)
            if not starting.done():
                # A moment for a worker that does send the token (the refusal was a stranger's).
                await asyncio.wait((starting,), timeout=_REFUSAL_SETTLE)
            if starting.done():
                starting.result()
                return
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
            command = " ".join(self.config.worker_command or ())
            raise StartupError(
                f"{_REFUSED} {refusals.describe()} while the foreign worker "
                f"({command}) was starting: it does not send the runtime token, so it can never "
                'become ready. Start it with auth=False, preferably with transport="unix" too '
                "(without the token any local process that finds the orchestrator can call it; "
                "a unix socket in a private directory keeps other users out)"
            )
        finally:
            refused.cancel()

    async def close(self, *, grace: float | None = None) -> None:
        """Stop every worker; calls still running fail with ClosedError. Idempotent.

        ``grace``: seconds between SIGTERM and SIGKILL (default: the launcher's stop grace).
        """
        if self._closed:
            return
        self._closed = True
        for task in self._telemetry_tasks.values():
            task.cancel()
        await self.supervisor.close(grace=grace)
        self._telemetry_tasks.clear()
        self.lane_executor.shutdown(wait=False, cancel_futures=True)
        if self.output is not None:
            await self.output.aclose()

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("the pool is closed; start a new one with sp.start()")

    # ------------------------------------------------------------------ unary calls

    async def call(
        self,
        session_id: str,
        tool: Target,
        kwargs: Mapping[str, object],
        *,
        args: Sequence[object] = (),
        timeout: float | None,  # noqa: ASYNC109 - the pool's contract; covers queueing too
        affinity: str = "hint",
        metadata: Mapping[str, str] | None = None,
        variables: Sequence[pb.Variable] = (),
    ) -> object:
        """Run ``tool(*args, **kwargs)`` in a worker and return its decoded result.

        ``tool`` is a tool's name or a Python function (shipped pickled). Raises
        RemoteToolError (the tool raised), CallTimeoutError (``timeout`` seconds passed,
        queueing included; the worker is told to stop), WorkerCrashedError, PoolSaturatedError,
        SessionWorkerGoneError / WorkerFailedError, or the error a worker reports for bad
        arguments or an unknown tool.
        """
        self._check_open()
        if timeout is None:
            timeout = self.config.call_timeout
        name = target_name(tool)
        call = Call(session_id, tool, args, kwargs, metadata or {}, variables, self.pickles)
        if not call.pickles and (not isinstance(tool, str) or args):
            call.request()  # refuses, before a worker is taken, what only our workers take
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout is not None else None
        attempt = 0
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    return await call_once(self, call, affinity, deadline)
            except TimeoutError as exc:
                raise CallTimeoutError(
                    f"call of {name!r} did not finish within {timeout:g} s{self._stuck_note()}; "
                    "the worker was told to stop it — pass a larger timeout if it is only slow"
                ) from exc
            except WorkerCrashedError:
                if attempt >= IDEMPOTENT_RETRIES or not self.is_idempotent(name):
                    raise
                attempt += 1
                log.info("retrying idempotent tool %r after its worker died", name)

    def _stuck_note(self) -> str:
        """Which workers take no calls because a cancelled call has not stopped yet."""
        notes = []
        for handle in self.handles:
            stuck = handle.stuck_call()
            if stuck is not None and handle.state is WorkerState.READY:
                tool, seconds = stuck
                notes.append(
                    f"worker {handle.worker_id} is still running {tool!r}, cancelled {seconds:.1f} "
                    "s ago, and takes no new calls until it stops or is replaced "
                    f"(cancel_grace={self.config.cancel_grace:g} s)"
                )
        return f" ({'; '.join(notes)})" if notes else ""

    def call_direct(
        self,
        session_id: str,
        tool: Target,
        args: Sequence[object],
        kwargs: Mapping[str, object],
        *,
        timeout: float | None,
        affinity: str,
        metadata: Mapping[str, str],
    ) -> object:
        """The call from this (non-loop) thread over a lane, or NOT_DIRECT (see pool/direct)."""
        name = target_name(tool)
        attempt = 0
        while True:
            if self._closed:
                return NOT_DIRECT
            try:
                return direct_call(
                    self,
                    session_id,
                    tool,
                    args,
                    kwargs,
                    timeout=self.config.call_timeout if timeout is None else timeout,
                    affinity=affinity,
                    metadata=metadata,
                )
            except WorkerCrashedError:
                if attempt >= IDEMPOTENT_RETRIES or not self.is_idempotent(name):
                    raise
                attempt += 1
                log.info("retrying idempotent tool %r after its worker died", name)

    @property
    def pickles(self) -> bool:
        """Whether values may travel pickled: our own workers, on the token-checked channel."""
        return self.config.auth and not self.config.worker_command

    def tool_spec(self, tool: str) -> pb.ToolSpec | None:
        """The spec of a worker tool, or None while it is unknown (not registered yet)."""
        spec = self.registry.worker_tool(tool)
        if spec is None:
            for handle in self.handles:
                spec = handle.tools.get(tool)
                if spec is not None:
                    break
        return spec

    def is_idempotent(self, tool: str) -> bool:
        spec = self.tool_spec(tool)
        return spec is not None and spec.metadata.get("idempotent") == "true"

    def is_async_tool(self, tool: str) -> bool:
        """Whether calls of ``tool`` take an async slot: its spec says it runs on the worker's
        event loop. Unknown tools and foreign workers' tools count as sync (the safe side)."""
        spec = self.tool_spec(tool)
        return spec is not None and spec.metadata.get("async") == "true"

    def settle(
        self, handle: WorkerHandle, *, calls: int = 1, errors: int = 0, is_async: bool = False
    ) -> None:
        """A call (or ``calls`` items of a batch) on ``handle`` is over: free its slot.

        Any thread may settle (the lane's callers do it from theirs); what follows a settle
        on the supervision side runs on the loop.
        """
        self.dispatcher.release(handle, is_async=is_async, calls=calls, errors=errors)
        if handle.drained is None and self.config.recycle_after_calls is None:
            return
        if running_on(self._loop):
            self._after_settle(handle)
        else:
            self._loop.call_soon_threadsafe(self._after_settle, handle)

    def _after_settle(self, handle: WorkerHandle) -> None:
        if handle.in_flight == 0 and handle.drained is not None:
            handle.drained.set()
        if self.config.recycle_after_calls is not None:
            self.supervisor.after_call(handle)

    async def gone_reason(self, handle: WorkerHandle, wait: float = 2.0) -> WorkerGone | None:
        """Why the current incarnation went away (waits briefly for the exit to be seen)."""
        try:
            reason = await asyncio.wait_for(asyncio.shield(handle.gone), wait)
        except TimeoutError:
            return None
        return reason if isinstance(reason, WorkerGone) else None

    # ------------------------------------------------------------------ streams and batches

    def stream(
        self,
        session_id: str,
        tool: str,
        kwargs: Mapping[str, object],
        *,
        timeout: float | None,
        affinity: str = "hint",
        metadata: Mapping[str, str] | None = None,
        variables: Sequence[pb.Variable] = (),
    ) -> StreamCall:
        """Start a streaming call; iterate for lists of decoded chunks, ``.result`` after."""
        self._check_open()
        if timeout is None:
            timeout = self.config.call_timeout
        request = build_request(
            session_id, tool, (), kwargs, metadata, variables, pickles=self.pickles
        )
        return StreamCall(self, session_id, tool, request, timeout=timeout, affinity=affinity)

    async def map(
        self,
        session_id: str,
        tool: Target,
        items: Sequence[Any],
        *,
        style: str = "kwargs",
        timeout: float | None,  # noqa: ASYNC109 - the pool's contract
        chunksize: int | None = None,
        affinity: str = "none",
        metadata: Mapping[str, str] | None = None,
    ) -> list[MapResult]:
        """Run ``tool`` once per item, batched; ``(ok, value_or_error)`` in order."""
        self._check_open()
        if timeout is None:
            timeout = self.config.call_timeout
        return await run_map(
            self,
            session_id,
            tool,
            items,
            style=style,
            timeout=timeout,
            chunksize=chunksize,
            affinity=affinity,
            metadata=metadata or {},
        )

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
        """The map from this (non-loop) thread over the lanes, or NOT_DIRECT."""
        if self._closed:
            return NOT_DIRECT
        return direct_map(
            self,
            session_id,
            tool,
            items,
            style,
            timeout=self.config.call_timeout if timeout is None else timeout,
            metadata=dict(metadata or {}),
        )

    # ------------------------------------------------------------------ cell-defined tools

    async def define_tool(
        self,
        name: str,
        source: str,
        function: str,
        supports_streaming: bool = False,
        description: str = "",
    ) -> pb.ToolSpec:
        """Define (or replace) a tool from source in every worker, and in later ones.

        All or nothing: if any worker refuses it, the others are rolled back and the error
        (a RemoteToolError with that worker's traceback) is raised.
        """
        self._check_open()
        return await self.definitions.define(
            name, source, function, supports_streaming=supports_streaming, description=description
        )

    async def remove_tool(self, name: str) -> None:
        """Remove a cell-defined tool from every worker (and from the replay list)."""
        self._check_open()
        await self.definitions.remove(name)

    # ------------------------------------------------------------------ supervision hooks

    async def _prepare_worker(self, handle: WorkerHandle) -> None:
        """A new incarnation is connected: replay cell tools, register its tools, telemetry."""
        await self.definitions.replay(handle)
        if handle.tools:
            self.registry.register_worker_tools(handle.worker_id, list(handle.tools.values()))
        if not handle.foreign and self._telemetry_callbacks:
            self._start_telemetry(handle)
        if not handle.foreign and self.output is not None and handle.stub is not None:
            self.output.follow(handle.worker_id, handle.stub, self.metadata)

    def _worker_gone(self, handle: WorkerHandle) -> None:
        self.registry.forget_worker(handle.worker_id)
        if self.output is not None:
            self.output.unfollow(handle.worker_id)
        task = self._telemetry_tasks.pop(handle.worker_id, None)
        if task is not None:
            task.cancel()
        self.dispatcher.worker_gone(handle)

    async def revive(self, worker_id: str | None = None) -> list[str]:
        """Restart slots given up as FAILED (all of them, or ``worker_id``), after you fixed
        the cause; returns the ids revived. Raises StartupError if one still cannot start."""
        self._check_open()
        revived = []
        for handle in self.handles:
            if handle.state is WorkerState.FAILED and worker_id in (None, handle.worker_id):
                await self.supervisor.revive(handle)
                revived.append(handle.worker_id)
        return revived

    async def reload(self) -> list[str]:
        """Replace the workers one at a time (see ``Supervisor.reload``); returns their ids."""
        self._check_open()
        async with self._reload_lock:
            return await self.supervisor.reload()

    def record_heartbeat(self, worker_id: str) -> None:
        """Called by the orchestrator's server when a worker sends Heartbeat."""
        self.supervisor.record_heartbeat(worker_id)

    def forget_session(self, session_id: str) -> None:
        """The session was closed or expired: drop its affinity binding."""
        self.dispatcher.forget_session(session_id)

    # ------------------------------------------------------------------ observability

    def status(self) -> PoolStatus:
        workers = [h.status() for h in self.handles]
        totals = {
            "calls": sum(w.calls for w in workers),
            "errors": sum(w.errors for w in workers),
            "restarts": sum(w.restarts for w in workers),
            "in_flight": sum(w.in_flight for w in workers),
        }
        return PoolStatus(
            workers=workers,
            queue_length=self.dispatcher.queue_length,
            max_queue=self.config.max_queue,
            capacity=self.config.capacity,
            async_capacity=self.config.async_capacity,
            uptime=time.monotonic() - self._started_at if self._started_at else 0.0,
            closed=self._closed,
            totals=totals,
        )

    def subscribe_telemetry(self, callback: TelemetryCallback) -> Callable[[], None]:
        """Call ``callback(worker_id, event)`` on the loop thread for each worker event.

        Workers stream telemetry only while someone listens. Returns the unsubscribe function.
        """
        self._telemetry_callbacks.append(callback)
        for handle in self.handles:
            if handle.state is WorkerState.READY and not handle.foreign:
                self._start_telemetry(handle)

        def unsubscribe() -> None:
            if callback in self._telemetry_callbacks:
                self._telemetry_callbacks.remove(callback)
            if not self._telemetry_callbacks:
                for task in self._telemetry_tasks.values():
                    task.cancel()
                self._telemetry_tasks.clear()

        return unsubscribe

    def _start_telemetry(self, handle: WorkerHandle) -> None:
        task = self._telemetry_tasks.get(handle.worker_id)
        if task is not None and not task.done():
            return
        self._telemetry_tasks[handle.worker_id] = asyncio.create_task(
            self._telemetry_reader(handle, handle.incarnation),
            name=f"snakepit-telemetry-{handle.worker_id}",
        )

    async def _telemetry_reader(self, handle: WorkerHandle, incarnation: int) -> None:
        stub = handle.stub
        if stub is None:
            return

        async def controls() -> AsyncIterator[pb.TelemetryControl]:
            yield pb.TelemetryControl(toggle=pb.TelemetryToggle(enabled=True))
            await asyncio.Event().wait()  # keep the request side open until cancelled

        call = stub.StreamTelemetry(controls(), metadata=self.metadata)
        try:
            async for event in call:
                if handle.incarnation != incarnation:
                    break
                for callback in list(self._telemetry_callbacks):
                    try:
                        callback(handle.worker_id, event)
                    except Exception:  # one bad subscriber must not starve the others
                        log.exception("telemetry subscriber failed")
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE):
                log.debug("telemetry stream of %s ended: %s", handle.worker_id, exc.code())
        finally:
            call.cancel()
