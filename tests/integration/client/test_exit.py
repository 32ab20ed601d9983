"""Interpreter exit with a runtime still open: real scripts in subprocesses.

A script that forgets ``client.close()``, or dies of an uncaught Ctrl-C in the middle of a call,
must exit at once (one ordered exit path: close the runtimes with a short SIGTERM grace, then
the launcher's backup, then stop the loop thread), print nothing but its own traceback, and
leave no process of its run behind.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time

import pytest
from launcher_standin import processes_with_marker, wait_until

pytestmark = pytest.mark.integration

# The bound the issue asks for; a clean exit takes about 0.1 s here (see the report's figures).
EXIT_BOUND = 2.0

FORGETS_CLOSE = r"""
import json
import snakepit_nb as sp

client = sp.start(workers=2, startup_timeout=60.0)
s = client.session("script")
assert s.call("add", a=1, b=2) == 3
child = s.call("spawn_child", seconds=120.0, detach=True)
print(json.dumps({"run_id": client.run_id, "child": child}), flush=True)
"""

INTERRUPTED = r"""
import json, sys, threading, time
import snakepit_nb as sp

client = sp.start(workers=1, startup_timeout=60.0)
s = client.session("script")

def announce():
    while not any(w.in_flight for w in client.status().workers):
        time.sleep(0.01)
    print(json.dumps({"run_id": client.run_id}), flush=True)

threading.Thread(target=announce, daemon=True).start()
s.call(sys.argv[1], seconds=60.0)
"""


def _run(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _first_line(proc: subprocess.Popen[str]) -> dict[str, object]:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 90)
    line = proc.stdout.readline() if ready else ""
    if not line:
        proc.kill()
        raise AssertionError(f"the script never got going: {proc.communicate()[1]}")
    info = json.loads(line)
    assert isinstance(info, dict)
    return info


def _cleanup(run_id: str) -> None:
    for pid in processes_with_marker(run_id):
        os.kill(pid, signal.SIGKILL)


def test_a_script_that_forgets_close_exits_at_once_and_silently() -> None:
    for _ in range(3):  # the noise the issue saw came "sometimes": more than one run
        proc = _run(FORGETS_CLOSE)
        info = _first_line(proc)
        run_id = str(info["run_id"])
        try:
            # The script's last statement has run: what is left is the interpreter's exit.
            started = time.monotonic()
            _out, err = proc.communicate(timeout=30)
            exit_s = time.monotonic() - started
            assert proc.returncode == 0, err
            assert err == ""
            assert exit_s < EXIT_BOUND, f"exit took {exit_s:.2f} s"
            # Nothing of the run is left: workers, guardians, the detached child.
            assert wait_until(lambda r=run_id: not processes_with_marker(r), 2.0)
        finally:
            _cleanup(run_id)


@pytest.mark.parametrize("tool", ["slow", "sleep_sync", "spin"])
def test_an_uncaught_ctrl_c_during_a_call_exits_at_once(tool: str) -> None:
    """``slow`` stops when cancelled; ``sleep_sync`` blocks a thread; ``spin`` holds the GIL,
    so its worker ignores SIGTERM and is SIGKILLed after the exit grace."""
    proc = _run(INTERRUPTED, tool)
    info = _first_line(proc)
    run_id = str(info["run_id"])
    try:
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=30)
        exit_s = time.monotonic() - started
        assert proc.returncode != 0
        lines = err.rstrip().splitlines()
        assert lines[-1] == f"KeyboardInterrupt: call {tool!r} cancelled", err
        assert "Error" not in err.replace("KeyboardInterrupt", ""), err
        assert exit_s < EXIT_BOUND, f"exit took {exit_s:.2f} s"
        assert wait_until(lambda: not processes_with_marker(run_id), 2.0)
    finally:
        _cleanup(run_id)
