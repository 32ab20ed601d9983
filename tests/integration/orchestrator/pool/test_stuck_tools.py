"""A stuck tool never blocks others (real workers): cancellation, ``cancel_grace``, dispatch.

A call that is cancelled (its timeout passed, its caller was interrupted) keeps its worker busy
until the worker confirms the tool stopped; a tool that polls ``ctx.cancelled`` (or an async
tool) confirms at once, one that ignores it (``sleep_sync``: ``time.sleep``) does not, and its
worker is replaced after ``cancel_grace``. Meanwhile calls go to the other workers.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pool_support import pool_kwargs, wait_until, worker

from snakepit_nb._errors import CallTimeoutError

pytestmark = pytest.mark.integration


@pytest.fixture
def make(client_factory: Callable[..., Any]) -> Callable[..., Any]:
    def start(**kwargs: Any) -> Any:
        return client_factory(**pool_kwargs(**kwargs))

    return start


def _time_out(s: Any, tool: str, **kwargs: Any) -> None:
    with pytest.raises(CallTimeoutError):
        s.call(tool, _timeout=0.5, **kwargs)


def test_a_stubborn_tool_is_replaced_after_cancel_grace(make: Callable[..., Any]) -> None:
    client = make(workers=1, cancel_grace=1.0)
    s = client.session("stuck")
    pid = s.call("whoami")["pid"]
    _time_out(s, "sleep_sync", seconds=60.0)
    # The only worker cannot take the next call; it runs on the replacement.
    answer = s.call("whoami", _timeout=30.0)
    assert answer["pid"] != pid
    w1 = worker(client, "w1")
    assert w1.restarts == 1
    assert (
        "did not stop call 'sleep_sync' within cancel_grace=1 s after it was cancelled and was "
        "replaced" in w1.last_error
    )


def test_a_call_that_waits_for_a_stuck_worker_is_told_which_call_holds_it(
    make: Callable[..., Any],
) -> None:
    client = make(workers=1, cancel_grace=60.0)
    s = client.session("stuck")
    _time_out(s, "sleep_sync", seconds=60.0)
    with pytest.raises(CallTimeoutError) as info:
        client.session("next").call("add", a=1, b=2, _timeout=0.5)
    message = str(info.value)
    assert "worker w1 is still running 'sleep_sync'" in message
    assert "cancel_grace=60 s" in message


def test_other_sessions_run_elsewhere_while_a_worker_is_stuck(make: Callable[..., Any]) -> None:
    """The issue's case: 2 workers, one stuck, 6 calls from 6 new sessions, and the stuck
    session's own next call (its worker is only a hint)."""
    client = make(workers=2, cancel_grace=60.0)
    s = client.session("stuck")
    stuck = s.call("whoami")
    _time_out(s, "sleep_sync", seconds=60.0)
    healthy = "w2" if stuck["worker_id"] == "w1" else "w1"
    sessions = [client.session(f"new-{i}") for i in range(6)]
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda x: x.call("whoami", _timeout=30.0), sessions))
    assert {a["worker_id"] for a in answers} == {healthy}
    assert s.call("whoami", _timeout=30.0)["worker_id"] == healthy
    # They did not wait for the stuck worker to be replaced: it is still the same process.
    assert worker(client, stuck["worker_id"]).pid == stuck["pid"]
    assert worker(client, stuck["worker_id"]).restarts == 0


@pytest.mark.parametrize("tool", ["polite_sync", "slow"])
def test_a_tool_that_honours_cancellation_frees_its_worker_at_once(
    make: Callable[..., Any], tool: str, tmp_path: Path
) -> None:
    """A sync tool polling ``ctx.cancelled`` and an async tool (CancelledError) stop when their
    call times out: the same worker takes the next call, long before ``cancel_grace``."""
    client = make(workers=1, cancel_grace=60.0)
    s = client.session("polite")
    pid = s.call("whoami")["pid"]
    marker = str(tmp_path / tool)
    _time_out(s, tool, seconds=60.0, marker=marker)
    assert wait_until(lambda: Path(marker + ".cancelled").exists(), 10.0, "the tool to stop")
    assert s.call("whoami", _timeout=10.0)["pid"] == pid
    assert worker(client, "w1").restarts == 0


def test_a_cancelled_async_call_stops_a_sync_tool(make: Callable[..., Any], tmp_path: Path) -> None:
    """Cancelling the awaiting task (what a kernel interrupt does) reaches ``ctx.cancelled``."""
    client = make(workers=1, cancel_grace=60.0)
    marker = str(tmp_path / "interrupted")

    async def body() -> int:
        aclient = client.aio
        s = await aclient.session("interrupted")
        pid = (await s.call("whoami"))["pid"]
        task = asyncio.ensure_future(s.call("polite_sync", seconds=60.0, marker=marker))
        while not any(w.in_flight for w in (await aclient.status()).workers):  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(1000):
            if Path(marker + ".cancelled").exists():  # noqa: ASYNC240 - a tiny stat
                break
            await asyncio.sleep(0.01)
        assert (await s.call("whoami", _timeout=10.0))["pid"] == pid
        return int(pid)

    asyncio.run(body())
    assert Path(marker + ".cancelled").exists()
    assert worker(client, "w1").restarts == 0
