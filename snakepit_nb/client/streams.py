"""Streams of chunks from a streaming tool: ``AsyncStream`` (await) and ``Stream`` (blocking).

Chunks arrive from the worker in batches (the worker coalesces them at the source). Both
streams move whole batches between threads, never single chunks: the blocking ``Stream`` has
a producer task on the loop thread that puts batches into a small bounded queue which the
consumer thread drains, so a Python consumer can take hundreds of thousands of chunks a second.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import queue
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from snakepit_nb._errors import ClosedError, SnakepitError
from snakepit_nb._loop import LoopThread
from snakepit_nb.client.blocking import name_interrupt
from snakepit_nb.orchestrator.telemetry import TelemetryEvent, TelemetrySubscription

if TYPE_CHECKING:
    from snakepit_nb.orchestrator.output import OutputRouter, OutputScope
    from snakepit_nb.orchestrator.routing import BatchStream

__all__ = [
    "AsyncStream",
    "AsyncTelemetryFeed",
    "ScopedStream",
    "Stream",
    "TelemetryFeed",
    "on_loop",
]

T = TypeVar("T")

# Batches in flight between the loop thread and a blocking consumer. A slow consumer stops
# the producer at this many, which stops reading the RPC, which slows the generator.
_QUEUE_BATCHES = 8


async def on_loop(loop_thread: LoopThread, coro: Coroutine[Any, Any, T]) -> T:
    """Await ``coro`` on the snakepit loop, from whatever loop the caller runs on."""
    if loop_thread.in_loop_thread():
        return await coro
    return await asyncio.wrap_future(loop_thread.submit(coro))


BatchSource = Callable[[], AsyncIterator[list[object]]]


class AsyncStream:
    """Chunks of a streaming call, as an async iterator.

    >>> async for chunk in session.stream("count", n=3):
    ...     print(chunk)
    {'i': 0, 'progress': 0.333...}
    ...

    ``chunks`` keeps every chunk received, or the last N with ``session.stream(...,
    _keep=N)`` (a long stream then holds N chunks, not all); ``received`` counts them all;
    ``result`` is the generator's return value once the stream ended (``None`` if it returned
    nothing); ``aclose()`` stops the remote generator.
    """

    def __init__(
        self,
        loop_thread: LoopThread,
        tool: str,
        open_source: BatchSource,
        *,
        keep: int | None = None,
    ) -> None:
        self._tool = tool
        self._chunks: list[object] | deque[object] = [] if keep is None else deque(maxlen=keep)
        self._received = 0
        self._loop_thread = loop_thread
        self._open = open_source
        self._source: AsyncIterator[list[object]] | None = None
        self._batch: list[object] = []
        self._index = 0
        self._done = False
        self._closed = False
        self._result: object = None

    # ------------------------------------------------------------------ public

    @property
    def tool(self) -> str:
        return self._tool

    @property
    def chunks(self) -> list[Any]:
        """Every chunk received so far (the last ``_keep`` of them, as a new list, if set)."""
        chunks = self._chunks
        return chunks if isinstance(chunks, list) else list(chunks)

    @property
    def received(self) -> int:
        """How many chunks arrived so far, kept or not."""
        return self._received

    @property
    def keeps_all(self) -> bool:
        """True when ``chunks`` is every chunk, one list that grows (no ``_keep``)."""
        return isinstance(self._chunks, list)

    @property
    def done(self) -> bool:
        """True once the stream ended (fully read, failed or closed)."""
        return self._done

    @property
    def result(self) -> Any:
        """The generator's return value (``None`` before the end or if it returned nothing)."""
        return self._result

    def __aiter__(self) -> AsyncStream:
        return self

    async def __anext__(self) -> Any:
        if self._index >= len(self._batch):
            if self._done:
                raise StopAsyncIteration
            batch = await on_loop(self._loop_thread, self._next_batch())
            if batch is None:
                raise StopAsyncIteration
            self._batch, self._index = batch, 0
        value = self._batch[self._index]
        self._index += 1
        return value

    async def collect(self) -> list[Any]:
        """Read to the end; returns ``chunks`` (``result`` is set afterwards)."""
        async for _ in self:
            pass
        return self.chunks

    async def aclose(self) -> None:
        """Stop the stream; the remote generator is closed (its ``finally`` runs)."""
        await on_loop(self._loop_thread, self._aclose())

    async def __aenter__(self) -> AsyncStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        state = "done" if self._done else "open"
        return f"<AsyncStream {self.tool!r} {state}, {self._received} chunks>"

    # ------------------------------------------------------------------ loop side

    async def _next_batch(self) -> list[object] | None:
        """The next non-empty batch, or None at the end (runs on the loop thread)."""
        if self._closed:
            raise ClosedError(f"the stream of {self.tool!r} was closed")
        if self._source is None:
            self._source = self._open()
        source = self._source
        try:
            while True:
                try:
                    batch = await source.__anext__()
                except StopAsyncIteration:
                    self._result = getattr(source, "result", None)
                    self._done = True
                    self._source = None
                    return None
                if batch:  # a fresh list from the decoder: no copy needed
                    self._chunks.extend(batch)
                    self._received += len(batch)
                    return batch
        except BaseException:
            self._done = True
            await self._close_source()
            raise

    async def _aclose(self) -> None:
        self._closed = True
        self._done = True
        await self._close_source()

    async def _close_source(self) -> None:
        source, self._source = self._source, None
        aclose = getattr(source, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                await aclose()


class ScopedStream:
    """A worker's stream whose output scope closes when the stream ends, so what the tool
    wrote has reached the caller's cell by the time the iteration stops (loop thread)."""

    def __init__(self, inner: BatchStream, output: OutputRouter, scope: OutputScope) -> None:
        self._inner = inner
        self._output = output
        self._scope = scope
        self._closed = False

    @property
    def result(self) -> object:
        return self._inner.result

    @result.setter
    def result(self, value: object) -> None:
        self._inner.result = value

    def __aiter__(self) -> ScopedStream:
        return self

    async def __anext__(self) -> list[object]:
        try:
            return await self._inner.__anext__()
        except BaseException:
            await self._close()
            raise

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            await self._close()

    async def _close(self) -> None:
        if not self._closed:
            self._closed = True
            await self._output.close(self._scope)


class _End:
    pass


_END = _End()


class Stream:
    """Chunks of a streaming call, as a blocking iterator (the ``Session.stream`` result).

    >>> for chunk in session.stream("count", n=3):
    ...     print(chunk["progress"])

    ``chunks`` keeps every chunk received, or the last N with ``session.stream(...,
    _keep=N)``; ``received`` counts them all; ``result`` is the generator's return value
    (reading it waits for the end of the stream); ``close()`` stops the remote generator;
    ``with`` closes it too. A kernel interrupt while waiting closes the stream.
    """

    def __init__(self, inner: AsyncStream) -> None:
        self._inner = inner
        self._loop_thread = inner._loop_thread
        self._queue: queue.SimpleQueue[list[object] | _End | BaseException] = queue.SimpleQueue()
        self._slots: asyncio.Semaphore | None = None
        self._task: asyncio.Task[None] | None = None
        self._lock = threading.Lock()
        self._ended = False
        self._iter = self._chunks()
        self._future: concurrent.futures.Future[None] = self._loop_thread.submit(self._produce())

    @property
    def tool(self) -> str:
        return self._inner.tool

    @property
    def chunks(self) -> list[Any]:
        """Every chunk received so far (the producer may be a few batches ahead of you)."""
        return self._inner.chunks

    @property
    def received(self) -> int:
        """How many chunks arrived so far, kept or not."""
        return self._inner.received

    @property
    def keeps_all(self) -> bool:
        """True when ``chunks`` is every chunk, one list that grows (no ``_keep``)."""
        return self._inner.keeps_all

    @property
    def done(self) -> bool:
        return self._ended

    @property
    def result(self) -> Any:
        """The generator's return value; waits for the end of the stream first."""
        if not self._ended:
            for _ in self:
                pass
        return self._inner.result

    def __iter__(self) -> Iterator[Any]:
        # The generator itself: a ``for`` loop then takes chunks straight from its
        # ``yield from`` of each batch, without a Python call per chunk.
        return self._iter

    def collect(self) -> list[Any]:
        """Read to the end; returns ``chunks`` (``result`` is set afterwards)."""
        for _ in self:
            pass
        return self.chunks

    def __next__(self) -> Any:
        return next(self._iter)

    def close(self) -> None:
        """Stop the stream now; returns once the remote generator was told to stop."""
        self._ended = True
        if self._future.done():
            return
        self._loop_thread.run(self._cancel())

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        # Best effort, never blocking: an abandoned stream must not keep a worker busy.
        future = getattr(self, "_future", None)
        if future is not None and not future.done():
            future.cancel()

    def __repr__(self) -> str:
        state = "done" if self._ended else "open"
        return f"<Stream {self.tool!r} {state}, {self.received} chunks>"

    # ------------------------------------------------------------------ consumer thread

    def _chunks(self) -> Iterator[object]:
        get = self._queue.get
        loop = self._loop_thread.loop
        while True:
            try:
                item = get()
            except KeyboardInterrupt as exc:
                self.close()
                raise name_interrupt(exc, f"stream {self.tool!r}") from None
            except BaseException:
                self.close()
                raise
            if isinstance(item, list):
                loop.call_soon_threadsafe(self._release)
                yield from item
                continue
            self._ended = True
            if isinstance(item, _End):
                return
            raise item.with_traceback(None)

    # ------------------------------------------------------------------ loop thread

    def _release(self) -> None:
        if self._slots is not None:
            self._slots.release()

    async def _produce(self) -> None:
        self._task = asyncio.current_task()
        self._slots = asyncio.Semaphore(_QUEUE_BATCHES)
        inner = self._inner
        put = self._queue.put
        try:
            while True:
                await self._slots.acquire()
                batch = await inner._next_batch()
                if batch is None:
                    put(_END)
                    return
                put(batch)
        except asyncio.CancelledError:
            await inner._aclose()
            put(ClosedError(f"the stream of {inner.tool!r} was closed"))
            raise
        except SnakepitError as exc:
            put(exc)
        except Exception as exc:  # unexpected: still wake the consumer, with the cause
            put(exc)

    async def _cancel(self) -> None:
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        elif task is None:
            self._future.cancel()
        await self._inner._aclose()


class AsyncTelemetryFeed:
    """Worker telemetry events as they happen (``await client.telemetry()``), async iterator.

    Events buffer per feed (bounded: a feed that is not read loses its oldest events and
    counts them in ``dropped``); ``aclose()`` ends the feed.
    """

    def __init__(self, loop_thread: LoopThread, subscription: TelemetrySubscription) -> None:
        self._loop_thread = loop_thread
        self._subscription = subscription

    @property
    def dropped(self) -> int:
        """Events this feed lost because it was not read fast enough."""
        return self._subscription.dropped

    def __aiter__(self) -> AsyncTelemetryFeed:
        return self

    async def __anext__(self) -> TelemetryEvent:
        return await on_loop(self._loop_thread, self._subscription.__anext__())

    async def drain(self) -> list[TelemetryEvent]:
        """The events buffered now, without waiting."""
        return await on_loop(self._loop_thread, self._drain())

    async def _drain(self) -> list[TelemetryEvent]:
        return self._subscription.drain()

    async def aclose(self) -> None:
        await on_loop(self._loop_thread, self._close())

    async def _close(self) -> None:
        self._subscription.close()

    async def __aenter__(self) -> AsyncTelemetryFeed:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class TelemetryFeed:
    """Worker telemetry events as they happen (``client.telemetry()``), blocking iterator."""

    def __init__(self, inner: AsyncTelemetryFeed) -> None:
        self._async = inner
        self._run = inner._loop_thread.run

    @property
    def dropped(self) -> int:
        return self._async.dropped

    def __iter__(self) -> TelemetryFeed:
        return self

    def __next__(self) -> TelemetryEvent:
        try:
            return self._run(self._async.__anext__())
        except StopAsyncIteration:
            raise StopIteration from None

    def drain(self) -> list[TelemetryEvent]:
        """The events buffered now, without waiting."""
        return self._run(self._async.drain())

    def close(self) -> None:
        return self._run(self._async.aclose())

    def __enter__(self) -> TelemetryFeed:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
