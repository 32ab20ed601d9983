"""No orphans (reliability.md T9, T11, T12 and the atexit backup), with real processes.

A "fake kernel" is a Python subprocess that runs a real LocalProcessLauncher; the test then
kills it the way the OOM killer or a kernel restart would.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from launcher_standin import (
    exec_finished,
    pid_running,
    processes_with_marker,
    standin_argv,
    wait_until,
)

from snakepit_nb._loop import LoopThread
from snakepit_nb.orchestrator.launch.base import WorkerSpec
from snakepit_nb.orchestrator.launch.local import LocalProcessLauncher, LocalWorker
from snakepit_nb.orchestrator.launch.registry import (
    ProcessRegistry,
    RegistryRow,
    boot_id,
    process_start_time,
)

pytestmark = pytest.mark.integration

FAKE_KERNEL = r"""
import asyncio, json, sys
from snakepit_nb.orchestrator.launch.base import WorkerSpec
from snakepit_nb.orchestrator.launch.local import LocalProcessLauncher
from snakepit_nb.orchestrator.launch.registry import ProcessRegistry

run_id, registry_dir, argv_json, pid_dir, mode = sys.argv[1:6]

async def main():
    launcher = LocalProcessLauncher(run_id=run_id, registry=ProcessRegistry(registry_dir))
    argv = json.loads(argv_json)
    workers = await asyncio.gather(*(
        launcher.launch(WorkerSpec(f"w{i}", argv + ["--grandchild-pid-file", f"{pid_dir}/gc{i}"]))
        for i in range(2)
    ))
    print(json.dumps([w.pid for w in workers]), flush=True)
    if mode == "hang":
        await asyncio.Event().wait()
    # mode "exit": return without closing the launcher; atexit must clean up.

asyncio.run(main())
"""


@pytest.fixture
def registry_dir(tmp_path: Path) -> Path:
    return tmp_path / "registry"


class FakeKernel:
    def __init__(self, proc: subprocess.Popen[str], run_id: str, pid_dir: Path) -> None:
        self.proc = proc
        self.run_id = run_id
        self.pid_dir = pid_dir

    def worker_pids(self, timeout: float = 30.0) -> list[int]:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert ready, "the fake kernel did not report its workers in time"
        line = self.proc.stdout.readline()
        assert line, f"the fake kernel died: {self.proc.stderr.read() if self.proc.stderr else ''}"
        return [int(pid) for pid in json.loads(line)]

    def grandchild_pids(self) -> list[int]:
        paths = [self.pid_dir / f"gc{i}" for i in range(2)]
        assert wait_until(lambda: all(p.exists() and p.read_text() for p in paths), 5.0)
        return [int(p.read_text()) for p in paths]


@pytest.fixture
def fake_kernel(tmp_path: Path, registry_dir: Path) -> Iterator[object]:
    started: list[FakeKernel] = []

    def start(run_id: str, mode: str = "hang") -> FakeKernel:
        pid_dir = tmp_path / run_id
        pid_dir.mkdir()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                FAKE_KERNEL,
                run_id,
                str(registry_dir),
                json.dumps(standin_argv()),
                str(pid_dir),
                mode,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        kernel = FakeKernel(proc, run_id, pid_dir)
        started.append(kernel)
        return kernel

    yield start
    for kernel in started:
        if kernel.proc.poll() is None:
            kernel.proc.kill()
        kernel.proc.wait()
        for stream in (kernel.proc.stdout, kernel.proc.stderr):
            if stream is not None:
                stream.close()
        for pid in processes_with_marker(kernel.run_id):
            os.kill(pid, signal.SIGKILL)


def test_kernel_sigkill_workers_die_and_sweep_kills_grandchildren(
    fake_kernel: object, registry_dir: Path
) -> None:
    """T9: SIGKILL the kernel; workers gone within 1 s; the next start's sweep does the rest."""
    kernel = fake_kernel("t9run", "hang")  # type: ignore[operator]
    workers = kernel.worker_pids()
    grandchildren = kernel.grandchild_pids()
    assert all(pid_running(p) for p in workers + grandchildren)
    assert len(ProcessRegistry(registry_dir).rows()) == 2

    t0 = time.monotonic()
    kernel.proc.kill()
    kernel.proc.wait()
    assert wait_until(lambda: not any(pid_running(p) for p in workers), 1.0), (
        "workers outlived their kernel by more than 1 s"
    )
    gone_s = time.monotonic() - t0
    # PR_SET_PDEATHSIG reaches only the direct child, and the stand-in has no guardian (our
    # worker's is tested in test_process_trees.py): its subprocesses are still here.
    assert all(pid_running(p) for p in grandchildren)
    assert sorted(processes_with_marker("t9run")) == sorted(grandchildren)

    async def next_start() -> float:
        launcher = LocalProcessLauncher(registry=ProcessRegistry(registry_dir))
        t1 = time.monotonic()
        report = await launcher.sweep_once()
        sweep_s = time.monotonic() - t1
        assert report is not None
        assert sorted(report.killed) == sorted(grandchildren)
        assert report.removed_rows == 2
        await launcher.close()
        return sweep_s

    sweep_s = asyncio.run(next_start())
    assert processes_with_marker("t9run") == []
    assert ProcessRegistry(registry_dir).rows() == []
    print(
        json.dumps(
            {"workers_gone_after_kernel_kill_s": round(gone_s, 3), "sweep_s": round(sweep_s, 3)}
        )
    )


