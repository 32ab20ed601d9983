"""A small real worker stand-in that follows the launch contract, plus helpers for launcher tests.

Run as a script it behaves like ``python -m snakepit_nb.worker`` as far as process management
is concerned (without a guardian: what its children do after it dies is the sweep's to fix):
it arms PR_SET_PDEATHSIG(SIGKILL) first and checks its parent, ignores SIGINT, exits 0 on
SIGTERM, binds a loopback port (or a unix socket in ``SNAKEPIT_NB_SOCKET_DIR``) and
writes the address to ``SNAKEPIT_READY_FILE`` atomically. Flags make it misbehave in the ways
the launcher must handle. Imported by pytest it defines no tests, only helpers.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

STANDIN = str(Path(__file__).resolve())


def standin_argv(*flags: str) -> list[str]:
    """argv for the stand-in worker with the given flags."""
    return [sys.executable, STANDIN, *flags]


def wait_until(predicate: object, timeout: float, interval: float = 0.01) -> bool:
    """Poll ``predicate()`` until it is true or ``timeout`` passes; return its last value."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return bool(predicate())
        time.sleep(interval)


def pid_running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def exec_finished(pid: int, timeout: float = 5.0) -> bool:
    """Wait until ``pid``'s new program has its environment in ``/proc/<pid>/environ``.

    ``Popen`` returns once the child's ``execve`` has passed the point of no return, but
    the kernel fills in the new program's environment a little later; a scan of ``/proc``
    in between reads an empty one (seen under load).
    """

    def readable() -> bool:
        try:
            return bool(Path(f"/proc/{pid}/environ").read_bytes())
        except OSError:
            return False

    return wait_until(readable, timeout)


def pid_exists(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


def is_loopback(ip: str) -> bool:
    """127.0.0.1, ::1, or 127.0.0.1 seen through a dual-stack socket (::ffff:127.0.0.1)."""
    import ipaddress

    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def processes_with_marker(run_id: str) -> list[int]:
    """Live (non-zombie) pids whose environment carries SNAKEPIT_NB_POOL=<run_id>."""
    needle = f"SNAKEPIT_NB_POOL={run_id}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            env = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        if needle in env.split(b"\0") and pid_running(int(entry)):
            found.append(int(entry))
    return found


REAL_ADAPTER = "launcher_adapter:LauncherTestAdapter"
HERE = str(Path(__file__).resolve().parent)


def real_worker_env(token: str) -> dict[str, str]:
    """Environment for the real worker: the token, and this directory for the test adapter."""
    path = os.pathsep.join(p for p in (HERE, os.environ.get("PYTHONPATH", "")) if p)
    return {"SNAKEPIT_NB_TOKEN": token, "PYTHONPATH": path}


def real_worker_argv(orchestrator_address: str, run_id: str) -> list[str]:
    """argv of our real worker, per the launch contract (env from ``real_worker_env``)."""
    return [
        sys.executable, "-m", "snakepit_nb.worker", "--adapter", REAL_ADAPTER, "--port", "0",
        "--orchestrator-address", orchestrator_address, "--snakepit-run-id", run_id,
    ]  # fmt: skip


async def start_standin_orchestrator(token: str) -> tuple[object, str]:
    """A grpc.aio server on loopback answering what a starting worker calls (Ping, Heartbeat,
    RegisterTools), behind the real token interceptor. Returns (server, address)."""
    import grpc.aio

    from snakepit_nb.protocol import pb, pb_grpc
    from snakepit_nb.protocol.auth import TokenInterceptor

    class Servicer(pb_grpc.BridgeServiceServicer):  # type: ignore[misc]
        async def Ping(self, request: object, context: object) -> object:
            return pb.PingResponse(message="pong")

        async def Heartbeat(self, request: object, context: object) -> object:
            return pb.HeartbeatResponse(session_valid=True)

        async def RegisterTools(self, request: object, context: object) -> object:
            return pb.RegisterToolsResponse(success=True)

    server = grpc.aio.server(interceptors=[TokenInterceptor(token)])
    pb_grpc.add_BridgeServiceServicer_to_server(Servicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


def _arm_parent_death() -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    if libc.prctl(1, int(signal.SIGKILL), 0, 0, 0) != 0:  # PR_SET_PDEATHSIG
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    expected = os.environ.get("SNAKEPIT_NB_PARENT_PID")
    if expected and os.getppid() != int(expected):
        os._exit(3)


def _write_ready(text: str) -> None:
    path = os.environ["SNAKEPIT_READY_FILE"]
    tmp = f"{path}.tmp"
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def main() -> None:
    _arm_parent_death()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", default="ready")
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--ignore-term", action="store_true")
    parser.add_argument("--grandchild-pid-file", default="")
    parser.add_argument("--barrier", default="", help="dir: wait for --barrier-count peers")
    parser.add_argument("--barrier-count", type=int, default=0)
    args, _unknown = parser.parse_known_args()  # tolerate the contract flags

    if args.ignore_term:

        def ignore(*_: object) -> None:
            print("standin: SIGTERM ignored", file=sys.stderr, flush=True)

        signal.signal(signal.SIGTERM, ignore)
    else:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if args.grandchild_pid_file:
        child = subprocess.Popen(["sleep", "60"])
        Path(args.grandchild_pid_file).write_text(str(child.pid))

    if args.mode == "exit-before":
        print("standin: cannot import adapter 'nope.Missing'", file=sys.stderr, flush=True)
        sys.exit(1)
    if args.mode == "noise":
        for i in range(2000):
            print(f"noise line {i}: GRPC_READY is not a word here", flush=False)
        sys.stdout.flush()
    print("standin: starting up", file=sys.stderr, flush=True)
    if args.barrier:
        # Ready only once --barrier-count stand-ins run at the same time: a launcher that
        # started them one after the other (each awaiting the last one's readiness) never
        # gets there.
        barrier = Path(args.barrier)
        (barrier / str(os.getpid())).write_text("here")
        deadline = time.monotonic() + 30.0
        while len(list(barrier.iterdir())) < args.barrier_count:
            if time.monotonic() > deadline:
                print("standin: the other stand-ins never came", file=sys.stderr, flush=True)
                sys.exit(1)
            time.sleep(0.01)
    if args.delay:
        time.sleep(args.delay)
    if args.mode == "never-ready":
        print("standin: waiting for something that never comes", file=sys.stderr, flush=True)
        while True:
            time.sleep(3600)

    socket_dir = os.environ.get("SNAKEPIT_NB_SOCKET_DIR")
    if socket_dir:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        path = os.path.join(socket_dir, f"{os.environ['SNAKEPIT_NB_WORKER_ID']}.sock")
        sock.bind(path)
        address = f"unix:{path}"
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{sock.getsockname()[1]}"
    sock.listen(16)
    port = address.rsplit(":", 1)[1]
    if args.mode == "legacy-stdout":
        print(f"GRPC_READY:{port}", flush=True)
    elif args.mode == "bare-port":
        _write_ready(port)
    else:
        _write_ready(address)
    if args.mode == "exit-after-ready":
        os._exit(0)
    while True:
        with contextlib.suppress(OSError):
            conn, _ = sock.accept()
            conn.close()


if __name__ == "__main__":
    main()
