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
    "ParentWatch",
    "arm_parent_death",
    "ignore_sigint",
    "parent_pid_from_env",
    "write_ready_file",
]

PARENT_ENV = "SNAKEPIT_NB_PARENT_PID"
EXIT_PARENT_GONE = 3
_PR_SET_PDEATHSIG = 1


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
