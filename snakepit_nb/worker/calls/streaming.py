"""Streaming tools: a generator's values, batched at the source, out through ExecuteStreamingTool.

Python gRPC costs about 200 µs per message, so a stream of small chunks is only fast when many
chunks share a message. Between the generator and the gRPC writer sits a bounded buffer: the
first chunk is flushed at once (first-chunk latency stays that of one message), later ones are
flushed when about 10 ms passed since the first unflushed chunk, or 64 KiB, or 1000 chunks
collected. When the writer lags (a slow consumer), the buffer fills and the generator waits: a
slow consumer slows the producer, it never grows memory.

Sync generators run in a worker thread, async generators as a task on the loop. When the caller
goes away, the generator is closed (its ``finally`` blocks run): at once for an async generator,
at its next ``yield`` for a sync one (which can also watch ``ctx.cancelled``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from snakepit_nb._errors import InvalidArgumentError, ResourceExhaustedError
from snakepit_nb._loop import set_event
from snakepit_nb.protocol import pb, pickling
from snakepit_nb.protocol.codec import encode_chunk, encode_chunk_batch
from snakepit_nb.protocol.lane import pack_inline
from snakepit_nb.tools.definition import StreamKind
from snakepit_nb.worker.calls.batches import trim_traceback
from snakepit_nb.worker.calls.invocation import OFF_LOOP_BYTES, Invoker, PreparedCall
from snakepit_nb.worker.output import in_context

__all__ = ["BATCHING_KEY", "RETURN_KEY", "ChunkBuffer", "StreamRun", "ToolStreamError"]

T = TypeVar("T")

BATCHING_KEY = "snakepit_nb.chunk_batching"
RETURN_KEY = "snakepit_nb.return"

FLUSH_INTERVAL = 0.010
FLUSH_BYTES = 64 * 1024
FLUSH_COUNT = 1000
MAX_BUFFERED_MESSAGES = 64
# An encoded batch above this is split in two (a generator yielding huge values fast).
_SPLIT_BYTES = 8 * 1024 * 1024


class ToolStreamError(Exception):
    """The streaming tool raised; ``error`` is its exception."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


class _Stopped(Exception):
    """Raised in the producer when the consumer went away."""


def _estimate(value: object) -> int:
    """A cheap guess of a chunk's encoded size, for the 64 KiB flush rule (O(1): containers
    count by length; a batch that turns out too big is split when encoded)."""
    cls = type(value)
    if cls is str or cls is bytes or cls is bytearray:
        return len(value)  # type: ignore[arg-type]
    if cls is dict or cls is list or cls is tuple:
        return 16 + 24 * len(value)  # type: ignore[arg-type]
    nbytes = getattr(value, "nbytes", None)
    return nbytes if type(nbytes) is int else 16


