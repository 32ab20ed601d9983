"""A fake PoolHost and fake workers for the pool helpers' unit tests (not a test module).

The fake workers answer on the event loop, as real ones would over their call channels; what
they run is a plain Python function of the test's choosing, so the helpers' bookkeeping (slots,
order, errors, retries, cancellation) is what the tests observe.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from snakepit_nb._errors import CallTimeoutError
from snakepit_nb.orchestrator.config import Config
from snakepit_nb.orchestrator.pool.dispatch import Dispatcher
from snakepit_nb.orchestrator.pool.handle import WorkerGone, WorkerHandle, WorkerState
from snakepit_nb.orchestrator.registry import ToolRegistry
from snakepit_nb.protocol import pb, pickling
from snakepit_nb.protocol.codec import decode_json, encode_json, error_info
from snakepit_nb.protocol.lane import pack_inline, unpack_inline

Tool = Callable[..., object]


async def until(predicate: Callable[[], object], within: float = 5.0) -> None:
    """Wait (yielding to the loop) until ``predicate()`` holds; fail after ``within`` s."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached within {within} s")
        await asyncio.sleep(0.001)


class FakeChannel:
    """A worker's call channel: runs each batch with ``tool`` after ``delay`` seconds."""

    def __init__(self, handle: WorkerHandle, tool: Tool, delay: float = 0.0) -> None:
        self.handle = handle
        self.tool = tool
        self.delay = delay
        self.broken = False
        self.hold = False  # answer nothing (a busy or hung worker)
        self.batches: list[int] = []  # items per batch received
        self.cancelled: list[int] = []
        self._next = 0
        self._pending: dict[int, asyncio.Future[pb.ChannelMessage]] = {}

    def submit(
        self, *, request: bytes | None = None, batch: bytes | None = None, timeout: float = 0.0
    ) -> tuple[int, asyncio.Future[pb.ChannelMessage]]:
        assert batch is not None
        self._next += 1
        call_id = self._next
        future: asyncio.Future[pb.ChannelMessage] = asyncio.get_running_loop().create_future()
        self._pending[call_id] = future
        message = pb.BatchCall.FromString(batch)
        # The kernel's own workers get maps pickled; others (pickles=False) JSON.
        pickled = bool(message.pickled)
        if pickled:
            _ref, items, _style = unpack_inline(message.pickled, what="a test batch")
        else:
            items = decode_json(message.arguments)
        assert isinstance(items, list)
        self.batches.append(len(items))
        if not self.hold:
            asyncio.get_running_loop().call_later(self.delay, self._answer, call_id, items, pickled)
        return call_id, future

    def _answer(self, call_id: int, items: list[Any], pickled: bool = False) -> None:
        future = self._pending.pop(call_id, None)
        if future is None or future.done():
            return
        results: list[list[object]] = []
        for kwargs in items:
            try:
                results.append([True, self.tool(**kwargs)])
            except Exception as exc:
                results.append([False, error_info(exc, tool_name="t", session_id="s")])
        if pickled:
            values = [value if ok else None for ok, value in results]
            errors = {i: value for i, (ok, value) in enumerate(results) if not ok}
            answer = pack_inline(pickling.dumps(("ok", values, errors)))
            future.set_result(
                pb.ChannelMessage(call_id=call_id, batch_result=pb.BatchResult(pickled=answer))
            )
            return
        future.set_result(
            pb.ChannelMessage(
                call_id=call_id, batch_result=pb.BatchResult(results=encode_json(results))
            )
        )

    def cancel(self, call_id: int, reason: str = "") -> None:
        self.cancelled.append(call_id)
        future = self._pending.pop(call_id, None)
        if future is not None and not future.done():
            # The worker confirms the cancel with an error answer.
            future.set_result(
                pb.ChannelMessage(call_id=call_id, error=pb.CallError(code=1, message=reason))
            )

    def fail_all(self, gone: BaseException) -> None:
        """The worker's process ended: every pending call fails with ``gone``."""
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(gone)


class FakeHost:
    """A PoolHost over fake workers."""

    def __init__(
        self, workers: int, tool: Tool, *, idempotent: bool = False, **config: Any
    ) -> None:
        self.config = Config(workers=workers, **config)
        self.handles: list[WorkerHandle] = []
        self.channels: list[FakeChannel] = []
        for i in range(workers):
            handle = WorkerHandle(f"w{i + 1}", capacity=1)
            handle.state = WorkerState.READY
            channel = FakeChannel(handle, tool)
            handle.call_channel = channel  # type: ignore[assignment]
            self.handles.append(handle)
            self.channels.append(channel)
        self.dispatcher = Dispatcher(self.handles, max_queue=100)
        self.metadata: tuple[tuple[str, str], ...] = ()
        self.registry = ToolRegistry()
        self.idempotent = idempotent
        self.pickles = True
        self.lane_executor = concurrent.futures.ThreadPoolExecutor(max_workers=2)
        self.settled: list[tuple[str, int, int]] = []

    def settle(
        self, handle: WorkerHandle, *, calls: int = 1, errors: int = 0, is_async: bool = False
    ) -> None:
        handle.calls += calls
        handle.errors += errors
        self.settled.append((handle.worker_id, calls, errors))
        self.dispatcher.release(handle, is_async=is_async)

    async def gone_reason(self, handle: WorkerHandle, wait: float = 2.0) -> WorkerGone | None:
        try:
            reason = await asyncio.wait_for(asyncio.shield(handle.gone), wait)
        except TimeoutError:
            return None
        return reason if isinstance(reason, WorkerGone) else None

    def is_idempotent(self, tool: str) -> bool:
        return self.idempotent

    def is_async_tool(self, tool: str) -> bool:
        return False

    async def call(
        self,
        session_id: str,
        tool: str,
        kwargs: Mapping[str, object],
        *,
        timeout: float | None,  # noqa: ASYNC109 - the PoolHost contract
    ) -> object:
        raise CallTimeoutError("the fake host has no plain calls")

    def in_flight(self) -> Sequence[int]:
        return [h.in_flight for h in self.handles]
