"""Our orchestrator runs a worker that speaks only the published Snakepit conventions.

``published_worker.py`` (next to this file) is written from the protocol notes, not from our
worker: no token, no call channel, ints as floats, None as "None", a bare port in the ready
file, InitializeSession on every call, RegisterTools once per session. It is started through
the public API with ``worker_command=[...]`` and driven through plain ExecuteTool /
ExecuteStreamingTool.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import paths
import pytest

from snakepit_nb._errors import (
    FailedPreconditionError,
    RemoteToolError,
    WorkerCrashedError,
)

pytestmark = pytest.mark.integration

WORKER = str(paths.SUPPORT / "published_worker.py")


@pytest.fixture
def published(client_factory: Callable[..., Any]) -> Any:
    return client_factory(
        workers=2,
        worker_command=[sys.executable, WORKER],
        adapter="published_worker.PublishedShowcase",
        auth=False,  # the published worker cannot send the runtime token (opt-in)
    )


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def test_calls_and_published_value_quirks(published: Any) -> None:
    s = published.session("compat")
    # Published workers send ints as floats and None as the string "None": decoded as sent.
    assert s.call("add", a=1, b=2) == 3.0
    assert s.call("echo", value="héllo") == "héllo"
    assert s.call("echo", value=[1, {"k": True}]) == [1, {"k": True}]
    assert s.call("echo", value=None) == "None"
    status = published.status()
    assert all(w.foreign for w in status.workers)
    assert {w.state for w in status.workers} == {"ready"}


def test_tools_arrive_through_register_tools(published: Any) -> None:
    s = published.session("compat-tools")
    s.call("whoami")
    names = {t.name for t in published.tools()}
    assert {"add", "echo", "stream_data"} <= names


def test_stream_chunks_and_final(published: Any) -> None:
    s = published.session("compat-stream")
    chunks = list(s.stream("stream_data", count=4))
    assert chunks == [{"index": i, "squared": i * i} for i in range(4)]


def test_tool_errors_keep_the_worker(published: Any) -> None:
    s = published.session("compat-errors")
    pid = s.call("whoami")["pid"]
    with pytest.raises(RemoteToolError) as info:
        s.call("fail", message="nope")
    assert info.value.remote_type == "ValueError"
    assert "nope" in info.value.remote_message
    assert "ValueError" in info.value.remote_traceback
    with pytest.raises(RemoteToolError) as streamed:
        list(s.stream("stream_fail", count=2))
    assert streamed.value.remote_type == "RuntimeError"
    assert s.call("whoami")["pid"] == pid
    assert s.call("add", a=2, b=3) == 5.0


def test_map_falls_back_to_plain_calls(published: Any) -> None:
    s = published.session("compat-map")
    values = s.map("add", [{"a": i, "b": 1} for i in range(20)])
    assert values == [float(i + 1) for i in range(20)]


def test_crashed_published_worker_is_replaced(published: Any) -> None:
    s = published.session("compat-crash")
    pid = s.call("whoami")["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_until(
        lambda: any(w.restarts == 1 and w.state == "ready" for w in published.status().workers),
        10.0,
        "the killed published worker to be replaced",
    )
    pids = {w.pid for w in published.status().workers}
    assert pid not in pids
    assert s.call("add", a=4, b=4) == 8.0


def test_define_tool_is_refused_for_foreign_workers(published: Any) -> None:
    with pytest.raises(FailedPreconditionError, match="foreign worker"):
        published.define_tool("def double(x):\n    return 2 * x\n", name="double")
    assert published.session("compat-after").call("add", a=1, b=1) == 2.0


def test_call_in_flight_on_killed_published_worker_fails_fast(published: Any) -> None:
    s = published.session("compat-kill")
    pid = s.call("whoami")["pid"]
    with concurrent.futures.ThreadPoolExecutor(1) as executor:
        doomed = executor.submit(s.call, "wait", seconds=30.0)
        # The pool counts the call as in flight on that very worker before the kill.
        wait_until(
            lambda: any(w.pid == pid and w.in_flight for w in published.status().workers),
            10.0,
            "the call to be in flight on the worker about to be killed",
        )
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        with pytest.raises(WorkerCrashedError, match="died with SIGKILL"):
            doomed.result(timeout=10)
        assert time.monotonic() - killed < 5.0
    assert s.call("add", a=1, b=2) == 3.0


def test_foreign_worker_without_auth_opt_in_fails_fast_saying_what_to_do(
    client_factory: Callable[..., Any],
) -> None:
    """The published worker cannot send the token: its first Ping is refused, and the start
    fails at once (not after startup_timeout) naming the two settings to use."""
    from snakepit_nb._errors import StartupError

    started = time.monotonic()
    with pytest.raises(StartupError) as info:
        client_factory(
            workers=2,
            worker_command=[sys.executable, WORKER],
            adapter="published_worker.PublishedShowcase",
            startup_timeout=60.0,
        )
    assert time.monotonic() - started < 15.0  # the bound; startup_timeout is 60 s
    message = str(info.value)
    assert "auth=False" in message
    assert 'transport="unix"' in message
    assert "refused" in message
    assert "Ping" in message


def test_foreign_worker_started_as_asked_after_the_advice(
    client_factory: Callable[..., Any],
) -> None:
    client = client_factory(
        workers=1,
        worker_command=[sys.executable, WORKER],
        adapter="published_worker.PublishedShowcase",
        auth=False,
        transport="unix",
    )
    assert client.session("advised").call("add", a=1, b=1) == 2.0
