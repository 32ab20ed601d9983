"""How a worker process lives and dies: with its parent, never as an orphan.

* ``arm_parent_death`` is the first thing the worker does: ``prctl(PR_SET_PDEATHSIG, SIGKILL)``
  (Linux) makes the kernel kill us when our parent dies, even by SIGKILL; then ``getppid()``
  tells whether the parent died before we armed.
* ``ParentWatch`` is the second layer (and the only one on other systems, or when the worker
  was started through a wrapper): a daemon thread blocked on ``pidfd_open(parent)`` (or polling
  every 0.2 s) that ``os._exit``s the moment the parent is gone.
* SIGINT is ignored: a kernel interrupt goes to the kernel's whole process group, and must
  cancel the remote call through gRPC, not kill the worker. SIGTERM stops gracefully.
* The ready file is written atomically (``<path>.tmp``, fsync, rename), so the pool never
  reads half an address.
* Processes the tools start stay ours: the worker is a child subreaper
  (``PR_SET_CHILD_SUBREAPER``), so a tool's double-forked or ``setsid`` daemon is re-parented
  to the worker, not to init; :class:`AdoptedReaper` reaps those adopted children when they
  exit, and :func:`end_descendants` ends every descendant on the worker's way out. For the ways
  out that run no code of ours (SIGKILL), the :mod:`guardian <snakepit_nb.worker.guardian>`
  does the same.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import sys
import threading
import time

__all__ = [
    "EXIT_PARENT_GONE",
    "AdoptedReaper",
    "ParentWatch",
    "arm_parent_death",
    "become_subreaper",
    "children",
    "descendants",
    "end_descendants",
    "ignore_sigint",
    "parent_pid_from_env",
    "write_ready_file",
]

PARENT_ENV = "SNAKEPIT_NB_PARENT_PID"
EXIT_PARENT_GONE = 3
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


def parent_pid_from_env() -> int:
    """The pid to live and die with: ``SNAKEPIT_NB_PARENT_PID``, else our parent."""
    raw = os.environ.get(PARENT_ENV, "")
    try:
        pid = int(raw)
    except ValueError:
        pid = 0
    return pid if pid > 1 else os.getppid()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _die(message: str) -> None:
    with contextlib.suppress(Exception):
        sys.stderr.write(f"snakepit_nb worker {os.getpid()}: {message}; exiting\n")
        sys.stderr.flush()
    os._exit(EXIT_PARENT_GONE)


def arm_parent_death(expected_parent: int) -> None:
    """Arm PR_SET_PDEATHSIG(SIGKILL) against our parent, then make sure it is still alive.

    If the worker was started through a wrapper (our parent is not ``expected_parent``), the
    signal guards the wrapper and the :class:`ParentWatch` thread guards ``expected_parent``.
    """
    if sys.platform.startswith("linux"):
        try:
            # CDLL(None): the symbols already loaded into this process, libc's prctl among them
            # (cheaper than ctypes.util.find_library, which imports subprocess).
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
                err = ctypes.get_errno()
                sys.stderr.write(f"snakepit_nb worker: prctl(PR_SET_PDEATHSIG) failed: {err}\n")
        except OSError as exc:
            sys.stderr.write(f"snakepit_nb worker: cannot load libc for prctl: {exc}\n")
    # The parent may have died before the signal was armed: then we were reparented already.
    ppid = os.getppid()
    if ppid == 1 or (ppid != expected_parent and not _pid_alive(expected_parent)):
        _die(f"parent process {expected_parent} is gone")


def ignore_sigint() -> None:
    """A kernel interrupt reaches the whole process group; workers must not die of it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class ParentWatch:
    """A daemon thread that ends the process as soon as ``pid`` exits."""

    def __init__(self, pid: int, *, poll_interval: float = 0.2) -> None:
        self.pid = pid
        self.poll_interval = poll_interval
        self._thread = threading.Thread(target=self._run, name="snakepit-parent-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        pidfd = -1
        pidfd_open = getattr(os, "pidfd_open", None)
        if pidfd_open is not None:
            try:
                pidfd = pidfd_open(self.pid)
            except OSError:
                pidfd = -1  # gone already (ESRCH), or no pidfd support: poll below
        if pidfd >= 0:
            # Same race as PDEATHSIG: the parent may have died between start and pidfd_open.
            if self.pid == os.getppid() or _pid_alive(self.pid):
                poller = select.poll()
                poller.register(pidfd, select.POLLIN)
                while True:
                    if poller.poll():  # readable exactly when the process has exited
                        break
            _die(f"parent process {self.pid} exited")
        is_parent = self.pid == os.getppid()
        while True:
            if (os.getppid() != self.pid) if is_parent else not _pid_alive(self.pid):
                _die(f"parent process {self.pid} exited")
            time.sleep(self.poll_interval)


def write_ready_file(path: str, address: str) -> None:
    """Write ``address`` to ``path`` atomically: ``<path>.tmp``, fsync, rename."""
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, address.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# The processes the tools start


def become_subreaper() -> bool:
    """Adopt orphaned descendants (``PR_SET_CHILD_SUBREAPER``); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def _proc_children(path: str) -> list[int]:
    try:
        with open(path) as fh:
            return [int(pid) for pid in fh.read().split()]
    except (OSError, ValueError):
        return []


def children(pid: int | None = None, *, thread: int | None = None) -> list[int]:
    """Direct children of ``pid`` (default: this process), from ``/proc``.

    ``thread``: only the children of that thread. Orphans adopted by a subreaper become
    children of its main thread, so ``children(thread=pid)`` lists the adopted ones together
    with what the main thread started itself; tools' threads keep their own children apart.
    """
    pid = os.getpid() if pid is None else pid
    if thread is not None:
        return _proc_children(f"/proc/{pid}/task/{thread}/children")
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    found: list[int] = []
    for task in tasks:
        found.extend(_proc_children(f"/proc/{pid}/task/{task}/children"))
    return found


def descendants(pid: int | None = None) -> list[int]:
    """Every descendant of ``pid`` (default: this process), parents before their children."""
    found: list[int] = []
    frontier = [os.getpid() if pid is None else pid]
    seen = set(frontier)
    while frontier:
        nxt: list[int] = []
        for parent in frontier:
            for child in children(parent):
                if child not in seen:
                    seen.add(child)
                    found.append(child)
                    nxt.append(child)
        frontier = nxt
    return found


def _is_zombie(pid: int) -> bool | None:
    """True for a zombie, False for a live process, None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"


def _reap(pid: int) -> bool:
    """Reap ``pid`` if it is our exited child; True once it is gone."""
    try:
        done, _status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return _is_zombie(pid) is not False  # not ours to reap: gone, or its parent's zombie
    return done == pid


def end_descendants(grace: float = 0.3, *, spare: tuple[int, ...] = ()) -> list[int]:
    """End every descendant except ``spare``: SIGTERM, SIGKILL after ``grace``, reap.

    Returns the pids that were signalled. Run on the worker's way out, when the tools are done
    with their processes.
    """
    spared = set(spare)
    targets = [pid for pid in descendants() if pid not in spared]
    if not targets:
        return []
    for pid in targets:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    left = targets
    while left and time.monotonic() < deadline:
        left = [pid for pid in left if not _reap(pid) and _is_zombie(pid) is False]
        if left:
            time.sleep(0.01)
    for pid in left:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    # Killed grandchildren are re-parented to us (the subreaper): reap every child but the
    # spared ones, until none of them is left or a second has passed.
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        waiting = [pid for pid in children() if pid not in spared and not _reap(pid)]
        if not waiting:
            break
        time.sleep(0.01)
    return targets


class AdoptedReaper:
    """Reaps the exited orphans a subreaper adopts (a tool's double-forked processes).

    Nobody else waits for them, so without this they would stay zombies until the worker
    exits. Only children of the main thread are looked at: orphans are adopted there, while a
    sync tool's own ``subprocess`` children belong to its thread, and an async tool's
    (``asyncio`` subprocesses) are reaped by asyncio at once. A zombie is reaped when it was one
    at the previous look too, ``interval`` seconds earlier, so a tool that waits for its own
    child from the main thread gets there first.
    """

    def __init__(self, *, spare: tuple[int, ...] = (), interval: float = 2.0) -> None:
        self.spare = set(spare)
        self.interval = interval
        self._seen: set[int] = set()
        self.reaped = 0

    def sweep(self) -> int:
        """One look; returns how many zombies were reaped."""
        me = os.getpid()
        zombies = {
            pid for pid in children(me, thread=me) if pid not in self.spare and _is_zombie(pid)
        }
        count = 0
        for pid in zombies & self._seen:
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    count += 1
        self._seen = zombies - self._seen
        self.reaped += count
        return count

    async def run(self) -> None:
        """Sweep every ``interval`` seconds until cancelled."""
        import asyncio

        while True:
            await asyncio.sleep(self.interval)
            self.sweep()
