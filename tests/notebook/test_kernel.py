"""A real "Python (snakepit)" kernel driven through jupyter_client: interrupt, restart,
SIGKILL, and the widget message rate of a 10,000-chunk stream."""

from __future__ import annotations

import datetime as dt
import os
import signal
import time
from typing import Any

import psutil
import pytest
from kernels import Kernel

pytestmark = [pytest.mark.notebook, pytest.mark.slow]


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _gone_within(pids: list[int], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not any(_alive(p) for p in pids):
            return True
        time.sleep(0.05)
    return not any(_alive(p) for p in pids)


PIDS = "[w.pid for w in get_ipython().run_line_magic('snakepit', 'status --once').workers]"


def test_interrupt_cancels_a_10s_call_and_the_workers_survive(kernel: Kernel):
    reply, _ = kernel.execute("%snakepit start -n 1")
    assert reply["status"] == "ok", reply
    pids = kernel.value(PIDS)
    code = (
        "import threading, time\n"
        "from snakepit_nb.notebook.runtime import runtime_for\n"
        "_client = runtime_for(get_ipython()).client\n"
        "def _announce():\n"
        "    while not any(w.in_flight for w in _client.status().workers):\n"
        "        time.sleep(0.01)\n"
        "    print('IN_FLIGHT', flush=True)\n"
        "threading.Thread(target=_announce, daemon=True).start()\n"
        "%snakepit call slow seconds=10\n"
    )
    msg_id = kernel.kc.execute(code)
    interrupted_at: list[float] = []

    def interrupt_when_in_flight(msg: dict[str, Any]) -> None:
        if (
            not interrupted_at
            and msg["msg_type"] == "stream"
            and "IN_FLIGHT" in msg["content"]["text"]
        ):
            interrupted_at.append(time.monotonic())
            kernel.km.interrupt_kernel()

    reply, messages = kernel.collect(msg_id, 30, interrupt_when_in_flight)
    assert interrupted_at, "the call never went in flight"
    assert reply["status"] == "error", [
        (m["msg_type"], m["content"]) for m in messages if m["msg_type"] != "status"
    ]
    assert reply["ename"] == "KeyboardInterrupt"
    # One line naming the call, none of the library's frames.
    assert reply["traceback"] == ["call 'slow' cancelled (KeyboardInterrupt)"]
    errors = [m["content"] for m in messages if m["msg_type"] == "error"]
    assert [e["traceback"] for e in errors] == [["call 'slow' cancelled (KeyboardInterrupt)"]]
    assert time.monotonic() - interrupted_at[0] < 5  # not the 10 s of the call
    # The remote call was cancelled (nothing in flight once the worker confirmed the cancel,
    # which the lane's drain thread waits for), the same worker serves the next call.
    reply, _ = kernel.execute(
        "def _in_flight_when_settled(deadline=time.monotonic() + 5):\n"
        "    while any(w.in_flight for w in _client.status().workers):\n"
        "        if time.monotonic() > deadline:\n"
        "            break\n"
        "        time.sleep(0.01)\n"
        "    return [w.in_flight for w in _client.status().workers]\n"
    )
    assert reply["status"] == "ok", reply
    assert kernel.value("_in_flight_when_settled()") == [0]
    assert kernel.value("get_ipython().run_line_magic('snakepit', 'call add a=1 b=2')") == 3
    assert kernel.value(PIDS) == pids
    assert all(_alive(p) for p in pids)


# Two children of tools: one in the worker's process group, one in a session of its own.
CHILDREN = (
    "[get_ipython().run_line_magic('snakepit', 'call spawn_child seconds=120'), "
    "get_ipython().run_line_magic('snakepit', 'call spawn_child seconds=120 detach=True')]"
)


def test_restart_and_sigkill_of_the_kernel_leave_no_worker(kernel: Kernel):
    """Neither the workers nor what their tools started outlive the kernel by 2 s."""
    reply, _ = kernel.execute("%snakepit start -n 2")
    assert reply["status"] == "ok", reply
    pids = kernel.value(PIDS)
    assert len(pids) == 2
    pids += kernel.value(CHILDREN)
    assert all(_alive(p) for p in pids)
    kernel.km.restart_kernel(now=False)
    assert _gone_within(pids, 2.0), f"{pids} outlived a kernel restart"

    kernel.kc.stop_channels()
    kernel.connect()
    reply, _ = kernel.execute("%snakepit start -n 2")  # loaded by the kernelspec again
    assert reply["status"] == "ok", reply
    pids = kernel.value(PIDS) + kernel.value(CHILDREN)
    assert all(_alive(p) for p in pids)
    os.kill(kernel.pid, signal.SIGKILL)
    assert _gone_within(pids, 2.0), f"{pids} outlived SIGKILL of their kernel"


def _max_per_second(times: list[float]) -> int:
    times = sorted(times)
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] < t - 1.0:
            j += 1
        best = max(best, i - j + 1)
    return best


def _sent_at(msg: dict[str, Any]) -> float:
    date = msg["header"]["date"]
    if isinstance(date, str):
        date = dt.datetime.fromisoformat(date)
    return float(date.timestamp())


def test_a_10k_chunk_stream_stays_under_50_comm_messages_per_second(kernel: Kernel):
    reply, _ = kernel.execute("%snakepit start -n 1")
    assert reply["status"] == "ok", reply
    # 10,000 chunks over about 3 s: a sustained 3,000+ chunks/s, not a burst.
    reply, _ = kernel.execute(
        "%%snakepit_tool ticks --stream\n"
        "import time\n"
        "def ticks(n: int = 10000, pause: float = 0.03):\n"
        "    for i in range(n):\n"
        "        if i % 100 == 0:\n"
        "            time.sleep(pause)\n"
        "        yield {'i': i, 'progress': (i + 1) / n}\n"
        "    return n\n"
    )
    assert reply["status"] == "ok", reply
    started = time.monotonic()
    reply, messages = kernel.execute("h = %snakepit stream ticks n=10000", 120)
    elapsed = time.monotonic() - started
    assert reply["status"] == "ok", reply
    comm_msgs = [m for m in messages if m["msg_type"] == "comm_msg"]
    per_second = _max_per_second([_sent_at(m) for m in comm_msgs])
    print(f"10k-chunk stream: {elapsed:.1f} s, {len(comm_msgs)} comm_msg, peak {per_second}/s")
    assert per_second <= 50
    assert len(comm_msgs) >= 3  # it did render live
    assert kernel.value("[len(h.chunks), h.value, h.chunks[-1]['i']]") == [10000, 10000, 9999]
    # The last state the browser got for the result widget shows the full value.
    results = [
        m["content"]["data"]["state"]["value"]
        for m in comm_msgs
        if "snakepit-stream-value" in str(m["content"]["data"].get("state", {}).get("value", ""))
    ]
    assert results
    assert ">10000</pre>" in results[-1]
    assert not any("IOPub message rate exceeded" in m["content"].get("text", "") for m in messages)
