"""``Pool.map``: many calls of one tool, sent as ``BatchCall`` chunks over the call channels.

A chunk of argument sets travels as one codec-JSON array in one message, the worker runs the
whole chunk in one executor hop and answers with one array of ``[ok, value]`` pairs. Several
chunks are in flight per worker (one running, the next already there), spread over the
workers, so a trivial tool runs at about a hundred thousand calls per second on two cores.

Results come back in input order, one ``(ok, value_or_error)`` per argument set: a tool error
is a :class:`RemoteToolError` in its slot, the other items are unaffected. When a worker dies,
the items of its chunks in flight get :class:`WorkerCrashedError` (or, for a tool marked
idempotent, are sent again once); chunks not yet sent go to the other workers.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc

from snakepit_nb._errors import (
    CallTimeoutError,
    ClosedError,
    InvalidArgumentError,
    ProtocolError,
    RemoteToolError,
    ResourceExhaustedError,
    SnakepitError,
)
from snakepit_nb.orchestrator.pool.calls.direct import (
    NOT_DIRECT,
    Target,
    in_thread,
    target_name,
)
from snakepit_nb.orchestrator.pool.calls.direct_map import direct_map
from snakepit_nb.orchestrator.pool.calls.requests import raise_unpicklable_item
from snakepit_nb.orchestrator.pool.channel import ChannelBrokenError
from snakepit_nb.orchestrator.pool.handle import WorkerGone, WorkerHandle, WorkerState
from snakepit_nb.protocol import pb, pickling
from snakepit_nb.protocol.codec import decode_json, encode_json, remote_error_from_info
from snakepit_nb.protocol.lane import pack_inline, unpack_inline
from snakepit_nb.protocol.status import error_from_call_error, error_from_status

if TYPE_CHECKING:
    from snakepit_nb.orchestrator.pool.host import PoolHost

__all__ = ["MapResult", "run_map"]

#: One result of ``Pool.map``: ``(True, value)`` or ``(False, exception)``.
MapResult = tuple[bool, object]

MAX_CHUNK = 4096
#: Chunks in flight per worker: one running, one waiting in the worker.
DEPTH = 2


@dataclass(eq=False)
class _Chunk:
    start: int
    stop: int
    payload: bytes
    attempts: int = 0


def default_chunksize(n: int, workers: int) -> int:
    """About four chunks per worker, between 1 and MAX_CHUNK items each."""
    return max(1, min(MAX_CHUNK, math.ceil(n / max(1, workers * 4))))


def _check_items(tool: str, kwargs_list: Sequence[Mapping[str, object]]) -> list[object]:
    items: list[object] = []
    for index, kwargs in enumerate(kwargs_list):
        if type(kwargs) is dict:
            items.append(kwargs)
        elif isinstance(kwargs, Mapping):
            items.append(dict(kwargs))
        else:
            raise InvalidArgumentError(
                f"map({tool!r}) item {index} is a {type(kwargs).__name__}, not a mapping of "
                "argument names to values; pass e.g. [{'a': 1}, {'a': 2}]"
            )
    return items


async def run_map(
    pool: PoolHost,
    session_id: str,
    target: Target,
    kwargs_list: Sequence[Any],
    *,
    style: str = "kwargs",
    timeout: float | None,  # noqa: ASYNC109 - the pool's contract: one deadline for the map
    chunksize: int | None,
    affinity: str,
    metadata: Mapping[str, str] | None = None,
) -> list[MapResult]:
    """``metadata``: for every chunk's request (the caller's output tag, for one)."""
    tool = target_name(target)
    items = _check_items(tool, kwargs_list) if style == "kwargs" else list(kwargs_list)
    n = len(items)
    if n == 0:
        return []
    if pool.pickles and chunksize is None and any(h.lane is not None for h in pool.handles):
        # Local workers: the map runs over their lanes, from a thread (never on the loop).
        lanes = await _over_lanes(
            pool, session_id, target, items, style, timeout, dict(metadata or {})
        )
        if lanes is not NOT_DIRECT:
            return lanes  # type: ignore[no-any-return]
    if chunksize is not None and (
        isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1
    ):
        raise InvalidArgumentError(f"chunksize must be a positive integer, not {chunksize!r}")
    size = chunksize or default_chunksize(n, len(pool.handles))
    max_bytes = pool.config.max_message_bytes // 2
    chunks: collections.deque[_Chunk] = collections.deque()
    # Our own workers get every map pickled (exact types both ways); anyone else JSON.
    pickled = pool.pickles
    if not pickled and (not isinstance(target, str) or style != "kwargs"):
        raise InvalidArgumentError(
            f"map({tool!r}) with a Python function or positional items needs them pickled, "
            "which only the kernel's own authenticated workers take; this pool runs a foreign "
            "worker or auth=False: map a tool by name over dicts of JSON-friendly arguments"
        )
    ref = None if isinstance(target, str) else pickling.dumps_function(target)
    for start in range(0, n, size):
        stop = min(n, start + size)
        if pickled:
            chunks.append(_pickled_chunk(session_id, tool, ref, items, start, stop, style))
        else:
            _encode_chunks(chunks, session_id, tool, items, start, stop, max_bytes)
    if metadata:
        # A serialised message followed by another is their merge: each chunk gets the map.
        extra = pb.BatchCall(metadata=metadata).SerializeToString()
        for chunk in chunks:
            chunk.payload += extra
    try:
        async with asyncio.timeout(timeout):
            return await _Mapper(pool, session_id, tool, n, chunks, affinity).run()
    except TimeoutError as exc:
        raise CallTimeoutError(
            f"map of {tool!r} over {n} items did not finish within {timeout:g} s; the chunks "
            "still running were cancelled — pass a larger timeout if it is only slow"
        ) from exc


async def _over_lanes(  # noqa: PLR0917
    pool: PoolHost,
    session_id: str,
    target: Target,
    items: list[Any],
    style: str,
    timeout: float | None,  # noqa: ASYNC109 - the map's deadline
    metadata: dict[str, str],
) -> Any:
    return await in_thread(
        pool.lane_executor,
        lambda cancelled: direct_map(
            pool,
            session_id,
            target,
            items,
            style,
            timeout=timeout,
            metadata=metadata,
            cancelled=cancelled,
        ),
    )


def _encode_chunks(  # noqa: PLR0917 - internal recursion helper
    out: collections.deque[_Chunk],
    session_id: str,
    tool: str,
    items: list[object],
    start: int,
    stop: int,
    max_bytes: int,
) -> None:
    arguments = encode_json(items[start:stop])
    if len(arguments) > max_bytes:
        if stop - start == 1:
            raise ResourceExhaustedError(
                f"map({tool!r}) item {start} is {len(arguments)} bytes, over the message limit; "
                "pass large data through a file or shared memory"
            )
        middle = (start + stop) // 2
        _encode_chunks(out, session_id, tool, items, start, middle, max_bytes)
        _encode_chunks(out, session_id, tool, items, middle, stop, max_bytes)
        return
    payload = pb.BatchCall(
        session_id=session_id, tool_name=tool, arguments=arguments
    ).SerializeToString()
    out.append(_Chunk(start, stop, payload))


def _pickled_chunk(  # noqa: PLR0917
    session_id: str,
    tool: str,
    ref: pickling.FunctionRef | None,
    items: list[object],
    start: int,
    stop: int,
    style: str,
) -> _Chunk:
    try:
        message = pickling.dumps((ref, items[start:stop], style), what=f"an item of map({tool!r})")
    except InvalidArgumentError:
        raise_unpicklable_item(tool, items[start:stop], start)
        raise
    batch = pb.BatchCall(session_id=session_id, tool_name=tool, pickled=pack_inline(message))
    return _Chunk(start, stop, batch.SerializeToString())


class _Mapper:
    def __init__(  # noqa: PLR0917
        self,
        pool: PoolHost,
        session_id: str,
        tool: str,
        n: int,
        chunks: collections.deque[_Chunk],
        affinity: str,
    ) -> None:
        self.pool = pool
        self.session_id = session_id
        self.tool = tool
        self.results: list[MapResult | None] = [None] * n
        self.chunks = chunks
        self.affinity = affinity
        self.only: WorkerHandle | None = None
        self.idempotent = pool.is_idempotent(tool)
        # future -> (handle, call_id, chunk)
        self.pending: dict[asyncio.Future[pb.ChannelMessage], tuple[WorkerHandle, int, _Chunk]] = {}
        self.per_worker: collections.Counter[str] = collections.Counter()

    async def run(self) -> list[MapResult]:
        pool = self.pool
        if self.affinity == "strict":
            handle = await pool.dispatcher.acquire(self.session_id, "strict")
            pool.dispatcher.release(handle)
            self.only = handle
        try:
            while self.chunks or self.pending:
                self._fill()
                if not self.pending:
                    if self.only is not None and self.only.state is not WorkerState.READY:
                        # The strict worker is gone: the dispatcher says so with the right error.
                        await pool.dispatcher.acquire(self.session_id, "strict")
                    # No worker could take a chunk: wait for one (or fail if none is left).
                    handle = await pool.dispatcher.acquire(self.session_id, "none")
                    pool.dispatcher.release(handle)
                    if handle.call_channel is None:
                        await self._plain_fallback()
                    continue
                done, _ = await asyncio.wait(
                    list(self.pending), return_when=asyncio.FIRST_COMPLETED
                )
                for future in done:
                    self._complete(future)
        except BaseException:
            self._cancel_pending()
            raise
        return [r if r is not None else (False, ProtocolError("no result")) for r in self.results]

    def _targets(self) -> list[WorkerHandle]:
        if self.only is not None:
            return [self.only]
        return [h for h in self.pool.handles if h.state is WorkerState.READY]

    def _fill(self) -> None:
        targets = self._targets()
        progress = True
        while self.chunks and progress:
            progress = False
            for handle in targets:
                if not self.chunks:
                    break
                channel = handle.call_channel
                if channel is None or channel.broken or handle.state is not WorkerState.READY:
                    continue
                if self.per_worker[handle.worker_id] >= DEPTH:
                    continue
                chunk = self.chunks.popleft()
                try:
                    call_id, future = channel.submit(batch=chunk.payload)
                except ChannelBrokenError:
                    self.chunks.appendleft(chunk)
                    continue
                self.pool.dispatcher.take(handle)  # map batches count as sync calls
                self.per_worker[handle.worker_id] += 1
                self.pending[future] = (handle, call_id, chunk)
                progress = True

    def _complete(self, future: asyncio.Future[pb.ChannelMessage]) -> None:
        handle, _call_id, chunk = self.pending.pop(future)
        self.per_worker[handle.worker_id] -= 1
        count = chunk.stop - chunk.start
        try:
            message = future.result()
        except WorkerGone as gone:
            self.pool.settle(handle, calls=0)
            if self.idempotent and chunk.attempts == 0:
                chunk.attempts += 1
                self.chunks.appendleft(chunk)
                return
            error = gone.error_for(self.tool)
            self._fill_error(chunk, error)
            self.pool.dispatcher.count_errors(handle, count)
            return
        except ClosedError:
            self.pool.settle(handle, calls=0)
            raise
        kind = message.WhichOneof("body")
        if kind == "batch_result" and message.batch_result.pickled:
            errors = self._store_pickled(chunk, message.batch_result.pickled, handle.worker_id)
            self.pool.settle(handle, calls=count, errors=errors)
            return
        if kind == "batch_result":
            values = decode_json(message.batch_result.results)
            if not isinstance(values, list) or len(values) != count:
                self.pool.settle(handle, calls=count, errors=count)
                raise ProtocolError(
                    f"worker {handle.worker_id} answered a batch of {count} with "
                    f"{len(values) if isinstance(values, list) else type(values).__name__} "
                    "results"
                )
            errors = self._store(chunk, values, handle.worker_id)
            self.pool.settle(handle, calls=count, errors=errors)
            return
        self.pool.settle(handle, calls=count, errors=count)
        if kind == "error":
            # An infrastructure error for the whole chunk (unknown tool, bad arguments...):
            # the same error for every item would be noise; raise it once.
            raise error_from_call_error(message.error)
        raise ProtocolError(f"worker {handle.worker_id} answered a batch with {kind!r}")

    def _store(self, chunk: _Chunk, values: list[object], worker_id: str) -> int:
        results = self.results
        errors = 0
        index = chunk.start
        for entry in values:
            if type(entry) is list and len(entry) == 2 and entry[0] is True:
                results[index] = (True, entry[1])
            else:
                errors += 1
                results[index] = (False, self._item_error(entry, worker_id))
            index += 1
        return errors

    def _store_pickled(self, chunk: _Chunk, data: bytes, worker_id: str) -> int:
        if not self.pool.pickles:
            raise ProtocolError(
                f"worker {worker_id} answered a batch pickled, which this pool does not accept "
                "from it; nothing was unpickled"
            )
        answer = unpack_inline(data, what=f"the results of map({self.tool!r})")
        if answer[0] != "ok":
            raise error_from_status(
                getattr(grpc.StatusCode, str(answer[1]), grpc.StatusCode.UNKNOWN),
                str(answer[2]),
                error_class=str(answer[3]) if len(answer) > 3 else "",
            )
        values, errors = answer[1], answer[2]
        for offset, value in enumerate(values):
            self.results[chunk.start + offset] = (True, value)
        for offset, info in errors.items():
            self.results[chunk.start + offset] = (False, self._item_error(info, worker_id))
        return len(errors)

    def _item_error(self, entry: object, worker_id: str) -> SnakepitError:
        info = entry[1] if isinstance(entry, list) and len(entry) == 2 else entry
        if isinstance(info, Mapping):
            return remote_error_from_info(
                info, tool_name=self.tool, session_id=self.session_id, worker_id=worker_id
            )
        return RemoteToolError("RemoteError", str(info), tool_name=self.tool, worker_id=worker_id)

    def _fill_error(self, chunk: _Chunk, error: BaseException) -> None:
        for index in range(chunk.start, chunk.stop):
            self.results[index] = (False, error)

    def _cancel_pending(self) -> None:
        for future, (handle, call_id, _chunk) in list(self.pending.items()):
            channel = handle.call_channel
            if channel is not None and not future.done():
                channel.cancel(call_id, "the map was cancelled")
                confirming = (call_id, handle.cancel_sent(call_id, self.tool))
                future.add_done_callback(functools.partial(self._settle, handle, confirming))
            else:
                self.pool.settle(handle, calls=0)
        self.pending.clear()

    def _settle(
        self,
        handle: WorkerHandle,
        confirming: tuple[int, int],
        future: asyncio.Future[pb.ChannelMessage],
    ) -> None:
        """A cancelled chunk's answer arrived: its slot is free now."""
        if not future.cancelled():
            future.exception()  # mark retrieved
        handle.cancel_confirmed(*confirming)
        self.pool.settle(handle, calls=0)

    async def _plain_fallback(self) -> None:
        """Workers without a call channel (foreign): one plain call per item, bounded."""
        pool = self.pool
        limit = asyncio.Semaphore(max(1, len(pool.handles) * pool.config.capacity * 2))

        async def one(index: int, kwargs: Mapping[str, object]) -> None:
            async with limit:
                try:
                    value = await pool.call(self.session_id, self.tool, kwargs, timeout=None)
                except SnakepitError as exc:
                    self.results[index] = (False, exc)
                else:
                    self.results[index] = (True, value)

        jobs = []
        while self.chunks:
            chunk = self.chunks.popleft()
            batch = pb.BatchCall.FromString(chunk.payload)
            arguments = decode_json(batch.arguments)
            assert isinstance(arguments, list)
            for offset, kwargs in enumerate(arguments):
                jobs.append(one(chunk.start + offset, kwargs))
        await asyncio.gather(*jobs)
