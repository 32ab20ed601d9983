"""The worker process's gRPC server: the worker's half of BridgeService, and its life cycle.

Served here: Ping, ExecuteTool, ExecuteStreamingTool, StreamTelemetry, CallChannel, DefineTool,
DescribeTools (which reports the worker's snakepit_nb and Python versions), PutBlob/TakeBlob
(large pickled messages in pieces) and WorkerOutput (what the tools print, see
``worker/output.py``). Everything else belongs to the orchestrator and answers UNIMPLEMENTED
naming it. Every RPC passes the runtime-token interceptor.

Start-up order: load the adapter (and run its ``setup``), bind loopback (or a unix socket in
the pool's private directory; or, on a Ray node, the node's address with TLS only), ping the
orchestrator until it answers, start serving, then write the ready file; from then on,
heartbeats.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import importlib
import inspect
import logging
import os
import platform
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio
from google.protobuf.timestamp_pb2 import Timestamp

from snakepit_nb._errors import InvalidArgumentError, SnakepitError, StartupError
from snakepit_nb._version import __version__ as snakepit_nb_version
from snakepit_nb.protocol import pb, pb_grpc
from snakepit_nb.protocol.auth import DEFAULT_MAX_MESSAGE_BYTES, TokenInterceptor, server_options
from snakepit_nb.protocol.boundary import DecodingGuard
from snakepit_nb.protocol.codec import error_payload
from snakepit_nb.protocol.status import abort, abort_with_tool_error, unimplemented_message
from snakepit_nb.protocol.tls import TlsIdentity
from snakepit_nb.tools.adapter import Adapter, ToolTable, is_adapter_class
from snakepit_nb.tools.source import define_tool_from_source, trim_to_cell
from snakepit_nb.worker.calls.channel import ChannelServer
from snakepit_nb.worker.calls.invocation import CORRELATION_HEADER, Invoker
from snakepit_nb.worker.calls.lane import LaneServer
from snakepit_nb.worker.calls.streaming import BATCHING_KEY, StreamRun, ToolStreamError
from snakepit_nb.worker.lifecycle import AdoptedReaper, end_descendants, write_ready_file
from snakepit_nb.worker.link import OrchestratorLink
from snakepit_nb.worker.output import OutputHub
from snakepit_nb.worker.telemetry import TelemetryEmitter

if TYPE_CHECKING:
    ServicerContext = grpc.aio.ServicerContext[Any, Any]

__all__ = ["EXIT_ORCHESTRATOR_GONE", "Worker", "WorkerSettings", "load_adapter_class"]

log = logging.getLogger("snakepit_nb.worker")

EXIT_ORCHESTRATOR_GONE = 4
REMOVE_MARK = "snakepit_nb.remove"
_ORCHESTRATOR_ONLY = (
    "InitializeSession", "CleanupSession", "GetSession", "Heartbeat", "RegisterTools",
    "GetExposedElixirTools", "ExecuteElixirTool", "GetVariable", "SetVariable", "GetVariables",
    "SetVariables", "RegisterVariable", "ListVariables", "DeleteVariable", "WatchVariables",
    "AddDependency", "StartOptimization", "StopOptimization", "GetVariableHistory",
    "RollbackVariable",
)  # fmt: skip


@dataclass(frozen=True)
class WorkerSettings:
    """Everything the launch contract hands a worker (argv and environment)."""

    adapter: str
    worker_id: str
    port: int = 0
    orchestrator_address: str | None = None
    run_id: str = ""
    token: str | None = None
    ready_file: str | None = None
    socket_dir: str | None = None
    # Where to open the lane (a private directory); None: no lane.
    lane_dir: str | None = None
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    heartbeat_interval: float = 2.0
    heartbeat_misses: int = 3
    threads: int = 16
    ping_timeout: float = 10.0
    grace: float = 1.0
    # The worker's guardian process (worker/guardian.py), spared when the worker ends the
    # processes its tools started; None when it has none.
    guardian_pid: int | None = None
    # Whether this process adopts its tools' orphans (PR_SET_CHILD_SUBREAPER), so it must reap.
    subreaper: bool = False
    # "off": the tools' output is not captured (worker/output.py); anything else: it is.
    output: str = "cell"
    # Lines of output one call may show in its cell.
    output_lines: int = 1000
    # Workers on other machines (Ray nodes): the interface to listen on, and the runtime's
    # certificate (both directions use TLS, pinned to it); None: plain loopback.
    bind_host: str | None = None
    tls: TlsIdentity | None = None


def load_adapter_class(spec: str) -> type[Adapter]:
    """Import ``pkg.mod:Class`` (or ``pkg.mod.Class``) and check it is an Adapter subclass."""
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
    else:
        module_name, _, attr = spec.rpartition(".")
    if not module_name or not attr:
        raise StartupError(f"--adapter {spec!r} is not of the form 'package.module:ClassName'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise StartupError(
            f"cannot import the adapter's module {module_name!r}: {exc}; is it installed in "
            f"the worker's interpreter ({sys.executable})?"
        ) from exc
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise StartupError(f"module {module_name!r} has no adapter class {attr!r}") from None
    if not is_adapter_class(obj):
        raise StartupError(
            f"{spec!r} is not a snakepit_nb.worker.Adapter subclass; subclass Adapter and "
            "mark its tools with @tool"
        )
    return obj  # type: ignore[no-any-return]


class WorkerServicer(pb_grpc.BridgeServiceServicer):  # type: ignore[misc]
    """The RPC handlers of one worker."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    async def Ping(self, request: pb.PingRequest, context: ServicerContext) -> Any:
        stamp = Timestamp()
        stamp.GetCurrentTime()
        return pb.PingResponse(
            message=f"pong: {request.message}",
            server_time=stamp,
            pid=os.getpid(),
            worker_id=self.worker.settings.worker_id,
        )

    async def ExecuteTool(self, request: pb.ExecuteToolRequest, context: ServicerContext) -> Any:
        invoker = self.worker.invoker
        try:
            call = await invoker.prepare_async(request, _header(context, CORRELATION_HEADER))
            return await invoker.run(call)
        except Exception as exc:
            if not isinstance(exc, SnakepitError):
                log.exception("ExecuteTool %s failed", request.tool_name)
            await abort(context, exc)
            raise  # abort raised already; this keeps the control flow visible

    async def ExecuteStreamingTool(
        self, request: pb.ExecuteToolRequest, context: ServicerContext
    ) -> None:
        worker = self.worker
        invoker = worker.invoker
        try:
            call = await invoker.prepare_async(request, _header(context, CORRELATION_HEADER))
        except Exception as exc:
            await abort(context, exc)
        batching = (
            request.metadata.get(BATCHING_KEY) == "1" or _header(context, BATCHING_KEY) == "1"
        )
        run = StreamRun(invoker, call, batching=batching)
        telemetry = worker.telemetry
        telemetry.tool_event(
            "start",
            tool=call.definition.name,
            session_id=call.session_id,
            correlation_id=call.correlation_id,
            extra={"stream": "true"},
        )
        tool_error: BaseException | None = None
        failure: BaseException | None = None
        hub = invoker.output
        final: pb.ToolChunk | None = None
        # What the tool writes goes to the caller's cell; the stream's last message leaves
        # once that output went out (as a call's answer does).
        with hub.call(call.metadata, call.definition.name) if hub else _no_output() as out:
            run.start()  # inside: the producer's task or thread carries the call
            try:
                async for message in run.messages():
                    if message.is_final:
                        final = message
                        break
                    await context.write(message)
            except ToolStreamError as err:
                tool_error = err.error
            except SnakepitError as exc:
                failure = exc
            finally:
                await run.close()
        if hub is not None:
            await hub.settle(out)
        if final is not None:
            await context.write(final)
        phase = "stop" if tool_error is None and failure is None else "exception"
        telemetry.tool_event(
            phase,
            tool=call.definition.name,
            session_id=call.session_id,
            correlation_id=call.correlation_id,
            duration_ns=run.duration_ns,
            count=run.buffer.chunks,
            extra={"stream": "true"},
        )
        if failure is not None:
            await abort(context, failure)
        if tool_error is not None:
            await abort_with_tool_error(
                context, tool_error, tool_name=call.definition.name, session_id=call.session_id
            )

    async def StreamTelemetry(
        self,
        request_iterator: AsyncIterator[pb.TelemetryControl],
        context: ServicerContext,
    ) -> None:
        hub = self.worker.telemetry
        subscription = hub.subscribe()

        async def read_controls() -> None:
            async for control in request_iterator:
                subscription.apply(control)

        reader = asyncio.get_running_loop().create_task(read_controls())
        try:
            async for events in subscription.batches():
                for event in events:
                    await context.write(event)
        finally:
            hub.unsubscribe(subscription)
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader

    async def CallChannel(
        self, request_iterator: AsyncIterator[pb.ChannelFrame], context: ServicerContext
    ) -> None:
        await ChannelServer(self.worker.invoker).serve(request_iterator, context)

    async def DefineTool(self, request: pb.DefineToolRequest, context: ServicerContext) -> Any:
        return await self.worker.define_tool(request)

    async def PutBlob(
        self, request_iterator: AsyncIterator[pb.BlobChunk], context: ServicerContext
    ) -> Any:
        invoker = self.worker.invoker
        try:
            invoker.check_pickles("a large pickled message")
            return await invoker.blobs.put(request_iterator)
        except SnakepitError as exc:
            await abort(context, exc)
            raise

    async def TakeBlob(
        self, request: pb.BlobRef, context: ServicerContext
    ) -> AsyncIterator[pb.BlobChunk]:
        try:
            pieces = self.worker.invoker.blobs.pieces(request.blob_id)
            async for piece in pieces:
                yield piece
        except SnakepitError as exc:
            await abort(context, exc)

    async def DescribeTools(
        self, request: pb.DescribeToolsRequest, context: ServicerContext
    ) -> Any:
        worker = self.worker
        return pb.DescribeToolsResponse(
            tools=worker.table.specs(),
            worker_id=worker.settings.worker_id,
            pid=os.getpid(),
            adapter=worker.settings.adapter,
            lane=worker.lane.address if worker.lane is not None else "",
            snakepit_nb_version=snakepit_nb_version,
            python_version=platform.python_version(),
            python_executable=sys.executable,
        )

    async def WorkerOutput(
        self, request_iterator: AsyncIterator[pb.OutputAck], context: ServicerContext
    ) -> AsyncIterator[pb.OutputBatch]:
        hub = self.worker.output
        if hub is None:
            return

        async def read_acks() -> None:
            async for ack in request_iterator:
                hub.acknowledged(ack.seq)

        acks = asyncio.get_running_loop().create_task(read_acks())
        try:
            async for batch in hub.batches():
                yield batch
        finally:
            acks.cancel()


