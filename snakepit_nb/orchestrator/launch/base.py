"""Launchers: how worker processes are started, found, watched and stopped.

The pool never touches processes itself; it asks a :class:`Launcher` to turn a
:class:`WorkerSpec` (argv, environment, start-up deadline) into a :class:`LaunchedWorker`
(an address to dial, liveness, an exit code, stop and kill). That seam is what lets the same
pool run its workers as local processes today and on a cluster engine later.

The interface, and how a cluster launcher (Ray, one actor per worker) implements it:

``Launcher.launch(spec)``
    *Placement* and start-up. Local: fork+exec the argv in its own session, wait for the ready
    file. Ray: ``WorkerHost.options(num_cpus=..., scheduling_strategy=...).remote(spec)``, an
    actor whose constructor starts the same worker program with the same environment, then
    ``await host.address.remote()`` bounded by ``spec.startup_timeout`` (Ray can leave an actor
    pending for ever when no node has room, so the deadline is essential). Failure is a
    :class:`~snakepit_nb._errors.StartupError` carrying the worker's stderr tail (the actor
    returns it).
``LaunchedWorker.address``
    *Address reporting*: what the pool dials, ``127.0.0.1:PORT`` or ``unix:/path`` locally,
    ``NODE_IP:PORT`` from the actor (the worker must then bind that node's interface, with mTLS).
``LaunchedWorker.is_alive()`` / ``wait()`` / ``returncode()``
    *Liveness*. Local: a pidfd (or a waiter thread) reaps the process the moment it exits.
    Ray: ``wait()`` awaits the actor's ``run.remote()`` call that returns the worker program's
    exit code; an ``ActorDiedError`` maps to a negative code.
``LaunchedWorker.stop(grace)`` / ``kill()``
    *Kill*. Local: SIGTERM to the process group, SIGKILL after ``grace``, reaped.
    Ray: ``host.stop.remote(grace)`` (the actor does the same to its child), then
    ``ray.kill(host, no_restart=True)``.
``LaunchedWorker.stderr_tail()`` / ``rss()``
    Diagnostics for errors and recycling. Ray: actor methods reading the worker's log and
    psutil on the node.
``Launcher.close()``
    Stop everything this launcher started (Ray: kill the actors, remove placement groups).
``LaunchedWorker.placement``
    Where the worker runs (:class:`Placement`): its node (the Ray node id, or this machine's
    host name), its host name, whether it shares this machine (``same_host``: the data plane
    may use shared memory with it) and the TLS identity to dial it with (None: plain
    loopback). Optional: workers without one are local (:func:`placement_of`).
``NetworkLauncher.prepare_network()``
    Optional, awaited before the orchestrator serves: a launcher whose workers may run on other
    machines returns the runtime's TLS identity and the interface the orchestrator must serve
    them on (:class:`WorkerNetwork`).

The implementations: :mod:`~snakepit_nb.orchestrator.launch.local` (processes on this
machine) and :mod:`~snakepit_nb.orchestrator.launch.ray_launcher` (Ray actors).
"""

from __future__ import annotations

import functools
import signal
import socket
from abc import abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

# ``<run id>.<launch id>``: unique to one start of one worker and inherited by every process
# its tools start; the worker's guardian ends them by it when the worker is gone.
from snakepit_nb._processes import LAUNCH_ENV

if TYPE_CHECKING:
    from snakepit_nb.protocol.tls import TlsIdentity

__all__ = [
    "LANE_DIR_ENV",
    "LAUNCH_ENV",
    "PARENT_PID_ENV",
    "READY_FILE_ENV",
    "SOCKET_DIR_ENV",
    "TOKEN_ENV",
    "WORKER_ID_ENV",
    "LaunchedWorker",
    "Launcher",
    "NetworkLauncher",
    "Placement",
    "WorkerNetwork",
    "WorkerSpec",
    "describe_exit",
    "local_placement",
    "parse_ready_address",
    "placement_of",
]

READY_FILE_ENV = "SNAKEPIT_READY_FILE"
TOKEN_ENV = "SNAKEPIT_NB_TOKEN"
WORKER_ID_ENV = "SNAKEPIT_NB_WORKER_ID"
PARENT_PID_ENV = "SNAKEPIT_NB_PARENT_PID"
SOCKET_DIR_ENV = "SNAKEPIT_NB_SOCKET_DIR"
#: A private directory where a worker on this machine opens its lane (protocol/lane.py);
#: set to "" in a pool's ``env=`` to serve no lane (every call then goes over gRPC).
LANE_DIR_ENV = "SNAKEPIT_NB_LANE_DIR"


