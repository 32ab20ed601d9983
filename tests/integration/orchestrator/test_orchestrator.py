"""Orchestrator lifecycle and telemetry, with real workers."""

from __future__ import annotations

import socket
import time
from typing import Any

import psutil
import pytest

import snakepit_nb as sp
from snakepit_nb._loop import get_loop_thread
from snakepit_nb.orchestrator.telemetry import TelemetryEvent, TelemetrySubscription

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def port_open(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, int(port))) == 0


def our_workers() -> list[psutil.Process]:
    me = psutil.Process()
    return [p for p in me.children(recursive=True) if "snakepit_nb.worker" in " ".join(p.cmdline())]


def test_a_worker_that_cannot_start_fails_start_with_its_stderr_and_leaves_nothing() -> None:
    before = {p.pid for p in our_workers()}
    started = time.monotonic()
    with pytest.raises(sp.StartupError) as info:
        sp.start(workers=1, adapter="no_such_module_xyz:Adapter", startup_timeout=30)
    assert time.monotonic() - started < 30
    assert "no_such_module_xyz" in str(info.value)
    assert {p.pid for p in our_workers()} <= before


def test_bad_settings_fail_before_anything_starts() -> None:
    with pytest.raises(sp.ConfigurationError, match="did you mean 'workers'"):
        sp.start(worker=2)
    with pytest.raises(sp.ConfigurationError, match="transport"):
        sp.start(transport="carrier-pigeon")


def test_close_stops_workers_then_the_server(client_factory: Any) -> None:
    client = client_factory(workers=2)
    pids = [w.pid for w in client.status().workers]
    assert len(pids) == 2
    assert all(psutil.pid_exists(pid) for pid in pids)
    address = client.address
    assert port_open(address)
    client.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in pids)
    assert not port_open(address)
    client.close()  # idempotent


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_unix_transport_end_to_end(client_factory: Any) -> None:
    client = client_factory(transport="unix")
    assert client.address.startswith("unix:")
    assert client.session().call("add", a=2, b=2) == 4


def test_context_manager_closes(tmp_path: Any) -> None:
    with sp.start(workers=1, startup_timeout=60) as client:
        pid = client.status().workers[0].pid
        assert client.session().call("noop") is None
    assert client.closed
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.05)
    assert not _alive(pid)


def test_worker_telemetry_reaches_subscribers(showcase_client: Any) -> None:
    orch = showcase_client.orchestrator
    loop_thread = get_loop_thread()

    async def subscribe() -> Any:
        return orch.telemetry.subscribe(maxsize=100)

    subscription: TelemetrySubscription = loop_thread.run(subscribe())
    try:
        s = showcase_client.session()
        deadline = time.monotonic() + 15
        events: list[TelemetryEvent] = []
        # Telemetry streams start when someone listens; keep calling until events flow.
        while time.monotonic() < deadline and not any(
            e.event == ("snakepit", "tool", "stop") for e in events
        ):
            s.call("slow", seconds=0.02)

            async def drain() -> list[TelemetryEvent]:
                return subscription.drain()

            events.extend(loop_thread.run(drain()))
            time.sleep(0.05)
        stops = [e for e in events if e.event == ("snakepit", "tool", "stop")]
        assert stops, [e.name for e in events]
        assert stops[0].worker_id == "w1"
        assert stops[0].metadata["tool"] == "slow"
    finally:

        async def close() -> None:
            subscription.close()

        loop_thread.run(close())


def test_client_telemetry_feed(showcase_client: Any) -> None:
    s = showcase_client.session()
    with showcase_client.telemetry(prefix=("snakepit", "tool")) as feed:
        deadline = time.monotonic() + 15
        seen: list[TelemetryEvent] = []
        while time.monotonic() < deadline and not seen:
            s.call("add", a=1, b=2)
            seen = [e for e in feed.drain() if e.event[-1] == "stop"]
            time.sleep(0.05)
        assert seen, "no tool.stop event arrived"
        assert seen[0].metadata["tool"] == "add"
        assert all(e.event[:2] == ("snakepit", "tool") for e in seen)
        s.call("noop")
        event = next(feed)  # blocking iteration works too
        assert event.event[:2] == ("snakepit", "tool")
    assert feed.dropped == 0


def test_kernel_interrupt_style_cancel_stops_the_remote_call(showcase_client: Any) -> None:
    # LoopThread.run cancels the coroutine when the waiting thread is interrupted; a timeout on
    # the wait is the same path without signals.
    s = showcase_client.session()
    loop_thread = get_loop_thread()
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        loop_thread.run(s._async.call("slow", seconds=30), timeout=0.3)
    # The worker is free again at once: the call was cancelled in the worker, not left running.
    assert s.call("add", a=1, b=2) == 3
    assert time.monotonic() - started < 10
