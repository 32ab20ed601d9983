"""Supervisor: start, crash and restart, restart intensity, hang detection, recycling, stop.

The supervisor is driven through its seams: a launcher whose "processes" are futures the test
ends, and a connector that answers pings as the test says. No process or socket is involved.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
from pool_fakes import until

from snakepit_nb._errors import ClosedError, StartupError, WorkerCrashedError
from snakepit_nb.orchestrator.config import Config
from snakepit_nb.orchestrator.launch.base import WorkerSpec
from snakepit_nb.orchestrator.pool.dispatch import Dispatcher
from snakepit_nb.orchestrator.pool.handle import WorkerGone, WorkerHandle, WorkerState
from snakepit_nb.orchestrator.pool.supervision import Supervisor

T = TypeVar("T")


def run(body: Callable[[], Awaitable[T]], timeout: float = 20) -> T:
    return asyncio.run(asyncio.wait_for(body(), timeout))  # type: ignore[arg-type]


class FakeProcess:
    """A 'started worker' that ends when the test (or kill/stop) says so."""

    def __init__(self, spec: WorkerSpec, pid: int) -> None:
        self.worker_id = spec.worker_id
        self.pid: int | None = pid
        self.address = f"fake:{pid}"
        self.started_at = time.time()
        self.spec = spec
        self._exit: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.killed = False
        self.stopped = False

    def end(self, code: int) -> None:
        if not self._exit.done():
            self._exit.set_result(code)

    def is_alive(self) -> bool:
        return not self._exit.done()

    async def wait(self) -> int:
        return await asyncio.shield(self._exit)

    def returncode(self) -> int | None:
        return self._exit.result() if self._exit.done() else None

    async def stop(self, grace: float = 2.0) -> int:
        self.stopped = True
        self.end(0)
        return await self.wait()

    def kill(self) -> None:
        self.killed = True
        self.end(-9)

    def stderr_tail(self, lines: int = 40) -> str:
        return f"stderr of {self.worker_id}"

    def rss(self) -> int | None:
        return 10 * 2**20


class FakeLauncher:
    def __init__(self) -> None:
        self.started: list[FakeProcess] = []
        self.fail_next = 0
        self.closed = False
        self.stop_grace = 0.1

    async def launch(self, spec: WorkerSpec) -> FakeProcess:
        if self.fail_next:
            self.fail_next -= 1
            raise StartupError(f"worker {spec.worker_id} could not start: ImportError")
        process = FakeProcess(spec, pid=1000 + len(self.started))
        self.started.append(process)
        return process

    async def close(self) -> None:
        self.closed = True

    def live(self, worker_id: str) -> FakeProcess:
        return next(p for p in reversed(self.started) if p.worker_id == worker_id)


class FakeConnector:
    def __init__(self) -> None:
        self.answers = True

    async def connect(
        self,
        handle: WorkerHandle,
        launched: Any,
        timeout: float,  # noqa: ASYNC109 - the Connector contract
        on_broken: Any,
    ) -> None:
        handle.tools = {}

    async def ping(self, handle: WorkerHandle, timeout: float) -> bool:  # noqa: ASYNC109
        return self.answers


class Rig:
    def __init__(self, **settings: Any) -> None:
        settings.setdefault("workers", 2)
        settings.setdefault("heartbeat_interval", 60.0)
        self.config = Config(**settings)
        self.handles = [WorkerHandle(f"w{i + 1}", capacity=1) for i in range(self.config.workers)]
        self.dispatcher = Dispatcher(self.handles, max_queue=10)
        self.launcher = FakeLauncher()
        self.connector = FakeConnector()
        self.prepared: list[str] = []
        self.gone: list[str] = []

        async def prepare(handle: WorkerHandle) -> None:
            self.prepared.append(handle.worker_id)

        self.supervisor = Supervisor(
            self.config,
            handles=self.handles,
            dispatcher=self.dispatcher,
            launcher=self.launcher,  # type: ignore[arg-type]
            orchestrator_address="unix:/nowhere",
            token="t0ken",
            run_id="sp-test",
            prepare=prepare,
            on_gone=lambda h: self.gone.append(h.worker_id),
            connector=self.connector,
        )

    def handle(self, worker_id: str) -> WorkerHandle:
        return next(h for h in self.handles if h.worker_id == worker_id)


def test_start_all_brings_every_slot_up_with_the_launch_contract() -> None:
    async def body() -> Rig:
        rig = Rig()
        await rig.supervisor.start_all()
        await rig.supervisor.close()
        return rig

    rig = run(body)
    assert rig.prepared == ["w1", "w2"]
    spec = rig.launcher.started[0].spec
    assert "--orchestrator-address" in spec.argv
    assert "unix:/nowhere" in spec.argv
    assert "t0ken" not in " ".join(spec.argv)  # the token travels in the environment only
    assert spec.env["SNAKEPIT_NB_TOKEN"] == "t0ken"
    assert all(p.stopped for p in rig.launcher.started)
    assert rig.launcher.closed


def test_a_crash_fails_only_that_workers_calls_and_the_slot_restarts() -> None:
    async def body() -> tuple[Rig, list[BaseException]]:
        rig = Rig()
        await rig.supervisor.start_all()
        w1 = rig.handle("w1")
        failures: list[BaseException] = []
        w1.add_op(failures.append)
        rig.handle("w2").add_op(failures.append)
        first_pid = w1.pid
        rig.launcher.live("w1").end(-11)
        await until(lambda: w1.state is WorkerState.READY and w1.pid != first_pid)
        before_close = list(failures)
        await rig.supervisor.close()
        return rig, before_close

    rig, failures = run(body)
    assert len(failures) == 1  # w2's operation was not touched
    gone = failures[0]
    assert isinstance(gone, WorkerGone)
    error = gone.error_for("add")
    assert isinstance(error, WorkerCrashedError)
    assert "died with SIGSEGV while running 'add'" in str(error)
    assert rig.handle("w1").restarts == 1
    assert rig.handle("w2").restarts == 0
    assert rig.gone == ["w1"]


def test_a_slot_crashing_faster_than_the_restart_window_allows_is_given_up() -> None:
    async def body() -> Rig:
        rig = Rig(workers=1, max_restarts=2, restart_window=60.0)
        await rig.supervisor.start_all()
        w1 = rig.handle("w1")
        for _ in range(3):
            await until(lambda: w1.state in (WorkerState.READY, WorkerState.FAILED))
            if w1.state is WorkerState.FAILED:
                break
            rig.launcher.live("w1").end(1)
            await until(lambda: w1.state is not WorkerState.READY or w1.launched.is_alive())
        await until(lambda: w1.state is WorkerState.FAILED)
        await rig.supervisor.close()
        return rig

    rig = run(body)
    w1 = rig.handle("w1")
    assert w1.restarts == 2
    assert "died with exit code 1" in w1.last_error
    assert "stderr of w1" in w1.last_error


def test_a_restart_that_cannot_start_is_retried_and_then_given_up() -> None:
    async def body() -> Rig:
        rig = Rig(workers=1, max_restarts=2, restart_window=60.0)
        await rig.supervisor.start_all()
        rig.launcher.fail_next = 10
        rig.launcher.live("w1").end(1)
        await until(lambda: rig.handle("w1").state is WorkerState.FAILED)
        await rig.supervisor.close()
        return rig

    rig = run(body)
    assert "ImportError" in rig.handle("w1").last_error


def test_a_worker_that_stops_answering_pings_is_killed_and_replaced() -> None:
    async def body() -> tuple[Rig, FakeProcess]:
        rig = Rig(workers=1, heartbeat_interval=0.02, heartbeat_misses=3)
        await rig.supervisor.start_all()
        hung = rig.launcher.live("w1")
        rig.connector.answers = False
        await until(lambda: hung.killed)
        rig.connector.answers = True
        w1 = rig.handle("w1")
        await until(lambda: w1.state is WorkerState.READY and w1.launched is not hung)
        await rig.supervisor.close()
        return rig, hung

    rig, hung = run(body)
    assert hung.killed
    assert "stopped answering heartbeats (3 missed" in rig.handle("w1").last_error


def test_recycling_waits_for_the_calls_in_flight_then_replaces_the_worker() -> None:
    async def body() -> tuple[Rig, FakeProcess, list[str]]:
        rig = Rig(workers=1)
        await rig.supervisor.start_all()
        w1 = rig.handle("w1")
        old = rig.launcher.live("w1")
        w1.take_slot(False)  # a call is running
        rig.supervisor.recycle(w1, "served 100 calls")
        seen = [w1.state.value]
        await asyncio.sleep(0.05)
        seen.append(w1.state.value)  # still draining: the call has not finished
        w1.free_slot(False)
        assert w1.drained is not None
        w1.drained.set()
        await until(lambda: w1.state is WorkerState.READY and w1.launched is not old)
        await rig.supervisor.close()
        return rig, old, seen

    _, old, seen = run(body)
    assert seen == ["draining", "draining"]
    assert old.stopped


def test_after_close_a_call_still_running_learns_that_the_pool_was_closed() -> None:
    async def body() -> BaseException:
        rig = Rig(workers=1)
        await rig.supervisor.start_all()
        failures: list[BaseException] = []
        rig.handle("w1").add_op(failures.append)
        await rig.supervisor.close()
        (gone,) = failures
        assert isinstance(gone, WorkerGone)
        return gone.error_for("slow")

    error = run(body)
    assert isinstance(error, ClosedError)
    assert "'slow'" in str(error)


def test_start_all_raises_the_first_startup_error() -> None:
    async def body() -> None:
        rig = Rig(workers=2)
        rig.launcher.fail_next = 1
        with pytest.raises(StartupError, match="ImportError"):
            await rig.supervisor.start_all()
        await rig.supervisor.close()

    run(body)


def test_a_worker_that_does_not_confirm_a_cancel_within_cancel_grace_is_replaced() -> None:
    async def body() -> tuple[Rig, FakeProcess, list[BaseException]]:
        rig = Rig(workers=2, cancel_grace=0.05)
        await rig.supervisor.start_all()
        w1 = rig.handle("w1")
        first = rig.launcher.live("w1")
        failures: list[BaseException] = []
        w1.add_op(failures.append)  # another call running on w1 when it is replaced
        w1.cancel_sent(7, "sleep_sync")
        assert not w1.has_slot(False)  # takes no new calls meanwhile
        rig.handle("w2").cancel_sent(8, "slow")
        rig.handle("w2").cancel_confirmed(8, rig.handle("w2").incarnation)  # confirmed in time
        await until(lambda: w1.state is WorkerState.READY and w1.pid != first.pid)
        await rig.supervisor.close()
        return rig, first, failures

    rig, first, failures = run(body)
    assert first.killed
    assert rig.launcher.live("w2").pid == 1001  # never replaced
    assert rig.handle("w2").restarts == 0
    reason = (
        "did not stop call 'sleep_sync' within cancel_grace=0.05 s after it was cancelled "
        "and was replaced"
    )
    assert reason in rig.handle("w1").last_error
    assert len(failures) == 1
    assert reason in str(failures[0])


def test_a_cancel_confirmed_by_an_old_incarnation_does_not_touch_the_new_one() -> None:
    async def body() -> WorkerHandle:
        handle = WorkerHandle("w1", capacity=1)
        old = handle.cancel_sent(3, "slow")
        handle.new_incarnation()
        handle.cancel_sent(3, "other")  # the new channel reuses call id 3
        handle.cancel_confirmed(3, old)
        return handle

    handle = run(body)
    assert handle.unconfirmed_cancels == 1
    stuck = handle.stuck_call()
    assert stuck is not None
    assert stuck[0] == "other"