def test_atexit_stops_workers_of_a_kernel_that_exits_without_closing(
    fake_kernel: object, registry_dir: Path
) -> None:
    kernel = fake_kernel("exitrun", "exit")  # type: ignore[operator]
    workers = kernel.worker_pids()
    grandchildren = kernel.grandchild_pids()
    assert kernel.proc.wait(timeout=30) == 0
    # Only the atexit hook kills the grandchildren and removes the rows.
    assert wait_until(lambda: not any(pid_running(p) for p in workers + grandchildren), 1.0)
    assert ProcessRegistry(registry_dir).rows() == []
    assert processes_with_marker("exitrun") == []


def test_spawning_from_a_short_lived_thread_does_not_kill_workers(registry_dir: Path) -> None:
    """T11: PR_SET_PDEATHSIG is per thread; the loop thread, not the caller's, must fork."""
    box: dict[str, object] = {}

    def short_lived() -> None:
        loop_thread = LoopThread(name="t11-loop")
        launcher = LocalProcessLauncher(registry=ProcessRegistry(registry_dir))

        async def start_two() -> list[LocalWorker]:
            return list(
                await asyncio.gather(
                    *(launcher.launch(WorkerSpec(f"w{i}", standin_argv())) for i in range(2))
                )
            )

        workers = loop_thread.run(start_two(), timeout=30)
        box.update(loop_thread=loop_thread, launcher=launcher, workers=workers)

    thread = threading.Thread(target=short_lived)
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive()
    loop_thread = box["loop_thread"]
    launcher = box["launcher"]
    workers = box["workers"]
    assert isinstance(loop_thread, LoopThread)
    assert isinstance(launcher, LocalProcessLauncher)
    assert isinstance(workers, list)
    pids = [w.pid for w in workers if isinstance(w, LocalWorker)]
    try:
        assert len(pids) == 2
        # They must stay alive for 2 s: wait for any of them to die, bounded by the deadline.
        died = wait_until(lambda: not all(pid_running(p) for p in pids if p), 2.0, 0.05)
        assert not died, "a worker died after the thread that asked for it exited"
    finally:
        loop_thread.run(launcher.close(), timeout=30)
        loop_thread.stop()
    assert not any(pid_running(p) for p in pids if p)


# ---- T12: the sweep never kills an unrelated process ----------------------------------------


def _dead_pid() -> tuple[int, float]:
    """A pid and start time of a process that has exited (a "dead kernel")."""
    proc = subprocess.Popen(["sleep", "0.2"])
    started = process_start_time(proc.pid)
    proc.wait()
    assert started is not None
    return proc.pid, started


