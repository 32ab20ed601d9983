"""LocalProcessLauncher with real processes: start-up handshake, stop, reaping, transports.

The worker here is the stand-in in ``launcher_standin.py`` (a real process following the
launch contract) unless stated; ``test_launcher_real_worker.py`` repeats the key checks with
``python -m snakepit_nb.worker``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import stat
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from launcher_standin import (
    pid_exists,
    pid_running,
    processes_with_marker,
    standin_argv,
    wait_until,
)

from snakepit_nb._errors import ClosedError, ConfigurationError, StartupError
from snakepit_nb.orchestrator.launch.base import (
    LaunchedWorker,
    Launcher,
    WorkerSpec,
    describe_exit,
    parse_ready_address,
)
from snakepit_nb.orchestrator.launch.local import LocalProcessLauncher
from snakepit_nb.orchestrator.launch.registry import ProcessRegistry

pytestmark = pytest.mark.integration

LauncherFactory = Callable[..., LocalProcessLauncher]


@pytest.fixture
def registry_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "registry"
    monkeypatch.setenv("SNAKEPIT_NB_REGISTRY_DIR", str(path))
    return path


@pytest.fixture
def make_launcher(registry_dir: Path) -> Iterator[LauncherFactory]:
    """Launchers with a private registry; any process they leave is killed (and fails the test)."""
    made: list[LocalProcessLauncher] = []

    def factory(**kwargs: object) -> LocalProcessLauncher:
        launcher = LocalProcessLauncher(registry=ProcessRegistry(registry_dir), **kwargs)  # type: ignore[arg-type]
        made.append(launcher)
        return launcher

    yield factory
    leaked = []
    for launcher in made:
        for pid in processes_with_marker(launcher.run_id):
            leaked.append(pid)
            os.kill(pid, signal.SIGKILL)
    assert not leaked, f"processes left running after the test: {leaked}"


def run(body: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(body())  # type: ignore[arg-type]


def spec(worker_id: str = "w1", *flags: str, timeout: float = 20.0, **env: str) -> WorkerSpec:
    return WorkerSpec(
        worker_id=worker_id, argv=standin_argv(*flags), env=dict(env), startup_timeout=timeout
    )


# ---- parsing ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("45123", "127.0.0.1:45123"),
        ("45123\n", "127.0.0.1:45123"),
        ("127.0.0.1:8080", "127.0.0.1:8080"),
        ("0.0.0.0:8080", "127.0.0.1:8080"),
        ("[::]:8080", "127.0.0.1:8080"),
        ("localhost:9", "127.0.0.1:9"),
        ("[::1]:9", "[::1]:9"),
        ("unix:/run/snakepit/w1.sock", "unix:/run/snakepit/w1.sock"),
        ("", None),
        ("  \n", None),
    ],
)
def test_ready_file_formats(text: str, expected: str | None) -> None:
    assert parse_ready_address(text) == expected


@pytest.mark.parametrize("text", ["hello", "127.0.0.1:0", "127.0.0.1:70000", "unix:", "1.2.3.4:"])
def test_ready_file_garbage_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"port|unix"):
        parse_ready_address(text)


def test_describe_exit() -> None:
    assert describe_exit(1) == "exit code 1"
    assert describe_exit(-9) == "SIGKILL"
    assert describe_exit(None) == "an unknown status"


def test_local_launcher_implements_the_interface(make_launcher: LauncherFactory) -> None:
    launcher = make_launcher()
    assert isinstance(launcher, Launcher)


# ---- start-up ----------------------------------------------------------------------------


def test_launch_reports_address_and_stop_reaps(
    make_launcher: LauncherFactory, registry_dir: Path
) -> None:
    launcher = make_launcher()

    async def body() -> None:
        t0 = time.monotonic()
        worker = await launcher.launch(spec("w1"))
        ready_s = time.monotonic() - t0
        try:
            assert isinstance(worker, LaunchedWorker)
            assert worker.is_alive()
            assert worker.pid is not None
            assert worker.address.startswith("127.0.0.1:")
            port = int(worker.address.rsplit(":", 1)[1])
            with socket.create_connection(("127.0.0.1", port), timeout=5):
                pass
            # Own session and process group: the notebook's SIGINT cannot reach it.
            assert os.getsid(worker.pid) == worker.pid
            assert os.getpgid(worker.pid) == worker.pid
            assert worker.returncode() is None
            assert (worker.rss() or 0) > 1_000_000
            rows = [r for r in ProcessRegistry(registry_dir).rows() if r.run_id == launcher.run_id]
            assert [(r.pid, r.state) for r in rows] == [(worker.pid, "active")]
            assert ready_s < 10.0
        finally:
            t1 = time.monotonic()
            code = await worker.stop(grace=2.0)
            stop_s = time.monotonic() - t1
        assert code == 0  # the stand-in exits cleanly on SIGTERM
        assert stop_s < 2.0
        assert not worker.is_alive()
        assert not pid_exists(worker.pid)  # reaped: no zombie left in /proc
        assert await worker.wait() == 0
        assert ProcessRegistry(registry_dir).rows() == []
        await launcher.close()
        print(json.dumps({"spawn_to_ready_s": round(ready_s, 3), "stop_s": round(stop_s, 3)}))

    run(body)


def test_never_ready_fails_within_startup_timeout_with_stderr_tail(
    make_launcher: LauncherFactory, registry_dir: Path
) -> None:
    launcher = make_launcher()

    async def body() -> None:
        t0 = time.monotonic()
        with pytest.raises(StartupError) as info:
            await launcher.launch(spec("w1", "--mode", "never-ready", timeout=1.5))
        elapsed = time.monotonic() - t0
        message = str(info.value)
        assert "did not become ready within 1.5 s" in message
        assert "waiting for something that never comes" in message
        assert 1.5 <= elapsed < 4.0
        assert launcher.workers() == []
        assert ProcessRegistry(registry_dir).rows() == []
        await launcher.close()

    run(body)


def test_exit_before_ready_fails_fast_with_code_and_stderr(make_launcher: LauncherFactory) -> None:
    launcher = make_launcher()

    async def body() -> None:
        t0 = time.monotonic()
        with pytest.raises(StartupError) as info:
            await launcher.launch(spec("w7", "--mode", "exit-before", timeout=30))
        assert time.monotonic() - t0 < 10.0  # far sooner than the 30 s timeout
        message = str(info.value)
        assert message.startswith("worker w7 ended with exit code 1 before it was ready")
        assert "cannot import adapter 'nope.Missing'" in message
        await launcher.close()

    run(body)


def test_missing_command_is_a_startup_error(make_launcher: LauncherFactory) -> None:
    launcher = make_launcher()

    async def body() -> None:
        bad = WorkerSpec("w1", ["/nonexistent/python-nope", "-m", "x"], {}, None, 5.0)
        with pytest.raises(StartupError, match="could not start worker w1"):
            await launcher.launch(bad)
        assert launcher.registry.rows() == []
        await launcher.close()

    run(body)


def test_noise_on_stdout_is_tolerated(make_launcher: LauncherFactory) -> None:
    launcher = make_launcher()

    async def body() -> None:
        worker = await launcher.launch(spec("w1", "--mode", "noise"))
        assert worker.address.startswith("127.0.0.1:")
        await launcher.close()
        assert not worker.is_alive()

    run(body)


def test_exit_right_after_ready_is_detected(make_launcher: LauncherFactory) -> None:
    launcher = make_launcher()

    async def body() -> None:
        failure = ""
        try:
            worker = await launcher.launch(spec("w1", "--mode", "exit-after-ready"))
        except StartupError as err:  # seen dead while reading the ready file
            failure = str(err)
        if failure:
            assert "right after it reported ready" in failure
        else:  # or seen alive, then its exit arrives through wait()
            assert await asyncio.wait_for(worker.wait(), timeout=5.0) == 0
            assert not worker.is_alive()
            assert not pid_exists(worker.pid or 0)
        await launcher.close()

    run(body)


def test_bare_port_is_dialled_on_loopback(make_launcher: LauncherFactory) -> None:
    launcher = make_launcher()

    async def body() -> None:
        worker = await launcher.launch(spec("w1", "--mode", "bare-port"))
        assert worker.address.startswith("127.0.0.1:")
        await launcher.close()

    run(body)


def test_legacy_grpc_ready_on_stdout(make_launcher: LauncherFactory) -> None:
    launcher = make_launcher()

    async def body() -> None:
        worker = await launcher.launch(spec("w1", "--mode", "legacy-stdout"))
        port = int(worker.address.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
        await launcher.close()

    run(body)


def test_unix_transport_private_dir_and_socket(make_launcher: LauncherFactory) -> None:
    launcher = make_launcher(transport="unix")

    async def body() -> None:
        worker = await launcher.launch(spec("w1"))
        assert worker.address.startswith("unix:")
        path = worker.address[len("unix:") :]
        assert Path(path).parent == launcher.run_dir
        assert stat.S_IMODE(os.stat(launcher.run_dir).st_mode) == 0o700
        assert stat.S_ISSOCK(os.stat(path).st_mode)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        run_dir = launcher.run_dir
        await launcher.close()
        assert not run_dir.exists()

    run(body)


def test_four_workers_start_concurrently(make_launcher: LauncherFactory, tmp_path: Path) -> None:
    """Each stand-in becomes ready only once all four run at the same time."""
    launcher = make_launcher()
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    flags = ("--barrier", str(barrier), "--barrier-count", "4")

    async def body() -> None:
        t0 = time.monotonic()
        workers = await asyncio.gather(
            *(launcher.launch(spec(f"w{i}", *flags)) for i in range(1, 5))
        )
        four_s = time.monotonic() - t0
        assert len({w.address for w in workers}) == 4
        assert len(list(barrier.iterdir())) == 4
        t0 = time.monotonic()
        await launcher.close()
        close_s = time.monotonic() - t0
        assert all(not w.is_alive() for w in workers)
        print(json.dumps({"four_s": round(four_s, 3), "close_four_s": round(close_s, 3)}))

    run(body)


# ---- stop, kill, reaping (T6) --------------------------------------------------------------


def test_stop_kills_worker_that_ignores_sigterm_and_its_grandchild(
    make_launcher: LauncherFactory, tmp_path: Path
) -> None:
    launcher = make_launcher()
    child_file = tmp_path / "grandchild.pid"

    async def body() -> None:
        worker = await launcher.launch(
            spec("w1", "--ignore-term", "--grandchild-pid-file", str(child_file))
        )
        assert wait_until(child_file.exists, 5.0)
        grandchild = int(child_file.read_text())
        assert pid_running(grandchild)
        grace = 1.0
        t0 = time.monotonic()
        code = await worker.stop(grace=grace)
        elapsed = time.monotonic() - t0
        assert code == -signal.SIGKILL
        assert grace <= elapsed < grace + 0.5
        assert not pid_exists(worker.pid or 0)  # reaped by us
        # The grandchild got the group's SIGTERM/SIGKILL; its new parent reaps it.
        assert wait_until(lambda: not pid_running(grandchild), 1.0)
        await launcher.close()

    run(body)


def test_crash_is_reaped_and_reported_and_group_cleaned(
    make_launcher: LauncherFactory, tmp_path: Path, registry_dir: Path
) -> None:
    launcher = make_launcher()
    child_file = tmp_path / "grandchild.pid"

    async def body() -> None:
        worker = await launcher.launch(spec("w1", "--grandchild-pid-file", str(child_file)))
        assert wait_until(child_file.exists, 5.0)
        grandchild = int(child_file.read_text())
        assert worker.pid is not None
        os.kill(worker.pid, signal.SIGKILL)  # a crash: nobody asked it to stop
        assert await asyncio.wait_for(worker.wait(), timeout=5.0) == -signal.SIGKILL
        assert not worker.is_alive()
        assert not pid_exists(worker.pid)
        assert wait_until(lambda: not pid_running(grandchild), 1.0)
        assert "starting up" in worker.stderr_tail()  # kept after the log file is gone
        assert ProcessRegistry(registry_dir).rows() == []
        assert launcher.workers() == []
        await launcher.close()

    run(body)


def test_kill_is_immediate(make_launcher: LauncherFactory) -> None:
    launcher = make_launcher()

    async def body() -> None:
        worker = await launcher.launch(spec("w1", "--ignore-term"))
        t0 = time.monotonic()
        worker.kill()
        assert await asyncio.wait_for(worker.wait(), timeout=5.0) == -signal.SIGKILL
        assert time.monotonic() - t0 < 1.0
        await launcher.close()

    run(body)


def test_cancelled_launch_leaves_nothing(make_launcher: LauncherFactory) -> None:
    launcher = make_launcher()

    async def body() -> None:
        task = asyncio.ensure_future(launcher.launch(spec("w1", "--mode", "never-ready")))
        assert await _wait_async(lambda: bool(launcher.workers()), 5.0)
        pid = launcher.workers()[0].pid
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert launcher.workers() == []
        assert not pid_exists(pid or 0)
        await launcher.close()

    run(body)


def test_close_stops_everything_and_refuses_new_launches(make_launcher: LauncherFactory) -> None:
    launcher = make_launcher()

    async def body() -> None:
        workers = await asyncio.gather(*(launcher.launch(spec(f"w{i}")) for i in range(2)))
        run_dir = launcher.run_dir
        await launcher.close()
        assert all(not pid_exists(w.pid or 0) for w in workers)
        assert not run_dir.exists()
        with pytest.raises(ClosedError):
            await launcher.launch(spec("w9"))

    run(body)


def test_token_on_the_command_line_is_refused(make_launcher: LauncherFactory) -> None:
    launcher = make_launcher()

    async def body() -> None:
        leaky = WorkerSpec(
            "w1", standin_argv("--token", "s3cr3t-token"), {"SNAKEPIT_NB_TOKEN": "s3cr3t-token"}
        )
        with pytest.raises(ConfigurationError, match="environment variable"):
            await launcher.launch(leaky)
        assert launcher.workers() == []
        await launcher.close()

    run(body)


async def _wait_async(predicate: Callable[[], bool], within: float) -> bool:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.01)
    return True


def test_reaper_without_pidfd_uses_a_waiter_thread(
    make_launcher: LauncherFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kernels older than Linux 5.3 (or other Unixes) have no pidfd_open."""

    def no_pidfd(pid: int, flags: int = 0) -> int:
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(os, "pidfd_open", no_pidfd)
    launcher = make_launcher()

    async def body() -> None:
        worker = await launcher.launch(spec("w1", "--ignore-term"))
        t0 = time.monotonic()
        assert await worker.stop(grace=0.3) == -signal.SIGKILL
        assert time.monotonic() - t0 < 2.0
        assert not pid_exists(worker.pid or 0)
        crashing = await launcher.launch(spec("w2"))
        os.kill(crashing.pid or 0, signal.SIGKILL)
        assert await asyncio.wait_for(crashing.wait(), 5.0) == -signal.SIGKILL
        await launcher.close()

    run(body)


