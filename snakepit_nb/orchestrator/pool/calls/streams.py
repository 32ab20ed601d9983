"""Streaming calls: one ``ExecuteStreamingTool`` RPC per call, chunks decoded in batches.

Each call is its own HTTP/2 stream, so gRPC's flow control gives back-pressure for free (a slow
consumer slows the worker's generator; memory stays bounded) and cancelling the RPC closes the
tool's generator in the worker. The request carries ``snakepit_nb.chunk_batching=1``: our
workers then pack many chunks per message (the first one alone, at once), which is what makes
hundreds of thousands of small chunks per second possible.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TYPE_CHECKING

import grpc
import grpc.aio

from snakepit_nb._errors import CallTimeoutError, ProtocolError, ResourceExhaustedError
from snakepit_nb.orchestrator.pool.channel import EOF
from snakepit_nb.orchestrator.pool.handle import WorkerGone
from snakepit_nb.protocol import pb
from snakepit_nb.protocol.codec import (
    decode_chunk,
    decode_chunk_batch,
    remote_error_from_payload,
)
from snakepit_nb.protocol.lane import unpack_inline
from snakepit_nb.protocol.status import map_rpc_error

if TYPE_CHECKING:
    from snakepit_nb.orchestrator.pool.handle import WorkerHandle
    from snakepit_nb.orchestrator.pool.host import PoolHost

__all__ = ["CHUNK_BATCHING", "RETURN_MARK", "StreamCall"]

CHUNK_BATCHING = "snakepit_nb.chunk_batching"
RETURN_MARK = "snakepit_nb.return"


class StreamCall(AsyncIterator[list[object]]):
    """An in-progress streaming call: ``async for batch in call`` yields lists of chunks.

    After the iteration ends, ``result`` holds the generator's return value (None if it had
    none). ``aclose()`` cancels the call in the worker (its generator's ``finally`` runs).
    """

    def __init__(
        self,
        pool: PoolHost,
        session_id: str,
        tool: str,
        request: pb.ExecuteToolRequest,
        *,
        timeout: float | None,
        affinity: str,
    ) -> None:
        self.pool = pool
        self.session_id = session_id
        self.tool = tool
        self.timeout = timeout
        self.affinity = affinity
        self.result: object = None
        self.worker_id = ""
        self.chunks_received = 0
        request.metadata[CHUNK_BATCHING] = "1"
        self._request = request
        self._gen = self._run()

    def __aiter__(self) -> StreamCall:
        return self

    async def __anext__(self) -> list[object]:
        return await self._gen.__anext__()

    async def aclose(self) -> None:
        await self._gen.aclose()

    async def _run(self) -> AsyncGenerator[list[object], None]:
        pool = self.pool
        # As for unary calls (channel.py), refuse what the worker's limit would drop, before a
        # worker is taken, with a message that says what to do (gRPC's says neither).
        size, limit = self._request.ByteSize(), pool.config.max_message_bytes
        if size > limit - 1024:
            raise ResourceExhaustedError(
                f"the call's arguments are {size} bytes, over max_message_bytes={limit}; pass "
                "large data through a file or shared memory, or start the pool with a larger "
                "max_message_bytes"
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout if self.timeout is not None else None
        # An async generator runs on the worker's loop: it takes an async slot.
        is_async = pool.is_async_tool(self.tool)
        try:
            async with asyncio.timeout_at(deadline):
                handle = await pool.dispatcher.acquire(
                    self.session_id, self.affinity, is_async=is_async
                )
        except TimeoutError as exc:
            raise self._timeout_error() from exc
        self.worker_id = handle.worker_id
        stub = handle.stub
        assert stub is not None
        remaining = None if deadline is None else max(0.001, deadline - loop.time())
        call = stub.ExecuteStreamingTool(
            self._request,
            metadata=(*pool.metadata, (CHUNK_BATCHING, "1")),
            timeout=remaining,
        )
        gone: list[BaseException] = []

        def on_gone(exc: BaseException) -> None:
            gone.append(exc)
            call.cancel()

        op = handle.add_op(on_gone)
        failed = False
        try:
            while True:
                try:
                    chunk = await call.read()
                except (asyncio.CancelledError, grpc.aio.AioRpcError) as exc:
                    failed = True
                    if gone and isinstance(gone[0], WorkerGone):
                        raise gone[0].error_for(self.tool) from None
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                    raise await self._map_error(handle, exc) from exc
                if chunk is EOF:
                    return
                batch = self._decode(chunk)
                if batch:
                    self.chunks_received += len(batch)
                    yield batch
        finally:
            handle.remove_op(op)
            if not call.done():
                call.cancel()
            pool.settle(handle, errors=1 if failed else 0, is_async=is_async)

    def _decode(self, chunk: pb.ToolChunk) -> list[object]:
        if chunk.pickled_batch:
            if not self.pool.pickles:
                raise ProtocolError(
                    f"a worker streamed {self.tool!r} pickled, which this pool does not accept "
                    "from it (a foreign worker, or auth=False); nothing was unpickled"
                )
            values: list[object] = unpack_inline(
                chunk.pickled_batch, what=f"a chunk of {self.tool!r}"
            )
            if chunk.is_final and chunk.metadata.get(RETURN_MARK) == "1":
                self.result = values[0] if values else None
                return []
            return values
        if chunk.batch_count or chunk.batch:
            return decode_chunk_batch(chunk.batch)
        metadata = chunk.metadata
        if chunk.is_final:
            if metadata.get(RETURN_MARK) == "1":
                self.result = decode_chunk(chunk.data, metadata)
                return []
            # The published worker may put a last chunk in the final message.
            return [decode_chunk(chunk.data, metadata)] if chunk.data else []
        return [decode_chunk(chunk.data, metadata)]

    async def _map_error(self, handle: WorkerHandle, exc: grpc.aio.AioRpcError) -> Exception:
        code = exc.code()
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return self._timeout_error()
        if code == grpc.StatusCode.INTERNAL:
            details = exc.details() or ""
            if details.startswith("{"):
                return remote_error_from_payload(
                    details,
                    tool_name=self.tool,
                    session_id=self.session_id,
                    worker_id=handle.worker_id,
                )
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
            reason = await self.pool.gone_reason(handle, wait=1.0)
            if isinstance(reason, WorkerGone):
                return reason.error_for(self.tool)
        return map_rpc_error(exc)

    def _timeout_error(self) -> CallTimeoutError:
        return CallTimeoutError(
            f"stream of {self.tool!r} did not finish within {self.timeout:g} s; it was "
            "cancelled in the worker — pass a larger timeout if it is only slow"
        )
