"""The guardian: a small process beside each worker that ends what the worker's tools started.

A tool may start processes of its own (``subprocess.Popen``, a shell's background job, a
daemon that calls ``setsid``). They must not outlive the worker, however the worker ends:
stopped gracefully, crashed, killed as hung, or SIGKILLed by ``PR_SET_PDEATHSIG`` the instant
the kernel died. A process that is SIGKILLed runs no cleanup, so the worker cannot be the one
that ends them; the guardian can.

``start_guardian`` forks the guardian first thing in the worker (single-threaded, nothing of
gRPC loaded yet). The guardian blocks on a pidfd of the worker, so it needs no Python of the
worker to run: when the worker is gone it SIGKILLs the worker's process group (when the worker
leads one, as the launcher starts it) and every process whose environment carries this
launch's marker (``SNAKEPIT_NB_LAUNCH``, set by the launcher, inherited by whatever the tools
start, even when they leave the group), a few rounds to catch processes forked in between, and
exits. It ignores the signals a stop sends, and lives in a process group of its own so that the
stop of the worker's group cannot cut that sweep short. It costs a fork of the worker before
anything heavy is imported (its pages stay shared), and nothing while it waits.
"""

from __future__ import annotations

import os
import sys

from snakepit_nb._processes import LAUNCH_ENV, guard, marked_processes

__all__ = ["LAUNCH_ENV", "marked_processes", "start_guardian"]


def start_guardian(launch: str | None = None) -> int | None:
    """Fork the guardian of this process; returns its pid (None where it cannot run).

    Call it while the process has a single thread. ``launch`` defaults to
    ``$SNAKEPIT_NB_LAUNCH``; without a marker the guardian still ends the process group.
    """
    if not sys.platform.startswith("linux") or not hasattr(os, "pidfd_open"):
        return None
    marker = launch if launch is not None else os.environ.get(LAUNCH_ENV, "")
    worker = os.getpid()
    # Only a group the worker leads is the worker's to end (the launcher starts it with
    # setsid). Started any other way, its group is its starter's: a shell, a test runner.
    group = os.getpgrp() if os.getpgrp() == worker else None
    ready_r, ready_w = os.pipe()
    try:
        pid = os.fork()
    except OSError:
        os.close(ready_r)
        os.close(ready_w)
        return None
    if pid == 0:  # the guardian
        code = 0
        try:
            os.close(ready_r)
            guard(worker, group, marker, ready_w, name=b"snakepit-guard")
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(ready_w)
    try:
        os.read(ready_r, 1)  # armed: a death from now on is seen
    finally:
        os.close(ready_r)
    return pid