def test_close_during_start_up_says_closed(make_launcher: LauncherFactory) -> None:
    launcher = make_launcher()

    async def body() -> None:
        task = asyncio.ensure_future(launcher.launch(spec("w1", "--mode", "never-ready")))
        assert await _wait_async(lambda: bool(launcher.workers()), 5.0)
        await launcher.close()
        with pytest.raises(ClosedError, match="closed while worker w1 was starting"):
            await task

    run(body)


def test_chatty_worker_logs_are_trimmed_but_tail_survives(make_launcher: LauncherFactory) -> None:
    launcher = make_launcher(max_log_bytes=4096)

    async def body() -> None:
        worker = await launcher.launch(spec("w1", "--mode", "noise"))
        assert worker.stdout_path.stat().st_size > 4096
        worker.trim_logs(launcher.max_log_bytes)
        assert worker.stdout_path.stat().st_size == 0
        assert "starting up" in worker.stderr_tail()
        await launcher.close()

    run(body)


def test_cancelled_stop_still_kills_the_worker(make_launcher: LauncherFactory) -> None:
    launcher = make_launcher()

    async def body() -> None:
        worker = await launcher.launch(spec("w1", "--ignore-term"))
        stopping = asyncio.ensure_future(worker.stop(grace=30.0))
        # stop() has sent SIGTERM (which the stand-in ignores, saying so) and waits.
        for _ in range(1000):
            if "SIGTERM ignored" in worker.stderr_tail():
                break
            await asyncio.sleep(0.01)
        assert "SIGTERM ignored" in worker.stderr_tail()
        assert not stopping.done()
        stopping.cancel()
        with pytest.raises(asyncio.CancelledError):
            await stopping
        assert await asyncio.wait_for(worker.wait(), timeout=2.0) == -signal.SIGKILL
        await launcher.close()

    run(body)
