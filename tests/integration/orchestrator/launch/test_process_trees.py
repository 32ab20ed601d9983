"""What tools start never outlives its worker or its kernel, with real workers and ``sp.start``.

``spawn_child`` (showcase) starts a ``sleep``; ``detach=True`` puts it in a session of its own
(``setsid``), out of the worker's process group, as a daemon would. Every process of a run
carries its marker ``SNAKEPIT_NB_POOL=<run id>`` (workers, their guardians, the tools' children),
so "no process of the run" is checked by scanning ``/proc`` for it.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from launcher_standin import (
    exec_finished,
    pid_exists,
    pid_running,
    processes_with_marker,
    wait_until,
)
from pool_support import pool_kwargs

from snakepit_nb._errors import WorkerCrashedError
from snakepit_nb.orchestrator.launch.registry import (
    ProcessRegistry,
    RegistryRow,
    boot_id,
    process_start_time,
)

pytestmark = pytest.mark.integration


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _children_of_the_run(client: Any, n: int = 4) -> list[int]:
    """``n`` sleeping children, alternately in the worker's group and detached."""
    children = [
        client.session(f"spawner-{i}").call("spawn_child", seconds=120.0, detach=bool(i % 2))
        for i in range(n)
    ]
    assert all(exec_finished(pid) for pid in children)
    return children


def _gone(pids: list[int], within: float = 2.0) -> bool:
    return wait_until(lambda: not any(pid_running(p) for p in pids), within)


def test_close_ends_the_tools_children_before_it_returns(
    client_factory: Callable[..., Any],
) -> None:
    client = client_factory(workers=2)
    run_id = client.run_id
    children = _children_of_the_run(client)
    workers = [w.pid for w in client.status().workers]
    marked = processes_with_marker(run_id)
    guardians = [p for p in marked if _comm(p) == "snakepit-guard"]
    assert set(children) | set(workers) <= set(marked)
    assert len(guardians) == 2  # one per worker
    client.close()
    # The worker ended (and reaped) its tools' processes on its way out, before it exited.
    assert not [p for p in children if pid_running(p)]
    assert not [p for p in workers if pid_running(p)]
    assert wait_until(lambda: not processes_with_marker(run_id), 2.0), processes_with_marker(run_id)


@pytest.mark.parametrize("how", ["crash", "sigkill", "hang"])
def test_a_dead_workers_children_go_with_it(client_factory: Callable[..., Any], how: str) -> None:
    """However the worker ends, its guardian ends what its tools started."""
    client = client_factory(workers=1, heartbeat_interval=0.3, heartbeat_misses=3)
    s = client.session("doomed")
    pid = s.call("whoami")["pid"]
    children = [s.call("spawn_child", seconds=120.0, detach=detach) for detach in (False, True)]
    assert all(pid_running(p) for p in children)
    if how == "crash":
        with pytest.raises(WorkerCrashedError, match="exit code 1"):
            s.call("crash", code=1)
    elif how == "sigkill":
        os.kill(pid, signal.SIGKILL)
    else:  # holds the GIL: the heartbeat watch kills it
        with pytest.raises(WorkerCrashedError, match="stopped answering heartbeats"):
            s.call("spin", seconds=120.0)
    assert _gone(children), [p for p in children if pid_running(p)]
    # The slot is refilled; the new worker's processes are its own.
    assert s.call("whoami", _timeout=30.0)["pid"] != pid


FAKE_KERNEL = r"""
import json, sys
import snakepit_nb as sp

client = sp.start(workers=2, startup_timeout=60.0)
out = {"run_id": client.run_id, "workers": [w.pid for w in client.status().workers]}
out["children"] = [
    client.session(f"s{i}").call("spawn_child", seconds=120.0, detach=bool(i % 2))
    for i in range(4)
]
print(json.dumps(out), flush=True)
sys.stdin.read()  # until the test kills us (or goes away)
"""


class FakeKernel:
    """A Python process that runs ``sp.start`` like a notebook kernel would."""

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", FAKE_KERNEL],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 90)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.proc.kill()
            err = self.proc.communicate()[1]
            raise AssertionError(f"the fake kernel did not start its workers: {err}")
        self.info = json.loads(line)
        self.run_id: str = self.info["run_id"]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate()
        for pid in processes_with_marker(self.run_id):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def fake_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], Any]]:
    registry = tmp_path / "registry"
    monkeypatch.setenv("SNAKEPIT_NB_REGISTRY_DIR", str(registry))  # ours and the kernel's
    kernels: list[FakeKernel] = []

    def start() -> FakeKernel:
        kernel = FakeKernel(dict(os.environ))
        kernels.append(kernel)
        return kernel

    yield start
    for kernel in kernels:
        kernel.close()


