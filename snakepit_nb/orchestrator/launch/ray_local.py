"""The local Ray a runtime starts when no cluster is named, and which ends with this process.

``ray.init(address="local")`` starts a Ray of our own: its GCS server and raylet die with this
process (Ray arms a parent-death signal on Linux), but the agents the raylet starts
(``DashboardAgent``, ``RuntimeEnvAgent``) only poll for their parent and, once it is gone, try
to report to the dead GCS for a minute or two before they exit. A kernel that was SIGKILLed must
leave nothing behind, so:

* the processes of that Ray carry a marker of their own: ``SNAKEPIT_NB_POOL=<run id>`` and
  ``SNAKEPIT_NB_LAUNCH=<marker>`` are in the environment while ``ray.init`` spawns, and
  whatever Ray starts inherits them;
* a warden (``snakepit_nb._processes``), a bare interpreter in a session of its own, waits
  for this process to exit however it does, then SIGKILLs every process with that marker;
* a registry row names the run, so the next start on this machine sweeps what is left if the
  warden was killed too (``registry.py``);
* a marker is read from ``/proc/<pid>/environ``, and the agents set their title over it
  (``setproctitle``). So the processes Ray started are also tracked by pid and start time,
  in the warden and in the row: right after ``ray.init``, after each worker started, and a few
  times in the first minute (:func:`track_local_ray`).

A Ray this process merely connects to (an address, ``RAY_ADDRESS``, a Ray already initialised)
is not ours to end and gets none of this.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import psutil

from snakepit_nb._processes import LAUNCH_ENV, Warden, start_warden
from snakepit_nb.orchestrator.launch.registry import (
    MARKER_ENV,
    ProcessRegistry,
    RegistryRow,
    process_start_time,
)

__all__ = ["LocalRay", "quiet_ray_init", "start_local_ray", "track_local_ray"]

log = logging.getLogger(__name__)

# Re-tracks after the start, in seconds from it: the raylet starts its agents on its own time.
_RETRACK_AT = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)


@dataclass
class LocalRay:
    """The local Ray this process started: its roots, warden and registry row (its run)."""

    roots: list[psutil.Process]
    warden: Warden | None
    registry: ProcessRegistry
    row: RegistryRow
    lock: threading.Lock = field(default_factory=threading.Lock)


# The local Ray this process started (the latest, after a ``ray.shutdown``), if any.
_local: LocalRay | None = None


def start_local_ray(ray: Any, *, registry: ProcessRegistry | None = None) -> LocalRay:
    """``ray.init`` a Ray of our own on loopback, marked, tracked and warded.

    Blocking (seconds): call it off the event loop.
    """
    global _local
    run_id = f"ray-local-{secrets.token_hex(6)}"
    registry = registry or ProcessRegistry()
    row = registry.reserve(run_id=run_id, worker_id="ray")
    # Without the dashboard and without Ray's usage report (it would try to reach the
    # internet).
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    me = psutil.Process()
    before = {child.pid for child in me.children()}
    try:
        with _environment({MARKER_ENV: run_id, LAUNCH_ENV: row.launch_marker}), quiet_ray_init():
            ray.init(
                address="local",
                include_dashboard=False,
                _node_ip_address="127.0.0.1",
                logging_level=logging.WARNING,
                log_to_driver=False,
            )
    except BaseException:
        registry.remove(row)
        raise
    # What ray.init spawned: Ray's GCS server, raylet and monitors.
    roots = [child for child in me.children() if child.pid not in before]
    warden = start_warden(row.launch_marker)
    if warden is not None:
        row = registry.activate(
            row,
            pid=warden.pid,
            pgid=warden.pid,
            start_time=process_start_time(warden.pid) or 0.0,
        )
    else:
        log.warning("no warden on this platform: a killed kernel may leave Ray's agents behind")
    _local = LocalRay(roots, warden, registry, row)
    track_local_ray()
    threading.Thread(
        target=_retrack, args=(_local,), name="snakepit-ray-track", daemon=True
    ).start()
    return _local


def track_local_ray() -> int:
    """Track every process of the local Ray now running (blocking, milliseconds).

    Returns how many were new; 0 without a local Ray of ours.
    """
    local = _local
    if local is None:
        return 0
    with local.lock:
        found: dict[int, float] = {}
        for root in local.roots:
            with contextlib.suppress(psutil.Error):
                for proc in [root, *root.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):
                        found[proc.pid] = proc.create_time()
        known = local.row.tracked
        fresh = {pid: start for pid, start in found.items() if known.get(str(pid)) != start}
        if not fresh:
            return 0
        if local.warden is not None:
            local.warden.track(fresh)
        local.row = local.registry.track(local.row, fresh)
        return len(fresh)


def _retrack(local: LocalRay) -> None:
    elapsed = 0.0
    for at in _RETRACK_AT:
        time.sleep(at - elapsed)
        elapsed = at
        if _local is not local:
            return
        with contextlib.suppress(Exception):
            track_local_ray()


# What ``ray.init`` logs at WARNING that says nothing to a notebook user: it runs in a thread
# (so Ray sets no SIGTERM handler, which a kernel does not want anyway), and a local Ray of
# ours turns Ray's token authentication on by default (it is on loopback: good).
_NOTICES = {
    "ray._private.worker": "SIGTERM handler is not set because current thread",
    "ray._private.authentication.authentication_token_setup": "Token authentication is enabled",
}


class _DropNotice(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


@contextlib.contextmanager
def quiet_ray_init() -> Iterator[None]:
    """Around ``ray.init``: without Ray's two notices that do not apply here (see above)."""
    filters = [(logging.getLogger(name), _DropNotice(prefix)) for name, prefix in _NOTICES.items()]
    for logger, notice in filters:
        logger.addFilter(notice)
    try:
        yield
    finally:
        for logger, notice in filters:
            logger.removeFilter(notice)


@contextlib.contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    """``values`` in ``os.environ`` for the duration, what was there before afterwards."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old
