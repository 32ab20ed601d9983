"""The loop thread: blocking calls from other threads, refusal on the loop, cancellation."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Iterator

import pytest

from snakepit_nb._loop import LoopThread, get_loop_thread


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    lt = LoopThread(name="snakepit-loop-test")
    yield lt
    lt.stop()


def test_run_returns_the_coroutine_result_from_the_loop_thread(loop_thread: LoopThread) -> None:
    async def where() -> str:
        return threading.current_thread().name

    assert loop_thread.run(where()) == "snakepit-loop-test"


def test_run_propagates_the_coroutine_exception(loop_thread: LoopThread) -> None:
    async def boom() -> None:
        raise KeyError("x")

    with pytest.raises(KeyError):
        loop_thread.run(boom())


def test_a_blocking_call_on_the_loop_thread_is_refused_not_deadlocked(
    loop_thread: LoopThread,
) -> None:
    async def nested() -> str:
        async def inner() -> int:
            return 1

        try:
            loop_thread.run(inner())
        except RuntimeError as exc:
            return str(exc)
        return "no error"

    message = loop_thread.run(nested(), timeout=5)
    assert "would deadlock" in message
    assert "async API" in message


def test_an_abandoned_call_is_cancelled_and_unwound_before_run_returns(
    loop_thread: LoopThread,
) -> None:
    cleaned = threading.Event()

    async def long_call() -> None:
        try:
            await asyncio.sleep(60)
        finally:
            await asyncio.sleep(0.05)  # cleanup that itself awaits (e.g. sending a cancel)
            cleaned.set()

    with pytest.raises(concurrent.futures.TimeoutError):
        loop_thread.run(long_call(), timeout=0.2)
    # The cleanup ran before run() returned, not some time later.
    assert cleaned.is_set()


def test_stop_cancels_pending_tasks_and_ends_the_thread() -> None:
    lt = LoopThread(name="snakepit-loop-stop")
    cancelled = threading.Event()

    async def forever() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    lt.submit(forever())
    lt.stop()
    assert cancelled.is_set()
    assert not lt.thread.is_alive()


def test_the_shared_loop_thread_is_one_per_process() -> None:
    assert get_loop_thread() is get_loop_thread()
    assert get_loop_thread().thread.name == "snakepit-loop"


def test_exit_hooks_run_once_in_order_then_the_loop_stops(monkeypatch: pytest.MonkeyPatch) -> None:
    from snakepit_nb import _loop

    monkeypatch.setattr(_loop, "_exit_hooks", [])
    shared = LoopThread(name="exit-test-loop")
    monkeypatch.setattr(_loop, "_shared", shared)
    calls: list[str] = []

    def fails() -> None:
        calls.append("fails")
        raise RuntimeError("one hook failing must not skip the others")

    _loop.at_exit(lambda: calls.append("backup"), order=_loop.EXIT_STOP_PROCESSES)
    _loop.at_exit(lambda: calls.append("close"), order=_loop.EXIT_CLOSE_RUNTIMES)
    _loop.at_exit(fails, order=_loop.EXIT_CLOSE_RUNTIMES + 1)
    _loop.run_exit_hooks()
    _loop.run_exit_hooks()  # a second run (atexit, then an explicit call) does nothing more
    assert calls == ["close", "fails", "backup"]
    assert not shared.thread.is_alive()
