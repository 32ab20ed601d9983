"""SyncRunner: sync calls in threads, one hop per burst, never queued behind a busy thread."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading

from snakepit_nb.worker.calls.runner import SyncRunner


def test_a_call_never_waits_behind_a_thread_that_is_busy_with_a_long_one() -> None:
    release = threading.Event()

    async def body() -> str:
        loop = asyncio.get_running_loop()
        with concurrent.futures.ThreadPoolExecutor(4) as executor:
            runner = SyncRunner(loop, executor, 4)
            slow = runner.submit(lambda: release.wait(30) and "slow")
            fast = runner.submit(lambda: "fast")
            # Before the fix the fast call sat in the queue of the job busy with the slow one.
            result = await asyncio.wait_for(fast, 10)
            assert not slow.done()
            release.set()
            assert await slow == "slow"
            return str(result)

    assert asyncio.run(body()) == "fast"


def test_a_call_that_has_not_started_can_be_withdrawn() -> None:
    release = threading.Event()
    ran: list[str] = []

    async def body() -> tuple[bool, bool]:
        loop = asyncio.get_running_loop()
        with concurrent.futures.ThreadPoolExecutor(1) as executor:
            runner = SyncRunner(loop, executor, 1)  # one thread: the second call queues
            started = threading.Event()

            def hold() -> bool:
                started.set()
                return release.wait(30)

            first = runner.submit(hold)
            assert await asyncio.to_thread(started.wait, 10)
            second = runner.submit(lambda: ran.append("second"))
            withdrawn = runner.withdraw(second)
            late = runner.withdraw(first)  # already running: only it can end itself
            release.set()
            await first
            return withdrawn, late

    withdrawn, late = asyncio.run(body())
    assert withdrawn
    assert not late
    assert ran == []