class ChunkBuffer:
    """A bounded hand-over of chunk batches from one producer to one async consumer."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *, batching: bool) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._space = threading.Condition(self._lock)
        self._aspace = asyncio.Event()
        self._wake = asyncio.Event()
        self._count_limit = FLUSH_COUNT if batching else 1
        self._pending: list[object] = []
        self._pending_bytes = 0
        self._pending_since = 0.0
        self._ready: collections.deque[list[object]] = collections.deque()
        self._flushed_first = False
        self._consumer_waiting = False
        self.stopped = False
        self.done = False
        self.error: BaseException | None = None
        self.result: tuple[bool, object] = (False, None)
        self.chunks = 0

    # ------------------------------------------------------------------ producer side

    def _append_locked(self, value: object) -> bool:
        """Add a chunk; True when the consumer must be woken. The per-chunk work is kept to a
        few attribute reads: the time rule is checked every 64 chunks here (and by the
        consumer's timer, which seals a batch that waited FLUSH_INTERVAL)."""
        if self.stopped:
            raise _Stopped
        pending = self._pending
        pending.append(value)
        n = len(pending)
        if n == 1:
            self._pending_since = time.monotonic()
            self._pending_bytes = _estimate(value)
            if not self._flushed_first:
                self._seal_locked()
                return self._take_waiter_locked()
            # A first unflushed chunk: the consumer arms its 10 ms timer.
            return self._take_waiter_locked()
        size = self._pending_bytes = self._pending_bytes + _estimate(value)
        if (
            n >= self._count_limit
            or size >= FLUSH_BYTES
            or (not n & 63 and time.monotonic() - self._pending_since >= FLUSH_INTERVAL)
        ):
            self._seal_locked()
            return self._take_waiter_locked()
        return False

    def _seal_locked(self) -> None:
        if self._pending:
            self.chunks += len(self._pending)
            self._ready.append(self._pending)
            self._pending = []
            self._flushed_first = True

    def _take_waiter_locked(self) -> bool:
        if self._consumer_waiting:
            self._consumer_waiting = False
            return True
        return False

    def _wake_consumer(self) -> None:
        set_event(self._loop, self._wake)

    def push(self, value: object) -> None:
        """Add a chunk from a producer thread; blocks while the buffer is full."""
        with self._lock:
            wake = self._append_locked(value)
            while len(self._ready) >= MAX_BUFFERED_MESSAGES and not self.stopped:
                if wake:
                    self._wake_consumer()
                    wake = False
                self._space.wait(0.5)
            if self.stopped:
                raise _Stopped
        if wake:
            self._wake_consumer()

    def push_on_loop(self, value: object) -> bool:
        """Add a chunk from a producer on the loop; True when a batch was sealed, and the
        producer must then ``await settle()`` (a plain call per chunk, no coroutine)."""
        pending = self._pending
        n = len(pending) + 1
        if n > 1 and not self.stopped:
            # The common case, a batch open and not full: only this thread (the loop, which
            # the consumer shares) touches the buffer now, so no lock and no bookkeeping.
            cls = type(value)
            if cls is dict or cls is list or cls is tuple:  # _estimate, inlined
                size = self._pending_bytes + 16 + 24 * len(value)  # type: ignore[arg-type]
            else:
                size = self._pending_bytes + _estimate(value)
            if (
                n < self._count_limit
                and size < FLUSH_BYTES
                and (n & 63 or time.monotonic() - self._pending_since < FLUSH_INTERVAL)
            ):
                pending.append(value)
                self._pending_bytes = size
                return False
        ready = self._ready
        with self._lock:
            sealed_before = len(ready)
            wake = self._append_locked(value)
        if wake:
            self._wake.set()
        return len(ready) > sealed_before

    async def settle(self) -> None:
        """After a sealed batch: let the writer send it, and wait while the buffer is full."""
        # Yielding here keeps the first chunk's latency low and the loop fair.
        await asyncio.sleep(0)
        while len(self._ready) >= MAX_BUFFERED_MESSAGES and not self.stopped:
            self._aspace.clear()
            await self._aspace.wait()
        if self.stopped:
            raise _Stopped

    async def apush(self, value: object) -> None:
        """Add a chunk from a producer on the loop; waits while the buffer is full."""
        if self.push_on_loop(value):
            await self.settle()

    def finish(self, result: tuple[bool, object], error: BaseException | None = None) -> None:
        """The producer is done (``error`` if the tool raised)."""
        with self._lock:
            self._seal_locked()
            self.result = result
            self.error = error
            self.done = True
            wake = self._take_waiter_locked()
        if wake:
            self._wake_consumer()

    # ------------------------------------------------------------------ consumer side

    def stop(self) -> None:
        """The consumer went away: the producer stops at its next chunk."""
        with self._lock:
            self.stopped = True
            self._space.notify_all()
        self._aspace.set()

    async def batches(self) -> AsyncIterator[list[object]]:
        """Batches of chunks in order, until the producer finishes."""
        while True:
            timeout: float | None = None
            with self._lock:
                if self._ready:
                    batch = self._ready.popleft()
                    self._space.notify()
                else:
                    batch = None
                    if self._pending:
                        left = self._pending_since + FLUSH_INTERVAL - time.monotonic()
                        if left <= 0:
                            self._seal_locked()
                            continue
                        timeout = left
                    elif self.done:
                        return
                    self._consumer_waiting = True
                    self._wake.clear()
            if batch is not None:
                self._aspace.set()
                yield batch
                continue
            timer = self._loop.call_later(timeout, self._wake.set) if timeout else None
            try:
                await self._wake.wait()
            finally:
                if timer is not None:
                    timer.cancel()
                with self._lock:
                    self._consumer_waiting = False


# ---------------------------------------------------------------------------- producers


def _drive_sync(buffer: ChunkBuffer, produce: Callable[[], Any]) -> None:
    """Run a sync generator in this (executor) thread, pushing its values into ``buffer``."""
    iterator: Any = None
    try:
        iterator = iter(produce())
        while True:
            try:
                value = next(iterator)
            except StopIteration as stop:
                buffer.finish((stop.value is not None, stop.value))
                return
            buffer.push(value)
    except _Stopped:
        pass
    except BaseException as exc:
        trim_traceback(exc)
        buffer.finish((False, None), exc)
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            # Runs the generator's finally blocks (a no-op when it finished); a failing finally
            # must not kill the thread.
            with contextlib.suppress(Exception):
                close()


async def _drive_async(buffer: ChunkBuffer, call: PreparedCall) -> None:
    """Run an async generator on the loop, pushing its values into ``buffer``."""
    agen: Any = None
    try:
        produced = call.definition.func(**call.kwargs)
        if asyncio.iscoroutine(produced):
            produced = await produced
        if not hasattr(produced, "__aiter__"):
            raise TypeError(
                f"streaming tool {call.definition.name!r} returned "
                f"{type(produced).__name__}, not an async iterator"
            )
        agen = produced
        push = buffer.push_on_loop
        async for value in agen:
            if push(value):
                await buffer.settle()
        buffer.finish(call.control.take_result())
    except _Stopped:
        pass
    except asyncio.CancelledError:
        buffer.finish((False, None), asyncio.CancelledError())
        raise
    except Exception as exc:  # the tool's error, reported on the stream
        trim_traceback(exc)
        buffer.finish((False, None), exc)
    finally:
        aclose = getattr(agen, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):  # a failing finally must not hide the outcome
                await aclose()


async def _drive_single(buffer: ChunkBuffer, invoker: Invoker, call: PreparedCall) -> None:
    """A non-streaming tool called through the streaming RPC: one chunk with its result."""
    definition = call.definition
    try:
        if definition.is_async:
            value = await definition.func(**call.kwargs)
        else:
            value = await invoker.loop.run_in_executor(
                invoker.executor, lambda: definition.func(**call.kwargs)
            )
    except Exception as exc:  # the tool's error
        trim_traceback(exc)
        buffer.finish((False, None), exc)
        return
    await buffer.apush(value)
    buffer.finish((False, None))


# ---------------------------------------------------------------------------- one stream


class StreamRun:
    """One ExecuteStreamingTool call: producer, buffer, and the ToolChunk messages."""

    def __init__(self, invoker: Invoker, call: PreparedCall, *, batching: bool) -> None:
        self.invoker = invoker
        self.call = call
        self.batching = batching
        self.buffer = ChunkBuffer(invoker.loop, batching=batching)
        self._task: asyncio.Future[None] | None = None
        self._started = time.perf_counter_ns()

    def start(self) -> None:
        definition = self.call.definition
        loop = self.invoker.loop
        if definition.stream is StreamKind.SYNC:
            kwargs = self.call.kwargs
            # The producer's thread keeps this task's context: its writes go to the call.
            produce = functools.partial(_drive_sync, self.buffer, lambda: definition.func(**kwargs))
            future = loop.run_in_executor(self.invoker.executor, in_context(produce))
            self._task = future
        elif definition.stream is StreamKind.ASYNC:
            self._task = loop.create_task(_drive_async(self.buffer, self.call))
        else:
            self._task = loop.create_task(_drive_single(self.buffer, self.invoker, self.call))

    async def messages(self) -> AsyncIterator[pb.ToolChunk]:
        """The stream's ToolChunk messages; the last one has ``is_final``.

        Raises ToolStreamError (after the chunks produced before it) if the tool raised.
        """
        name = self.call.definition.name
        limit = self.invoker.max_message_bytes
        n = 0
        async for batch in self.buffer.batches():
            if self.call.pickled:
                for data, count in await self._off_loop(_pickle_batch, name, batch, limit):
                    yield pb.ToolChunk(
                        chunk_id=f"{name}-{n}", pickled_batch=data, batch_count=count
                    )
                    n += 1
            elif self.batching:
                for data, count in _encode_batch(name, batch, self.invoker.max_message_bytes):
                    yield pb.ToolChunk(chunk_id=f"{name}-{n}", batch=data, batch_count=count)
                    n += 1
            else:
                for value in batch:
                    data, metadata = _encode_one(name, value, self.invoker.max_message_bytes)
                    yield pb.ToolChunk(chunk_id=f"{name}-{n}", data=data, metadata=metadata)
                    n += 1
        if self.buffer.error is not None:
            raise ToolStreamError(self.buffer.error)
        final = pb.ToolChunk(chunk_id=f"{name}-{n}", is_final=True)
        has_result, result = self.buffer.result
        if has_result and self.call.pickled:
            ((data, _),) = await self._off_loop(_pickle_return, name, [result], limit)
            final.pickled_batch = data
            final.metadata[RETURN_KEY] = "1"
        elif has_result:
            data, metadata = _encode_one(
                name, result, self.invoker.max_message_bytes, what="the return value"
            )
            final.data = data
            final.metadata.update(metadata)
            final.metadata[RETURN_KEY] = "1"
        yield final

    async def _off_loop(
        self,
        encode: Callable[[str, list[object], int], T],
        name: str,
        values: list[object],
        limit: int,
    ) -> T:
        # Small batches are encoded right here, big ones in a thread (heartbeats go on). A
        # batch is sealed once it reaches FLUSH_BYTES, so only its last chunk can make it big.
        if values and _estimate(values[-1]) + FLUSH_BYTES < OFF_LOOP_BYTES:
            return encode(name, values, limit)
        return await self.invoker.loop.run_in_executor(
            self.invoker.executor, encode, name, values, limit
        )

    async def close(self) -> None:
        """Stop the producer (closing the generator) if it is still running."""
        self.buffer.stop()
        if self.call.ctx is not None and not self.buffer.done:
            self.call.cancel()
        task = self._task
        if task is None or task.done():
            return
        if self.call.definition.stream is StreamKind.SYNC:
            return  # the thread sees the stop at its next chunk and closes the generator
        task.cancel()
        with contextlib.suppress(TimeoutError, asyncio.CancelledError, Exception):
            await asyncio.wait_for(asyncio.shield(task), timeout=1.0)

    @property
    def duration_ns(self) -> int:
        return time.perf_counter_ns() - self._started


def _encode_one(
    name: str, value: object, limit: int, *, what: str = "a chunk"
) -> tuple[bytes, dict[str, str]]:
    try:
        data, metadata = encode_chunk(value)
    except InvalidArgumentError as exc:
        raise InvalidArgumentError(f"{what} of tool {name!r} cannot be sent: {exc}") from exc
    # Checked here, not left to gRPC, whose "Sent message larger than max" says nothing of
    # which value or what to do; 1 KiB is kept for the message's other fields.
    if len(data) > limit - 1024:
        raise ResourceExhaustedError(
            f"{what} of tool {name!r} is {len(data)} bytes, over the {limit} byte message "
            "limit; send less data per message (yield it in smaller chunks), or write it to a "
            "file or shared memory and send its name"
        )
    return data, metadata


def _pickle_batch(
    name: str, values: list[object], limit: int, what: str = "a chunk"
) -> list[tuple[bytes, int]]:
    """Pickle a batch (for a pickled call: exact types), split in halves while too big."""
    # A batch is sealed by a chunk of FLUSH_BYTES or more, so only its last chunk can be a
    # large bytes value worth sending out of band: the others are not looked at.
    if values and _estimate(values[-1]) >= pickling.OOB_THRESHOLD:
        values = [*values[:-1], *pickling.wrap_large(values[-1:])]
    data = pack_inline(pickling.dumps(values, what=f"{what} of {name!r}"))
    if len(data) <= _SPLIT_BYTES or len(values) == 1:
        if len(data) > limit - 1024:
            raise ResourceExhaustedError(
                f"{what} of tool {name!r} is {len(data)} bytes, over the {limit} byte message "
                "limit; send less data per message (yield it in smaller chunks), or write it to "
                "a file or shared memory and send its name"
            )
        return [(data, len(values))]
    half = len(values) // 2
    return _pickle_batch(name, values[:half], limit, what) + _pickle_batch(
        name, values[half:], limit, what
    )


def _pickle_return(name: str, values: list[object], limit: int) -> list[tuple[bytes, int]]:
    return _pickle_batch(name, values, limit, "the return value")


def _encode_batch(name: str, values: list[object], limit: int) -> list[tuple[bytes, int]]:
    """Encode a batch as one message, split in halves while it is over ``_SPLIT_BYTES``."""
    try:
        data = encode_chunk_batch(values)
    except InvalidArgumentError as exc:
        raise InvalidArgumentError(f"a chunk of tool {name!r} cannot be sent: {exc}") from exc
    if len(data) <= _SPLIT_BYTES or len(values) == 1:
        if len(data) > limit:
            raise ResourceExhaustedError(
                f"a chunk of tool {name!r} is {len(data)} bytes, over the {limit} byte message "
                "limit; yield smaller chunks"
            )
        return [(data, len(values))]
    half = len(values) // 2
    return _encode_batch(name, values[:half], limit) + _encode_batch(name, values[half:], limit)
