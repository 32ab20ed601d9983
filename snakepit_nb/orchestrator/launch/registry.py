"""The on-disk registry of started worker processes, and the sweep that removes leftovers.

A Jupyter kernel can die without running any cleanup (``kill -9``, the OOM killer, a restart
that times out). The worker arms a parent-death signal and watches its parent, so the worker
itself goes too, and our worker's guardian then ends what its tools started; but a foreign
worker has no guardian, and a guardian can be killed too. Like the original Snakepit's DETS
process registry, every launch writes a row here *before* the process is spawned (a
reservation), fills in pid, process group and start time once it runs, and removes the row
when the worker is stopped and reaped. The next launcher to start calls
:meth:`ProcessRegistry.sweep`, which kills what stale rows left behind.

What a row records: the run id (the marker every process of the run carries in its
environment, ``SNAKEPIT_NB_POOL=<run_id>``, inherited by whatever the tools start), the launch
id (``SNAKEPIT_NB_LAUNCH=<run_id>.<launch_id>``, one start of one worker), the kernel's pid and
start time, the boot id, and the worker's pid, process group and start time; a row may also
list more processes of its launch by pid and start time (``tracked``), for processes whose
marker cannot be read (a local Ray's agents rewrite their title over their environment).

Safety rules of the sweep (it must never kill an unrelated process):

* rows written during another boot (``/proc/sys/kernel/random/boot_id``) are dropped unread:
  their pids mean nothing now;
* rows whose kernel is still alive (pid *and* start time match) belong to another running
  notebook and are left alone;
* a process found by its marker is killed only if it carries the marker of a stale row's run
  *and* it started after that run's kernel did. Run ids are random, so the marker names the run;
  the start time rules out a process that merely reuses a recorded pid, or that copied the
  environment before the run existed. Processes of other users are never looked at;
* a tracked process is killed only if its start time is the one recorded, so a pid reused
  since is left alone.

The registry lives in ``$SNAKEPIT_NB_REGISTRY_DIR`` if set, else
``$XDG_RUNTIME_DIR/snakepit_nb/registry``, else ``~/.cache/snakepit_nb/registry``; one small
JSON file per launch, written atomically, so several kernels can share it without locks.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import signal
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import psutil

from snakepit_nb._errors import ConfigurationError

__all__ = [
    "MARKER_ENV",
    "RUN_DIR_MARKER",
    "ProcessRegistry",
    "RegistryRow",
    "SweepReport",
    "boot_id",
    "default_registry_dir",
    "process_start_time",
]

log = logging.getLogger(__name__)

MARKER_ENV = "SNAKEPIT_NB_POOL"
"""Environment variable every worker carries; its value is the launcher's run id."""

REGISTRY_DIR_ENV = "SNAKEPIT_NB_REGISTRY_DIR"

RUN_DIR_MARKER = ".snakepit_nb_run"
"""File inside a launcher's private run dir naming its run id; the sweep removes such dirs."""

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
# Start times come from /proc/<pid>/stat in clock ticks plus the boot time; two reads of the
# same process agree to well under this.
_START_TIME_TOLERANCE = 0.05


def default_registry_dir() -> Path:
    """Where rows go unless ``SNAKEPIT_NB_REGISTRY_DIR`` says otherwise."""
    override = os.environ.get(REGISTRY_DIR_ENV)
    if override:
        return Path(override)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return Path(runtime) / "snakepit_nb" / "registry"
    return Path.home() / ".cache" / "snakepit_nb" / "registry"


def boot_id() -> str:
    """An id of the current boot; pids recorded during another boot mean nothing."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return f"boot-{psutil.boot_time():.0f}"


def process_start_time(pid: int) -> float | None:
    """psutil's create time of ``pid``, or None when no such process exists."""
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return None


def check_id(value: str, what: str) -> str:
    """Refuse ids that could not be part of a file name safely."""
    if not _SAFE_ID.match(value):
        raise ConfigurationError(
            f"{what} {value!r} is not usable; use 1-64 letters, digits, '_', '.' or '-' "
            "starting with a letter or digit"
        )
    return value


