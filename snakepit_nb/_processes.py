"""Process trees that end with their owner: the launch marker, the take-down, the warden.

Every process of one launch carries ``SNAKEPIT_NB_LAUNCH=<marker>`` in its environment, and
whatever it starts inherits it, even a daemon that left the process group. When the owner is
gone, :func:`take_down` SIGKILLs the owner's process group and every process carrying the
marker, in a few rounds to catch processes forked in between. :func:`guard` is the loop that
waits for the owner's exit and then takes its tree down; two kinds of process run it:

* the worker's guardian (``snakepit_nb.worker.guardian``), forked by the worker first thing;
* the warden of a local Ray (``orchestrator/launch/ray_local.py``). The kernel has many threads
  and cannot fork safely, so it runs this file as a script instead::

      python -I -S .../snakepit_nb/_processes.py OWNER_PID MARKER

  ``-I -S``: no site, no user paths, nothing of the package; it imports only the standard
  library, so it is up in milliseconds and its memory is a bare interpreter's.

A process that runs ``guard`` ignores the signals a stop or a terminal sends, so a stop of
the owner's group cannot cut the take-down short, and it needs nothing of the owner to run:
it blocks on a pidfd of the owner, readable exactly when the owner has exited.

A marker is only as good as ``/proc/<pid>/environ``, and a process that rewrites its title
(``setproctitle``) overwrites that area. So the warden also takes pids to end from its owner
(:meth:`Warden.track`), each with its start time, which tells it apart from a later process
that reuses the pid.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping

__all__ = [
    "LAUNCH_ENV",
    "Warden",
    "guard",
    "marked_processes",
    "start_ticks",
    "start_warden",
    "take_down",
]

LAUNCH_ENV = "SNAKEPIT_NB_LAUNCH"
"""The launch marker: unique to one start of one worker (``<run id>.<launch id>``) or of one
local Ray."""

_PR_SET_NAME = 15
_ROUNDS = 3
_ROUND_PAUSE = 0.02
_MAX_TRACKED = 100_000
_IGNORED = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGPIPE")


def guard(
    owner: int,
    group: int | None,
    marker: str,
    ready_fd: int,
    *,
    name: bytes,
    tracked_fd: int | None = None,
) -> None:
    """Wait until ``owner`` exits, then :func:`take_down` ``group``, ``marker`` and the tracked.

    Writes one byte to ``ready_fd`` (and closes it) once a death from then on is seen. From
    ``tracked_fd``, if given, it reads lines ``PID START_TICKS`` of processes to end as well
    (see :meth:`Warden.track`); the owner closing it (or dying) ends the reading, not the wait.
    """
    for signame in _IGNORED:
        with contextlib.suppress(OSError, ValueError):
            signal.signal(getattr(signal, signame), signal.SIG_IGN)
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(_PR_SET_NAME, name, 0, 0, 0)
    try:
        pidfd: int | None = os.pidfd_open(owner)
    except OSError:
        pidfd = None
    os.write(ready_fd, b"1")
    os.close(ready_fd)
    tracked: dict[int, int] = {}
    if pidfd is not None:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)  # readable exactly when the owner has exited
        if tracked_fd is not None:
            poller.register(tracked_fd, select.POLLIN)
        pending = b""
        while True:
            events = poller.poll()
            if tracked_fd is not None and any(fd == tracked_fd for fd, _ in events):
                # Also when the owner just died: what it sent before counts.
                data = os.read(tracked_fd, 65536)
                if not data:
                    poller.unregister(tracked_fd)
                    tracked_fd = None
                pending = _absorb(pending + data, tracked)
            if any(fd == pidfd for fd, _ in events):
                break
        if tracked_fd is not None:
            os.set_blocking(tracked_fd, False)
            with contextlib.suppress(OSError):
                while data := os.read(tracked_fd, 65536):
                    pending = _absorb(pending + data, tracked)
    else:
        while os.getppid() == owner:
            time.sleep(0.05)
    take_down(group, marker, tracked)


def _absorb(data: bytes, tracked: dict[int, int]) -> bytes:
    """Add the whole ``PID START_TICKS`` lines of ``data`` to ``tracked``; returns the rest."""
    *lines, rest = data.split(b"\n")
    for line in lines:
        with contextlib.suppress(ValueError):
            pid, ticks = (int(word) for word in line.split())
            if len(tracked) < _MAX_TRACKED:
                tracked[pid] = ticks
    return rest


def take_down(group: int | None, marker: str, tracked: Mapping[int, int] | None = None) -> None:
    """SIGKILL the group ``group`` (if any), every process carrying ``marker``, and each
    ``tracked`` pid still running the process that started at its start ticks."""
    me = os.getpid()
    for round_ in range(_ROUNDS):
        for pid, ticks in (tracked or {}).items():
            if pid != me and start_ticks(pid) == ticks:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        if group is not None and group != os.getpgrp():
            with contextlib.suppress(OSError):
                os.killpg(group, signal.SIGKILL)
        if marker:
            for pid in marked_processes(marker):
                if pid != me:
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
        if round_ < _ROUNDS - 1:
            time.sleep(_ROUND_PAUSE)


def marked_processes(marker: str) -> list[int]:
    """Pids whose environment carries ``SNAKEPIT_NB_LAUNCH=<marker>`` (readable ones: ours)."""
    needle = f"{LAUNCH_ENV}={marker}".encode()
    found = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as fh:
                environ = fh.read()
        except OSError:
            continue  # gone, or another user's
        if needle in environ.split(b"\0"):
            found.append(int(entry))
    return found


def start_ticks(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot (``/proc/<pid>/stat``); None if gone.

    With the pid, it names one process: a reused pid starts at other ticks.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return None
    try:
        # Field 22; the name in field 2 may hold spaces and parentheses, so count from the end
        # of it.
        return int(stat[stat.rindex(b")") + 2 :].split()[19])
    except (ValueError, IndexError):
        return None


class Warden:
    """The warden of this process (see the module docstring); :func:`start_warden` makes one."""

    def __init__(self, process: subprocess.Popen[bytes], marker: str) -> None:
        self.process = process
        self.marker = marker
        self._sent: set[tuple[int, int]] = set()

    @property
    def pid(self) -> int:
        return self.process.pid

    def track(self, pids: Iterable[int]) -> dict[int, int]:
        """End these processes too when this process exits; returns their start ticks.

        For processes that carry the marker but may hide it: one that rewrites its title
        (``setproctitle``, as Ray's agents do) overwrites the environment the kernel shows.
        """
        fresh: dict[int, int] = {}
        for pid in pids:
            ticks = start_ticks(pid)
            if ticks is not None and (pid, ticks) not in self._sent:
                fresh[pid] = ticks
        stdin = self.process.stdin
        if fresh and stdin is not None:
            try:
                stdin.write(b"".join(f"{pid} {ticks}\n".encode() for pid, ticks in fresh.items()))
                stdin.flush()
            except (OSError, ValueError):  # the warden is gone: nothing to tell
                return {}
            self._sent.update(fresh.items())
        return fresh


def start_warden(marker: str) -> Warden | None:
    """Start the warden of this process: when it exits, every process marked ``marker`` goes.

    Returns once the warden is armed; None where it cannot run (not Linux, no pidfd). The
    warden carries no marker of its own and leaves once it has done its work.
    """
    if not sys.platform.startswith("linux") or not hasattr(os, "pidfd_open"):
        return None
    env = {k: v for k, v in os.environ.items() if k != LAUNCH_ENV}
    process = subprocess.Popen(
        [sys.executable, "-I", "-S", os.path.abspath(__file__), str(os.getpid()), marker],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    assert process.stdout is not None
    armed = process.stdout.read(1)
    process.stdout.close()
    if armed != b"1":
        process.wait()
        raise OSError(f"the warden of {marker} exited before it was armed ({process.returncode})")
    return Warden(process, marker)


def _main(argv: list[str]) -> int:
    owner, marker = int(argv[0]), argv[1]
    # The "armed" byte goes to the starter's pipe; fd 1 itself then points nowhere, so the
    # interpreter's own exit writes nothing into a pipe nobody reads.
    ready = os.dup(1)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.close(null)
    guard(owner, None, marker, ready, name=b"snakepit-warden", tracked_fd=sys.stdin.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
