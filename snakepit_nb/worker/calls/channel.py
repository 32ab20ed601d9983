"""The worker's side of CallChannel: many calls multiplexed over one long-lived stream.

The orchestrator opens one bidirectional stream per worker and sends frames of messages, each
tagged with a call id: a call (``request``), a batch of calls of one tool (``batch``), or a
cancel. The worker answers each call with a ``response`` (tool errors inside it), a
``batch_result``, or a ``CallError`` (an infrastructure error: unknown tool, bad arguments,
cancelled, deadline passed). Replies are coalesced: the writer drains whatever is ready into one
frame, so a burst of answers costs one gRPC message.

Everything is bounded: at most ``max_in_flight`` calls run at once (beyond that the reader stops
reading, and HTTP/2 flow control pushes back on the orchestrator), and the reply queue has a
fixed size.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import grpc.aio

    ServicerContext = grpc.aio.ServicerContext[Any, Any]

from snakepit_nb._errors import CallTimeoutError, CancelledError, InvalidArgumentError
from snakepit_nb.protocol import pb
from snakepit_nb.protocol.status import call_error_for
from snakepit_nb.worker.calls.invocation import Invoker, PreparedCall

__all__ = ["ChannelServer"]

log = logging.getLogger("snakepit_nb.worker")

MAX_IN_FLIGHT = 4096
REPLY_QUEUE = 4096
MAX_FRAME_MESSAGES = 1024
MAX_FRAME_BYTES = 4 * 1024 * 1024

_END = None  # the writer's stop sentinel


class ChannelServer:
    """Serves one CallChannel stream."""

    def __init__(self, invoker: Invoker, *, max_in_flight: int = MAX_IN_FLIGHT) -> None:
        self.invoker = invoker
        self._slots = asyncio.Semaphore(max_in_flight)
        self._replies: asyncio.Queue[pb.ChannelMessage | None] = asyncio.Queue(REPLY_QUEUE)
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._cancel_requested: set[int] = set()
        self._reader_done = False
        self._ending = False
        self._end_task: asyncio.Task[None] | None = None

    async def serve(
        self, requests: AsyncIterator[pb.ChannelFrame], context: ServicerContext
    ) -> None:
        reader = asyncio.get_running_loop().create_task(self._read(requests))
        try:
            await self._write(context)
        finally:
            reader.cancel()
            for task in list(self._tasks.values()):
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader

    # ------------------------------------------------------------------ reading

    async def _read(self, requests: AsyncIterator[pb.ChannelFrame]) -> None:
        try:
            async for frame in requests:
                for message in frame.messages:
                    await self._dispatch(message)
        finally:
            self._reader_done = True
            self._maybe_end()

    async def _dispatch(self, message: pb.ChannelMessage) -> None:
        call_id = message.call_id
        body = message.WhichOneof("body")
        if body == "cancel":
            task = self._tasks.get(call_id)
            if task is not None and not task.done():
                self._cancel_requested.add(call_id)
                task.cancel()
            return
        if call_id in self._tasks:
            await self._reply_error(
                call_id, InvalidArgumentError(f"call id {call_id} is already in flight")
            )
            return
        if body == "request":
            try:
                call = await self.invoker.prepare_async(message.request)
            except Exception as exc:
                await self._reply_error(call_id, exc)
                return
            await self._slots.acquire()
            self._start(call_id, self._run_call(call_id, call, message.timeout))
        elif body == "batch":
            await self._slots.acquire()
            self._start(call_id, self._run_batch(call_id, message.batch, message.timeout))
        else:
            await self._reply_error(
                call_id,
                InvalidArgumentError(
                    f"a worker takes request, batch or cancel messages, not {body or 'nothing'}"
                ),
            )

    def _start(self, call_id: int, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks[call_id] = task
        task.add_done_callback(functools.partial(self._finished, call_id))

    def _finished(self, call_id: int, _task: object = None) -> None:
        self._tasks.pop(call_id, None)
        self._cancel_requested.discard(call_id)
        self._slots.release()
        self._maybe_end()

    def _maybe_end(self) -> None:
        # The orchestrator closed its side and every call answered: end the stream once the
        # replies before the sentinel are written.
        if self._reader_done and not self._tasks and not self._ending:
            self._ending = True
            self._end_task = asyncio.get_running_loop().create_task(self._replies.put(_END))

    # ------------------------------------------------------------------ calls

    async def _run_call(self, call_id: int, call: PreparedCall, deadline: float) -> None:
        try:
            if deadline > 0:
                async with asyncio.timeout(deadline):
                    response = await self.invoker.run(call)
            else:
                response = await self.invoker.run(call)
        except TimeoutError:
            call.cancel()
            await self._reply_error(
                call_id,
                CallTimeoutError(
                    f"tool {call.definition.name!r} did not finish within its {deadline:g} s "
                    "deadline and was cancelled; raise the call's timeout if it needs longer"
                ),
            )
            return
        except asyncio.CancelledError:
            call.cancel()
            if call_id not in self._cancel_requested:
                raise
            await self._reply_error(
                call_id, CancelledError(f"call of tool {call.definition.name!r} was cancelled")
            )
            return
        except Exception as exc:
            await self._reply_error(call_id, exc)
            return
        await self._replies.put(pb.ChannelMessage(call_id=call_id, response=response))

    async def _run_batch(self, call_id: int, batch: pb.BatchCall, deadline: float) -> None:
        try:
            if deadline > 0:
                async with asyncio.timeout(deadline):
                    result = await self.invoker.run_batch(batch)
            else:
                result = await self.invoker.run_batch(batch)
        except TimeoutError:
            await self._reply_error(
                call_id,
                CallTimeoutError(
                    f"batch of tool {batch.tool_name!r} did not finish within its {deadline:g} s "
                    "deadline and was cancelled; raise the timeout or send smaller batches"
                ),
            )
            return
        except asyncio.CancelledError:
            if call_id not in self._cancel_requested:
                raise
            await self._reply_error(
                call_id, CancelledError(f"batch of tool {batch.tool_name!r} was cancelled")
            )
            return
        except Exception as exc:
            await self._reply_error(call_id, exc)
            return
        await self._replies.put(pb.ChannelMessage(call_id=call_id, batch_result=result))

    async def _reply_error(self, call_id: int, exc: BaseException) -> None:
        await self._replies.put(pb.ChannelMessage(call_id=call_id, error=call_error_for(exc)))

    # ------------------------------------------------------------------ writing

    async def _write(self, context: ServicerContext) -> None:
        replies = self._replies
        while True:
            first = await replies.get()
            if first is None:
                return
            messages: list[pb.ChannelMessage] = [first]
            size = 0
            ending = False
            while not replies.empty() and len(messages) < MAX_FRAME_MESSAGES:
                if size == 0:
                    size = first.ByteSize()
                if size >= MAX_FRAME_BYTES:
                    break
                message = replies.get_nowait()
                if message is None:
                    ending = True
                    break
                messages.append(message)
                size += message.ByteSize()
            await context.write(pb.ChannelFrame(messages=messages))
            if ending:
                return
