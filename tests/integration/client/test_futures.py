"""``s.submit`` and its futures against real workers: results, errors, cancel, waiting."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any

import pytest
from pool_support import wait_until

import snakepit_nb as sp

pytestmark = pytest.mark.integration


def in_flight(client: sp.Client) -> int:
    return sum(w.in_flight for w in client.status().workers)


def test_submit_returns_at_once_and_the_future_has_the_result(client_factory: Any) -> None:
    client = client_factory(workers=2)
    s = client.session("futures")
    slow = s.submit("slow", seconds=0.6)
    fast = s.submit("add", a=1, b=2)
    assert isinstance(slow, sp.SessionFuture)
    assert not slow.done()  # submit did not wait for it
    assert fast.result(timeout=30) == 3
    assert slow.result(timeout=30)["slept"] >= 0.6
    assert slow.done()
    assert not slow.cancelled()
    assert slow.exception() is None
    assert "done in" in repr(slow)


def test_a_failing_call_gives_its_error_through_result_and_exception(
    showcase_client: sp.Client,
) -> None:
    s = showcase_client.session("futures-err")
    f = s.submit("fail", message="boom")
    err = f.exception(timeout=30)
    assert isinstance(err, sp.RemoteToolError)
    with pytest.raises(sp.RemoteToolError, match="boom"):
        f.result()
    assert "failed: RemoteToolError" in repr(f)
    with pytest.raises(TimeoutError, match=r"did not finish within 0\.05 s"):
        s.submit("slow", seconds=5).result(timeout=0.05)


def test_done_callbacks_run_once_with_the_future(showcase_client: sp.Client) -> None:
    s = showcase_client.session("futures-cb")
    seen: list[Any] = []
    called = threading.Event()
    f = s.submit("add", a=2, b=2)
    f.add_done_callback(lambda fut: (seen.append(fut.result()), called.set()))
    assert called.wait(30)
    f.add_done_callback(lambda fut: seen.append("late"))  # already done: called at once
    assert seen == [4, "late"]


def test_cancel_stops_the_remote_call_and_in_flight_drops(showcase_client: sp.Client) -> None:
    client = showcase_client
    s = client.session("futures-cancel")
    f = s.submit("slow", seconds=30)
    wait_until(lambda: in_flight(client) == 1, 30, "the call in flight")
    assert f.cancel()
    assert f.cancelled()
    wait_until(lambda: in_flight(client) == 0, 10, "the worker stopped the cancelled call")
    with pytest.raises(sp.CancelledError, match="call 'slow' was cancelled"):
        f.result()
    assert isinstance(f.exception(), sp.CancelledError)
    assert not f.cancel() or f.cancelled()
    assert s.call("add", a=1, b=1) == 2  # the worker serves the next call


def test_as_completed_yields_in_finishing_order(client_factory: Any) -> None:
    client = client_factory(workers=3)
    s = client.session("futures-order")
    futures = [s.submit("slow", seconds=t) for t in (1.2, 0.1, 0.6)]
    order = [futures.index(f) for f in sp.as_completed(futures, timeout=60)]
    assert order == [1, 2, 0]
    with pytest.raises(TimeoutError, match=r"1 \(of 1\) futures unfinished after 0.05 s"):
        list(sp.as_completed([s.submit("slow", seconds=5)], timeout=0.05))


def test_wait_behaves_like_concurrent_futures(client_factory: Any) -> None:
    client = client_factory(workers=2)
    s = client.session("futures-wait")
    quick = s.submit("add", a=1, b=1)
    slow = s.submit("slow", seconds=3)
    done, not_done = sp.wait([quick, slow], return_when=concurrent.futures.FIRST_COMPLETED)
    assert done == {quick}
    assert not_done == {slow}
    failing = s.submit("fail")
    done, not_done = sp.wait([failing, slow], return_when="FIRST_EXCEPTION", timeout=30)
    assert failing in done
    assert slow in not_done
    done, not_done = sp.wait([quick, slow], timeout=30)
    assert done == {quick, slow}
    assert not_done == set()
    with pytest.raises(ValueError, match="return_when must be"):
        sp.wait([quick], return_when="SOMETIMES")
    with pytest.raises(TypeError, match=r"expected the futures of s\.submit"):
        sp.wait([concurrent.futures.Future()])  # type: ignore[list-item]


def test_futures_are_awaitable(showcase_client: sp.Client) -> None:
    s = showcase_client.session("futures-await")

    async def gather() -> list[Any]:
        return list(await asyncio.gather(s.submit("add", a=1, b=2), s.submit("echo", value="x")))

    assert asyncio.run(gather()) == [3, "x"]
