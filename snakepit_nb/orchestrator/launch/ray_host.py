"""The Ray actor behind each Ray worker: it starts our worker server on its node and reports.

:class:`WorkerHost` is a plain class; :class:`~snakepit_nb.orchestrator.launch.ray_launcher.
RayLauncher` makes it a Ray actor (``ray.remote(WorkerHost).options(num_cpus=...)``), one per
worker, and calls :meth:`WorkerHost.start` with the pool's :class:`WorkerSpec`. On its node the
actor starts the worker program through a :class:`LocalProcessLauncher`, so a Ray worker is
started, marked (``SNAKEPIT_NB_POOL``, ``SNAKEPIT_NB_LAUNCH``), guarded (parent death, guardian,
process group) and reaped exactly as a local one; the worker's parent is the actor, so the
worker dies with it (``ray.kill``, a dead node, a driver that died). Then it returns the
address the worker listens on, which the orchestrator dials over gRPC as it dials a local
worker (the vLLM pattern for its workers).

The actor is async (Ray runs its methods on one event loop thread for its whole life), which
is what the local launcher needs: it spawns from that thread, and ``wait`` can be pending while
``stop``, ``kill_worker`` and ``rss`` are answered.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import socket
import sys
from pathlib import Path

from snakepit_nb._errors import StartupError
from snakepit_nb.orchestrator.launch.base import LANE_DIR_ENV, SOCKET_DIR_ENV, WorkerSpec
from snakepit_nb.orchestrator.launch.local import LocalProcessLauncher, LocalWorker

__all__ = ["BIND_HOST_ENV", "WorkerHost", "machine_id"]

#: The interface a worker on a Ray node listens on (with TLS); unset: loopback.
BIND_HOST_ENV = "SNAKEPIT_NB_BIND_HOST"
_WORKER_MODULE = ("-m", "snakepit_nb.worker")


def machine_id() -> str:
    """What tells two processes they share a machine: the boot id (the host name otherwise)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = ""
    return boot or socket.gethostname()


class WorkerHost:
    """One worker's actor (see the module docstring). Every method runs on the actor's loop."""

    def __init__(self, run_id: str) -> None:
        # A run id of its own: the sweep of the process registry ends every process carrying a
        # dead run's marker, so a dead actor's marker must name its worker alone, never the
        # pool's other workers. No sweep here: rows left by a dead actor are swept by the next
        # local launcher on that machine.
        own_run = f"{run_id}-{secrets.token_hex(4)}"
        self._launcher = LocalProcessLauncher(run_id=own_run, sweep=False)
        self._worker: LocalWorker | None = None

    async def start(
        self, spec: WorkerSpec, *, bind_node: bool, kernel_machine: str
    ) -> dict[str, object]:
        """Start the worker; its address, pid, node, host and whether it shares the kernel's
        machine. ``bind_node``: listen on the node's address (the spec carries the TLS
        identity) instead of loopback. A failed start is ``{"error": message}`` (the message
        has the worker's stderr tail)."""
        import ray

        same_host = machine_id() == kernel_machine
        env = dict(spec.env)
        if bind_node:
            env[BIND_HOST_ENV] = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
        if not same_host:
            # No lane (a unix socket, shared memory) across machines: every call over gRPC,
            # large values in chunks. "" tells the local launcher to open none.
            env[LANE_DIR_ENV] = ""
            env.pop(SOCKET_DIR_ENV, None)
        argv = list(spec.argv)
        if tuple(argv[1:3]) == _WORKER_MODULE:
            argv[0] = sys.executable  # the kernel's interpreter path means nothing on a node
        spec = dataclasses.replace(spec, argv=argv, env=env)
        try:
            worker = await self._launcher.launch(spec)
        except StartupError as exc:
            return {"error": str(exc)}
        self._worker = worker
        return {
            "address": worker.address,
            "pid": worker.pid,
            "node": ray.get_runtime_context().get_node_id(),
            "host": socket.gethostname(),
            "same_host": same_host,
            "actor_pid": os.getpid(),
        }

    async def wait(self) -> tuple[int, str]:
        """Once the worker has ended: its exit code and stderr tail."""
        worker = self._require()
        code = await worker.wait()
        return code, worker.stderr_tail()

    async def stop(self, grace: float) -> int:
        """SIGTERM the worker's group, SIGKILL after ``grace``; its exit code."""
        worker = self._require()
        code = await worker.stop(grace)
        await self._launcher.close()
        return code

    async def kill_worker(self) -> None:
        """SIGKILL the worker's group now (``wait`` then reports the exit)."""
        if self._worker is not None:
            self._worker.kill()

    async def stderr_tail(self, lines: int = 40) -> str:
        return self._worker.stderr_tail(lines) if self._worker is not None else ""

    async def rss(self) -> int | None:
        return self._worker.rss() if self._worker is not None else None

    def _require(self) -> LocalWorker:
        if self._worker is None:
            raise RuntimeError("this worker host has not started a worker")
        return self._worker