@dataclass(frozen=True)
class RegistryRow:
    """One launch: reserved before spawning, activated with pid/pgid/start time after."""

    run_id: str
    worker_id: str
    launch_id: str
    kernel_pid: int
    kernel_start_time: float
    boot_id: str
    run_dir: str | None = None
    pid: int | None = None
    pgid: int | None = None
    start_time: float | None = None
    state: str = "reserved"  # "reserved" | "active"
    written_at: float = field(default_factory=time.time)
    #: More processes of the launch, pid (as text) -> start time, for those whose marker may
    #: not be readable (a process that rewrites its title overwrites its environment).
    tracked: dict[str, float] = field(default_factory=dict)

    @property
    def file_name(self) -> str:
        return f"{self.run_id}.{self.launch_id}.json"

    @property
    def launch_marker(self) -> str:
        """The value of ``SNAKEPIT_NB_LAUNCH`` in this launch's processes."""
        return f"{self.run_id}.{self.launch_id}"


@dataclass
class SweepReport:
    """What a sweep did: pids it killed and rows it removed (stale or from another boot)."""

    killed: list[int] = field(default_factory=list)
    removed_rows: int = 0
    dropped_other_boot: int = 0
    kept_live_rows: int = 0
    removed_run_dirs: list[str] = field(default_factory=list)
    seconds: float = 0.0


class ProcessRegistry:
    """Rows of started workers in a private directory (mode 0700).

    >>> reg = ProcessRegistry()            # honours SNAKEPIT_NB_REGISTRY_DIR
    >>> report = reg.sweep()               # kill what a dead kernel left behind
    """

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        self.directory = Path(directory) if directory is not None else default_registry_dir()
        self._boot_id = boot_id()
        self._kernel_pid = os.getpid()
        self._kernel_start = process_start_time(self._kernel_pid) or 0.0

    def _ensure_dir(self) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        # mkdir's mode is filtered by the umask and ignored for existing dirs: make sure.
        with contextlib.suppress(OSError):
            os.chmod(self.directory, 0o700)

    # ---- writing rows -------------------------------------------------------------------

    def reserve(self, *, run_id: str, worker_id: str, run_dir: str | None = None) -> RegistryRow:
        """Write a reservation row; call it *before* spawning the process."""
        check_id(run_id, "run id")
        row = RegistryRow(
            run_id=run_id,
            worker_id=worker_id,
            launch_id=f"{check_id(worker_id, 'worker id')}-{secrets.token_hex(4)}",
            kernel_pid=self._kernel_pid,
            kernel_start_time=self._kernel_start,
            boot_id=self._boot_id,
            run_dir=run_dir,
        )
        self._write(row)
        return row

    def activate(self, row: RegistryRow, *, pid: int, pgid: int, start_time: float) -> RegistryRow:
        """Record the spawned process's pid, process group and start time."""
        active = replace(
            row, pid=pid, pgid=pgid, start_time=start_time, state="active", written_at=time.time()
        )
        self._write(active)
        return active

    def track(self, row: RegistryRow, processes: dict[int, float]) -> RegistryRow:
        """Add ``processes`` (pid -> start time) to what a sweep ends for ``row``."""
        tracked = dict(row.tracked)
        tracked.update({str(pid): start for pid, start in processes.items()})
        updated = replace(row, tracked=tracked, written_at=time.time())
        self._write(updated)
        return updated

    def remove(self, row: RegistryRow) -> None:
        """Forget a row (the worker was stopped and reaped, or never started)."""
        with contextlib.suppress(FileNotFoundError):
            (self.directory / row.file_name).unlink()

    def rows(self) -> list[RegistryRow]:
        """All readable rows; unreadable files are skipped (and removed by ``sweep``)."""
        return [row for _, row in self._read_all() if row is not None]

    def _write(self, row: RegistryRow) -> None:
        self._ensure_dir()
        path = self.directory / row.file_name
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        # No fsync: a crash of this process cannot lose the page cache, and rows that do not
        # survive a power cut belong to another boot anyway.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(asdict(row), fh)
        os.replace(tmp, path)

    def _read_all(self) -> list[tuple[Path, RegistryRow | None]]:
        try:
            entries = list(self.directory.iterdir())
        except FileNotFoundError:
            return []
        out: list[tuple[Path, RegistryRow | None]] = []
        for path in entries:
            if not path.name.endswith(".json") or path.name.startswith("."):
                continue
            try:
                data = json.loads(path.read_text())
                out.append((path, RegistryRow(**data)))
            except FileNotFoundError:
                continue
            except (OSError, ValueError, TypeError):
                out.append((path, None))
        return out

    # ---- the sweep ----------------------------------------------------------------------

    def _kernel_alive(self, row: RegistryRow) -> bool:
        started = process_start_time(row.kernel_pid)
        return started is not None and abs(started - row.kernel_start_time) < _START_TIME_TOLERANCE

    def sweep(self, *, grace: float = 2.0, exclude_run_ids: Iterable[str] = ()) -> SweepReport:
        """Kill processes left by dead kernels' launches and remove their rows.

        Blocking (up to ``grace`` plus a little): run it off the event loop
        (``asyncio.to_thread``). Rows of live kernels and of ``exclude_run_ids`` are kept.
        """
        t0 = time.monotonic()
        report = SweepReport()
        excluded = set(exclude_run_ids)
        stale: list[tuple[Path, RegistryRow]] = []
        for path, row in self._read_all():
            if row is None:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                report.removed_rows += 1
            elif row.boot_id != self._boot_id:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                report.dropped_other_boot += 1
            elif row.run_id in excluded or self._kernel_alive(row):
                report.kept_live_rows += 1
            else:
                stale.append((path, row))
        if stale:
            victims = self._find_victims([row for _, row in stale])
            report.killed = _terminate(victims, grace)
            for path, row in stale:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                report.removed_rows += 1
                if row.run_dir and _remove_run_dir(row.run_dir, row.run_id):
                    report.removed_run_dirs.append(row.run_dir)
        report.seconds = time.monotonic() - t0
        if report.killed or report.removed_rows:
            log.info(
                "registry sweep killed %d leftover process(es) and removed %d row(s) in %.3f s",
                len(report.killed),
                report.removed_rows,
                report.seconds,
            )
        return report

    def _find_victims(self, rows: list[RegistryRow]) -> list[psutil.Process]:
        # A stale run's processes: every one carrying its marker that started after its
        # kernel. Reading each process's environment costs a few microseconds; this runs
        # only when some row is stale.
        since: dict[str, float] = {}
        for row in rows:
            since[row.run_id] = min(
                since.get(row.run_id, row.kernel_start_time), row.kernel_start_time
            )
        me = os.getpid()
        victims: list[psutil.Process] = []
        for row in rows:
            for text, start in row.tracked.items():
                with contextlib.suppress(ValueError, psutil.Error):
                    proc = psutil.Process(int(text))
                    if proc.pid != me and abs(proc.create_time() - start) < _START_TIME_TOLERANCE:
                        victims.append(proc)
        seen = {proc.pid for proc in victims}
        for proc in psutil.process_iter():
            if proc.pid in seen:
                continue
            if proc.pid == me:
                continue
            marker = _marker(proc)
            started = since.get(marker) if marker is not None else None
            if started is None:
                continue
            try:
                created = proc.create_time()
            except psutil.Error:
                continue
            if created + _START_TIME_TOLERANCE >= started:
                victims.append(proc)
        return victims


