"""Futures and ``sp.progress`` in a real kernel (jupyter_client), and in plain Python."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import paths
import pytest
from kernels import Kernel

pytestmark = [pytest.mark.notebook, pytest.mark.slow]


def progress_labels(messages: list[dict[str, Any]]) -> list[str]:
    """The states the progress widget's label was sent, in order."""
    return [
        m["content"]["data"]["state"]["value"]
        for m in messages
        if m["msg_type"] == "comm_msg"
        and "snakepit-progress-count" in str(m["content"]["data"].get("state", {}).get("value"))
    ]


def test_submit_as_completed_and_a_progress_widget_in_a_kernel(kernel: Kernel) -> None:
    reply, _ = kernel.execute("import snakepit_nb as sp\nc = %snakepit start -n 2")
    assert reply["status"] == "ok", reply
    reply, _ = kernel.execute(
        "s = c.session('k')\n"
        "fs = [s.submit('slow', seconds=0.2) for _ in range(12)] + [s.submit('fail')]\n"
        "order = [f.label for f in sp.as_completed(fs[:3])]\n"
    )
    assert reply["status"] == "ok", reply
    assert kernel.value("order") == ["call 'slow'"] * 3
    msg_id = kernel.kc.execute("view = sp.progress(fs)\n%snakepit wait --timeout 60")
    reply, messages = kernel.collect(msg_id, 90)
    assert reply["status"] == "ok", reply
    shown = [m for m in messages if m["msg_type"] == "display_data"]
    assert shown, [m["msg_type"] for m in messages]
    bundle = shown[0]["content"]["data"]
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert bundle["text/plain"].startswith("progress: ")
    # The widget's last state: 13 of 13, one failed, done.
    labels = progress_labels(messages)
    assert labels
    assert ">13/13</b>" in labels[-1]
    assert "1 failed" in labels[-1]
    # The text fallback was refreshed with the final state (a saved notebook shows it).
    updates = [m for m in messages if m["msg_type"] == "update_display_data"]
    assert updates
    assert "13/13 calls · 1 failed" in updates[-1]["content"]["data"]["text/plain"]
    assert kernel.value("[view.tally.done, view.tally.failed]") == [13, 1]


SCRIPT = """
import snakepit_nb as sp
client = sp.start(workers=2, startup_timeout=60)
s = client.session("p")
futures = [s.submit("slow", seconds=0.3) for _ in range(8)]
tally = sp.progress(futures)
print("DONE", tally.done, tally.failed)
client.close()
"""


def test_progress_in_plain_python_prints_a_line_until_done() -> None:
    env = {**os.environ, "PYTHONPATH": str(paths.ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=str(paths.ROOT),
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "DONE 8 0"
    lines = [line for line in proc.stderr.splitlines() if line.startswith("progress: ")]
    assert lines
    assert lines[-1].startswith("progress: 8/8 calls")
    assert lines[-1].endswith("done")


def test_notebook_functions_and_lambdas_run_in_workers(kernel: Kernel) -> None:
    reply, _ = kernel.execute("import snakepit_nb as sp\nc = %snakepit start -n 2")
    assert reply["status"] == "ok", reply
    reply, messages = kernel.execute(
        "s = c.session('fn')\n"
        "def square_root(x):\n"
        "    import math\n"
        "    print(f'root of {x}')\n"
        "    return math.sqrt(x)\n"
        "offset = 10\n"
        "r_call = s.call(square_root, 16)\n"
        "r_lambda = s.call(lambda x: x + offset, 5)\n"
        "r_map = s.map(lambda x: x * x, range(6))\n"
        "r_submit = s.submit(square_root, 81).result(timeout=30)\n"
        "r_pids = sorted(set(s.map(lambda _: __import__('os').getpid(), range(40))))\n"
    )
    assert reply["status"] == "ok", reply
    assert kernel.value("[r_call, r_lambda, r_map, r_submit]") == [
        4.0,
        15,
        [0, 1, 4, 9, 16, 25],
        9.0,
    ]
    # They ran in the workers, not in the kernel, and their prints came back to the cell.

    pids = kernel.value("r_pids")
    assert kernel.value("__import__('os').getpid()") not in pids
    out = "".join(
        m["content"]["text"]
        for m in messages
        if m["msg_type"] == "stream" and m["content"]["name"] == "stdout"
    )
    assert "root of 16" in out
    assert "root of 81" in out


def test_a_long_map_shows_a_progress_widget_after_two_seconds(kernel: Kernel) -> None:
    reply, _ = kernel.execute("c = %snakepit start -n 2\ns = c.session('m')")
    assert reply["status"] == "ok", reply
    reply, messages = kernel.execute("r = s.map('slow', [{'seconds': 0.25}] * 24)", timeout=90)
    assert reply["status"] == "ok", reply
    shown = [m for m in messages if m["msg_type"] == "display_data"]
    assert len(shown) == 1
    assert shown[0]["content"]["data"]["text/plain"].startswith("progress: ")
    assert "application/vnd.jupyter.widget-view+json" in shown[0]["content"]["data"]
    labels = progress_labels(messages)
    assert labels
    assert ">24/24</b>" in labels[-1]
    assert kernel.value("len(r)") == 24
    # A quick map shows nothing, and progress=False turns a long one's view off.
    reply, messages = kernel.execute("s.map('add', [{'a': i, 'b': 1} for i in range(1000)])")
    assert not [m for m in messages if m["msg_type"] == "display_data"]
    reply, messages = kernel.execute(
        "r = s.map('slow', [{'seconds': 0.25}] * 24, progress=False)", timeout=90
    )
    assert reply["status"] == "ok", reply
    assert not [m for m in messages if m["msg_type"] == "display_data"]
