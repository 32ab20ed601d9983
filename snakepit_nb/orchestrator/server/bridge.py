"""The orchestrator's half of ``BridgeService``: what workers (and tools) call back into.

Served on the loop thread by a ``grpc.aio`` server bound to loopback (or a unix socket in a
private 0700 directory), behind the token interceptor. Handlers are cheap on purpose: the
published worker calls ``InitializeSession`` on every tool call and ``Heartbeat`` every few
seconds. Every failure becomes a documented status code (never UNKNOWN).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any, NoReturn

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from snakepit_nb._errors import (
    InvalidArgumentError,
    RemoteToolError,
    ResourceExhaustedError,
    SnakepitError,
)
from snakepit_nb.orchestrator.server.variables import VariableServicerMixin, VariableSizeGuard
from snakepit_nb.orchestrator.variables.wire import timestamp_pb
from snakepit_nb.protocol import pb, pb_grpc
from snakepit_nb.protocol.auth import Refusals, TokenInterceptor, server_options
from snakepit_nb.protocol.boundary import DecodingGuard, check_correlation_id
from snakepit_nb.protocol.codec import (
    decode_params,
    encode_any,
    encode_chunk,
    encode_chunk_batch,
)
from snakepit_nb.protocol.payloads import error_payload
from snakepit_nb.protocol.status import (
    abort,
    abort_with_tool_error,
    mapped_to_status,
    unimplemented_message,
)

if TYPE_CHECKING:
    from snakepit_nb.orchestrator.service import Service
    from snakepit_nb.protocol.tls import TlsIdentity

__all__ = ["CORRELATION_HEADER", "BridgeServer", "OrchestratorServicer"]

log = logging.getLogger(__name__)

CORRELATION_HEADER = "x-snakepit-correlation-id"
CHUNK_BATCHING = "snakepit_nb.chunk_batching"
RETURN_MARK = "snakepit_nb.return"


def _now() -> Timestamp:
    ts = Timestamp()
    ts.GetCurrentTime()
    return ts


class OrchestratorServicer(VariableServicerMixin, pb_grpc.BridgeServiceServicer):  # type: ignore[misc]
    """Serves sessions, heartbeats, tool registration, kernel tools and variables."""

    service: Service

    def __init__(self, service: Service) -> None:
        self.service = service

    # ------------------------------------------------------------------ health and sessions

    @mapped_to_status
    async def Ping(self, request: pb.PingRequest, context: Any) -> pb.PingResponse:
        return pb.PingResponse(
            message=f"pong: {request.message}",
            server_time=_now(),
            pid=os.getpid(),
            worker_id="orchestrator",
        )

    @mapped_to_status
    async def InitializeSession(
        self, request: pb.InitializeSessionRequest, context: Any
    ) -> pb.InitializeSessionResponse:
        self.service.open_session(request.session_id, metadata=dict(request.metadata))
        return pb.InitializeSessionResponse(success=True)

    @mapped_to_status
    async def CleanupSession(
        self, request: pb.CleanupSessionRequest, context: Any
    ) -> pb.CleanupSessionResponse:
        existed = await self.service.close_session(request.session_id)
        return pb.CleanupSessionResponse(success=True, resources_cleaned=int(existed))

    @mapped_to_status
    async def GetSession(
        self, request: pb.GetSessionRequest, context: Any
    ) -> pb.GetSessionResponse:
        service = self.service
        info = service.session_info(request.session_id)
        response = pb.GetSessionResponse(
            session_id=info.session_id,
            created_at=timestamp_pb(info.created_at),
            last_accessed_at=timestamp_pb(time.time() - info.idle_seconds),
            tool_count=len(service.tool_specs()),
            variable_count=info.variable_count,
            call_count=info.call_count,
        )
        response.metadata.update(info.metadata)
        return response

    @mapped_to_status
    async def Heartbeat(self, request: pb.HeartbeatRequest, context: Any) -> pb.HeartbeatResponse:
        valid = self.service.heartbeat(request.worker_id, request.session_id)
        return pb.HeartbeatResponse(server_time=_now(), session_valid=valid)

    # ------------------------------------------------------------------ tools

    @mapped_to_status
    async def RegisterTools(
        self, request: pb.RegisterToolsRequest, context: Any
    ) -> pb.RegisterToolsResponse:
        owner = request.worker_id or _peer_owner(context)
        specs = self.service.register_worker_tools(owner, request.tools)
        response = pb.RegisterToolsResponse(success=True)
        response.tool_ids.update({spec.name: f"{owner}:{spec.name}" for spec in specs})
        return response

    @mapped_to_status
    async def GetExposedElixirTools(
        self, request: pb.GetExposedElixirToolsRequest, context: Any
    ) -> pb.GetExposedElixirToolsResponse:
        return pb.GetExposedElixirToolsResponse(tools=self.service.kernel_tool_specs())

    @mapped_to_status
    async def ExecuteElixirTool(
        self, request: pb.ExecuteElixirToolRequest, context: Any
    ) -> pb.ExecuteElixirToolResponse:
        started = time.perf_counter()
        correlation = await _correlate(context, request.metadata)
        kwargs = decode_params(request.parameters, {}, request.metadata)
        response = pb.ExecuteElixirToolResponse()
        try:
            result = await self.service.call_kernel_tool(
                request.session_id, request.tool_name, kwargs
            )
        except RemoteToolError as err:
            response.success = False
            response.error_message = error_payload(
                err, tool_name=request.tool_name, session_id=request.session_id
            )
        else:
            response.success = True
            response.result.CopyFrom(encode_any(result))
            self._check_fits(response.result, request.tool_name)
        response.execution_time_ms = int((time.perf_counter() - started) * 1000)
        response.metadata["tool_type"] = "kernel"
        if correlation:
            response.metadata["correlation_id"] = correlation
        return response

    def _check_fits(self, result: Any, tool: str) -> None:
        # A kernel tool's result goes back in one message; past the limit gRPC would fail the
        # call with "Sent message larger than max", which says neither whose nor what to do.
        limit = self.service.config.max_message_bytes
        size = result.ByteSize()
        if size > limit - 1024:
            raise ResourceExhaustedError(
                f"tool {tool!r} returned {size} bytes, over the {limit} byte message limit; "
                "return less data, or write it to a file or shared memory and return its name"
            )

    @mapped_to_status
    async def ExecuteTool(
        self, request: pb.ExecuteToolRequest, context: Any
    ) -> pb.ExecuteToolResponse:
        """Kernel tools run here; worker tools are routed through the pool."""
        started = time.perf_counter()
        correlation = await _correlate(context, request.metadata)
        name, session_id = request.tool_name, request.session_id
        kwargs = decode_params(request.parameters, request.binary_parameters, request.metadata)
        response = pb.ExecuteToolResponse()
        try:
            result = await self.service.call(
                session_id,
                name,
                kwargs,
                timeout=context.time_remaining(),
                metadata=dict(request.metadata),
            )
        except RemoteToolError as err:
            response.success = False
            response.error_message = error_payload(
                err, tool_name=err.tool_name or name, session_id=session_id
            )
        else:
            response.success = True
            response.result.CopyFrom(encode_any(result))
            self._check_fits(response.result, request.tool_name)
        response.execution_time_ms = int((time.perf_counter() - started) * 1000)
        if correlation:
            response.metadata["correlation_id"] = correlation
        return response

    async def ExecuteStreamingTool(
        self, request: pb.ExecuteToolRequest, context: Any
    ) -> AsyncIterator[pb.ToolChunk]:
        """Streams a kernel generator tool, or forwards a worker's stream."""
        name, session_id = request.tool_name, request.session_id
        batching = request.metadata.get(CHUNK_BATCHING) == "1"
        stream: Any = None
        try:
            await _correlate(context, request.metadata)
            kwargs = decode_params(request.parameters, request.binary_parameters, request.metadata)
            stream = self.service.stream(session_id, name, kwargs, timeout=context.time_remaining())
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await abort(context, exc)
        sent = 0
        try:
            async for batch in stream:
                if batching:
                    sent += len(batch)
                    yield pb.ToolChunk(
                        chunk_id=f"{name}-{sent}",
                        batch=encode_chunk_batch(list(batch)),
                        batch_count=len(batch),
                    )
                    continue
                for value in batch:
                    sent += 1
                    data, meta = encode_chunk(value)
                    yield pb.ToolChunk(chunk_id=f"{name}-{sent}", data=data, metadata=meta)
        except grpc.aio.AbortError:
            raise
        except RemoteToolError as err:
            await abort_with_tool_error(
                context, err, tool_name=err.tool_name or name, session_id=session_id
            )
        except SnakepitError as exc:
            await abort(context, exc)
        except Exception as exc:
            await abort_with_tool_error(context, exc, tool_name=name, session_id=session_id)
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()
        final = pb.ToolChunk(chunk_id=f"{name}-{sent + 1}", is_final=True)
        result = getattr(stream, "result", None)
        if result is not None:
            data, meta = encode_chunk(result)
            final.data = data
            final.metadata.update(meta)
            final.metadata[RETURN_MARK] = "1"
        yield final

    # ------------------------------------------------------------------ worker-side RPCs

    async def StreamTelemetry(self, request_iterator: Any, context: Any) -> NoReturn:
        await _unimplemented(context, "StreamTelemetry")

    async def CallChannel(self, request_iterator: Any, context: Any) -> NoReturn:
        await _unimplemented(context, "CallChannel")

    async def DefineTool(self, request: pb.DefineToolRequest, context: Any) -> NoReturn:
        await _unimplemented(context, "DefineTool")

    async def DescribeTools(self, request: pb.DescribeToolsRequest, context: Any) -> NoReturn:
        await _unimplemented(context, "DescribeTools")

    async def PutBlob(self, request_iterator: Any, context: Any) -> NoReturn:
        await _unimplemented(context, "PutBlob")

    async def TakeBlob(self, request: pb.BlobRef, context: Any) -> NoReturn:
        await _unimplemented(context, "TakeBlob")

    async def WorkerOutput(self, request_iterator: Any, context: Any) -> NoReturn:
        await _unimplemented(context, "WorkerOutput")


