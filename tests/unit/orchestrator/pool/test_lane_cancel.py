"""A lane call given up on (an interrupt, a deadline): the drain that waits for its answer.

The lane's connection is a real socket pair; the test writes the worker's answer on the other
end. The host is the fake one, whose ``settle`` first lets the loop run whatever was handed
to it so far, so an order of steps that would let a queued call in too early shows every time.
"""

from __future__ import annotations

import asyncio
import socket

from pool_fakes import FakeHost, until

from snakepit_nb.orchestrator.pool.calls.direct import abandon
from snakepit_nb.orchestrator.pool.handle import WorkerHandle
from snakepit_nb.protocol import lane


class _LoopFlushingHost(FakeHost):
    """Before each settle, waits until the loop has run the callbacks already sent to it,
    and notes how many cancels the worker still had unconfirmed at that moment."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(1, lambda: None)
        self.loop = loop
        self.unconfirmed_at_settle: list[int] = []

    def settle(
        self, handle: WorkerHandle, *, calls: int = 1, errors: int = 0, is_async: bool = False
    ) -> None:
        asyncio.run_coroutine_threadsafe(asyncio.sleep(0), self.loop).result(5)
        self.unconfirmed_at_settle.append(handle.unconfirmed_cancels)
        super().settle(handle, calls=calls, errors=errors, is_async=is_async)


class _Client:
    """The lane client's part the drain uses: the cancel it sends and the connection back."""

    def __init__(self) -> None:
        self.cancels: list[int] = []
        self.returned: list[str] = []

    def cancel(self, call_id: int) -> None:
        self.cancels.append(call_id)

    def checkin(self, conn: lane.LaneSocket) -> None:
        self.returned.append("checkin")

    def discard(self, conn: lane.LaneSocket) -> None:
        self.returned.append("discard")
        conn.close()


def test_the_slot_of_a_cancelled_call_is_free_before_its_worker_takes_a_new_call() -> None:
    async def body() -> tuple[_LoopFlushingHost, _Client, WorkerHandle, WorkerHandle]:
        host = _LoopFlushingHost(asyncio.get_running_loop())
        (handle,) = host.handles
        host.dispatcher.take(handle, is_async=True)  # the async call being given up on
        kernel_end, worker_end = socket.socketpair()
        client = _Client()
        try:
            abandon(
                host,
                handle,
                client,  # type: ignore[arg-type]
                lane.LaneSocket(kernel_end),
                [7],
                "slow",
                is_async=True,
            )
            # Until the worker answers, it takes no new call: the next one queues.
            queued = asyncio.create_task(host.dispatcher.acquire("s", "none"))
            await until(lambda: host.dispatcher.queue_length == 1)
            lane.LaneSocket(worker_end).send(lane.REPLY, 7, [b"cancelled"])
            got = await asyncio.wait_for(queued, 5)
            await until(lambda: client.returned)
        finally:
            worker_end.close()
            kernel_end.close()
        return host, client, handle, got

    host, client, handle, got = asyncio.run(asyncio.wait_for(body(), 10))
    assert client.cancels == [7]
    assert got is handle
    # The slot was given back while the cancel still counted as unconfirmed, so the queued
    # call could not start beside a cancelled call still holding its slot.
    assert host.unconfirmed_at_settle == [1]
    assert (handle.async_in_flight, handle.sync_in_flight) == (0, 1)
    assert handle.unconfirmed_cancels == 0
    assert client.returned == ["checkin"]
