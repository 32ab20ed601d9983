"""What a script's user sees when a call fails or is interrupted: plain Python, real workers.

An uncaught ``RemoteToolError`` ends with the worker's traceback and shows none of the loop,
pool or ``concurrent.futures`` frames it travelled through; Ctrl-C during a call names the call
it cancelled.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import paths
import pytest

SCRIPT_FAIL = """
import snakepit_nb as sp
client = sp.start(workers=1, startup_timeout=60)
client.session("s").call("fail", message="boom from the tool")
"""

SCRIPT_SLOW = """
import threading, time
import snakepit_nb as sp
client = sp.start(workers=1, startup_timeout=60)
def announce():
    while not any(w.in_flight for w in client.status().workers):
        time.sleep(0.01)
    print("IN_FLIGHT", flush=True)
threading.Thread(target=announce, daemon=True).start()
client.session("s").call("slow", seconds=30)
"""


def run_script(source: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(paths.ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", source],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=str(paths.ROOT),
    )


def library_frames(stderr: str) -> list[str]:
    return re.findall(r'File "[^"]*snakepit_nb[^"]*", line \d+, in (\w+)', stderr)


def test_an_uncaught_remote_error_ends_with_the_workers_traceback() -> None:
    proc = run_script(SCRIPT_FAIL)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1
    lines = stderr.rstrip().splitlines()
    assert lines[-1] == "ValueError: boom from the tool"
    assert "RemoteToolError: ValueError in tool 'fail': boom from the tool" in stderr
    assert "worker w1 traceback (most recent call last):" in stderr
    assert "raise exc_class(message)" in stderr  # the tool's own line
    # The caller's frame, the facade and its runner; the tool's frame is the worker's.
    assert library_frames(stderr) == ["call", "__exit__", "fail"], stderr
    assert "concurrent/futures" not in stderr


def test_ctrl_c_during_a_call_names_the_cancelled_call() -> None:
    proc = run_script(SCRIPT_SLOW)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "IN_FLIGHT"
    proc.send_signal(signal.SIGINT)
    started = time.monotonic()
    _, stderr = proc.communicate(timeout=60)
    assert time.monotonic() - started < 10  # not the 30 s of the call
    assert stderr.rstrip().splitlines()[-1] == "KeyboardInterrupt: call 'slow' cancelled"
    assert "concurrent/futures" not in stderr
    assert "threading.py" not in stderr


pytestmark = pytest.mark.integration
