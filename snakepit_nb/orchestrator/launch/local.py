"""The local process launcher: workers as processes on this machine.

:class:`LocalProcessLauncher` is the implementation for one machine. What it guarantees:

* workers are spawned with ``subprocess`` (fork+exec, never ``preexec_fn``, which is unsafe in
  a threaded kernel) from the event-loop thread, which lives as long as the orchestrator:
  ``PR_SET_PDEATHSIG``, which the worker arms, fires when the *thread* that forked it ends;
* each worker gets its own session and process group (``start_new_session=True``), so the
  notebook's Interrupt (SIGINT to the kernel's group) does not reach it, and stopping it can
  signal its tools' subprocesses too;
* stdin is ``/dev/null``; stdout and stderr go to files in a private ``0700`` run dir (noise on
  stdout is harmless; the stderr tail goes into start-up and crash errors);
* the environment carries the token (never argv: ``/proc/<pid>/cmdline`` is world-readable),
  the ready-file path, the parent pid, the worker id, the ``SNAKEPIT_NB_POOL`` run marker and
  the ``SNAKEPIT_NB_LAUNCH`` launch marker (what the worker's guardian and the sweep look for in
  the processes its tools start);
* a row goes into the :mod:`process registry <snakepit_nb.orchestrator.launch.registry>`
  before spawning; the first launch sweeps rows that dead kernels left; at interpreter exit,
  after the runtimes have closed (``snakepit_nb._loop.at_exit``), the workers still running
  are stopped as a backup: SIGTERM, SIGKILL after a short grace;
* every exit is reaped at once (no zombies), and whatever is left in the worker's process group
  is killed then, as are the processes that left the group (a tool's ``setsid`` daemon) when the
  stop was asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import Literal

import psutil

from snakepit_nb._errors import ClosedError, ConfigurationError, StartupError
from snakepit_nb._loop import EXIT_STOP_PROCESSES, at_exit
from snakepit_nb.orchestrator.launch.base import (
    LANE_DIR_ENV,
    LAUNCH_ENV,
    PARENT_PID_ENV,
    READY_FILE_ENV,
    SOCKET_DIR_ENV,
    TOKEN_ENV,
    WORKER_ID_ENV,
    LaunchedWorker,
    Launcher,
    WorkerSpec,
    describe_exit,
    local_placement,
    parse_ready_address,
)
from snakepit_nb.orchestrator.launch.registry import (
    MARKER_ENV,
    RUN_DIR_MARKER,
    ProcessRegistry,
    RegistryRow,
    SweepReport,
    check_id,
    process_start_time,
)

__all__ = ["LocalProcessLauncher", "LocalWorker"]

log = logging.getLogger(__name__)

_TAIL_BYTES = 64 * 1024
# Published workers before v0.8.1 announced readiness on stdout instead of a ready file.
_LEGACY_READY = re.compile(rb"GRPC_READY:(\d{1,5})\s")


class LocalWorker(LaunchedWorker):
    """A worker process on this machine, started by :class:`LocalProcessLauncher`."""

    def __init__(
        self,
        *,
        launcher: LocalProcessLauncher,
        worker_id: str,
        popen: subprocess.Popen[bytes],
        row: RegistryRow,
        stdout_path: Path,
        stderr_path: Path,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.worker_id = worker_id
        self.pid: int | None = popen.pid
        self.pgid = popen.pid  # start_new_session: the worker leads its own group
        self.address = ""
        self.started_at = time.time()
        self.placement = local_placement()
        self.stdout_path = stdout_path
        self.stderr_path = stderr_path
        self._launcher = launcher
        self._popen = popen
        self._row = row
        self._loop = loop
        self._exit: asyncio.Future[int] = loop.create_future()
        self._tail_cache: bytes | None = None
        self._trimmed_tail = b""  # stderr history kept in memory when the log file is trimmed
        self._finished = threading.Lock()
        self._arm_reaper()

    def __repr__(self) -> str:
        state = "alive" if self.is_alive() else describe_exit(self.returncode())
        return f"<LocalWorker {self.worker_id} pid={self.pid} {self.address or '-'} {state}>"

    # ---- reaping ------------------------------------------------------------------------

    def _arm_reaper(self) -> None:
        # A pidfd becomes readable when the process exits, while its zombie still holds the
        # pid: the process group can be cleaned up safely before we reap.
        try:
            pidfd = os.pidfd_open(self._popen.pid)
        except (AttributeError, OSError):
            threading.Thread(
                target=self._wait_in_thread, name=f"snakepit-reaper-{self.worker_id}", daemon=True
            ).start()
            return

        def on_readable() -> None:
            self._loop.remove_reader(pidfd)
            os.close(pidfd)
            self._finish()

        self._loop.add_reader(pidfd, on_readable)

    def _wait_in_thread(self) -> None:
        with contextlib.suppress(ChildProcessError):
            # WNOWAIT leaves the zombie in place, like the pidfd path.
            os.waitid(os.P_PID, self._popen.pid, os.WEXITED | os.WNOWAIT)
        with contextlib.suppress(RuntimeError):  # the loop is closed: atexit reaps
            self._loop.call_soon_threadsafe(self._finish)

    def _finish(self) -> None:
        """The process has exited: kill what is left in its group, reap, report."""
        if not self._finished.acquire(blocking=False):
            return
        self._kill_group(signal.SIGKILL)
        code = self._popen.wait()
        self._tail_cache = self._stderr_bytes()
        for path in (self.stdout_path, self.stderr_path):
            with contextlib.suppress(OSError):
                path.unlink()
        self._launcher._forget(self)
        if not self._exit.done():
            self._exit.set_result(code)
        log.debug(
            "worker %s (pid %s) exited with %s", self.worker_id, self.pid, describe_exit(code)
        )

    def _kill_group(self, sig: signal.Signals) -> None:
        if self.pgid == os.getpgrp():  # never our own group (cannot happen with setsid)
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pgid, sig)

    # ---- the LaunchedWorker interface ---------------------------------------------------

    def is_alive(self) -> bool:
        if self._exit.done() or self._popen.returncode is not None:
            return False
        return self._exited_unreaped() is False

    def _exited_unreaped(self) -> bool | None:
        """Has the process exited? Asked without reaping it (None: already reaped)."""
        try:
            # WNOHANG|WNOWAIT: asks without reaping, so the reaper still sees the exit.
            result = os.waitid(os.P_PID, self._popen.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return None
        return result is not None

    async def wait(self) -> int:
        return await asyncio.shield(self._exit)

    def returncode(self) -> int | None:
        return self._exit.result() if self._exit.done() else None

    async def stop(self, grace: float = 2.0) -> int:
        if self._exit.done():
            return self._exit.result()
        escaped = self._descendants()
        self._kill_group(signal.SIGTERM)
        try:
            try:
                code = await asyncio.wait_for(asyncio.shield(self._exit), timeout=grace)
            except TimeoutError:
                log.info(
                    "worker %s ignored SIGTERM for %.1f s; sending SIGKILL", self.worker_id, grace
                )
                self._kill_group(signal.SIGKILL)
                code = await asyncio.shield(self._exit)
        except asyncio.CancelledError:
            # Whoever asked for the stop stopped waiting; the worker must still go.
            self._kill_group(signal.SIGKILL)
            _kill_escaped(escaped)
            raise
        _kill_escaped(escaped)
        return code

    def kill(self) -> None:
        if not self._exit.done():
            self._kill_group(signal.SIGKILL)

    def stderr_tail(self, lines: int = 40) -> str:
        data = self._tail_cache if self._tail_cache is not None else self._stderr_bytes()
        text = data.decode("utf-8", errors="replace").rstrip("\n")
        return "\n".join(text.splitlines()[-lines:]) if lines > 0 else ""

    def rss(self) -> int | None:
        if not self.is_alive() or self.pid is None:
            return None
        try:
            return int(psutil.Process(self.pid).memory_info().rss)
        except psutil.Error:
            return None

    # ---- helpers ------------------------------------------------------------------------

    def _stderr_bytes(self) -> bytes:
        return (self._trimmed_tail + _read_tail(self.stderr_path))[-_TAIL_BYTES:]

    def trim_logs(self, max_bytes: int) -> None:
        """Keep a chatty worker's log files from growing without bound (they may be in RAM).

        The files are opened O_APPEND by the worker, so truncating them here is safe; the last
        64 KiB of stderr are kept in memory for ``stderr_tail``.
        """
        for path in (self.stdout_path, self.stderr_path):
            try:
                if path.stat().st_size <= max_bytes:
                    continue
                if path == self.stderr_path:
                    self._trimmed_tail = self._stderr_bytes()
                os.truncate(path, 0)
            except OSError:
                continue

    def _descendants(self) -> list[psutil.Process]:
        """Children that may have left the group (setsid); killed after the worker stops."""
        try:
            return [
                p
                for p in psutil.Process(self._popen.pid).children(recursive=True)
                if _safe_pgid(p.pid) != self.pgid
            ]
        except psutil.Error:
            return []

    def _stop_now_blocking(self, deadline: float) -> None:
        """atexit path: no event loop; signal, wait until ``deadline``, SIGKILL, reap."""
        if not self._finished.acquire(blocking=False):
            return  # the loop thread is reaping it right now
        if self._popen.returncode is None:
            self._kill_group(signal.SIGTERM)
        # Poll without reaping: the zombie keeps the process group id ours until we SIGKILL
        # whatever is left in the group (a tool's subprocess) below.
        while self._exited_unreaped() is False and time.monotonic() < deadline:
            time.sleep(0.01)
        self._kill_group(signal.SIGKILL)
        code: int | None = None
        with contextlib.suppress(subprocess.TimeoutExpired):
            code = self._popen.wait(timeout=1.0)
        self._launcher.registry.remove(self._row)
        if code is not None:
            # Someone may still await this worker on the loop (a close that ran out of time).
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._report_exit, code)

    def _report_exit(self, code: int) -> None:
        if not self._exit.done():
            self._exit.set_result(code)


def _safe_pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def _kill_escaped(procs: list[psutil.Process]) -> None:
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            if proc.is_running():  # also checks the create time: never a reused pid
                proc.kill()


def _read_tail(path: Path) -> bytes:
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, size - _TAIL_BYTES))
            return fh.read()
    except OSError:
        return b""


def _indent_tail(tail: str) -> str:
    if not tail.strip():
        return " (its stderr is empty)"
    return ":\n" + "\n".join(f"    {line}" for line in tail.splitlines())


_live_launchers: weakref.WeakSet[LocalProcessLauncher] = weakref.WeakSet()
_EXIT_GRACE = 0.5


def _stop_all_at_exit() -> None:
    """Backup for a process that exits without closing its pool: stop our workers.

    Runs after the runtimes' own close (which goes through the loop and the call channels);
    what is left here is a launcher used on its own, or a close that did not finish.
    """
    for launcher in list(_live_launchers):
        try:
            launcher.stop_all_blocking(grace=_EXIT_GRACE)
        except Exception:  # one failure must not keep the others running
            log.exception("could not stop the workers of run %s at exit", launcher.run_id)


at_exit(_stop_all_at_exit, order=EXIT_STOP_PROCESSES)


class LocalProcessLauncher(Launcher):
    """Starts workers as local processes; see the module docstring for the guarantees.

    >>> launcher = LocalProcessLauncher(run_id="nb-1a2b")
    >>> worker = await launcher.launch(WorkerSpec("w1", [sys.executable, "-m",
    ...     "snakepit_nb.worker", "--port", "0", ...], env={"SNAKEPIT_NB_TOKEN": token}))
    >>> worker.address
    '127.0.0.1:40123'
    >>> await launcher.close()

    ``transport="unix"`` passes ``SNAKEPIT_NB_SOCKET_DIR`` (the private run dir), so our
    workers bind a unix socket there instead of a TCP port. ``sweep=False`` skips the start-up
    sweep of stale registry rows.
    """

    def __init__(
        self,
        *,
        run_id: str | None = None,
        transport: Literal["tcp", "unix"] = "tcp",
        registry: ProcessRegistry | None = None,
        sweep: bool = True,
        sweep_grace: float = 2.0,
        stop_grace: float = 2.0,
        max_log_bytes: int = 8 * 1024 * 1024,
    ) -> None:
        if transport not in ("tcp", "unix"):
            raise ConfigurationError(f"transport must be 'tcp' or 'unix', not {transport!r}")
        self.run_id = check_id(run_id or f"run-{os.getpid()}-{os.urandom(4).hex()}", "run id")
        self.transport = transport
        self.registry = registry if registry is not None else ProcessRegistry()
        self.stop_grace = stop_grace
        self.max_log_bytes = max_log_bytes
        self._trimmer: asyncio.Task[None] | None = None
        self.sweep_report: SweepReport | None = None
        self._sweep = sweep
        self._sweep_grace = sweep_grace
        self._sweep_lock = asyncio.Lock()
        self._swept = False
        self._run_dir: Path | None = None
        self._workers: set[LocalWorker] = set()
        self._seq = 0
        self._closed = False

    @property
    def run_dir(self) -> Path:
        """The private (0700) directory for ready files, logs and unix sockets."""
        if self._run_dir is None:
            # Short, so unix socket paths stay under the ~107-byte sun_path limit.
            path = Path(tempfile.mkdtemp(prefix="snb-"))  # mkdtemp creates it 0700
            (path / RUN_DIR_MARKER).write_text(self.run_id)
            self._run_dir = path
        return self._run_dir

    def workers(self) -> list[LocalWorker]:
        """Workers started by this launcher that have not been reaped yet."""
        return list(self._workers)

    async def sweep_once(self) -> SweepReport | None:
        """Sweep stale registry rows once per launcher (the first launch does it)."""
        async with self._sweep_lock:
            if self._swept or not self._sweep:
                return self.sweep_report
            try:
                self.sweep_report = await asyncio.to_thread(
                    self.registry.sweep, grace=self._sweep_grace, exclude_run_ids={self.run_id}
                )
            except OSError as exc:
                log.warning(
                    "could not sweep the process registry %s: %s", self.registry.directory, exc
                )
            self._swept = True
            return self.sweep_report

    async def launch(self, spec: WorkerSpec) -> LocalWorker:
        if self._closed:
            raise ClosedError("this launcher was closed; start a new pool with sp.start()")
        check_id(spec.worker_id, "worker id")
        if not spec.argv:
            raise ConfigurationError(f"worker {spec.worker_id} has an empty command line")
        if spec.startup_timeout <= 0:
            raise ConfigurationError("startup_timeout must be a positive number of seconds")
        token = spec.env.get(TOKEN_ENV)
        if token and any(token in arg for arg in spec.argv):
            raise ConfigurationError(
                "the runtime token appears on the worker's command line, which any local user "
                f"can read in /proc; pass it only through the {TOKEN_ENV} environment variable"
            )
        await self.sweep_once()
        loop = asyncio.get_running_loop()
        run_dir = self.run_dir
        self._seq += 1
        stem = f"{spec.worker_id}.{self._seq}"
        ready_path = run_dir / f"{stem}.ready"
        stdout_path = run_dir / f"{stem}.out"
        stderr_path = run_dir / f"{stem}.err"
        env = dict(os.environ)
        env.update(spec.env)
        env[READY_FILE_ENV] = str(ready_path)
        env[PARENT_PID_ENV] = str(os.getpid())
        env[WORKER_ID_ENV] = spec.worker_id
        env[MARKER_ENV] = self.run_id
        if spec.env.get(LANE_DIR_ENV) != "":  # env={LANE_DIR_ENV: ""}: every call over gRPC
            env[LANE_DIR_ENV] = str(run_dir)
        if self.transport == "unix":
            env[SOCKET_DIR_ENV] = str(run_dir)
        elif SOCKET_DIR_ENV not in spec.env:
            env.pop(SOCKET_DIR_ENV, None)  # inherited from our own environment: not for it

        row = self.registry.reserve(
            run_id=self.run_id, worker_id=spec.worker_id, run_dir=str(run_dir)
        )
        env[LAUNCH_ENV] = row.launch_marker
        try:
            popen = self._spawn(spec, env, stdout_path, stderr_path)
        except OSError as exc:
            self.registry.remove(row)
            raise StartupError(
                f"could not start worker {spec.worker_id}: {exc}; check that the command "
                f"{spec.argv[0]!r} exists and is executable"
            ) from exc
        row = self.registry.activate(
            row,
            pid=popen.pid,
            pgid=popen.pid,
            start_time=process_start_time(popen.pid) or time.time(),
        )
        worker = LocalWorker(
            launcher=self,
            worker_id=spec.worker_id,
            popen=popen,
            row=row,
            stdout_path=stdout_path,
            stderr_path=stderr_path,
            loop=loop,
        )
        self._workers.add(worker)
        _live_launchers.add(self)
        if self._trimmer is None or self._trimmer.done():
            self._trimmer = loop.create_task(self._trim_logs_forever(), name="snakepit-log-trim")
        try:
            worker.address = await self._await_ready(worker, spec, ready_path)
        except BaseException:
            # Cancelled or failed: never leave a half-started worker behind.
            await asyncio.shield(worker.stop(grace=0.5))
            raise
        finally:
            with contextlib.suppress(OSError):
                ready_path.unlink()
        return worker

    def _spawn(
        self, spec: WorkerSpec, env: dict[str, str], stdout_path: Path, stderr_path: Path
    ) -> subprocess.Popen[bytes]:
        # Called on the event-loop thread on purpose: the worker's PR_SET_PDEATHSIG is bound
        # to the thread that forks it, and this thread lives as long as the orchestrator.
        # O_APPEND: the launcher may truncate a log that grew too large (trim_logs).
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC
        out_fd = os.open(stdout_path, flags, 0o600)
        try:
            err_fd = os.open(stderr_path, flags, 0o600)
            try:
                return subprocess.Popen(
                    spec.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out_fd,
                    stderr=err_fd,
                    env=env,
                    cwd=spec.cwd,
                    start_new_session=True,
                    close_fds=True,
                )
            finally:
                os.close(err_fd)
        finally:
            os.close(out_fd)

    async def _await_ready(self, worker: LocalWorker, spec: WorkerSpec, ready_path: Path) -> str:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + spec.startup_timeout
        interval = 0.002
        stdout_seen = 0
        while True:
            text = _read_small(ready_path)
            address: str | None = None
            if text:
                try:
                    address = parse_ready_address(text)
                except ValueError as exc:
                    raise StartupError(
                        f"worker {spec.worker_id} wrote {text[:200]!r} to its ready file, which "
                        "is not a port, HOST:PORT or unix:PATH; check that the worker follows "
                        "the launch contract"
                    ) from exc
            if address is None:
                address, stdout_seen = _legacy_ready(worker.stdout_path, stdout_seen)
            if address is not None:
                if address.startswith("unix:"):
                    with contextlib.suppress(OSError):
                        os.chmod(address[len("unix:") :].removeprefix("//"), 0o600)
                if not worker.is_alive():
                    code = await worker.wait()
                    tail = _indent_tail(worker.stderr_tail())
                    raise StartupError(
                        f"worker {spec.worker_id} ended with {describe_exit(code)} right after "
                        f"it reported ready; its stderr ends with{tail}"
                    )
                return address
            if worker._exit.done():
                code = worker._exit.result()
                if self._closed:
                    raise ClosedError(
                        f"the launcher was closed while worker {spec.worker_id} was starting"
                    )
                raise StartupError(
                    f"worker {spec.worker_id} ended with {describe_exit(code)} before it was "
                    f"ready; its stderr ends with{_indent_tail(worker.stderr_tail())}"
                )
            remaining = deadline - loop.time()
            if remaining <= 0:
                await asyncio.shield(worker.stop(grace=0.5))
                raise StartupError(
                    f"worker {spec.worker_id} did not become ready within "
                    f"{spec.startup_timeout:g} s and was stopped; raise startup_timeout if it is "
                    f"only slow. Its stderr ends with{_indent_tail(worker.stderr_tail())}"
                )
            await asyncio.wait([worker._exit], timeout=min(interval, remaining))
            interval = min(interval * 1.5, 0.01)  # a stat every 10 ms costs nothing

    async def _trim_logs_forever(self, every: float = 10.0) -> None:
        while True:
            await asyncio.sleep(every)
            for worker in list(self._workers):
                worker.trim_logs(self.max_log_bytes)

    def _forget(self, worker: LocalWorker) -> None:
        self._workers.discard(worker)
        self.registry.remove(worker._row)

    async def close(self) -> None:
        """Stop every worker (SIGTERM, SIGKILL after ``stop_grace``) and remove the run dir."""
        self._closed = True
        if self._trimmer is not None:
            self._trimmer.cancel()
            self._trimmer = None
        workers = list(self._workers)
        if workers:
            await asyncio.gather(*(w.stop(self.stop_grace) for w in workers))
        self._remove_run_dir()
        _live_launchers.discard(self)

    def stop_all_blocking(self, grace: float = 1.0) -> None:
        """Stop every worker without an event loop (the ``atexit`` backup)."""
        self._closed = True
        deadline = time.monotonic() + grace
        # The loop thread may still be reaping (and discarding from the set) right now.
        workers = list(self._workers.copy())
        for worker in workers:
            worker._kill_group(signal.SIGTERM)
        for worker in workers:
            worker._stop_now_blocking(deadline)
        self._workers.clear()
        self._remove_run_dir()
        _live_launchers.discard(self)

    def _remove_run_dir(self) -> None:
        if self._run_dir is not None:
            shutil.rmtree(self._run_dir, ignore_errors=True)
            self._run_dir = None


def _read_small(path: Path) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read(4096)
    except OSError:
        return ""


def _legacy_ready(stdout_path: Path, seen: int) -> tuple[str | None, int]:
    """Look for ``GRPC_READY:<port>`` in new stdout bytes (published workers before v0.8.1)."""
    start = max(0, seen - 24)  # overlap, in case the marker straddled two reads
    try:
        with open(stdout_path, "rb") as fh:
            fh.seek(start)
            data = fh.read(_TAIL_BYTES)
    except OSError:
        return None, seen
    match = _LEGACY_READY.search(data)
    if match and 0 < int(match.group(1)) < 65536:
        return f"127.0.0.1:{int(match.group(1))}", seen
    return None, start + len(data)
