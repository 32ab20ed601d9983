"""``map`` from the caller's own thread: chunks pickled, pipelined over the workers' lanes.

The calling thread cuts the items into chunks, keeps :data:`DEPTH` chunks in flight on each
worker's lane (one running, the next already waiting in its socket; one alone for items slower
than a chunk should take), and waits on all the lanes at once (``selectors``). A worker runs a
whole chunk in one loop (``f(x)`` for each item), so the cost per item is a few hundred
nanoseconds on either side.

Chunks are sized by time and bytes: the first ones are small, then each is made to take about
:data:`TARGET_SECONDS` of the worker's time (as measured so far), within
:data:`MAX_CHUNK_BYTES`, and never so large that a worker would sit idle at the end (a short
map of slow items is spread over all the workers, a chunk of one or two items each).
"""

from __future__ import annotations

import contextlib
import os
import selectors
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from snakepit_nb._errors import (
    CallTimeoutError,
    CancelledError,
    InvalidArgumentError,
    WorkerCrashedError,
)
from snakepit_nb.orchestrator.pool.calls.direct import (
    NOT_DIRECT,
    Target,
    abandon,
    for_lane,
    gone_error,
    target_name,
)
from snakepit_nb.orchestrator.pool.calls.requests import raise_unpicklable_item
from snakepit_nb.orchestrator.pool.handle import WorkerState
from snakepit_nb.protocol import lane, pickling
from snakepit_nb.protocol.codec import remote_error_from_info
from snakepit_nb.protocol.pickling import FunctionRef
from snakepit_nb.protocol.status import error_from_status

if TYPE_CHECKING:
    from snakepit_nb.orchestrator.pool.handle import IncarnationEnd, WorkerHandle
    from snakepit_nb.orchestrator.pool.host import PoolHost
    from snakepit_nb.orchestrator.pool.lane import LaneClient

__all__ = ["DEPTH", "Progress", "direct_map"]

DEPTH = 2
TARGET_SECONDS = 0.01
MAX_CHUNK_BYTES = 1 << 20
_FIRST_CHUNK = 64
_SLICE = 0.1

#: ``progress(done, failed)`` after each chunk (from the calling thread).
Progress = Callable[[int, int], None]


@dataclass(eq=False)
class _Worker:
    handle: WorkerHandle
    client: LaneClient
    conn: lane.LaneSocket
    ref: str | FunctionRef
    inflight: deque[tuple[int, int, int, float]] = field(default_factory=deque)
    dead: bool = False
    last_answer: float = 0.0
    end: IncarnationEnd = field(init=False)

    def __post_init__(self) -> None:
        self.end = self.handle.end


