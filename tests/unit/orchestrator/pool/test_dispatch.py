"""Dispatcher: which slot takes a call — least loaded, affinity, kinds of slots, the queue."""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
from pool_fakes import until

from snakepit_nb._errors import (
    ClosedError,
    PoolSaturatedError,
    SessionWorkerGoneError,
    WorkerFailedError,
    WorkerUnavailableError,
)
from snakepit_nb.orchestrator.pool.dispatch import Dispatcher
from snakepit_nb.orchestrator.pool.handle import WorkerHandle, WorkerState

T = TypeVar("T")


def run(body: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(asyncio.wait_for(body(), 10))  # type: ignore[arg-type]


def ready(n: int, *, capacity: int = 1, async_capacity: int = 2) -> list[WorkerHandle]:
    handles = []
    for i in range(n):
        handle = WorkerHandle(f"w{i + 1}", capacity=capacity, async_capacity=async_capacity)
        handle.state = WorkerState.READY
        handles.append(handle)
    return handles


def test_calls_go_to_the_least_loaded_ready_worker() -> None:
    async def body() -> list[str]:
        handles = ready(3, capacity=2)
        handles[0].take_slot(False)
        handles[0].take_slot(False)  # w1 is full
        handles[2].take_slot(False)
        dispatcher = Dispatcher(handles, max_queue=10)
        first = await dispatcher.acquire("s", "none")
        second = await dispatcher.acquire("s", "none")
        return [first.worker_id, second.worker_id]

    first, second = run(body)
    assert first == "w2"  # the only idle one
    assert second != "w1"  # full: never chosen while others have room


def test_hint_affinity_returns_to_the_last_worker_while_it_has_room() -> None:
    async def body() -> tuple[str, str, str]:
        handles = ready(2, capacity=2)
        dispatcher = Dispatcher(handles, max_queue=10)
        a = await dispatcher.acquire("s1", "hint")
        dispatcher.release(a)
        b = await dispatcher.acquire("s1", "hint")
        # Fill the hinted worker: the session's next call goes elsewhere, it does not wait.
        b.take_slot(False)
        c = await dispatcher.acquire("s1", "hint")
        return a.worker_id, b.worker_id, c.worker_id

    a, b, c = run(body)
    assert a == b
    assert c != b


def test_strict_affinity_binds_to_an_incarnation_and_fails_once_it_is_replaced() -> None:
    async def body() -> None:
        handles = ready(2)
        dispatcher = Dispatcher(handles, max_queue=10)
        first = await dispatcher.acquire("s1", "strict")
        dispatcher.release(first)
        again = await dispatcher.acquire("s1", "strict")
        assert again is first
        dispatcher.release(again)
        first.new_incarnation()  # the process holding the session's objects was replaced
        first.state = WorkerState.READY
        with pytest.raises(SessionWorkerGoneError, match="bound to worker"):
            await dispatcher.acquire("s1", "strict")

    run(body)


def test_a_full_pool_queues_calls_in_order_and_hands_freed_slots_out() -> None:
    async def body() -> list[str]:
        (handle,) = ready(1)
        dispatcher = Dispatcher([handle], max_queue=10)
        held = await dispatcher.acquire("s", "none")
        order: list[str] = []

        async def wait_turn(name: str) -> None:
            got = await dispatcher.acquire("s", "none")
            order.append(name)
            dispatcher.release(got)

        tasks = [asyncio.create_task(wait_turn(n)) for n in ("a", "b", "c")]
        await until(lambda: dispatcher.queue_length >= 3)
        assert order == []
        dispatcher.release(held)
        await asyncio.gather(*tasks)
        return order

    assert run(body) == ["a", "b", "c"]


def test_past_max_queue_a_call_is_refused_with_pool_saturated() -> None:
    async def body() -> None:
        (handle,) = ready(1)
        dispatcher = Dispatcher([handle], max_queue=1)
        await dispatcher.acquire("s", "none")
        waiter = asyncio.create_task(dispatcher.acquire("s", "none"))
        await until(lambda: dispatcher.queue_length >= 1)
        with pytest.raises(PoolSaturatedError, match="max_queue=1"):
            await dispatcher.acquire("s", "none")
        waiter.cancel()

    run(body)


def test_a_call_cancelled_while_queued_leaves_the_queue() -> None:
    async def body() -> int:
        (handle,) = ready(1)
        dispatcher = Dispatcher([handle], max_queue=5)
        held = await dispatcher.acquire("s", "none")
        waiter = asyncio.create_task(dispatcher.acquire("s", "none"))
        await until(lambda: dispatcher.queue_length >= 1)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        dispatcher.release(held)
        # The freed slot was not handed to the cancelled call.
        return handle.in_flight

    assert run(body) == 0


def test_sync_and_async_slots_are_separate() -> None:
    async def body() -> tuple[bool, str]:
        (handle,) = ready(1, capacity=1, async_capacity=2)
        dispatcher = Dispatcher([handle], max_queue=5)
        await dispatcher.acquire("s", "none")  # the one sync slot
        # An async call still finds room; a sync one waits.
        got = await dispatcher.acquire("s", "none", is_async=True)
        sync_waiter = asyncio.create_task(dispatcher.acquire("s", "none"))
        await asyncio.sleep(0)
        waiting = not sync_waiter.done()
        sync_waiter.cancel()
        return waiting, got.worker_id

    waiting, worker = run(body)
    assert waiting
    assert worker == "w1"


def test_a_worker_with_an_unconfirmed_cancel_takes_no_new_call() -> None:
    async def body() -> str:
        handles = ready(2, capacity=4)
        handles[0].cancel_sent(1, "slow")
        dispatcher = Dispatcher(handles, max_queue=5)
        got = await dispatcher.acquire("s", "none")
        return got.worker_id

    assert run(body) == "w2"


def test_a_confirmed_cancel_hands_the_worker_to_a_call_queued_behind_it() -> None:
    # The lane's order after an interrupt: the slot is freed from the drain thread while the
    # cancel is still unconfirmed (nothing queued yet, so nothing to wake), the next call
    # queues, and only then does the confirmation come, from that thread too.
    async def body() -> str:
        (handle,) = ready(1)
        dispatcher = Dispatcher([handle], max_queue=5)
        held = await dispatcher.acquire("s", "none")
        incarnation = dispatcher.cancel_sent(held, ("lane", 7), "slow")
        await asyncio.to_thread(dispatcher.release, held, calls=1, errors=1)
        waiter = asyncio.create_task(dispatcher.acquire("s", "none"))
        await until(lambda: dispatcher.queue_length == 1)
        await asyncio.to_thread(dispatcher.cancel_confirmed, held, ("lane", 7), incarnation)
        got = await asyncio.wait_for(waiter, 2)
        return got.worker_id

    assert run(body) == "w1"


class _ReleaseDuringPump:
    """The dispatcher's lock, which lets another thread free ``handle``'s slot the first
    time the pump lets go of it, while the pump holds the queued calls out of their deque."""

    def __init__(self, dispatcher: Dispatcher, handle: WorkerHandle) -> None:
        self.inner = threading.Lock()
        self.dispatcher = dispatcher
        self.handle = handle
        self.fired = False

    def __enter__(self) -> None:
        self.inner.acquire()

    def __exit__(self, *exc: object) -> None:
        self.inner.release()
        if not self.fired and sys._getframe(1).f_code.co_name == "_pump_queue":
            self.fired = True
            other = threading.Thread(target=self.dispatcher.release, args=(self.handle,))
            other.start()
            other.join()


def test_a_slot_freed_by_another_thread_while_the_pump_runs_is_not_lost() -> None:
    async def body() -> tuple[bool, str]:
        (handle,) = ready(1)
        dispatcher = Dispatcher([handle], max_queue=5)
        held = await dispatcher.acquire("s", "none")
        seam = _ReleaseDuringPump(dispatcher, held)
        dispatcher._lock = seam  # type: ignore[assignment]
        got = await asyncio.wait_for(dispatcher.acquire("s", "none"), 2)
        return seam.fired, got.worker_id

    fired, worker = run(body)
    assert fired  # the release did land inside the pump
    assert worker == "w1"


def test_queued_calls_fail_when_every_slot_was_given_up() -> None:
    async def body() -> BaseException:
        (handle,) = ready(1)
        dispatcher = Dispatcher([handle], max_queue=5)
        await dispatcher.acquire("s", "none")
        waiter = asyncio.create_task(dispatcher.acquire("s", "none"))
        await until(lambda: dispatcher.queue_length >= 1)
        handle.state = WorkerState.FAILED
        handle.last_error = "ImportError: no module named numpyy"
        dispatcher.fail_if_hopeless()
        try:
            await waiter
        except BaseException as exc:
            return exc
        raise AssertionError("the queued call did not fail")

    error = run(body)
    assert isinstance(error, WorkerFailedError)
    assert "crash-looping" in str(error)
    assert "numpyy" in str(error)


def test_no_workers_at_all_says_how_to_start_some() -> None:
    async def body() -> None:
        (handle,) = ready(1)
        handle.state = WorkerState.STOPPED
        dispatcher = Dispatcher([handle], max_queue=5)
        with pytest.raises(WorkerUnavailableError, match="%snakepit start"):
            await dispatcher.acquire("s", "none")

    run(body)


def test_closing_fails_queued_calls_and_refuses_new_ones() -> None:
    async def body() -> Any:
        (handle,) = ready(1)
        dispatcher = Dispatcher([handle], max_queue=5)
        await dispatcher.acquire("s", "none")
        waiter = asyncio.create_task(dispatcher.acquire("s", "none"))
        await until(lambda: dispatcher.queue_length >= 1)
        dispatcher.close(ClosedError("the pool was closed"))
        with pytest.raises(ClosedError):
            await waiter
        with pytest.raises(ClosedError, match="closed"):
            await dispatcher.acquire("s", "none")

    run(body)


def test_forgetting_a_session_drops_its_binding() -> None:
    async def body() -> tuple[str | None, str | None]:
        handles = ready(2)
        dispatcher = Dispatcher(handles, max_queue=5)
        got = await dispatcher.acquire("s1", "hint")
        dispatcher.release(got)
        before = dispatcher.bound_worker("s1")
        dispatcher.forget_session("s1")
        return before, dispatcher.bound_worker("s1")

    before, after = run(body)
    assert before is not None
    assert after is None