@dataclass(frozen=True)
class WorkerSpec:
    """What to start: built by the pool from its Config.

    ``env`` is layered over the launcher's own environment; the launcher adds the ready-file
    path, parent pid, worker id and run marker itself.
    """

    worker_id: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    startup_timeout: float = 30.0


@dataclass(frozen=True)
class Placement:
    """Where a launched worker runs, and how to reach it safely."""

    node: str  # the Ray node id (hex) for Ray workers; this machine's host name for local ones
    host: str  # the host name of the machine the worker runs on
    same_host: bool  # shares this machine: shared memory and unix sockets can reach it
    tls: TlsIdentity | None = None  # dial it with TLS pinned to this identity (None: plain)


@functools.cache
def local_placement() -> Placement:
    """The placement of a worker process on this machine."""
    name = socket.gethostname()
    return Placement(node=name, host=name, same_host=True)


def placement_of(worker: object) -> Placement:
    """``worker.placement``, or this machine for workers that do not say (a local process)."""
    placement = getattr(worker, "placement", None)
    return placement if isinstance(placement, Placement) else local_placement()


@dataclass(frozen=True)
class WorkerNetwork:
    """What the orchestrator's server needs for workers on other machines."""

    tls: TlsIdentity  # served on a port of its own, pinned to this identity
    callback_host: str  # the interface of this machine those workers reach it on


@runtime_checkable
class LaunchedWorker(Protocol):
    """A started worker: where to reach it, whether it lives, how to end it."""

    worker_id: str
    pid: int | None
    address: str
    started_at: float  # wall-clock time.time() of the spawn

    @abstractmethod
    def is_alive(self) -> bool: ...

    @abstractmethod
    async def wait(self) -> int:
        """The exit code (negative: killed by that signal), once the worker has ended."""

    @abstractmethod
    def returncode(self) -> int | None: ...

    @abstractmethod
    async def stop(self, grace: float = 2.0) -> int:
        """SIGTERM the process group, SIGKILL after ``grace``; reaped; returns the exit code."""

    @abstractmethod
    def kill(self) -> None:
        """SIGKILL the process group now (the exit is still reaped and reported by wait())."""

    @abstractmethod
    def stderr_tail(self, lines: int = 40) -> str: ...

    @abstractmethod
    def rss(self) -> int | None:
        """Resident memory of the worker process in bytes, None once it has ended."""


@runtime_checkable
class Launcher(Protocol):
    """Starts workers; see the module docstring for a cluster implementation."""

    @abstractmethod
    async def launch(self, spec: WorkerSpec) -> LaunchedWorker:
        """Start a worker and return once it is ready; StartupError (stderr tail) if not."""

    @abstractmethod
    async def close(self) -> None:
        """Stop every worker this launcher started."""


@runtime_checkable
class NetworkLauncher(Protocol):
    """A launcher whose workers may run on other machines (see the module docstring)."""

    async def prepare_network(self) -> WorkerNetwork | None:
        """Connect to the cluster; the TLS identity and callback interface, or None when
        every worker will share this machine (plain loopback then)."""


def describe_exit(code: int | None) -> str:
    """How a process ended: ``"exit code 3"``, ``"SIGKILL"`` (-9), ``"an unknown status"``."""
    if code is None:
        return "an unknown status"
    if code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


def parse_ready_address(text: str) -> str | None:
    """The address in a ready file: a bare port, ``HOST:PORT`` or ``unix:PATH``.

    Returns None for an empty file (not written yet); raises ValueError for anything else.
    Wildcard hosts (the published worker listens on all interfaces) are dialled on loopback.
    """
    line = text.strip().splitlines()[0].strip() if text.strip() else ""
    if not line:
        return None
    if line.startswith("unix:"):
        if len(line) <= len("unix:"):
            raise ValueError("empty unix socket path")
        return line
    host, sep, port_text = line.rpartition(":")
    if not sep:
        host, port_text = "", line
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{line!r} is not a port, HOST:PORT or unix:PATH")
    host = host.strip("[]")
    if host in ("", "0.0.0.0", "::", "localhost", "*"):
        host = "127.0.0.1"
    return f"[{host}]:{port_text}" if ":" in host else f"{host}:{port_text}"
