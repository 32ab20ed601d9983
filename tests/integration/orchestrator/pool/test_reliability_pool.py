"""Reliability of the pool (docs: research/reliability.md, section 7), with real workers.

T1 SIGKILL mid-call, T2 crash matrix, T3 restart intensity, T4 at-most-once, T5 hang
detection, T17 oversize messages, T19 unknown tool, T26 tool errors. Each test checks the
documented error AND that the next call succeeds.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pool_support import all_ready, pool_kwargs, wait_until, worker

from snakepit_nb._errors import (
    CallTimeoutError,
    InvalidArgumentError,
    RemoteToolError,
    ToolNotFoundError,
    WorkerCrashedError,
    WorkerFailedError,
)

pytestmark = pytest.mark.integration

MIB = 1024 * 1024


@pytest.fixture
def make(client_factory: Callable[..., Any]) -> Callable[..., Any]:
    def start(**kwargs: Any) -> Any:
        return client_factory(**pool_kwargs(**kwargs))

    return start


# ---------------------------------------------------------------------------------- T1


def test_t1_sigkill_mid_call_fails_only_that_call(make: Callable[..., Any], tmp_path: Path) -> None:
    """Ten calls are in flight on the other two workers at the moment of the kill (each is
    parked on a gate file the test opens only afterwards): all of them succeed."""
    client = make(workers=3)
    # Strict sessions pin the placement: the victim alone on its worker, the others elsewhere.
    victim_session = client.session("victim", strict_affinity=True)
    victim = victim_session.call("whoami")
    others: list[Any] = []
    for i in range(60):
        if len(others) == 10:
            break
        candidate = client.session(f"other-{i}", strict_affinity=True)
        if candidate.call("whoami")["worker_id"] != victim["worker_id"]:
            others.append(candidate)
    assert len(others) == 10
    gate = tmp_path / "gate"
    with concurrent.futures.ThreadPoolExecutor(max_workers=12) as executor:
        doomed = executor.submit(victim_session.call, "slow", seconds=30.0)
        parked = [executor.submit(o.call, "gate", path=str(gate)) for o in others]
        wait_until(
            lambda: sum(w.in_flight for w in client.status().workers) == 11,
            10.0,
            "the victim's call and the ten others to be in flight",
        )
        os.kill(victim["pid"], signal.SIGKILL)
        killed_at = time.monotonic()
        with pytest.raises(WorkerCrashedError) as info:
            doomed.result(timeout=10)
        assert time.monotonic() - killed_at < 1.5
        message = str(info.value)
        assert f"worker {victim['worker_id']} (pid {victim['pid']}) died with SIGKILL" in message
        assert "'slow'" in message
        assert "replacement" in message
        assert info.value.exit_code == -signal.SIGKILL
        # The others were running through the kill and still are; then they finish.
        assert not any(f.done() for f in parked)
        gate.write_text("open")
        served_by = [f.result(timeout=30) for f in parked]
    assert victim["worker_id"] not in served_by
    replaced = wait_until(
        lambda: (w := worker(client, victim["worker_id"])).state == "ready" and w,
        5.0,
        "the killed slot to be respawned",
    )
    assert replaced.pid != victim["pid"]
    assert replaced.restarts == 1
    assert client.session("after").call("add", a=2, b=2) == 4


# ---------------------------------------------------------------------------------- T2

CRASHES = [
    ("exit0", WorkerCrashedError, "died with exit code 0"),
    ("exit1", WorkerCrashedError, "died with exit code 1"),
    ("segfault", WorkerCrashedError, "died with SIGSEGV"),
    # sys.exit() in a tool raises SystemExit in the tool's thread: a tool error, worker kept.
    ("sys_exit3", RemoteToolError, "SystemExit"),
]


@pytest.mark.parametrize(("how", "error", "text"), CRASHES)
def test_t2_crash_matrix(
    make: Callable[..., Any], how: str, error: type[Exception], text: str
) -> None:
    client = make(workers=1)
    s = client.session("matrix")
    with pytest.raises(error, match=text):
        s.call("crash", how=how)
    # The very next call succeeds (waiting for the replacement when the worker died).
    assert s.call("add", a=1, b=1, _timeout=20.0) == 2


@pytest.mark.parametrize(
    ("tool", "kwargs", "error", "text"),
    [
        ("fail", {"message": "bad"}, RemoteToolError, "bad"),
        ("unserialisable", {}, InvalidArgumentError, "cannot be pickled"),
        ("add", {"a": "not an int"}, InvalidArgumentError, "parameter 'a'"),
        ("add", {"a": 1, "zz": 2}, InvalidArgumentError, "unknown parameter 'zz'"),
    ],
)
def test_t2_errors_that_keep_the_worker(
    make: Callable[..., Any], tool: str, kwargs: dict[str, Any], error: type[Exception], text: str
) -> None:
    client = make(workers=1, max_message_bytes=1 * MIB)
    s = client.session("keep")
    pid = s.call("whoami")["pid"]
    with pytest.raises(error, match=text):
        s.call(tool, **kwargs)
    assert s.call("whoami")["pid"] == pid
    assert client.status().workers[0].restarts == 0


# ---------------------------------------------------------------------------------- T3


def test_t3_crash_loop_gives_the_slot_up(make: Callable[..., Any], tmp_path: Path) -> None:
    poison = tmp_path / "poison"
    client = make(
        workers=2,
        max_restarts=3,
        restart_window=5.0,
        env={"POOL_TEST_POISON": str(poison)},
    )
    w1 = worker(client, "w1")
    (tmp_path / "poison.w1").write_text("x")  # from now on w1 cannot start
    os.kill(w1.pid, signal.SIGKILL)
    failed = wait_until(
        lambda: (w := worker(client, "w1")).state == "failed" and w, 15.0, "w1 to be given up"
    )
    assert failed.restarts <= 3
    assert "poisoned" in failed.last_error
    # The other slot keeps serving: the next call succeeds.
    s = client.session("after")
    assert s.call("add", a=2, b=3) == 5
    assert worker(client, "w2").state == "ready"
    restarts_then = failed.restarts
    # A given-up slot stays given up: no further spawns while the other slot serves calls.
    for i in range(20):
        assert s.call("add", a=i, b=1) == i + 1
    assert worker(client, "w1").state == "failed"
    assert worker(client, "w1").restarts == restarts_then


def test_t3_all_slots_failed_calls_say_so(
    make: Callable[..., Any], tmp_path: Path, run_on_loop: Callable[[Any], Any]
) -> None:
    poison = tmp_path / "poison"
    client = make(workers=1, max_restarts=2, env={"POOL_TEST_POISON": str(poison)})
    s = client.session("doomed")
    pid = s.call("whoami")["pid"]
    poison.write_text("x")
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: worker(client, "w1").state == "failed", 15.0, "w1 to be given up")
    with pytest.raises(WorkerFailedError) as info:
        s.call("add", a=1, b=1)
    assert "worker w1 crash-looping" in str(info.value)
    assert "poisoned" in str(info.value)
    # After fixing the cause, reviving the slot makes the next call succeed.
    poison.unlink()
    assert run_on_loop(client.orchestrator.pool.revive()) == ["w1"]
    assert s.call("add", a=1, b=1) == 2


# ---------------------------------------------------------------------------------- T4


def test_t4_at_most_once_by_default(make: Callable[..., Any], tmp_path: Path) -> None:
    client = make(workers=2)
    counter = tmp_path / "count"
    s = client.session("once")
    with pytest.raises(WorkerCrashedError):
        s.call("bump_then_crash", path=str(counter))
    assert counter.read_text() == "1"  # not re-run
    wait_until(lambda: all_ready(client), 10.0, "the replacement")
    assert s.call("add", a=1, b=1) == 2


def test_t4_idempotent_tools_are_retried(make: Callable[..., Any], tmp_path: Path) -> None:
    client = make(workers=2)
    counter = tmp_path / "count"
    s = client.session("retry")
    # The first run increments and dies; the retry runs on another worker and returns 2.
    assert s.call("bump_idempotent", path=str(counter)) == 2
    assert counter.read_text() == "2"
    assert s.call("add", a=1, b=1) == 2


# ---------------------------------------------------------------------------------- T5


def test_t5_hung_worker_is_killed_and_replaced(make: Callable[..., Any]) -> None:
    client = make(workers=1, heartbeat_interval=0.5, heartbeat_misses=3)
    s = client.session("hang")
    pid = s.call("whoami")["pid"]
    started = time.monotonic()
    with pytest.raises(WorkerCrashedError, match="stopped answering heartbeats"):
        s.call("hang", seconds=60.0)
    assert time.monotonic() - started < 6.0
    assert s.call("whoami", _timeout=20.0)["pid"] != pid


def test_t5_hung_call_with_deadline_times_out(make: Callable[..., Any]) -> None:
    client = make(workers=1, heartbeat_interval=0.5, heartbeat_misses=3)
    s = client.session("hang-deadline")
    pid = s.call("whoami")["pid"]
    started = time.monotonic()
    with pytest.raises(CallTimeoutError):
        s.call("hang", seconds=60.0, _timeout=1.0)
    assert time.monotonic() - started < 3.0
    # The worker's loop cannot even take the cancel; the heartbeat watch replaces it (its
    # lane threads may still answer sync tools until then).
    wait_until(
        lambda: s.call("whoami", _timeout=20.0)["pid"] != pid,
        20.0,
        "the hung worker to be replaced",
    )


def test_t5_a_tool_holding_the_gil_is_detected(client_factory: Callable[..., Any]) -> None:
    """The showcase ``spin`` holds the GIL in one C call (``sum(range(n))``): the worker's loop
    cannot even answer a ping, so the heartbeat watch kills and replaces it."""
    client = client_factory(workers=1, heartbeat_interval=0.5, heartbeat_misses=3)
    s = client.session("gil")
    pid = s.call("whoami")["pid"]
    with pytest.raises(WorkerCrashedError, match="stopped answering heartbeats") as info:
        s.call("spin", seconds=120.0)
    assert f"pid {pid}" in str(info.value)
    assert s.call("whoami", _timeout=20.0)["pid"] != pid
    assert worker(client, "w1").restarts == 1


def test_t5_sigstopped_worker_is_replaced(make: Callable[..., Any]) -> None:
    client = make(workers=1, heartbeat_interval=0.5, heartbeat_misses=3)
    s = client.session("stopped")
    pid = s.call("whoami")["pid"]
    os.kill(pid, signal.SIGSTOP)
    stopped_at = time.monotonic()
    replaced = wait_until(
        lambda: (w := worker(client, "w1")).state == "ready" and w.pid != pid and w,
        10.0,
        "the stopped worker to be replaced",
    )
    assert time.monotonic() - stopped_at < 5.0
    assert "stopped answering heartbeats" in replaced.last_error
    assert s.call("add", a=1, b=2) == 3


# ---------------------------------------------------------------------------------- T17


def test_t17_the_message_limit_guards_the_wire_not_the_data(make: Callable[..., Any]) -> None:
    # Local workers: values larger than max_message_bytes go through shared memory, both ways.
    client = make(workers=1, max_message_bytes=1 * MIB)
    s = client.session("big")
    pid = s.call("whoami")["pid"]
    assert len(s.call("echo", value=b"x" * (2 * MIB))) == 2 * MIB
    assert len(s.call("nbytes", n=3 * MIB)) == 3 * MIB
    assert s.call("whoami")["pid"] == pid


# ---------------------------------------------------------------------------------- T19, T26


def test_t19_unknown_tool_names_it(make: Callable[..., Any]) -> None:
    client = make(workers=1)
    s = client.session("unknown")
    with pytest.raises(ToolNotFoundError, match="no_such_tool"):
        s.call("no_such_tool")
    assert s.call("add", a=1, b=1) == 2


def test_t26_tool_error_carries_type_message_traceback(make: Callable[..., Any]) -> None:
    client = make(workers=1)
    s = client.session("errors")
    pid = s.call("whoami")["pid"]
    with pytest.raises(RemoteToolError) as info:
        s.call("fail", message="kaput")
    err = info.value
    assert err.remote_type == "ValueError"
    assert err.remote_message == "kaput"
    assert "raise ValueError(message)" in err.remote_traceback
    assert err.tool_name == "fail"
    assert err.worker_id == "w1"
    assert s.call("whoami")["pid"] == pid
    assert client.status().workers[0].errors == 1
