"""Connecting to a started worker: the gRPC channel, the tool list, the call channel, pings.

The supervisor decides *when* to connect and what a failure means; a :class:`Connector` does
the wire part. :class:`GrpcConnector` is the one the pool uses; tests of supervision give the
supervisor a connector of their own, so restarts, give-ups and hang detection are tested
without sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import platform
import sys
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import grpc
import grpc.aio

from snakepit_nb._errors import StartupError
from snakepit_nb._version import __version__
from snakepit_nb.orchestrator.launch.base import placement_of
from snakepit_nb.orchestrator.pool.channel import CallChannel
from snakepit_nb.orchestrator.pool.lane import LaneClient
from snakepit_nb.protocol import auth, pb, pb_grpc

if TYPE_CHECKING:
    from snakepit_nb.orchestrator.launch.base import LaunchedWorker
    from snakepit_nb.orchestrator.pool.handle import WorkerHandle

__all__ = ["Connector", "GrpcConnector", "check_versions"]

#: Called with the exception when a worker's call channel breaks.
OnBroken = Callable[[BaseException], None]


class Connector(Protocol):
    """Connects the pool to a started worker and checks it answers."""

    async def connect(
        self,
        handle: WorkerHandle,
        launched: LaunchedWorker,
        timeout: float,  # noqa: ASYNC109 - the deadline of the first RPCs
        on_broken: OnBroken,
    ) -> None:
        """Fill ``handle``'s connection (stub, call channel, tools, foreign); raise if the
        worker does not answer within ``timeout`` s."""

    async def ping(self, handle: WorkerHandle, timeout: float) -> bool:  # noqa: ASYNC109
        """Whether the worker's event loop answered a ping within ``timeout`` s."""


class GrpcConnector:
    """Our workers (DescribeTools, then a call channel) and foreign ones (plain RPCs)."""

    def __init__(
        self,
        *,
        metadata: tuple[tuple[str, str], ...],
        max_message_bytes: int,
        token: str | None = None,
    ) -> None:
        self.metadata = metadata
        self.max_message_bytes = max_message_bytes
        # With the runtime token the pool may use a worker's lane (it authenticates there).
        self.token = token

    async def connect(
        self,
        handle: WorkerHandle,
        launched: LaunchedWorker,
        timeout: float,  # noqa: ASYNC109 - passed to each RPC as its deadline
        on_broken: OnBroken,
    ) -> None:
        limit = self.max_message_bytes
        options = [
            # A worker's reply frame may coalesce answers up to a few MiB past one message.
            (key, min(2**31 - 1, limit + 8 * 2**20))
            if key == "grpc.max_receive_message_length"
            else (key, value)
            for key, value in auth.channel_options(limit)
        ]
        placement = placement_of(launched)
        tls = placement.tls
        if tls is not None:
            # A worker on another machine: TLS pinned to the runtime's certificate.
            options = [*options, *tls.channel_options()]
            channel = grpc.aio.secure_channel(
                launched.address, tls.channel_credentials(), options=options
            )
        else:
            channel = grpc.aio.insecure_channel(launched.address, options=options)
        handle.grpc_channel = channel
        stub = pb_grpc.BridgeServiceStub(channel)
        handle.stub = stub
        try:
            described = await stub.DescribeTools(
                pb.DescribeToolsRequest(),
                metadata=self.metadata,
                timeout=timeout,
                wait_for_ready=True,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
                raise
            # A worker without our additions (the published one): plain RPCs only; its tools
            # arrive through the RegisterTools calls it makes.
            handle.foreign = True
            await stub.Ping(
                pb.PingRequest(message="snakepit_nb"), metadata=self.metadata, timeout=timeout
            )
            return
        check_versions(handle.worker_id, described)
        handle.pid = described.pid or launched.pid
        handle.tools = {spec.name: spec for spec in described.tools}
        if described.lane and self.token and placement.same_host:
            # Only a worker on this machine can share its unix socket and memory with us.
            handle.lane = LaneClient(described.lane, self.token, worker_id=handle.worker_id)
        call_channel = CallChannel(
            channel,
            worker_id=handle.worker_id,
            metadata=self.metadata,
            max_message_bytes=limit,
            on_broken=on_broken,
        )
        await call_channel.open()
        handle.call_channel = call_channel

    async def ping(self, handle: WorkerHandle, timeout: float) -> bool:  # noqa: ASYNC109
        stub = handle.stub
        if stub is None:
            return False
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
            await stub.Ping(
                pb.PingRequest(message="heartbeat"), metadata=self.metadata, timeout=timeout
            )
            return True
        return False


def check_versions(worker_id: str, described: pb.DescribeToolsResponse) -> None:
    """Refuse a worker of another snakepit_nb version; warn about another Python minor.

    A worker runs whatever ``snakepit_nb`` its interpreter imports: a stale virtual environment,
    or a checkout on the worker's ``sys.path`` ahead of the installed one, would otherwise fail
    later in ways that are hard to read.
    """
    theirs = described.snakepit_nb_version
    interpreter = described.python_executable or "its interpreter"
    if theirs != __version__:
        what = f"snakepit_nb {theirs}" if theirs else "a snakepit_nb too old to report its version"
        raise StartupError(
            f"worker {worker_id} runs {what} ({interpreter}, Python "
            f"{described.python_version or '?'}), but this kernel runs snakepit_nb {__version__} "
            f"({sys.executable}); install the same snakepit_nb for the workers' interpreter "
            "(pip install -e . in that environment), or start the pool with python= pointing "
            "at an interpreter that has it"
        )
    ours = platform.python_version_tuple()[:2]
    their_python = tuple(described.python_version.split(".")[:2])
    if described.python_version and their_python != ours:
        warnings.warn(
            f"worker {worker_id} runs Python {described.python_version} ({interpreter}) and "
            f"this kernel Python {platform.python_version()}: values pickled between them may "
            "not load on the other side; start the pool with python= of the same minor version",
            RuntimeWarning,
            stacklevel=1,
        )