async def _unimplemented(context: Any, rpc: str) -> NoReturn:
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, unimplemented_message(rpc, "workers"))
    raise AssertionError("unreachable")  # context.abort always raises


async def _correlate(context: Any, metadata: Mapping[str, str]) -> str:
    """The call's correlation id (request metadata or header), echoed as a response header."""
    correlation = metadata.get("correlation_id", "")
    if not correlation:
        for key, value in context.invocation_metadata() or ():
            if key == CORRELATION_HEADER:
                correlation = value
                break
    if correlation:
        # Request metadata may hold any text; a header may not (gRPC fails the call INTERNAL).
        check_correlation_id(correlation)
        await context.send_initial_metadata(((CORRELATION_HEADER, correlation),))
    return str(correlation)


def _peer_owner(context: Any) -> str:
    # A published worker registers without naming itself; its peer address is stable per
    # connection and good enough to group what it registered.
    try:
        return f"peer:{context.peer()}"
    except Exception:
        return "peer:unknown"


class BridgeServer:
    """The grpc.aio server of the orchestrator (loop thread)."""

    def __init__(
        self,
        servicer: OrchestratorServicer,
        *,
        token: str | None,
        max_message_bytes: int,
        max_receive_bytes: int | None = None,
        socket_path: str | None = None,
        refusals: Refusals | None = None,
        tls: TlsIdentity | None = None,
        tls_host: str = "127.0.0.1",
    ) -> None:
        self._servicer = servicer
        # Workers on other machines reach the server on a port of its own on ``tls_host``,
        # TLS only, pinned to the runtime's certificate (plaintext fails the handshake).
        self._tls = tls
        self._tls_host = tls_host
        self.tls_address = ""
        self._token = token
        self.refusals = refusals
        self._max_message_bytes = max_message_bytes
        # What workers send here (variable writes, kernel-tool calls) has its own, smaller
        # limit: gRPC buffers a whole message before any handler runs, so the limit is what
        # bounds the kernel's memory for an oversize write.
        self._max_receive_bytes = max_receive_bytes or max_message_bytes
        self._socket_path = socket_path
        self._server: grpc.aio.Server | None = None
        self.address = ""

    def _value_limit(self) -> int:
        # Variable writes above this are refused from their raw size (variables_rpc).
        return self._servicer.service.max_variable_bytes

    async def start(self) -> str:
        """Bind (127.0.0.1 on a free port, or the unix socket; and the TLS port when asked) and
        serve; returns the loopback address."""
        server = grpc.aio.server(
            interceptors=[
                TokenInterceptor(self._token, refusals=self.refusals),
                DecodingGuard(),
                VariableSizeGuard(self._value_limit),
            ],
            options=[
                *(
                    option
                    for option in server_options(self._max_message_bytes)
                    if option[0] != "grpc.max_receive_message_length"
                ),
                ("grpc.max_receive_message_length", self._max_receive_bytes),
            ],
        )
        pb_grpc.add_BridgeServiceServicer_to_server(self._servicer, server)
        if self._socket_path is not None:
            target = f"unix:{self._socket_path}"
            if server.add_insecure_port(target) == 0:
                raise InvalidArgumentError(f"could not bind the orchestrator to {target}")
            address = target
        else:
            port = server.add_insecure_port("127.0.0.1:0")
            address = f"127.0.0.1:{port}"
        if self._tls is not None:
            host = f"[{self._tls_host}]" if ":" in self._tls_host else self._tls_host
            tls_port = server.add_secure_port(f"{host}:0", self._tls.server_credentials())
            if tls_port == 0:
                raise InvalidArgumentError(f"could not bind the orchestrator's TLS port on {host}")
            self.tls_address = f"{host}:{tls_port}"
        await server.start()
        if self._socket_path is not None:
            os.chmod(self._socket_path, 0o600)
        self._server = server
        self.address = address
        return address

    async def stop(self, grace: float = 1.0) -> None:
        server, self._server = self._server, None
        if server is not None:
            await server.stop(grace)
