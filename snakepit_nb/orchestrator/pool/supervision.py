"""Supervision of the worker slots: start, watch, restart, give up, recycle, stop.

One-for-one, like an Erlang supervisor: only the calls on a dead worker fail (at once, with
:class:`WorkerCrashedError` naming the exit code or signal); the slot is restarted while the
others carry on. A slot restarting more than ``max_restarts`` times within ``restart_window``
seconds is given up: it goes to FAILED with its stderr tail, calls that need it get
:class:`WorkerFailedError`, and the kernel is never harmed.

Liveness is watched four ways: the launcher reports the process's exit the moment it happens;
the call channel breaking triggers a check; a ping every ``heartbeat_interval`` (plus the
worker's own Heartbeat calls) proves the worker's event loop still answers; and every cancel
sent to a worker must be confirmed within ``cancel_grace``. A worker silent for
``heartbeat_misses`` intervals (a busy loop holding its loop or the GIL, SIGSTOP), or still
running a call ``cancel_grace`` seconds after it was cancelled (a tool that ignores
cancellation), is SIGKILLed and replaced; the reason is in its calls' errors and its status.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from snakepit_nb._errors import ClosedError, StartupError
from snakepit_nb.orchestrator.launch.base import describe_exit
from snakepit_nb.orchestrator.pool.channel import describe_rpc_failure
from snakepit_nb.orchestrator.pool.connect import Connector, GrpcConnector
from snakepit_nb.orchestrator.pool.dispatch import Dispatcher
from snakepit_nb.orchestrator.pool.handle import CancelKey, WorkerGone, WorkerHandle, WorkerState
from snakepit_nb.protocol import auth

if TYPE_CHECKING:
    from snakepit_nb.orchestrator.config import Config
    from snakepit_nb.orchestrator.launch.base import LaunchedWorker, Launcher, WorkerSpec

__all__ = ["Supervisor"]

log = logging.getLogger("snakepit_nb.pool")

_BACKOFF_START = 0.05
_BACKOFF_MAX = 1.0


class Supervisor:
    """Owns the lifecycle of the pool's slots. Runs on the loop thread."""

    def __init__(
        self,
        config: Config,
        *,
        handles: Sequence[WorkerHandle],
        dispatcher: Dispatcher,
        launcher: Launcher,
        orchestrator_address: str,
        token: str | None,
        run_id: str,
        prepare: Callable[[WorkerHandle], Awaitable[None]],
        on_gone: Callable[[WorkerHandle], None],
        connector: Connector | None = None,
    ) -> None:
        self.config = config
        self.handles = list(handles)
        self._by_id = {h.worker_id: h for h in self.handles}
        self.dispatcher = dispatcher
        self.launcher = launcher
        self.orchestrator_address = orchestrator_address
        self.token = token
        self.metadata: tuple[tuple[str, str], ...] = auth.token_metadata(token) if token else ()
        self.connector: Connector = connector or GrpcConnector(
            metadata=self.metadata, max_message_bytes=config.max_message_bytes, token=token
        )
        self.run_id = run_id
        self._prepare = prepare
        self._on_gone = on_gone
        self._tasks: set[asyncio.Task[None]] = set()
        self._pings: dict[str, asyncio.Task[None]] = {}
        self._heartbeat_task: asyncio.Task[None] | None = None
        self.closing = False
        for handle in self.handles:
            handle.on_cancel = self._watch_cancel

    # ------------------------------------------------------------------ start

    async def start_all(self) -> None:
        """Start every slot concurrently; the first failure stops the rest and is raised."""
        results = await asyncio.gather(
            *(self._start_slot(h) for h in self.handles), return_exceptions=True
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            first = next((e for e in errors if isinstance(e, StartupError)), errors[0])
            raise first
        self._heartbeat_task = asyncio.create_task(
            self._heartbeat_loop(), name="snakepit-heartbeats"
        )

    async def _start_slot(self, handle: WorkerHandle) -> None:
        handle.new_incarnation()
        handle.state = WorkerState.STARTING
        await self._launch_and_connect(handle)

    def spec_for(self, handle: WorkerHandle) -> WorkerSpec:
        """The argv and environment of a worker, from the Config (the launch contract)."""
        from snakepit_nb.orchestrator.launch.base import TOKEN_ENV, WorkerSpec

        config = self.config
        if config.worker_command:
            # A foreign worker (e.g. the published grpc_server.py) knows only the published
            # spelling of the flags and of the adapter path.
            argv = [
                *config.worker_command,
                "--adapter",
                config.adapter.replace(":", "."),
                "--port",
                "0",
                "--elixir-address",
                self.orchestrator_address,
                "--snakepit-run-id",
                self.run_id,
            ]
        else:
            argv = [
                config.python,
                "-m",
                "snakepit_nb.worker",
                "--adapter",
                config.adapter,
                "--port",
                "0",
                "--orchestrator-address",
                self.orchestrator_address,
                "--snakepit-run-id",
                self.run_id,
            ]
        env = {
            "SNAKEPIT_NB_MAX_MESSAGE_BYTES": str(config.max_message_bytes),
            "SNAKEPIT_NB_HEARTBEAT_INTERVAL": repr(float(config.heartbeat_interval)),
            "SNAKEPIT_NB_HEARTBEAT_MISSES": str(config.heartbeat_misses),
            "SNAKEPIT_NB_WORKER_OUTPUT": config.worker_output,
            "SNAKEPIT_NB_OUTPUT_LINES": str(config.output_lines),
            **config.env,
        }
        if self.token:
            env[TOKEN_ENV] = self.token
        return WorkerSpec(
            worker_id=handle.worker_id,
            argv=argv,
            env=env,
            cwd=config.cwd,
            startup_timeout=config.startup_timeout,
        )

    async def _launch_and_connect(self, handle: WorkerHandle) -> None:
        started = time.monotonic()
        launched = await self.launcher.launch(self.spec_for(handle))
        handle.launched = launched
        handle.pid = launched.pid
        handle.address = launched.address
        try:
            remaining = max(1.0, self.config.startup_timeout - (time.monotonic() - started))
            await self.connector.connect(
                handle,
                launched,
                remaining,
                functools.partial(self.channel_broken, handle, handle.incarnation),
            )
            await self._prepare(handle)
        except BaseException as exc:
            launched.kill()
            await handle.close_connection()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(launched.wait(), 5.0)
            if isinstance(exc, StartupError | asyncio.CancelledError):
                raise
            tail = launched.stderr_tail()
            raise StartupError(
                f"worker {handle.worker_id} (pid {launched.pid}) started but did not answer "
                f"the pool: {exc}; its stderr ends with:\n{tail or '(empty)'}"
            ) from exc
        handle.ready_at = time.monotonic()
        handle.last_alive = handle.ready_at
        handle.state = WorkerState.READY
        self._spawn(self._watch_exit(handle, handle.incarnation, launched))
        log.info(
            "worker %s ready (pid %s, %s, %s)",
            handle.worker_id,
            handle.pid,
            handle.address,
            "foreign" if handle.foreign else "call channel",
        )
        self.dispatcher.pump()

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ exits

    async def _watch_exit(
        self, handle: WorkerHandle, incarnation: int, launched: LaunchedWorker
    ) -> None:
        code = await launched.wait()
        await self._process_exit(handle, incarnation, code)

    def channel_broken(self, handle: WorkerHandle, incarnation: int, exc: BaseException) -> None:
        """The call channel failed: usually the process died (its exit comes within ms)."""
        if self.closing or handle.incarnation != incarnation:
            return
        self._spawn(self._check_after_break(handle, incarnation, exc))

    async def _check_after_break(
        self, handle: WorkerHandle, incarnation: int, exc: BaseException
    ) -> None:
        launched = handle.launched
        if launched is None:
            return
        try:
            await asyncio.wait_for(launched.wait(), timeout=1.0)
        except TimeoutError:
            if handle.incarnation != incarnation or self.closing:
                return
            # Alive but its channel is gone: it cannot serve calls any more. Replace it.
            why = describe_rpc_failure(exc)
            handle.exit_reason = f"lost its call channel ({why}) and was killed"
            log.warning("worker %s: call channel broke (%s); replacing it", handle.worker_id, why)
            launched.kill()

    async def _process_exit(self, handle: WorkerHandle, incarnation: int, code: int) -> None:
        if handle.incarnation != incarnation or handle.state in (
            WorkerState.STOPPING,
            WorkerState.STOPPED,
        ):
            return
        if self.closing:
            return
        now = time.monotonic()
        window = self.config.restart_window
        times = handle.restart_times
        while times and times[0] < now - window:
            times.popleft()
        give_up = len(times) >= self.config.max_restarts
        how = handle.exit_reason or f"died with {describe_exit(code)}"
        if give_up:
            aftermath = (
                f"it restarted {len(times)} times within {window:g} s, so its slot was given up "
                "(see client.status())"
            )
        else:
            aftermath = "the pool is starting a replacement"
        tail = handle.launched.stderr_tail() if handle.launched is not None else ""
        handle.last_error = f"worker {handle.worker_id} {how}" + (
            f"; its stderr ends with:\n{tail}" if tail else ""
        )
        log.warning("worker %s (pid %s) %s; %s", handle.worker_id, handle.pid, how, aftermath)
        gone = WorkerGone(
            handle.worker_id, handle.pid, exit_code=code, how=how, aftermath=aftermath
        )
        handle.state = WorkerState.FAILED if give_up else WorkerState.RESTARTING
        handle.fail_in_flight(gone)
        self._on_gone(handle)
        await handle.close_connection()
        if give_up:
            self.dispatcher.fail_if_hopeless()
            return
        self._spawn(self._restart(handle))

    async def _restart(self, handle: WorkerHandle) -> None:
        backoff = _BACKOFF_START
        while not self.closing:
            handle.restart_times.append(time.monotonic())
            handle.restarts += 1
            handle.new_incarnation()
            handle.state = WorkerState.RESTARTING
            try:
                await self._launch_and_connect(handle)
                return
            except ClosedError:
                return  # the pool is closing (or was abandoned): nothing to restart
            except StartupError as exc:
                if self.closing:
                    return
                handle.last_error = str(exc)
                now = time.monotonic()
                times = handle.restart_times
                while times and times[0] < now - self.config.restart_window:
                    times.popleft()
                if len(times) >= self.config.max_restarts:
                    handle.state = WorkerState.FAILED
                    log.error(
                        "worker %s is crash-looping and was given up: %s", handle.worker_id, exc
                    )
                    self.dispatcher.worker_gone(handle)
                    self.dispatcher.fail_if_hopeless()
                    return
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)

    async def revive(self, handle: WorkerHandle) -> None:
        """Give a FAILED slot a fresh restart budget and start it once."""
        handle.restart_times.clear()
        handle.new_incarnation()
        handle.state = WorkerState.STARTING
        try:
            await self._launch_and_connect(handle)
        except BaseException as exc:
            handle.state = WorkerState.FAILED
            handle.last_error = str(exc)
            raise
        handle.last_error = ""

    # ------------------------------------------------------------------ heartbeats, recycling

    def record_heartbeat(self, worker_id: str) -> None:
        """A worker called Heartbeat on the orchestrator (CORE's server forwards it)."""
        handle = self._by_id.get(worker_id)
        if handle is not None:
            handle.last_heartbeat = time.monotonic()
            handle.last_alive = max(handle.last_alive, handle.last_heartbeat)

    async def _heartbeat_loop(self) -> None:
        interval = self.config.heartbeat_interval
        limit = interval * self.config.heartbeat_misses
        while not self.closing:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for handle in self.handles:
                if handle.state not in (WorkerState.READY, WorkerState.DRAINING):
                    continue
                ping = self._pings.get(handle.worker_id)
                if ping is None or ping.done():
                    self._pings[handle.worker_id] = asyncio.create_task(
                        self._ping(handle, handle.incarnation, limit)
                    )
                if now - handle.last_alive > limit and not handle.exit_reason:
                    self._kill_hung(handle, now - handle.last_alive)
                    continue
                self._check_recycle(handle, now)

    async def _ping(
        self,
        handle: WorkerHandle,
        incarnation: int,
        timeout: float,  # noqa: ASYNC109 - the RPC's deadline
    ) -> None:
        if await self.connector.ping(handle, timeout) and handle.incarnation == incarnation:
            handle.last_alive = time.monotonic()

    def _kill_hung(self, handle: WorkerHandle, silent_for: float) -> None:
        misses = self.config.heartbeat_misses
        interval = self.config.heartbeat_interval
        handle.exit_reason = (
            f"stopped answering heartbeats ({misses} missed at {interval:g} s intervals, silent "
            f"for {silent_for:.1f} s) and was killed"
        )
        log.warning("worker %s (pid %s) %s", handle.worker_id, handle.pid, handle.exit_reason)
        if handle.launched is not None:
            handle.launched.kill()

    def _watch_cancel(self, handle: WorkerHandle, call_id: CancelKey) -> None:
        asyncio.get_running_loop().call_later(
            self.config.cancel_grace, self._cancel_overdue, handle, handle.incarnation, call_id
        )

    def _cancel_overdue(self, handle: WorkerHandle, incarnation: int, call_id: CancelKey) -> None:
        """``cancel_grace`` after a cancel: a worker still running that call is replaced."""
        if self.closing or handle.incarnation != incarnation or handle.exit_reason:
            return
        pending = handle.cancels.get(call_id)
        if pending is None or handle.launched is None:
            return  # confirmed in time
        if handle.state not in (WorkerState.READY, WorkerState.DRAINING):
            return
        grace = self.config.cancel_grace
        handle.exit_reason = (
            f"did not stop call {pending[0]!r} within cancel_grace={grace:g} s after it was "
            "cancelled and was replaced"
        )
        log.warning("worker %s (pid %s) %s", handle.worker_id, handle.pid, handle.exit_reason)
        handle.launched.kill()

    def _check_recycle(self, handle: WorkerHandle, now: float) -> None:
        if handle.state is not WorkerState.READY or handle.launched is None:
            return
        config = self.config
        if config.recycle_after_seconds is not None:
            age = now - handle.ready_at
            if age >= config.recycle_after_seconds:
                self.recycle(handle, f"reached its maximum age ({age:.0f} s)")
                return
        if config.recycle_above_rss is not None:
            rss = handle.launched.rss()
            if rss is not None and rss > config.recycle_above_rss:
                self.recycle(
                    handle,
                    f"uses {rss / 2**20:.0f} MiB of memory, above recycle_above_rss="
                    f"{config.recycle_above_rss / 2**20:.0f} MiB",
                )

    def after_call(self, handle: WorkerHandle) -> None:
        limit = self.config.recycle_after_calls
        if limit is not None and handle.calls >= limit and handle.state is WorkerState.READY:
            self.recycle(handle, f"served {handle.calls} calls")

    def recycle(self, handle: WorkerHandle, reason: str) -> None:
        """Replace a worker gracefully: no new calls, wait for its calls, stop, start anew."""
        if handle.state is not WorkerState.READY or self.closing:
            return
        log.info("recycling worker %s: %s", handle.worker_id, reason)
        handle.state = WorkerState.DRAINING
        handle.recycle_requested = reason
        self.dispatcher.worker_gone(handle)
        self._spawn(self._drain_and_replace(handle, reason))

    async def _drain_and_replace(self, handle: WorkerHandle, reason: str) -> None:
        incarnation = handle.incarnation
        drained = asyncio.Event()
        handle.drained = drained
        if handle.in_flight > 0:
            await drained.wait()
        handle.drained = None
        if (
            self.closing
            or handle.incarnation != incarnation
            or handle.state is not WorkerState.DRAINING
        ):
            return  # it crashed while draining: the crash path restarts it
        handle.state = WorkerState.STOPPING
        gone = WorkerGone(
            handle.worker_id,
            handle.pid,
            exit_code=None,
            how=f"was recycled ({reason})",
            aftermath="the pool started a replacement",
        )
        handle.fail_in_flight(gone)
        self._on_gone(handle)
        await handle.close_connection()
        if handle.launched is not None:
            await handle.launched.stop(self._grace())
        handle.new_incarnation()
        handle.state = WorkerState.STARTING
        try:
            await self._launch_and_connect(handle)
        except StartupError as exc:
            handle.last_error = str(exc)
            self._spawn(self._restart(handle))

    # ------------------------------------------------------------------ reload

    async def reload(self) -> list[str]:
        """Replace the ready workers one at a time with fresh processes; returns their ids.

        Each one first stops taking calls and finishes those it runs (new calls go to the
        others, or wait for its replacement), then stops; its replacement imports the adapter
        and its modules anew and gets the cell-defined tools. A replacement that cannot start
        (an edit broke the adapter) stops the reload with its error: the slots not reached yet
        keep serving with their old code, and the failed one keeps restarting as after a crash.
        """
        replaced: list[str] = []
        for handle in self.handles:
            if self.closing:
                break
            if handle.state is not WorkerState.READY:
                continue  # starting, restarting or given up: it starts fresh anyway
            log.info("reloading worker %s", handle.worker_id)
            handle.state = WorkerState.DRAINING
            handle.recycle_requested = "reload"
            self.dispatcher.worker_gone(handle)
            await self._drain_and_replace(handle, "reloaded")
            if handle.state is not WorkerState.READY:
                raise StartupError(
                    f"worker {handle.worker_id} did not start again after the reload: "
                    f"{handle.last_error or handle.state.value}; fix the adapter and reload "
                    f"again (workers reloaded before it: {', '.join(replaced) or 'none'})"
                )
            replaced.append(handle.worker_id)
        return replaced

    # ------------------------------------------------------------------ stop

    def _grace(self) -> float:
        return float(getattr(self.launcher, "stop_grace", 2.0))

    async def close(self, *, grace: float | None = None) -> None:
        """Stop every worker (graceful, then SIGKILL after ``grace`` s, default the
        launcher's); calls still running fail ClosedError."""
        self.closing = True
        tasks = [t for t in (self._heartbeat_task, *self._pings.values()) if t is not None]
        tasks += list(self._tasks)
        for task in tasks:
            task.cancel()
        closed = ClosedError("the pool was closed; start a new one with sp.start()")
        self.dispatcher.close(closed)
        stops = []
        for handle in self.handles:
            previous = handle.state
            handle.state = WorkerState.STOPPING
            handle.fail_in_flight(
                WorkerGone(
                    handle.worker_id, handle.pid, exit_code=None, how="", aftermath="", closed=True
                )
            )
            if previous is not WorkerState.STOPPED:
                stops.append(self._stop_handle(handle, self._grace() if grace is None else grace))
        await asyncio.gather(*stops, return_exceptions=True)
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        await self.launcher.close()

    async def _stop_handle(self, handle: WorkerHandle, grace: float) -> None:
        try:
            await handle.close_connection()
            if handle.launched is not None:
                await handle.launched.stop(grace)
        finally:
            handle.state = WorkerState.STOPPED

    def handle(self, worker_id: str) -> WorkerHandle | None:
        return self._by_id.get(worker_id)


def kernel_pid() -> int:
    return os.getpid()
