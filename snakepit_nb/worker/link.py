"""The worker's connection back to the orchestrator: start-up ping, heartbeats, kernel tools.

The orchestrator lives in the notebook kernel. A worker pings it before reporting ready (so a
worker never serves calls it could not call back for), sends a heartbeat every few seconds
(naming itself, so the pool sees it alive), and exits when the orchestrator has been gone for
several beats in a row: nobody could ever call it again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grpc
import grpc.aio
from google.protobuf.timestamp_pb2 import Timestamp

from snakepit_nb._errors import StartupError
from snakepit_nb.protocol import pb, pb_grpc
from snakepit_nb.protocol.auth import channel_options, token_metadata
from snakepit_nb.protocol.codec import (
    binary_parameter_metadata,
    decode_any_with_binary,
    encode_params,
    remote_error_from_payload,
)
from snakepit_nb.protocol.tls import TlsIdentity

__all__ = ["OrchestratorLink"]

log = logging.getLogger("snakepit_nb.worker")

_RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


class OrchestratorLink:
    """A grpc.aio channel to the orchestrator, carrying the runtime token on every call."""

    def __init__(
        self,
        address: str,
        *,
        token: str | None,
        worker_id: str,
        max_message_bytes: int,
        tls: TlsIdentity | None = None,
    ) -> None:
        self.address = address
        self.worker_id = worker_id
        options = channel_options(max_message_bytes)
        if tls is not None:
            # A worker on another machine: the orchestrator's TLS port, pinned certificate.
            self.channel = grpc.aio.secure_channel(
                address, tls.channel_credentials(), options=[*options, *tls.channel_options()]
            )
        else:
            self.channel = grpc.aio.insecure_channel(address, options=options)
        self.stub = pb_grpc.BridgeServiceStub(self.channel)
        self.metadata: tuple[tuple[str, str], ...] = tuple(token_metadata(token)) if token else ()
        self._variables_factory: Callable[..., Any] | None = None
        self.last_beat_ok = time.monotonic()

    # ------------------------------------------------------------------ start-up

    async def wait_ready(self, deadline: float = 10.0) -> None:
        """Ping the orchestrator until it answers; StartupError after ``deadline`` seconds."""
        end = time.monotonic() + deadline
        delay = 0.02
        last: BaseException | None = None
        while True:
            remaining = end - time.monotonic()
            if remaining <= 0:
                break
            try:
                await self.stub.Ping(
                    pb.PingRequest(message=f"worker {self.worker_id} starting"),
                    metadata=self.metadata,
                    timeout=min(1.0, remaining),
                    wait_for_ready=True,
                )
                return
            except grpc.aio.AioRpcError as err:
                last = err
                if err.code() not in _RETRYABLE:
                    raise StartupError(
                        f"the orchestrator at {self.address} refused the worker's ping with "
                        f"{err.code().name}: {err.details()}; check SNAKEPIT_NB_TOKEN and the "
                        "address the pool passed"
                    ) from err
            await asyncio.sleep(min(delay, max(0.0, end - time.monotonic())))
            delay = min(delay * 2, 0.5)
        detail = (
            f" (last error: {last.code().name})" if isinstance(last, grpc.aio.AioRpcError) else ""
        )
        raise StartupError(
            f"the orchestrator at {self.address} did not answer a ping within {deadline:g} s"
            f"{detail}; is the kernel's snakepit_nb runtime still running?"
        )

    # ------------------------------------------------------------------ heartbeats

    async def heartbeat_loop(
        self,
        interval: float,
        misses: int,
        on_lost: Callable[[str], None],
        *,
        slow_limit: float = 60.0,
    ) -> None:
        """Beat every ``interval`` s; call ``on_lost`` once the orchestrator is gone.

        Gone means ``misses`` beats in a row found nobody listening (UNAVAILABLE), or no beat
        was answered for ``slow_limit`` seconds: a busy kernel answers late, and that alone is
        no reason to leave.
        """
        failed = 0
        while True:
            await asyncio.sleep(interval)
            stamp = Timestamp()
            stamp.GetCurrentTime()
            try:
                await self.stub.Heartbeat(
                    pb.HeartbeatRequest(worker_id=self.worker_id, client_time=stamp),
                    metadata=self.metadata,
                    timeout=max(interval * 2, 1.0),
                )
                failed = 0
                self.last_beat_ok = time.monotonic()
            except grpc.aio.AioRpcError as err:
                if err.code() is grpc.StatusCode.UNIMPLEMENTED:
                    return  # an orchestrator that takes no heartbeats: nothing to watch
                if err.code() is not grpc.StatusCode.DEADLINE_EXCEEDED:
                    failed += 1
                gone_for = time.monotonic() - self.last_beat_ok
                log.debug("heartbeat failed (%d in a row): %s", failed, err.code().name)
                if failed >= misses or gone_for >= max(slow_limit, interval * misses):
                    on_lost(
                        f"the orchestrator at {self.address} missed {failed} heartbeats "
                        f"({gone_for:.1f} s, last error {err.code().name})"
                    )
                    return

    # ------------------------------------------------------------------ callbacks

    async def execute_kernel_tool(
        self,
        name: str,
        kwargs: Mapping[str, object],
        *,
        session_id: str,
        correlation_id: str = "",
        deadline: float | None = None,
    ) -> object:
        """Run a kernel-side tool through ExecuteElixirTool and return its decoded result."""
        from snakepit_nb.protocol.status import map_rpc_error

        params, binary = encode_params(kwargs)
        request_metadata = binary_parameter_metadata(binary)
        call_metadata = self.metadata
        if correlation_id:
            request_metadata["correlation_id"] = correlation_id
            call_metadata = (*call_metadata, ("x-snakepit-correlation-id", correlation_id))
        request = pb.ExecuteElixirToolRequest(
            session_id=session_id,
            tool_name=name,
            parameters=params,
            metadata=request_metadata,
        )
        try:
            response = await self.stub.ExecuteElixirTool(
                request, metadata=call_metadata, timeout=deadline
            )
        except grpc.aio.AioRpcError as err:
            raise map_rpc_error(err) from err
        if not response.success:
            raise remote_error_from_payload(
                response.error_message, tool_name=name, session_id=session_id
            )
        return decode_any_with_binary(response.result, response.binary_result)

    def make_variables(
        self,
        session_id: str,
        prefetched: Sequence[pb.Variable],
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> Any:
        """A ``WorkerVariables`` for one call (``ctx.vars``), or None if that module is absent."""
        factory = self._variables_factory
        if factory is None:
            try:
                from snakepit_nb.worker.variables import WorkerVariables
            except ImportError:
                return None
            factory = self._variables_factory = WorkerVariables
        return factory(
            self.stub, session_id, self.metadata, list(prefetched), self.worker_id, loop=loop
        )

    async def close(self) -> None:
        await self.channel.close(grace=None)
