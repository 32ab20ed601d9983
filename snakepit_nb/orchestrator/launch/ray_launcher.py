"""The Ray launcher: each worker a Ray actor on a Ray cluster, gRPC staying the data plane.

    >>> client = sp.start(workers=4, launcher=sp.RayLauncher(address="ray://head:10001"))
    >>> client = sp.start(launcher="ray")         # RAY_ADDRESS, else a local Ray of our own

Ray places the workers and we write no scheduler: each worker is a
:class:`~snakepit_nb.orchestrator.launch.ray_host.WorkerHost` actor (``num_cpus``,
``num_gpus``, ``resources``, ``runtime_env`` as given), spread across nodes by default
(``placement="spread"``; ``"pack"`` lets Ray pack them; a Ray scheduling strategy object is
passed through). The actor starts our worker server on its node and returns its address; the
pool then talks gRPC to it as to a local worker, so sessions, variables, kernel tools, streams,
cancellation and the widgets are unchanged.

Supervision: the actor's ``wait`` call returns the worker's exit code; an actor or a node that
dies fails that call (``RayActorError``), which counts as a SIGKILL. Either way the pool fails
the worker's calls with ``WorkerCrashedError`` and starts a replacement through
:meth:`RayLauncher.launch`, which Ray places on a live node, under the same restart intensity
rules as local workers. Every ended worker's actor is killed at once, so its CPUs go back to
the cluster; ``close()`` kills every actor, and the actors die with their driver (this kernel)
since none is detached.

Security: unless every node is on this machine, the runtime makes a TLS certificate of its own
(``tls=None`` decides so; ``tls=True`` forces it), hands it with the token to each actor at
creation, and both sides pin it: the workers listen on their node's address with TLS only, and
the orchestrator serves them on a TLS-only port of its own. Plain loopback otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import psutil

from snakepit_nb._errors import ClosedError, ConfigurationError, StartupError
from snakepit_nb.orchestrator.launch.base import (
    LaunchedWorker,
    Launcher,
    Placement,
    WorkerNetwork,
    WorkerSpec,
    describe_exit,
)
from snakepit_nb.orchestrator.launch.ray_host import WorkerHost, machine_id
from snakepit_nb.orchestrator.launch.ray_local import (
    quiet_ray_init,
    start_local_ray,
    track_local_ray,
)
from snakepit_nb.orchestrator.launch.registry import check_id
from snakepit_nb.protocol.tls import TlsIdentity

if TYPE_CHECKING:
    import ray

__all__ = ["RayLauncher", "RayWorker", "import_ray"]

log = logging.getLogger(__name__)

_EXTRA_HINT = "install it with: pip install 'snakepit_nb[ray]'"
_PLACEMENTS = {"spread": "SPREAD", "pack": "DEFAULT"}
# After ray.kill, how long the actor's pending wait() may take to fail before we stop waiting.
_KILL_SETTLE = 5.0
_STOP_SLACK = 5.0


def import_ray() -> Any:
    """``import ray``, or a ConfigurationError naming the extra that provides it."""
    try:
        import ray
    except ImportError as exc:
        raise ConfigurationError(
            f"sp.RayLauncher needs Ray, which is not installed ({exc}); {_EXTRA_HINT}"
        ) from exc
    return ray


def _ref_future(ref: ray.ObjectRef[Any]) -> asyncio.Future[Any]:
    return asyncio.wrap_future(ref.future())


def _local_addresses() -> set[str]:
    addresses = {"127.0.0.1", "::1", "localhost"}
    with contextlib.suppress(OSError):
        for entries in psutil.net_if_addrs().values():
            addresses.update(entry.address.split("%")[0] for entry in entries)
    return addresses


class RayWorker(LaunchedWorker):
    """A worker server on a Ray node, behind its :class:`WorkerHost` actor."""

    def __init__(
        self,
        *,
        launcher: RayLauncher,
        worker_id: str,
        actor: Any,
        info: Mapping[str, Any],
        tls: TlsIdentity | None,
    ) -> None:
        self.worker_id = worker_id
        self.pid: int | None = int(info["pid"])
        self.address = str(info["address"])
        self.started_at = time.time()
        self.placement = Placement(
            node=str(info["node"]),
            host=str(info["host"]),
            same_host=bool(info["same_host"]),
            tls=tls,
        )
        self.actor = actor
        self.actor_pid = int(info["actor_pid"])
        self._launcher = launcher
        self._ray = launcher.ray
        loop = asyncio.get_running_loop()
        self._exit: asyncio.Future[int] = loop.create_future()
        self._tail = ""
        self._rss: int | None = None
        self._refresh: asyncio.Future[Any] | None = None
        self._released = False
        self._watch = loop.create_task(self._watch_exit(), name=f"snakepit-ray-{worker_id}")

    def __repr__(self) -> str:
        state = "alive" if self.is_alive() else describe_exit(self.returncode())
        return (
            f"<RayWorker {self.worker_id} pid={self.pid} node={self.placement.node[:12]} "
            f"{self.address} {state}>"
        )

    async def _watch_exit(self) -> None:
        try:
            code, tail = await _ref_future(self.actor.wait.remote())
            self._tail = str(tail)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the actor or its node died: the worker went with it
            code = -int(signal.SIGKILL)
            self._tail = self._tail or f"(its Ray actor died: {_first_line(exc)})"
        self._report(int(code))

    def _report(self, code: int) -> None:
        self.release()
        self._launcher._forget(self)
        if not self._exit.done():
            self._exit.set_result(code)
            log.debug("ray worker %s exited with %s", self.worker_id, describe_exit(code))

    def release(self) -> None:
        """Kill the actor (no restart): its CPUs and memory go back to the cluster."""
        if self._released:
            return
        self._released = True
        with contextlib.suppress(Exception):
            self._ray.kill(self.actor, no_restart=True)

    # ---- the LaunchedWorker interface ---------------------------------------------------

    def is_alive(self) -> bool:
        return not self._exit.done()

    async def wait(self) -> int:
        return await asyncio.shield(self._exit)

    def returncode(self) -> int | None:
        return self._exit.result() if self._exit.done() else None

    async def stop(self, grace: float = 2.0) -> int:
        if self._exit.done():
            return self._exit.result()
        try:
            code = await asyncio.wait_for(
                _ref_future(self.actor.stop.remote(grace)), timeout=grace + _STOP_SLACK
            )
        except asyncio.CancelledError:
            self.kill()
            raise
        except Exception:  # the actor is gone or does not answer: kill it
            code = -int(signal.SIGKILL)
        self.release()
        with contextlib.suppress(TimeoutError):
            return await asyncio.wait_for(asyncio.shield(self._exit), timeout=_KILL_SETTLE)
        self._report(int(code))
        return self._exit.result()

    def kill(self) -> None:
        if self._exit.done():
            return
        with contextlib.suppress(Exception):
            self.actor.kill_worker.remote()
        # If the actor cannot do it (hung, its node gone), killing the actor ends the worker
        # too (its parent-death signal); either way the exit is reported.
        loop = asyncio.get_running_loop()
        loop.call_later(1.0, self._kill_actor_if_alive)

    def _kill_actor_if_alive(self) -> None:
        if self._exit.done():
            return
        self.release()
        asyncio.get_running_loop().call_later(_KILL_SETTLE, self._give_up_waiting)

    def _give_up_waiting(self) -> None:
        if not self._exit.done():
            self._tail = self._tail or "(its Ray actor was killed and did not report back)"
            self._report(-int(signal.SIGKILL))

    def stderr_tail(self, lines: int = 40) -> str:
        if self.is_alive():
            self._refresh_later()
        text = self._tail.rstrip("\n")
        return "\n".join(text.splitlines()[-lines:]) if lines > 0 else ""

    def rss(self) -> int | None:
        """The last resident size the actor reported (refreshed in the background)."""
        if not self.is_alive():
            return None
        self._refresh_later()
        return self._rss

    def _refresh_later(self) -> None:
        if self._refresh is not None and not self._refresh.done():
            return
        try:
            both = asyncio.gather(
                _ref_future(self.actor.rss.remote()), _ref_future(self.actor.stderr_tail.remote())
            )
        except Exception:
            return
        self._refresh = both

        def done(future: asyncio.Future[Any]) -> None:
            if future.cancelled() or future.exception() is not None:
                return
            rss, tail = future.result()
            self._rss = rss
            if self.is_alive():
                self._tail = tail

        both.add_done_callback(done)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


class RayLauncher(Launcher):
    """Starts workers as Ray actors; see the module docstring.

    ``address``: the Ray cluster (``"auto"``, ``"ray://HOST:10001"``, ``"HOST:6379"``);
    default ``RAY_ADDRESS``, else a Ray of our own on loopback without a dashboard, which ends
    with this process however it ends (``ray_local.py``). When Ray is already initialized in
    this process, that connection is used. ``num_cpus``,
    ``num_gpus``, ``resources`` and ``runtime_env`` are each worker actor's Ray options;
    ``placement``: ``"spread"`` (default: across nodes), ``"pack"``, or a Ray scheduling
    strategy. ``tls``: None (TLS unless every node is on this machine), True or False (False
    refuses to start a worker on another machine).
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        num_cpus: float = 1,
        num_gpus: float = 0,
        resources: Mapping[str, float] | None = None,
        runtime_env: Mapping[str, Any] | None = None,
        placement: str | Any = "spread",
        tls: bool | None = None,
        stop_grace: float = 2.0,
        run_id: str | None = None,
    ) -> None:
        self.ray = import_ray()
        for name, value in (("num_cpus", num_cpus), ("num_gpus", num_gpus)):
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ConfigurationError(f"{name} must be a number >= 0, not {value!r}")
        if isinstance(placement, str) and placement not in _PLACEMENTS:
            raise ConfigurationError(
                f"placement must be 'spread', 'pack' or a Ray scheduling strategy, not "
                f"{placement!r}"
            )
        if tls not in (None, True, False):
            raise ConfigurationError(f"tls must be None, True or False, not {tls!r}")
        self.address = address
        self.num_cpus = num_cpus
        self.num_gpus = num_gpus
        self.resources = dict(resources or {})
        self.runtime_env = dict(runtime_env) if runtime_env is not None else None
        self.placement = placement
        self.tls_mode = tls
        self.stop_grace = stop_grace
        self.run_id = check_id(run_id or f"ray-{time.time_ns():x}", "run id")
        self.identity: TlsIdentity | None = None
        self._kernel_machine = machine_id()
        self._host_class: Any = None
        self._workers: set[RayWorker] = set()
        self._starting: set[Any] = set()
        self._prepared = False
        self._closed = False

    def __repr__(self) -> str:
        where = self.address or "RAY_ADDRESS / a local Ray"
        return f"<RayLauncher {where} num_cpus={self.num_cpus} placement={self.placement!r}>"

    # ---- connecting ---------------------------------------------------------------------

    async def prepare_network(self) -> WorkerNetwork | None:
        """Connect to Ray (in a thread: it takes seconds) and decide on TLS."""
        await asyncio.to_thread(self._connect)
        self._prepared = True
        if not self.identity:
            return None
        callback = self.ray.util.get_node_ip_address()
        return WorkerNetwork(tls=self.identity, callback_host=callback)

    def _connect(self) -> None:
        ray = self.ray
        if not ray.is_initialized():
            import os

            address = self.address or os.environ.get("RAY_ADDRESS") or None
            if address is None:
                # A cluster of one, on loopback, that ends with this process.
                start_local_ray(ray)
            else:
                with quiet_ray_init():
                    ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
        if self.tls_mode is None:
            local = _local_addresses()
            remote = [
                node["NodeManagerAddress"]
                for node in ray.nodes()
                if node.get("Alive") and node.get("NodeManagerAddress") not in local
            ]
            use_tls = bool(remote)
        else:
            use_tls = self.tls_mode
        if use_tls and self.identity is None:
            self.identity = TlsIdentity.generate()
        self._host_class = ray.remote(WorkerHost)

    def _options(self) -> dict[str, Any]:
        strategy = self.placement
        if isinstance(strategy, str):
            strategy = _PLACEMENTS[strategy]
        options: dict[str, Any] = {
            "num_cpus": self.num_cpus,
            "num_gpus": self.num_gpus,
            "scheduling_strategy": strategy,
            "max_restarts": 0,  # the pool replaces workers itself
        }
        if self.resources:
            options["resources"] = self.resources
        if self.runtime_env is not None:
            options["runtime_env"] = self.runtime_env
        return options

    # ---- the Launcher interface ---------------------------------------------------------

    async def launch(self, spec: WorkerSpec) -> RayWorker:
        if self._closed:
            raise ClosedError(
                "this RayLauncher was closed with its pool; pass a new sp.RayLauncher(...) to "
                "sp.start()"
            )
        if not self._prepared:
            await self.prepare_network()
        if spec.startup_timeout <= 0:
            raise ConfigurationError("startup_timeout must be a positive number of seconds")
        env = dict(spec.env)
        if self.identity is not None:
            env.update(self.identity.env())
        spec = WorkerSpec(
            worker_id=spec.worker_id,
            argv=list(spec.argv),
            env=env,
            cwd=spec.cwd,
            startup_timeout=spec.startup_timeout,
        )
        actor = self._host_class.options(**self._options()).remote(self.run_id)
        self._starting.add(actor)
        try:
            info = await asyncio.wait_for(
                _ref_future(
                    actor.start.remote(
                        spec,
                        bind_node=self.identity is not None,
                        kernel_machine=self._kernel_machine,
                    )
                ),
                timeout=spec.startup_timeout,
            )
        except TimeoutError:
            self._kill_actor(actor)
            raise StartupError(
                f"worker {spec.worker_id} did not start on the Ray cluster within "
                f"{spec.startup_timeout:g} s; Ray may have no node with room for "
                f"num_cpus={self.num_cpus:g}, num_gpus={self.num_gpus:g}"
                f"{', resources=' + str(self.resources) if self.resources else ''} (available "
                f"now: {self._available()}); add nodes, ask for less, or raise startup_timeout"
            ) from None
        except BaseException as exc:
            self._kill_actor(actor)
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise StartupError(
                f"worker {spec.worker_id}'s Ray actor failed: {_first_line(exc)}"
            ) from exc
        finally:
            self._starting.discard(actor)
        if "error" in info:
            self._kill_actor(actor)
            raise StartupError(f"on its Ray node, {info['error']}")
        worker = RayWorker(
            launcher=self, worker_id=spec.worker_id, actor=actor, info=info, tls=self.identity
        )
        self._workers.add(worker)
        if not worker.placement.same_host and self.identity is None:
            await worker.stop(0.5)
            raise StartupError(
                f"worker {spec.worker_id} was placed on {worker.placement.host}, another "
                "machine, but TLS is off (tls=False); start with sp.RayLauncher(tls=True) or "
                "None, so the orchestrator and the workers talk TLS with a pinned certificate"
            )
        if self._closed:
            await worker.stop(0.5)
            raise ClosedError(f"the launcher was closed while worker {spec.worker_id} started")
        # A worker's start may have brought up more of a local Ray of ours (its agents).
        await asyncio.to_thread(track_local_ray)
        return worker

    def _kill_actor(self, actor: Any) -> None:
        with contextlib.suppress(Exception):
            self.ray.kill(actor, no_restart=True)

    def _available(self) -> str:
        try:
            free = self.ray.available_resources()
        except Exception:
            return "unknown"
        keys = ("CPU", "GPU", *self.resources)
        return ", ".join(f"{key}={free.get(key, 0):g}" for key in keys)

    def workers(self) -> list[RayWorker]:
        """Workers started by this launcher that have not ended yet."""
        return list(self._workers)

    def _forget(self, worker: RayWorker) -> None:
        self._workers.discard(worker)

    async def close(self) -> None:
        """Stop every worker (SIGTERM, SIGKILL after ``stop_grace``) and kill its actor."""
        self._closed = True
        workers = list(self._workers)
        if workers:
            await asyncio.gather(
                *(w.stop(self.stop_grace) for w in workers), return_exceptions=True
            )
        for worker in workers:
            worker.release()
        for actor in list(self._starting):
            self._kill_actor(actor)