def _row(
    run_id: str, pid: int, *, kernel: tuple[int, float], start: float | None, boot: str = ""
) -> RegistryRow:
    return RegistryRow(
        run_id=run_id,
        worker_id="w1",
        launch_id=f"w1-{pid}",
        kernel_pid=kernel[0],
        kernel_start_time=kernel[1],
        boot_id=boot or boot_id(),
        pid=pid,
        pgid=os.getpgid(pid),
        start_time=start,
        state="active",
    )


def _sleeper(run_id: str | None) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env.pop("SNAKEPIT_NB_POOL", None)
    if run_id is not None:
        env["SNAKEPIT_NB_POOL"] = run_id
    proc = subprocess.Popen(["sleep", "30"], env=env, start_new_session=True)
    assert exec_finished(proc.pid)
    return proc


def test_sweep_spares_unrelated_processes_and_drops_other_boot_rows(registry_dir: Path) -> None:
    registry = ProcessRegistry(registry_dir)
    dead_kernel = _dead_pid()
    unrelated = _sleeper(None)  # no marker: a pid reused by someone else
    other_run = _sleeper("another-run")  # marker of a different run in the recorded group
    other_boot = _sleeper("bootrun")  # the right marker, but the row is from another boot
    live_kernel_proc = subprocess.Popen(["sleep", "30"])
    live_kernel = (live_kernel_proc.pid, process_start_time(live_kernel_proc.pid) or 0.0)
    live_owned = _sleeper("liverun")  # its kernel is alive: another notebook's worker
    victim = _sleeper("deadrun")  # positive control: stale row, dead kernel, right marker
    procs = [unrelated, other_run, other_boot, live_kernel_proc, live_owned, victim]
    try:
        rows = [
            _row(
                "deadrun",
                unrelated.pid,
                kernel=dead_kernel,
                start=process_start_time(unrelated.pid),
            ),
            _row(
                "deadrun",
                other_run.pid,
                kernel=dead_kernel,
                start=process_start_time(other_run.pid),
            ),
            _row(
                "bootrun",
                other_boot.pid,
                kernel=dead_kernel,
                start=process_start_time(other_boot.pid),
                boot="another-boot-id",
            ),
            _row(
                "liverun",
                live_owned.pid,
                kernel=live_kernel,
                start=process_start_time(live_owned.pid),
            ),
            _row("deadrun", victim.pid, kernel=dead_kernel, start=process_start_time(victim.pid)),
        ]
        for row in rows:
            registry._write(row)

        report = registry.sweep(grace=1.0)

        assert report.killed == [victim.pid]
        assert victim.wait(timeout=5) == -signal.SIGTERM
        for proc in (unrelated, other_run, other_boot, live_kernel_proc, live_owned):
            assert proc.poll() is None, f"sweep killed an unrelated process {proc.args}"
        assert report.dropped_other_boot == 1
        assert report.kept_live_rows == 1
        assert report.removed_rows == 3
        assert [r.run_id for r in registry.rows()] == ["liverun"]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def test_sweep_finds_workers_of_a_row_that_was_only_reserved(registry_dir: Path) -> None:
    """The kernel died between writing the reservation and recording the pid."""
    registry = ProcessRegistry(registry_dir)
    dead_kernel = _dead_pid()
    orphan = _sleeper("halfrun")
    bystander = _sleeper(None)
    try:
        registry._write(
            RegistryRow(
                run_id="halfrun",
                worker_id="w1",
                launch_id="w1-x",
                kernel_pid=dead_kernel[0],
                kernel_start_time=dead_kernel[1],
                boot_id=boot_id(),
            )
        )
        report = registry.sweep(grace=1.0)
        assert report.killed == [orphan.pid]
        assert orphan.wait(timeout=5) < 0
        assert bystander.poll() is None
        assert registry.rows() == []
    finally:
        for proc in (orphan, bystander):
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def test_sweep_escalates_to_sigkill_after_grace(registry_dir: Path) -> None:
    registry = ProcessRegistry(registry_dir)
    dead_kernel = _dead_pid()
    env = dict(os.environ, SNAKEPIT_NB_POOL="stubborn")
    stubborn = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "print('armed', flush=True)\ntime.sleep(30)",
        ],
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
    )
    try:
        assert stubborn.stdout is not None
        assert stubborn.stdout.readline() == b"armed\n"
        registry._write(
            _row(
                "stubborn", stubborn.pid, kernel=dead_kernel, start=process_start_time(stubborn.pid)
            )
        )
        t0 = time.monotonic()
        report = registry.sweep(grace=0.5)
        assert report.killed == [stubborn.pid]
        assert stubborn.wait(timeout=5) == -signal.SIGKILL
        assert 0.5 <= time.monotonic() - t0 < 3.0
    finally:
        if stubborn.poll() is None:
            stubborn.kill()
        stubborn.wait()
        if stubborn.stdout is not None:
            stubborn.stdout.close()