def _marker(proc: psutil.Process) -> str | None:
    try:
        return proc.environ().get(MARKER_ENV)
    except (psutil.Error, OSError):
        return None


def _terminate(victims: list[psutil.Process], grace: float) -> list[int]:
    """SIGTERM each verified process, SIGKILL what is left after ``grace``."""
    if not victims:
        return []
    killed: list[int] = []
    for proc in victims:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGTERM)
            killed.append(proc.pid)
    alive = _wait_gone(victims, grace)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    _wait_gone(alive, 1.0)
    return killed


def _wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait until each process is gone or a zombie; return those still running."""
    deadline = time.monotonic() + timeout
    alive = list(procs)
    while alive:
        alive = [p for p in alive if _is_running(p)]
        if not alive or time.monotonic() >= deadline:
            break
        time.sleep(0.01)
    return alive


def _is_running(proc: psutil.Process) -> bool:
    # These processes are not our children, so we cannot reap them; a zombie waiting for
    # its new parent to reap it is as good as gone.
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _remove_run_dir(run_dir: str, run_id: str) -> bool:
    """Remove a dead run's private dir, only if its marker file names that run."""
    marker = Path(run_dir) / RUN_DIR_MARKER
    try:
        if marker.read_text().strip() != run_id:
            return False
    except OSError:
        return False
    shutil.rmtree(run_dir, ignore_errors=True)
    return True
