"""Workers as Ray actors on a real 2-node Ray cluster (ray.cluster_utils.Cluster), all on
127.0.0.1: placement on distinct nodes, calls, streams, variables and kernel tools from both
nodes, TLS pinned both ways, SIGKILL of a worker and of a whole node, close and a killed
driver releasing every CPU, the notebook, and the error without Ray.

One cluster serves the whole module (it takes seconds to start); the test that kills a node
adds a fresh one afterwards.
"""

from __future__ import annotations

import concurrent.futures
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from typing import Any

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # Ray on loopback, before it loads
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # and no usage report

import grpc
import nbformat
import paths
import psutil
import pytest
import ray
from nbclient import NotebookClient
from pool_support import wait_until
from ray.cluster_utils import Cluster

import snakepit_nb as sp
from snakepit_nb.orchestrator.launch.registry import ProcessRegistry
from snakepit_nb.protocol import pb, pb_grpc
from snakepit_nb.protocol.auth import token_metadata
from snakepit_nb.protocol.tls import TlsIdentity

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(180)]

NODE_CPUS = 2
TOTAL_CPUS = 2 * NODE_CPUS


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip.partition("%")[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback  # ::ffff:127.0.0.1, still loopback only
    return address.is_loopback


class RayCluster:
    def __init__(self) -> None:
        self.cluster = Cluster(
            initialize_head=True,
            head_node_args={
                "num_cpus": NODE_CPUS,
                "include_dashboard": False,
                # A lost node is noticed within seconds, not the default 30 s (and a node merely
                # slowed by a loaded machine is not taken for dead).
                "_system_config": {
                    "health_check_initial_delay_ms": 0,
                    "health_check_period_ms": 1000,
                    "health_check_failure_threshold": 5,
                },
            },
        )
        self.worker_node = self.cluster.add_node(num_cpus=NODE_CPUS)
        self.cluster.wait_for_nodes()
        ray.init(address=self.cluster.address, include_dashboard=False, log_to_driver=False)
        self.head_id = self.cluster.head_node.node_id

    @property
    def address(self) -> str:
        return str(self.cluster.address)

    def alive_nodes(self) -> set[str]:
        return {n["NodeID"] for n in ray.nodes() if n["Alive"]}

    def free_cpus(self) -> float:
        return float(ray.available_resources().get("CPU", 0.0))

    def replace_worker_node(self) -> None:
        self.worker_node = self.cluster.add_node(num_cpus=NODE_CPUS)
        self.cluster.wait_for_nodes()

    def close(self) -> None:
        ray.shutdown()
        self.cluster.shutdown()


@pytest.fixture(scope="module")
def cluster() -> Iterator[RayCluster]:
    made = RayCluster()
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def ray_clients(cluster: RayCluster) -> Iterator[Any]:
    """``make(**start_kwargs)`` -> a client whose workers are Ray actors; all closed after."""
    clients: list[Any] = []

    def make(**kwargs: Any) -> Any:
        launcher = kwargs.pop("launcher", None) or sp.RayLauncher(
            address=cluster.address, tls=kwargs.pop("tls", True)
        )
        kwargs.setdefault("workers", 2)
        kwargs.setdefault("startup_timeout", 60.0)
        client = sp.start(launcher=launcher, **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()
    wait_until(lambda: cluster.free_cpus() == TOTAL_CPUS, 30, "every CPU back after the test")


def by_node(client: Any) -> dict[str, Any]:
    return {w.node: w for w in client.status().workers}


def session_on(client: Any, worker_id: str) -> Any:
    """A session whose calls run on ``worker_id`` (strict affinity, found by asking)."""
    for _ in range(40):
        session = client.session(f"on-{worker_id}-{uuid.uuid4().hex[:8]}", strict_affinity=True)
        if session.call("whoami")["worker_id"] == worker_id:
            return session
    raise AssertionError(f"no session landed on {worker_id}")


def test_two_workers_on_two_distinct_nodes(cluster: RayCluster, ray_clients: Any) -> None:
    client = ray_clients()
    workers = client.status().workers
    assert len({w.node for w in workers}) == 2
    assert {w.node for w in workers} == cluster.alive_nodes()
    assert cluster.free_cpus() == TOTAL_CPUS - 2
    for w in workers:
        assert w.state == "ready"
        assert w.host == socket.gethostname()
        # pid is the worker server itself, a child of its actor on that node.
        proc = psutil.Process(w.pid)
        assert "snakepit_nb.worker" in " ".join(proc.cmdline())
        assert w.address.startswith("127.0.0.1:")
    placements = [w.placement for w in client.orchestrator.pool.launcher.workers()]
    assert all(p.same_host and p.tls is not None for p in placements)


def test_local_workers_report_this_host(client_factory: Any) -> None:
    client = client_factory(workers=1)
    (w,) = client.status().workers
    assert w.node == w.host == socket.gethostname()


def test_calls_streams_variables_and_kernel_tools_on_both_nodes(ray_clients: Any) -> None:
    client = ray_clients()
    asked: list[str] = []

    def kernel_side(name: str) -> str:
        asked.append(name)
        return f"hello {name} from the kernel"

    client.register_kernel_tool(kernel_side, name="greet")
    nodes = by_node(client)
    assert len(nodes) == 2
    for node, status in nodes.items():
        s = session_on(client, status.worker_id)
        me = s.call("whoami")
        assert me["pid"] == status.pid, node
        assert s.call("add", a=2, b=3) == 5
        stream = s.stream("count", n=20)
        chunks = list(stream)
        assert [c["i"] for c in chunks] == list(range(20))
        assert stream.result == 20
        assert s.call("incr_var", name="hits", by=2) == 2
        assert s.call("incr_var", name="hits", by=3) == 5
        assert s.vars["hits"] == 5
        s.vars["hits"] = 40
        assert s.call("incr_var", name="hits", by=2) == 42
        assert s.call("ask_kernel", tool="greet", name=status.worker_id) == (
            f"hello {status.worker_id} from the kernel"
        )
        # A notebook's function, pickled by value with the token, runs there too.
        assert s.call(lambda x: (x * 2, os.getpid()), 21) == (42, status.pid)
    assert sorted(asked) == sorted(w.worker_id for w in nodes.values())


def _ping(address: str, credentials: grpc.ChannelCredentials | None, token: str | None) -> Any:
    options = TlsIdentity.channel_options() if credentials is not None else []
    if credentials is None:
        channel = grpc.insecure_channel(address)
    else:
        channel = grpc.secure_channel(address, credentials, options=options)
    with channel:
        stub = pb_grpc.BridgeServiceStub(channel)
        return stub.Ping(pb.PingRequest(message="probe"), metadata=token_metadata(token), timeout=3)


def test_tls_is_pinned_and_plaintext_refused(ray_clients: Any) -> None:
    client = ray_clients()
    orch = client.orchestrator
    identity = orch.pool.launcher.identity
    assert identity is not None
    targets = [w.address for w in client.status().workers]
    assert orch.worker_address != orch.address  # the TLS-only port for workers
    targets.append(orch.worker_address)
    stranger = TlsIdentity.generate()
    for address in targets:
        # The runtime's certificate and token: answered.
        assert _ping(address, identity.channel_credentials(), orch.token).message
        # Plaintext: the TLS port refuses the connection.
        with pytest.raises(grpc.RpcError) as plain:
            _ping(address, None, orch.token)
        assert plain.value.code() == grpc.StatusCode.UNAVAILABLE
        # Another certificate (TLS, but not this runtime's): refused both ways.
        with pytest.raises(grpc.RpcError) as other:
            _ping(address, stranger.channel_credentials(), orch.token)
        assert other.value.code() == grpc.StatusCode.UNAVAILABLE
        # The pinned certificate without the token: refused.
        with pytest.raises(grpc.RpcError) as tokenless:
            _ping(address, identity.channel_credentials(), None)
        assert tokenless.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_without_tls_workers_stay_on_plain_loopback(cluster: RayCluster, ray_clients: Any) -> None:
    # Every node is on this machine, so the default (tls=None) keeps plain loopback.
    client = ray_clients(launcher=sp.RayLauncher(address=cluster.address))
    orch = client.orchestrator
    assert orch.pool.launcher.identity is None
    assert orch.worker_address == orch.address
    for w in client.status().workers:
        assert _ping(w.address, None, orch.token).message
    assert client.session("plain").call("add", a=1, b=1) == 2


def test_workers_on_this_machine_get_the_lane(ray_clients: Any) -> None:
    client = ray_clients()
    assert all(h.lane is not None for h in client.orchestrator.pool.handles)
    data = client.session("lane").call("nbytes", n=20 * 2**20)
    assert len(data) == 20 * 2**20


def elsewhere(launcher: Any) -> Any:
    # What a node on another machine sees: another boot id than the kernel's.
    launcher._kernel_machine = "another-machine"
    return launcher


def test_workers_on_another_machine_get_no_lane_and_need_tls(
    cluster: RayCluster, ray_clients: Any
) -> None:
    launcher = elsewhere(sp.RayLauncher(address=cluster.address, tls=True))
    client = ray_clients(launcher=launcher)
    assert not any(w.placement.same_host for w in launcher.workers())
    assert all(h.lane is None for h in client.orchestrator.pool.handles)
    s = client.session("far")
    assert len(s.call("nbytes", n=20 * 2**20)) == 20 * 2**20  # over gRPC, in chunks
    assert s.call("add", a=1, b=2) == 3
    assert s.map(lambda x: x + 1, range(100)) == list(range(1, 101))
    # Without TLS such a worker is refused, and nothing is left running.
    plain = elsewhere(sp.RayLauncher(address=cluster.address, tls=False))
    with pytest.raises(sp.StartupError, match="another machine, but TLS is off"):
        sp.start(workers=1, launcher=plain, startup_timeout=60)
    assert not plain.workers()


def test_sigkill_of_a_worker_process_fails_its_call_and_is_replaced(
    cluster: RayCluster, ray_clients: Any
) -> None:
    client = ray_clients()
    victim = client.status().workers[0]
    s = session_on(client, victim.worker_id)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        running = pool.submit(s.call, "slow", seconds=30)
        wait_until(lambda: any(w.in_flight for w in client.status().workers), 20, "the slow call")
        os.kill(victim.pid, signal.SIGKILL)
        with pytest.raises(sp.WorkerCrashedError) as crashed:
            running.result(timeout=30)
    assert crashed.value.exit_code == -signal.SIGKILL
    assert victim.worker_id in str(crashed.value)

    def replaced() -> Any:
        w = next(w for w in client.status().workers if w.worker_id == victim.worker_id)
        return w if w.state == "ready" and w.pid != victim.pid else None

    new = wait_until(replaced, 60, "the replacement worker")
    assert new.restarts == 1
    assert gone(victim.pid)
    # The dead worker's actor was released: two workers hold two CPUs, no more.
    wait_until(lambda: cluster.free_cpus() == TOTAL_CPUS - 2, 30, "the old actor's CPU back")
    assert session_on(client, victim.worker_id).call("add", a=1, b=2) == 3


def test_sigkill_of_an_actor_fails_its_call_and_spares_the_other_workers(
    cluster: RayCluster, ray_clients: Any
) -> None:
    client = ray_clients()
    victim, other = client.orchestrator.pool.launcher.workers()
    s = session_on(client, victim.worker_id)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        running = pool.submit(s.call, "slow", seconds=30)
        wait_until(lambda: any(w.in_flight for w in client.status().workers), 20, "the slow call")
        os.kill(victim.actor_pid, signal.SIGKILL)
        with pytest.raises(sp.WorkerCrashedError):
            running.result(timeout=30)
    wait_until(lambda: gone(victim.pid), 30, "the worker to die with its actor")
    # The dead actor's registry rows stay behind; the sweep the next local launcher on this
    # machine runs ends what that actor left, and nothing of the pool's other workers.
    report = ProcessRegistry().sweep(grace=1.0)
    assert other.pid not in report.killed
    assert not gone(other.pid)

    def replaced() -> Any:
        w = next(w for w in client.status().workers if w.worker_id == victim.worker_id)
        return w if w.state == "ready" and w.pid != victim.pid else None

    wait_until(replaced, 60, "the replacement worker")
    survivor = next(w for w in client.status().workers if w.worker_id == other.worker_id)
    assert (survivor.pid, survivor.state, survivor.restarts) == (other.pid, "ready", 0)
    assert session_on(client, other.worker_id).call("add", a=1, b=1) == 2


def test_restart_intensity_gives_a_crash_looping_slot_up(
    cluster: RayCluster, ray_clients: Any
) -> None:
    client = ray_clients(workers=1, max_restarts=0)
    (victim,) = client.status().workers
    os.kill(victim.pid, signal.SIGKILL)
    failed = wait_until(
        lambda: next((w for w in client.status().workers if w.state == "failed"), None),
        30,
        "the slot to be given up",
    )
    assert "SIGKILL" in failed.last_error
    wait_until(lambda: cluster.free_cpus() == TOTAL_CPUS, 30, "the given-up actor's CPU back")
    with pytest.raises(sp.WorkerFailedError):
        client.session("x").call("add", a=1, b=1)


def test_close_releases_every_actor_and_cpu(cluster: RayCluster, ray_clients: Any) -> None:
    client = ray_clients()
    pids = [w.pid for w in client.status().workers]
    actor_pids = [w.actor_pid for w in client.orchestrator.pool.launcher.workers()]
    assert cluster.free_cpus() == TOTAL_CPUS - 2
    client.close()
    wait_until(lambda: cluster.free_cpus() == TOTAL_CPUS, 30, "every CPU back after close")
    wait_until(
        lambda: all(gone(p) for p in [*pids, *actor_pids]),
        30,
        "the workers and their actors to be gone",
    )


DRIVER = textwrap.dedent(
    """
    import json, sys
    import snakepit_nb as sp
    client = sp.start(workers=2, launcher=sp.RayLauncher(address=sys.argv[1], tls=True),
                      startup_timeout=60)
    print(json.dumps([w.pid for w in client.status().workers]), flush=True)
    sys.stdin.read()
    """
)


def test_a_killed_driver_releases_its_actors_and_workers(cluster: RayCluster) -> None:
    with subprocess.Popen(
        [sys.executable, "-c", DRIVER, cluster.address],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as driver:
        try:
            assert driver.stdout is not None
            pids = json.loads(driver.stdout.readline())
            assert len(pids) == 2
            assert all(psutil.pid_exists(p) for p in pids)
            wait_until(lambda: cluster.free_cpus() == TOTAL_CPUS - 2, 30, "the driver's actors")
            driver.kill()  # a kernel dying: no close, no exit hooks
            driver.wait(10)
            wait_until(lambda: cluster.free_cpus() == TOTAL_CPUS, 60, "the dead driver's CPUs back")
            wait_until(lambda: all(gone(p) for p in pids), 30, "its workers to be gone")
        finally:
            driver.kill()


def test_ray_listens_on_loopback_only(cluster: RayCluster, ray_clients: Any) -> None:
    ray_clients()
    listening: set[tuple[str, int, str]] = set()
    for proc in psutil.Process().children(recursive=True):
        try:
            conns = proc.net_connections(kind="inet")
            name = proc.name()
        except psutil.Error:
            continue
        for conn in conns:
            if conn.status == psutil.CONN_LISTEN:
                listening.add((conn.laddr.ip, conn.laddr.port, name))
    assert listening, "found no listening socket of Ray's processes"
    beyond = sorted(entry for entry in listening if not is_loopback(entry[0]))
    assert not beyond, beyond


def test_the_ray_notebook_runs_on_the_cluster(
    cluster: RayCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = paths.ROOT / "notebooks" / "ray_cluster.ipynb"
    nb = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")
    monkeypatch.setenv("RAY_ADDRESS", cluster.address)
    NotebookClient(
        nb,
        timeout=180,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
        store_widget_state=True,
    ).execute()
    text = json.dumps([c.get("outputs", []) for c in nb.cells if c.cell_type == "code"])
    # The notebook prints which node each worker runs on: two distinct nodes.
    for node in cluster.alive_nodes():
        assert node[:12] in text
    assert "Traceback" not in text
    wait_until(lambda: cluster.free_cpus() == TOTAL_CPUS, 30, "the notebook's CPUs back")


def test_the_magic_starts_workers_on_the_cluster_it_names(cluster: RayCluster) -> None:
    from IPython.core.interactiveshell import InteractiveShell

    from snakepit_nb.notebook.runtime import runtime_for

    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "snakepit_nb")
    try:
        shell.user_ns["ray_address"] = cluster.address
        client = shell.run_line_magic(
            "snakepit", "start --ray {ray_address} -n 2 --startup-timeout 60"
        )
        launcher = client.orchestrator.pool.launcher
        assert isinstance(launcher, sp.RayLauncher)
        assert launcher.address == cluster.address
        assert {w.node for w in client.status().workers} == cluster.alive_nodes()
        shell.run_line_magic("snakepit", "stop")
        assert client.closed
    finally:
        runtime_for(shell).stop()
        shell.run_line_magic("unload_ext", "snakepit_nb")
    wait_until(lambda: cluster.free_cpus() == TOTAL_CPUS, 30, "the magic's CPUs back")


def test_death_of_a_whole_node_replaces_its_worker_on_a_live_node(
    cluster: RayCluster, ray_clients: Any
) -> None:
    client = ray_clients()
    nodes = by_node(client)
    lost_node = cluster.worker_node.node_id
    victim = nodes[lost_node]
    (bystander,) = (w for w in nodes.values() if w is not victim)
    s = session_on(client, victim.worker_id)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        running = pool.submit(s.call, "slow", seconds=60)
        wait_until(lambda: any(w.in_flight for w in client.status().workers), 20, "the slow call")
        cluster.cluster.remove_node(cluster.worker_node, allow_graceful=False)
        with pytest.raises(sp.WorkerCrashedError):
            running.result(timeout=60)

    def replaced() -> Any:
        w = next(w for w in client.status().workers if w.worker_id == victim.worker_id)
        return w if w.state == "ready" and w.node != lost_node else None

    new = wait_until(replaced, 90, "a replacement on a live node")
    assert new.node == cluster.head_id
    # The lost node's processes notice their raylet is gone; the worker goes with its actor.
    wait_until(lambda: gone(victim.pid), 60, "the lost node's worker process to end")
    # The pool serves again, every worker on the live node.
    wait_until(
        lambda: all(
            w.state == "ready" and w.node == cluster.head_id for w in client.status().workers
        ),
        90,
        "both workers ready on the live node",
    )
    assert client.session("after-the-loss").call("add", a=2, b=2) == 4
    # The worker on the live node was never touched.
    kept = next(w for w in client.status().workers if w.worker_id == bystander.worker_id)
    assert (kept.pid, kept.restarts) == (bystander.pid, 0)
    client.close()
    cluster.replace_worker_node()  # for the tests that may come after
    wait_until(lambda: cluster.free_cpus() == TOTAL_CPUS, 60, "the new node's CPUs")


MISSING_RAY = textwrap.dedent(
    """
    import sys
    sys.modules["ray"] = None  # what an interpreter without Ray sees: ImportError
    import snakepit_nb as sp
    for attempt in (lambda: sp.RayLauncher(), lambda: sp.start(launcher="ray")):
        try:
            attempt()
        except sp.ConfigurationError as exc:
            print(type(exc).__name__, exc)
        else:
            print("no error")
    """
)


def test_without_ray_the_error_names_the_extra() -> None:
    out = subprocess.run(
        [sys.executable, "-c", MISSING_RAY],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 2
    for line in lines:
        assert line.startswith("ConfigurationError")
        assert "pip install 'snakepit_nb[ray]'" in line