def _start_clock() -> float:
    """Now, on the clock of process start times (boot time + uptime, as psutil reads them)."""
    import psutil

    with open("/proc/uptime") as fh:
        return psutil.boot_time() + float(fh.read().split()[0])


def test_sweep_spares_a_reused_pid(registry_dir: Path) -> None:
    """The pid-reuse branch: a stale row's pid now belongs to a process that is not the run's.

    One stranger holds a recorded pid with another start time; an impostor even carries the
    dead run's marker (its environment was copied) but started before that run's kernel did,
    so it cannot be of the run. Both are left alone; the run's own process (positive control)
    is killed.
    """
    registry = ProcessRegistry(registry_dir)
    dead_kernel_pid, _ = _dead_pid()
    stranger = _sleeper(None)
    impostor = _sleeper("reuserun")
    impostor_started = process_start_time(impostor.pid)
    assert impostor_started is not None
    # The run's kernel "started" after the impostor; its own process starts after that.
    kernel_started = impostor_started + 0.2
    assert wait_until(lambda: _start_clock() > kernel_started + 0.1, 5.0, 0.01)
    victim = _sleeper("reuserun")
    procs = [stranger, impostor, victim]
    try:
        kernel = (dead_kernel_pid, kernel_started)
        stranger_start = process_start_time(stranger.pid)
        assert stranger_start is not None
        rows = [
            # The recorded worker had this pid, long before the stranger got it.
            _row("reuserun", stranger.pid, kernel=kernel, start=stranger_start - 3600.0),
            _row("reuserun", impostor.pid, kernel=kernel, start=impostor_started - 3600.0),
            _row("reuserun", victim.pid, kernel=kernel, start=process_start_time(victim.pid)),
        ]
        for row in rows:
            registry._write(row)
        report = registry.sweep(grace=1.0)
        assert report.killed == [victim.pid]
        assert victim.wait(timeout=5) == -signal.SIGTERM
        assert stranger.poll() is None, "the sweep killed a process that reused a recorded pid"
        assert impostor.poll() is None, "the sweep killed a process older than the run"
        assert report.removed_rows == 3
        assert registry.rows() == []
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def test_sweep_keeps_rows_and_processes_of_a_live_kernel(registry_dir: Path) -> None:
    """Nothing is stale: the sweep kills nothing and keeps the rows (this process's run)."""
    registry = ProcessRegistry(registry_dir)
    me = (os.getpid(), process_start_time(os.getpid()) or 0.0)
    ours = _sleeper("liverun2")
    try:
        registry._write(_row("liverun2", ours.pid, kernel=me, start=process_start_time(ours.pid)))
        report = registry.sweep(grace=1.0)
        assert report.killed == []
        assert report.kept_live_rows == 1
        assert report.removed_rows == 0
        assert ours.poll() is None
        assert [r.run_id for r in registry.rows()] == ["liverun2"]
    finally:
        ours.kill()
        ours.wait()
