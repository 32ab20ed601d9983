"""A local Ray of our own (``launcher="ray"``, no address) ends with the kernel that started it.

Each test runs a driver, a Python process standing for the kernel, that starts a real local
Ray through ``sp.start(launcher="ray")`` and reports its process tree once Ray's two agents are
up: Ray's GCS server and raylet, its agents and workers, our worker servers and the warden.
Then the driver is SIGKILLed, as a kernel is by the OOM killer or a forced restart. Left to
themselves, Ray's agents would take about a minute to exit.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from launcher_standin import pid_running, wait_until

from snakepit_nb.orchestrator.launch.registry import ProcessRegistry

pytestmark = pytest.mark.integration

DRIVER = textwrap.dedent(
    """
    import json, sys, time
    import psutil
    import snakepit_nb as sp
    client = sp.start(workers=1, launcher="ray", startup_timeout=120)
    assert client.session("s").call("add", a=1, b=2) == 3
    agents = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")
    deadline = time.monotonic() + 60
    while True:
        tree = psutil.Process().children(recursive=True)
        names = " ".join(" ".join(p.cmdline()) for p in tree)
        if all(a in names for a in agents) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    print(json.dumps([[p.pid, " ".join(p.cmdline()).strip()] for p in tree]), flush=True)
    sys.stdin.read()
    """
)


@pytest.fixture
def driver(tmp_path: Path) -> Iterator[Any]:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env.update(
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",  # Ray on loopback
        RAY_USAGE_STATS_ENABLED="0",
        SNAKEPIT_NB_REGISTRY_DIR=str(tmp_path / "registry"),
    )
    with subprocess.Popen(
        [sys.executable, "-c", DRIVER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    ) as proc:
        try:
            yield proc
        finally:
            proc.kill()


def tree_of(driver: Any) -> dict[int, str]:
    assert driver.stdout is not None
    line = driver.stdout.readline()
    assert line, f"the driver ended before it reported its tree: {driver.communicate()[1]}"
    tree = {pid: cmd for pid, cmd in json.loads(line)}
    commands = " ".join(tree.values())
    for expected in ("gcs_server", "raylet", "ray::DashboardAgent", "ray::RuntimeEnvAgent"):
        assert expected in commands, (expected, tree)
    assert "snakepit_nb.worker" in commands
    return tree


def wardens(tree: dict[int, str]) -> list[int]:
    return [pid for pid, cmd in tree.items() if "snakepit_nb/_processes.py" in cmd]


def running(tree: dict[int, str]) -> dict[int, str]:
    return {pid: cmd[:80] for pid, cmd in tree.items() if pid_running(pid)}


def test_a_killed_kernel_takes_its_local_ray_down_at_once(driver: Any) -> None:
    tree = tree_of(driver)
    assert len(wardens(tree)) == 1
    driver.kill()
    _, stderr = driver.communicate(timeout=10)
    # Ray's agents alone would stay about a minute.
    assert wait_until(lambda: not running(tree), 10), running(tree)
    # Ray's notices that do not apply to a kernel's own Ray stay out of the notebook.
    assert "SIGTERM handler is not set" not in stderr
    assert "Token authentication is enabled" not in stderr


def test_what_a_killed_warden_left_is_swept_by_the_next_start(driver: Any, tmp_path: Path) -> None:
    tree = tree_of(driver)
    (warden,) = wardens(tree)
    registry = ProcessRegistry(tmp_path / "registry")
    (row,) = [r for r in registry.rows() if r.worker_id == "ray"]
    assert row.pid == warden
    agents = [pid for pid, cmd in tree.items() if cmd.startswith("ray::") and "Agent" in cmd]
    assert {str(pid) for pid in agents} <= set(row.tracked)
    os.kill(warden, signal.SIGKILL)
    driver.kill()
    driver.wait(10)
    assert wait_until(lambda: not pid_running(warden), 5)
    assert all(pid_running(p) for p in agents), "nothing left for the sweep to do"
    report = registry.sweep(grace=2.0)
    assert set(agents) <= set(report.killed)
    # The rest goes by its own parent-death signals (our workers, their guardians).
    assert wait_until(lambda: not running(tree), 5), running(tree)
    assert [r for r in registry.rows() if r.run_id == row.run_id] == []