def test_kernel_sigkill_leaves_no_process_of_its_tree(fake_kernel: Callable[[], Any]) -> None:
    kernel = fake_kernel()
    tree = kernel.info["workers"] + kernel.info["children"]
    assert all(pid_running(p) for p in tree)
    kernel.proc.kill()  # like the OOM killer: no cleanup runs in the kernel
    kernel.proc.wait()
    # Workers die by PR_SET_PDEATHSIG, their guardians end the children, detached or not.
    assert wait_until(lambda: not processes_with_marker(kernel.run_id), 2.0), [
        (p, _comm(p)) for p in processes_with_marker(kernel.run_id)
    ]


def test_the_next_start_sweeps_what_a_killed_tree_left(
    fake_kernel: Callable[[], Any], client_factory: Callable[..., Any]
) -> None:
    """When even the guardians are gone (killed along with the kernel), the sweep of the next
    ``sp.start()`` ends the tools' processes: only those of the dead run."""
    kernel = fake_kernel()
    children = kernel.info["children"]
    guardians = [p for p in processes_with_marker(kernel.run_id) if _comm(p) == "snakepit-guard"]
    assert len(guardians) == 2
    for pid in guardians:
        os.kill(pid, signal.SIGKILL)
    assert _gone(guardians)
    kernel.proc.kill()
    kernel.proc.wait()
    assert _gone(kernel.info["workers"])
    assert all(pid_running(p) for p in children)  # nobody was left to end them
    bystander = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        client = client_factory(workers=1)
        assert _gone(children, within=0.5), "the start-up sweep left the dead run's processes"
        assert processes_with_marker(kernel.run_id) == []
        assert bystander.poll() is None  # not of the run: never touched
        assert client.session().call("add", a=1, b=2) == 3
    finally:
        bystander.kill()
        bystander.wait()


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def test_the_worker_adopts_its_tools_orphans_and_reaps_them(
    client_factory: Callable[..., Any],
) -> None:
    """A double-forked process stays the worker's (PR_SET_CHILD_SUBREAPER) rather than init's,
    and once it exits the worker reaps it: no zombie is left behind."""
    client = client_factory(**pool_kwargs(workers=1))
    s = client.session("orphans")
    worker_pid = s.call("whoami")["pid"]
    orphan = s.call("orphan", seconds=1.0)
    assert _parent(orphan) == worker_pid  # its shell is gone: the worker adopted it
    assert wait_until(lambda: not pid_exists(orphan), 15.0), "the exited orphan was not reaped"
    assert s.call("add", a=1, b=1) == 2


# An owner with many threads (a kernel) cannot fork a guardian; it starts a warden, which also
# takes pids to end. The tracked sleep carries no marker, as a process looks that set its title
# over its environment (Ray's agents do).
WARDED_OWNER = """
import subprocess, sys
from snakepit_nb._processes import start_warden
warden = start_warden("warden-test." + sys.argv[1])
tracked = subprocess.Popen(["sleep", "60"], start_new_session=True)
untracked = subprocess.Popen(["sleep", "60"], start_new_session=True)
assert warden.track([tracked.pid]) and not warden.track([tracked.pid])  # sent once
print(warden.pid, tracked.pid, untracked.pid, flush=True)
sys.stdin.read()
"""


def test_a_warden_ends_what_its_owner_tracked_and_nothing_else() -> None:
    with subprocess.Popen(
        [sys.executable, "-c", WARDED_OWNER, os.urandom(4).hex()],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as owner:
        assert owner.stdout is not None
        warden, tracked, untracked = (int(w) for w in owner.stdout.readline().split())
        try:
            assert exec_finished(tracked)
            assert pid_running(warden)
            owner.kill()  # no cleanup runs in the owner
            owner.wait()
            assert _gone([tracked, warden])
            assert pid_running(untracked)  # not the owner's to end
        finally:
            with contextlib.suppress(OSError):
                os.kill(untracked, signal.SIGKILL)


def test_the_sweep_ends_a_dead_runs_tracked_processes_by_pid_and_start_time(
    tmp_path: Path,
) -> None:
    registry = ProcessRegistry(tmp_path)
    tracked = subprocess.Popen(["sleep", "60"], start_new_session=True)
    reused = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        assert exec_finished(tracked.pid)
        assert exec_finished(reused.pid)
        started = {p.pid: process_start_time(p.pid) for p in (tracked, reused)}
        dead_run = RegistryRow(
            run_id="dead-run",
            worker_id="ray",
            launch_id="ray-0",
            kernel_pid=2**22 + 17,  # above any pid_max: that kernel is gone
            kernel_start_time=1.0,
            boot_id=boot_id(),
        )
        # `reused` stands for a process that took a tracked pid over: another start time.
        registry.track(
            dead_run, {tracked.pid: started[tracked.pid], reused.pid: started[reused.pid] - 5}
        )
        report = registry.sweep(grace=1.0)
        assert report.killed == [tracked.pid]
        assert tracked.wait(5) == -signal.SIGTERM
        assert reused.poll() is None
        assert registry.rows() == []
    finally:
        for proc in (tracked, reused):
            proc.kill()
            proc.wait()