class _Mapper:
    def __init__(  # noqa: PLR0917
        self,
        host: PoolHost,
        session_id: str,
        target: Target,
        items: Sequence[Any],
        style: str,
        metadata: dict[str, str],
        progress: Progress | None,
    ) -> None:
        self.host = host
        self.session_id = session_id
        self.target = target
        self.tool = target_name(target)
        self.items = items
        self.style = style
        self.metadata = metadata
        self.progress = progress
        self.results: list[Any] = [None] * len(items)
        self.failed: dict[int, BaseException] = {}
        self.todo: deque[tuple[int, int]] = deque()  # (start, stop) handed back by a dead worker
        self.next_start = 0
        self.done = 0
        self.per_item = 0.0  # seconds of worker time per item, measured
        self.bytes_per_item = 0.0
        self.retry = isinstance(target, str) and host.is_idempotent(target)

    # ------------------------------------------------------------------ chunks

    def _next_chunk(self, workers: int) -> tuple[int, int] | None:
        if self.todo:
            return self.todo.popleft()
        n = len(self.items)
        if self.next_start >= n:
            return None
        left = n - self.next_start
        size = int(TARGET_SECONDS / self.per_item) if self.per_item > 0 else _FIRST_CHUNK
        if self.bytes_per_item > 0:
            size = min(size, int(MAX_CHUNK_BYTES / self.bytes_per_item))
        # Leave work for every worker at the end: no chunk over a share of what is left.
        size = max(1, min(size, -(-left // max(1, workers * DEPTH))))
        start, self.next_start = self.next_start, min(n, self.next_start + size)
        return start, self.next_start

    def _send(self, worker: _Worker, start: int, stop: int) -> None:
        chunk = self.items[start:stop]
        try:
            message = pickling.dumps(
                (self.session_id, worker.ref, chunk, self.style, self.metadata),
                what=f"an item of the map of {self.tool!r}",
            )
        except InvalidArgumentError:
            raise_unpicklable_item(self.tool, chunk, start)
            raise
        if not self.bytes_per_item:
            self.bytes_per_item = max(1.0, message.nbytes / max(1, stop - start))
        call_id = worker.client.next_id()
        parts, fds = lane.pack_message(message, shared=True)
        try:
            worker.conn.send(lane.BATCH, call_id, parts, fds)
        finally:
            for fd in fds:
                os.close(fd)
        worker.inflight.append((call_id, start, stop, time.monotonic()))

    # ------------------------------------------------------------------ answers

    def _receive(self, worker: _Worker) -> bool:
        """Read one answer of ``worker``; False when its lane is gone."""
        try:
            kind, _call_id, payload, fds = worker.conn.recv()
        except lane.LaneClosed:
            return False
        if kind != lane.REPLY:
            return False
        _call_id, start, stop, sent_at = worker.inflight.popleft()
        count = stop - start
        now = time.monotonic()
        # The chunk ran from when it was sent, or from the previous answer if it waited.
        worked = now - max(sent_at, worker.last_answer)
        worker.last_answer = now
        measured = worked / max(1, count)
        self.per_item = measured if not self.per_item else 0.5 * (self.per_item + measured)
        stream, buffers = lane.unpack_message(payload, fds)
        answer = pickling.loads(stream, buffers, what=f"the results of {self.tool!r}")
        if answer[0] != "ok":
            if answer[0] == "error" and answer[1] == lane.FUNCTION_UNKNOWN:
                worker.ref = _full_ref(self.target)
                self.todo.appendleft((start, stop))
                self.host.settle(worker.handle, calls=0)
                return True
            self.host.settle(worker.handle, calls=count, errors=count)
            raise error_from_status(_status(answer[1]), str(answer[2]), error_class=str(answer[3]))
        values, errors = answer[1], answer[2]
        self.results[start : start + len(values)] = values
        for index, info in errors.items():
            self.failed[start + index] = remote_error_from_info(
                info,
                tool_name=self.tool,
                session_id=self.session_id,
                worker_id=worker.handle.worker_id,
            )
        if isinstance(worker.ref, FunctionRef) and worker.ref.blob is not None:
            worker.client.functions.add(worker.ref.digest)
            worker.ref = FunctionRef(worker.ref.digest, worker.ref.name, None)
        self.done += count
        self.host.settle(worker.handle, calls=count, errors=len(errors))
        if self.progress is not None:
            self.progress(self.done, len(self.failed))
        return True

    def _lost(self, worker: _Worker) -> None:
        """``worker`` died: its chunks fail (or, for an idempotent tool, go to the others)."""
        worker.dead = True
        worker.client.discard(worker.conn)
        error = gone_error(worker.handle, worker.end, self.tool, wait=2.0)
        while worker.inflight:
            _cid, start, stop, _at = worker.inflight.popleft()
            self.host.settle(worker.handle, calls=stop - start, errors=stop - start)
            if self.retry:
                self.todo.append((start, stop))
                continue
            for index in range(start, stop):
                self.failed[index] = error
            self.done += stop - start

    # ------------------------------------------------------------------ the loop

    def run(
        self,
        workers: list[_Worker],
        deadline: float | None,
        cancelled: threading.Event | None = None,
    ) -> list[tuple[bool, Any]]:
        selector = selectors.DefaultSelector()
        for worker in workers:
            selector.register(worker.conn.sock, selectors.EVENT_READ, worker)
        try:
            while True:
                self._fill([w for w in workers if not w.dead], selector)
                if not any(w.inflight for w in workers if not w.dead):
                    if self.todo or self.next_start < len(self.items):
                        if self.done == 0 and not self.failed:
                            raise _NoLanes
                        self.fail_rest(
                            WorkerCrashedError(
                                f"no worker was left to finish the map of {self.tool!r}; "
                                "the pool is replacing them — run the map again"
                            )
                        )
                    break
                if cancelled is not None and cancelled.is_set():
                    raise CancelledError(f"the map of {self.tool!r} was cancelled")
                if deadline is not None and time.monotonic() >= deadline:
                    raise CallTimeoutError(
                        f"map of {self.tool!r} over {len(self.items)} items did not finish "
                        "within its deadline; the chunks still running were cancelled — pass "
                        "a larger timeout if it is only slow"
                    )
                for key, _events in selector.select(_SLICE):
                    worker = key.data
                    if not self._receive(worker):
                        self._drop(selector, worker)
                # A worker the pool saw end (its socket may linger, held by another process):
                # its chunks are lost now, not when the socket closes.
                for worker in workers:
                    if not worker.dead and worker.inflight and worker.end.event.is_set():
                        self._drop(selector, worker)
        except BaseException:
            self._abandon(workers)
            raise
        finally:
            selector.close()
        for worker in workers:
            if not worker.dead:
                worker.client.checkin(worker.conn)
        return [
            (False, self.failed[i]) if i in self.failed else (True, v)
            for i, v in enumerate(self.results)
        ]

    def _fill(self, alive: list[_Worker], selector: selectors.BaseSelector) -> None:
        """Give each worker its next chunk, one worker after the other, up to the depth.

        Round by round, so the chunks of a short map of slow items go to different workers.
        Pipelining hides the round trip between two chunks; once one item takes longer than
        a chunk should (:data:`TARGET_SECONDS`), the round trip is small beside it, and a
        chunk waiting behind another on one worker while a second worker sits idle at the
        end costs more: then each worker has one chunk at a time.
        """
        depth = 1 if self.per_item >= TARGET_SECONDS else DEPTH
        for level in range(depth):
            for worker in alive:
                if worker.dead or len(worker.inflight) > level:
                    continue
                chunk = self._next_chunk(len(alive))
                if chunk is None:
                    return
                self.host.dispatcher.take(worker.handle)
                try:
                    self._send(worker, *chunk)
                except (OSError, lane.LaneClosed):
                    self.host.settle(worker.handle, calls=0)
                    self.todo.appendleft(chunk)
                    self._drop(selector, worker)
                except BaseException:
                    self.host.settle(worker.handle, calls=0)
                    raise

    def _drop(self, selector: selectors.BaseSelector, worker: _Worker) -> None:
        """Stop using ``worker``'s lane (it broke): its chunks in flight are lost."""
        with contextlib.suppress(KeyError, ValueError):
            selector.unregister(worker.conn.sock)
        if worker.inflight:
            self._lost(worker)
        else:
            worker.dead = True
            worker.client.discard(worker.conn)

    def _abandon(self, workers: list[_Worker]) -> None:
        """Stop: cancel every chunk still in flight; slots are freed as workers confirm."""
        for worker in workers:
            if worker.dead:
                continue
            if worker.inflight:
                ids = [call_id for call_id, *_ in worker.inflight]
                worker.inflight.clear()
                abandon(self.host, worker.handle, worker.client, worker.conn, ids, self.tool)
            else:
                worker.client.checkin(worker.conn)

    def fail_rest(self, error: BaseException) -> None:
        """Items no worker can take any more: each gets ``error``."""
        pending = list(self.todo)
        self.todo.clear()
        if self.next_start < len(self.items):
            pending.append((self.next_start, len(self.items)))
            self.next_start = len(self.items)
        for start, stop in pending:
            for index in range(start, stop):
                self.failed[index] = error


class _NoLanes(Exception):
    """No worker lane is left for the rest of the map."""


def _status(name: object) -> Any:
    import grpc

    return getattr(grpc.StatusCode, str(name), grpc.StatusCode.UNKNOWN)


def _full_ref(target: Target) -> str | FunctionRef:
    return target if isinstance(target, str) else pickling.dumps_function(target)


def direct_map(
    host: PoolHost,
    session_id: str,
    target: Target,
    items: Sequence[Any],
    style: str,
    *,
    timeout: float | None,
    metadata: dict[str, str],
    progress: Progress | None = None,
    cancelled: threading.Event | None = None,
) -> Any:
    """``[(ok, value_or_error), ...]`` in order, or :data:`NOT_DIRECT` (no lane to use).

    ``cancelled``: set by another thread to stop the map (it raises CancelledError).
    """
    ref = _full_ref(target)
    workers: list[_Worker] = []
    for handle in host.handles:
        client = handle.lane
        if client is None or handle.state is not WorkerState.READY or client.closed:
            continue
        try:
            conn = client.checkout()
        except (OSError, lane.LaneClosed):
            continue
        workers.append(_Worker(handle, client, conn, for_lane(ref, client)))
    if not workers:
        return NOT_DIRECT
    mapper = _Mapper(host, session_id, target, items, style, metadata, progress)
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        return mapper.run(workers, deadline, cancelled)
    except _NoLanes:
        return NOT_DIRECT
