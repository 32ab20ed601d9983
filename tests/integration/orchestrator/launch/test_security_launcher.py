"""Launcher-side security (reliability.md T14, T15): the token never reaches argv, workers
listen on loopback only, and the run dir and its unix sockets are private."""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from launcher_standin import is_loopback, processes_with_marker, standin_argv

from snakepit_nb.orchestrator.launch.base import WorkerSpec
from snakepit_nb.orchestrator.launch.local import LocalProcessLauncher, LocalWorker
from snakepit_nb.orchestrator.launch.registry import ProcessRegistry

pytestmark = pytest.mark.integration

TOKEN = "tok-" + "x7Q2" * 10


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[LocalProcessLauncher]:
    made = LocalProcessLauncher(registry=ProcessRegistry(tmp_path / "registry"))
    yield made
    for pid in processes_with_marker(made.run_id):
        os.kill(pid, 9)


def _launch_two(launcher: LocalProcessLauncher, check: object) -> None:
    async def body() -> None:
        workers = await asyncio.gather(
            *(
                launcher.launch(WorkerSpec(f"w{i}", standin_argv(), {"SNAKEPIT_NB_TOKEN": TOKEN}))
                for i in range(2)
            )
        )
        try:
            for worker in workers:
                assert callable(check)
                check(worker)
        finally:
            await launcher.close()

    asyncio.run(body())


def test_token_travels_in_the_environment_never_in_argv(launcher: LocalProcessLauncher) -> None:
    def check(worker: LocalWorker) -> None:
        cmdline = Path(f"/proc/{worker.pid}/cmdline").read_bytes()
        assert TOKEN.encode() not in cmdline
        environ_file = Path(f"/proc/{worker.pid}/environ")
        assert f"SNAKEPIT_NB_TOKEN={TOKEN}".encode() in environ_file.read_bytes().split(b"\0")
        # /proc/<pid>/environ, unlike cmdline, is readable only by the owner.
        assert stat.S_IMODE(environ_file.stat().st_mode) & 0o077 == 0

    _launch_two(launcher, check)


def test_workers_listen_on_loopback_only(launcher: LocalProcessLauncher) -> None:
    def check(worker: LocalWorker) -> None:
        listening = [
            c
            for c in psutil.Process(worker.pid).net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN
        ]
        assert listening, "the worker listens on nothing"
        assert all(is_loopback(c.laddr.ip) for c in listening), listening
        assert worker.address == f"127.0.0.1:{listening[0].laddr.port}"

    _launch_two(launcher, check)


def test_run_dir_and_logs_are_private(launcher: LocalProcessLauncher) -> None:
    def check(worker: LocalWorker) -> None:
        assert stat.S_IMODE(launcher.run_dir.stat().st_mode) == 0o700
        for path in (worker.stdout_path, worker.stderr_path):
            assert path.parent == launcher.run_dir
            assert stat.S_IMODE(path.stat().st_mode) == 0o600

    _launch_two(launcher, check)