@contextlib.contextmanager
def _no_output() -> Iterator[None]:
    yield None


def _unimplemented(method: str) -> Any:
    message = unimplemented_message(method, "the orchestrator")

    async def handler(self: WorkerServicer, request: Any, context: ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, message)

    handler.__name__ = method
    handler.__doc__ = f"{method}: {message}."
    return handler


for _method in _ORCHESTRATOR_ONLY:
    setattr(WorkerServicer, _method, _unimplemented(_method))


def _header(context: ServicerContext, key: str) -> str:
    for k, v in context.invocation_metadata() or ():
        if k == key:
            return v if isinstance(v, str) else v.decode("utf-8", "replace")
    return ""


class Worker:
    """One worker process's runtime: adapter, tools, server, link to the orchestrator."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.loop = asyncio.get_running_loop()
        self.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=settings.threads, thread_name_prefix="snakepit-tool"
        )
        self.telemetry = TelemetryEmitter(self.loop, worker_id=settings.worker_id)
        # What the tools print, for the kernel (installed in start(), before the adapter loads).
        self.output = (
            OutputHub(settings.worker_id, cell_lines=settings.output_lines)
            if settings.output != "off"
            else None
        )
        self.link: OrchestratorLink | None = None
        self.adapter: Adapter | None = None
        self.table = ToolTable({}, worker_id=settings.worker_id)
        self.invoker: Invoker
        self.server: grpc.aio.Server | None = None
        self.lane: LaneServer | None = None
        self.address = ""
        self._stopping = asyncio.Event()
        self.exit_code = 0
        self._heartbeat: asyncio.Task[None] | None = None
        spare = (settings.guardian_pid,) if settings.guardian_pid else ()
        self._spare = spare
        self._reaper: asyncio.Task[None] | None = None
        if settings.subreaper:
            self._reaper = self.loop.create_task(
                AdoptedReaper(spare=spare).run(), name="snakepit-reaper"
            )

    # ------------------------------------------------------------------ start

    async def start(self) -> str:
        """Load, bind, ping the orchestrator, serve, write the ready file; return the address."""
        settings = self.settings
        if self.output is not None:
            self.output.install()
        if settings.orchestrator_address:
            self.link = OrchestratorLink(
                settings.orchestrator_address,
                token=settings.token,
                worker_id=settings.worker_id,
                max_message_bytes=settings.max_message_bytes,
                tls=settings.tls,
            )
            ping = self.loop.create_task(self.link.wait_ready(settings.ping_timeout))
        else:
            ping = None
        try:
            adapter_class = load_adapter_class(settings.adapter)
            try:
                adapter = adapter_class()
                tools = adapter.tool_definitions()
            except SnakepitError as exc:
                raise StartupError(f"adapter {settings.adapter!r} is not usable: {exc}") from exc
            self.adapter = adapter
            self.table = ToolTable(tools, worker_id=settings.worker_id)
            self.invoker = Invoker(
                self.table,
                loop=self.loop,
                executor=self.executor,
                worker_id=settings.worker_id,
                telemetry=self.telemetry,
                link=self.link,
                max_message_bytes=settings.max_message_bytes,
                threads=settings.threads,
                pickles=bool(settings.token),
            )
            self.invoker.output = self.output
            setup_result = adapter.setup()
            if inspect.isawaitable(setup_result):
                await setup_result
            if settings.lane_dir and settings.token:
                path = os.path.join(settings.lane_dir, f"{settings.worker_id or os.getpid()}.lane")
                self.lane = LaneServer(path, settings.token, self.invoker.direct)
                self.lane.start()
            self.server = grpc.aio.server(
                interceptors=[TokenInterceptor(settings.token), DecodingGuard()],
                options=server_options(settings.max_message_bytes),
            )
            pb_grpc.add_BridgeServiceServicer_to_server(WorkerServicer(self), self.server)
            self.address = self._bind(self.server)
            if ping is not None:
                await ping
        except BaseException:
            if ping is not None and not ping.done():
                ping.cancel()
            raise
        await self.server.start()
        if settings.ready_file:
            write_ready_file(settings.ready_file, self.address)
        if self.link is not None:
            self._heartbeat = self.loop.create_task(
                self.link.heartbeat_loop(
                    settings.heartbeat_interval, settings.heartbeat_misses, self._orchestrator_lost
                )
            )
        return self.address

    def _bind(self, server: grpc.aio.Server) -> str:
        settings = self.settings
        if settings.socket_dir:
            path = os.path.join(settings.socket_dir, f"{settings.worker_id or os.getpid()}.sock")
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # a stale socket of a previous worker with this id
            old = os.umask(0o177)  # the socket file is created 0600: ours alone
            try:
                server.add_insecure_port(f"unix:{path}")
            finally:
                os.umask(old)
            return f"unix:{path}"
        host = settings.bind_host or "127.0.0.1"
        host = f"[{host}]" if ":" in host else host
        if settings.tls is not None:
            # Only TLS with the runtime's certificate: a plaintext client fails the handshake.
            port = server.add_secure_port(
                f"{host}:{settings.port}", settings.tls.server_credentials()
            )
        else:
            port = server.add_insecure_port(f"{host}:{settings.port}")
        if port == 0:
            raise StartupError(f"cannot bind {host}:{settings.port}; is the port in use?")
        return f"{host}:{port}"

    # ------------------------------------------------------------------ tools from cells

    async def define_tool(self, request: pb.DefineToolRequest) -> pb.DefineToolResponse:
        name = request.name or request.function
        if not request.source.strip() or request.metadata.get(REMOVE_MARK) == "1":
            # No source (or the pool's removal mark): remove the named cell-defined tool.
            try:
                if not name:
                    raise InvalidArgumentError("name the tool to remove")
                self.table.remove(name)
            except SnakepitError as exc:
                return pb.DefineToolResponse(
                    success=False, error_message=error_payload(exc, tool_name=name, session_id="")
                )
            return pb.DefineToolResponse(success=True, tool=pb.ToolSpec(name=name))
        try:
            definition = await self.loop.run_in_executor(
                self.executor,
                lambda: define_tool_from_source(
                    request.source,
                    request.function,
                    name=request.name or None,
                    supports_streaming=request.supports_streaming,
                    description=request.description or None,
                    metadata=dict(request.metadata),
                ),
            )
            self.table.define(definition)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                raise
            return pb.DefineToolResponse(
                success=False,
                error_message=error_payload(trim_to_cell(exc), tool_name=name, session_id=""),
            )
        return pb.DefineToolResponse(success=True, tool=definition.spec())

    # ------------------------------------------------------------------ stop

    def request_stop(self, exit_code: int = 0) -> None:
        """Begin a graceful stop (SIGTERM, or the orchestrator is gone)."""
        if not self._stopping.is_set():
            self.exit_code = exit_code
            self._stopping.set()

    def _orchestrator_lost(self, reason: str) -> None:
        sys.stderr.write(f"snakepit_nb worker {self.settings.worker_id}: {reason}; exiting\n")
        self.request_stop(EXIT_ORCHESTRATOR_GONE)

    async def wait_stopped(self) -> int:
        await self._stopping.wait()
        await self.close()
        return self.exit_code

    async def close(self) -> None:
        started = time.monotonic()
        invoker = getattr(self, "invoker", None)
        if invoker is not None:
            invoker.close()  # cancelled calls stuck in a thread no longer hold the stop back
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        if self.lane is not None:
            self.lane.close()
        if self.server is not None:
            await self.server.stop(self.settings.grace)
        if self.adapter is not None:
            try:
                result = self.adapter.teardown()
                if inspect.isawaitable(result):
                    await asyncio.wait_for(
                        result, timeout=max(0.5, 2.0 - (time.monotonic() - started))
                    )
            except Exception:
                log.exception("adapter teardown failed")
        if self.link is not None:
            with contextlib.suppress(Exception):
                await self.link.close()
        self.executor.shutdown(wait=False, cancel_futures=True)
        if self._reaper is not None:
            self._reaper.cancel()
        if self.output is not None:
            self.output.uninstall()
        # Whatever the tools started goes with the worker (the guardian checks once more).
        ended = end_descendants(spare=self._spare)
        if ended:
            log.info("ended %d process(es) the tools had started", len(ended))
