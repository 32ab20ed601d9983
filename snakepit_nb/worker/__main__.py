"""``python -m snakepit_nb.worker``: one worker process, as the pool launches it.

    python -m snakepit_nb.worker --adapter pkg.mod:Class --port 0 \\
        --orchestrator-address 127.0.0.1:50051 --snakepit-run-id RUN

Environment (the launch contract): ``SNAKEPIT_READY_FILE`` (the address is written there once
serving), ``SNAKEPIT_NB_TOKEN``, ``SNAKEPIT_NB_WORKER_ID``, ``SNAKEPIT_NB_POOL``,
``SNAKEPIT_NB_PARENT_PID``, ``SNAKEPIT_NB_SOCKET_DIR``, ``SNAKEPIT_NB_LAUNCH`` (the launch's
marker, which the worker's guardian looks for in the tools' processes); optional
``SNAKEPIT_NB_THREADS``, ``SNAKEPIT_NB_MAX_MESSAGE_BYTES``, ``SNAKEPIT_NB_HEARTBEAT_INTERVAL``,
``SNAKEPIT_NB_HEARTBEAT_MISSES`` (or the published bridge's ``SNAKEPIT_HEARTBEAT_CONFIG``),
``SNAKEPIT_NB_PING_TIMEOUT`` (seconds to wait for the orchestrator at start-up, default 10),
``SNAKEPIT_NB_WORKER_OUTPUT`` (``off``: the tools' output is not captured for the kernel),
``SNAKEPIT_NB_OUTPUT_LINES`` (lines one call may show in its cell, default 1000);
on a Ray node ``SNAKEPIT_NB_BIND_HOST`` (the interface to listen on) and ``SNAKEPIT_NB_TLS_CERT``
with ``SNAKEPIT_NB_TLS_KEY`` (the runtime's certificate: TLS both ways, nothing in plaintext).
Flags of the published bridge that mean nothing here (``--snakepit-instance-name``...) are
accepted and ignored. Exit codes: 0 after SIGTERM, 2 when start-up failed (the reason is on
stderr), 3 when the parent died, 4 when the orchestrator went away.

Before anything else the worker arms its parent-death signal, becomes a child subreaper (its
tools' orphans stay its children) and forks its guardian (``worker/guardian.py``), which ends
the processes the tools started however the worker ends.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from snakepit_nb.worker.server import WorkerSettings

DEFAULT_ADAPTER = "snakepit_nb.adapters.showcase:ShowcaseAdapter"
EXIT_STARTUP_FAILED = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m snakepit_nb.worker",
        description="Run one snakepit_nb worker process (normally started by the pool).",
    )
    parser.add_argument("--adapter", default=DEFAULT_ADAPTER, help="pkg.module:ClassName")
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0: any)")
    parser.add_argument(
        "--orchestrator-address",
        "--elixir-address",
        dest="orchestrator_address",
        default=None,
        help="host:port or unix:/path of the orchestrator to call back",
    )
    parser.add_argument("--snakepit-run-id", dest="run_id", default="")
    parser.add_argument("--worker-id", default=None, help="default: $SNAKEPIT_NB_WORKER_ID")
    parser.add_argument("--threads", type=int, default=None, help="threads for sync tools")
    return parser


def _env_float(env: Mapping[str, str], key: str, default: float) -> float:
    try:
        return float(env[key])
    except (KeyError, ValueError):
        return default


def settings_from(argv: Sequence[str] | None, env: Mapping[str, str]) -> WorkerSettings:
    """WorkerSettings from the command line and the environment of the launch contract."""
    from snakepit_nb.protocol.auth import DEFAULT_MAX_MESSAGE_BYTES, TOKEN_ENV
    from snakepit_nb.protocol.tls import TlsIdentity
    from snakepit_nb.worker.server import WorkerSettings

    args, _ignored = _parser().parse_known_args(argv)
    interval = _env_float(env, "SNAKEPIT_NB_HEARTBEAT_INTERVAL", 2.0)
    misses = int(_env_float(env, "SNAKEPIT_NB_HEARTBEAT_MISSES", 3))
    published = env.get("SNAKEPIT_HEARTBEAT_CONFIG")
    if published and "SNAKEPIT_NB_HEARTBEAT_INTERVAL" not in env:
        try:
            config = json.loads(published)
            interval = float(config.get("interval_ms", interval * 1000)) / 1000
            misses = int(config.get("max_missed_heartbeats", misses))
        except (ValueError, TypeError, AttributeError):
            pass
    threads = args.threads or int(_env_float(env, "SNAKEPIT_NB_THREADS", 16))
    return WorkerSettings(
        adapter=args.adapter,
        worker_id=args.worker_id or env.get("SNAKEPIT_NB_WORKER_ID") or f"w-{os.getpid()}",
        port=args.port,
        orchestrator_address=args.orchestrator_address or None,
        run_id=args.run_id or env.get("SNAKEPIT_NB_POOL", ""),
        token=env.get(TOKEN_ENV) or None,
        ready_file=env.get("SNAKEPIT_READY_FILE") or None,
        socket_dir=env.get("SNAKEPIT_NB_SOCKET_DIR") or None,
        lane_dir=env.get("SNAKEPIT_NB_LANE_DIR") or None,
        max_message_bytes=int(
            _env_float(env, "SNAKEPIT_NB_MAX_MESSAGE_BYTES", DEFAULT_MAX_MESSAGE_BYTES)
        ),
        heartbeat_interval=max(0.05, interval),
        heartbeat_misses=max(1, misses),
        threads=max(1, threads),
        ping_timeout=max(0.1, _env_float(env, "SNAKEPIT_NB_PING_TIMEOUT", 10.0)),
        output=env.get("SNAKEPIT_NB_WORKER_OUTPUT", "") or "cell",
        output_lines=max(0, int(_env_float(env, "SNAKEPIT_NB_OUTPUT_LINES", 1000))),
        bind_host=env.get("SNAKEPIT_NB_BIND_HOST") or None,
        tls=TlsIdentity.from_env(env),
    )


async def _serve(settings: WorkerSettings) -> int:
    import asyncio
    import signal
    import traceback

    from snakepit_nb._errors import StartupError
    from snakepit_nb.worker.server import Worker

    worker = Worker(settings)
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, worker.request_stop)
    try:
        await worker.start()
    except StartupError as exc:
        sys.stderr.write(f"snakepit_nb worker {settings.worker_id} could not start: {exc}\n")
        if exc.__cause__ is not None:
            traceback.print_exception(exc.__cause__, file=sys.stderr)
        await worker.close()
        return EXIT_STARTUP_FAILED
    except Exception:
        sys.stderr.write(f"snakepit_nb worker {settings.worker_id} could not start:\n")
        traceback.print_exc(file=sys.stderr)
        await worker.close()
        return EXIT_STARTUP_FAILED
    return await worker.wait_stopped()


def main(argv: Sequence[str] | None = None) -> int:
    """Arm the parent-death guards first, then serve until SIGTERM (returns the exit code)."""
    from snakepit_nb.worker.guardian import start_guardian
    from snakepit_nb.worker.lifecycle import (
        ParentWatch,
        arm_parent_death,
        become_subreaper,
        ignore_sigint,
        parent_pid_from_env,
    )

    parent = parent_pid_from_env()
    arm_parent_death(parent)
    ignore_sigint()
    subreaper = become_subreaper()
    guardian = start_guardian()  # forks: before any thread starts
    ParentWatch(parent).start()

    import asyncio
    import dataclasses

    settings = dataclasses.replace(
        settings_from(argv, os.environ), guardian_pid=guardian, subreaper=subreaper
    )
    from snakepit_nb.protocol.tls import KEY_ENV

    os.environ.pop(KEY_ENV, None)  # the tools' subprocesses need no private key
    return asyncio.run(_serve(settings))


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Not sys.exit: a sync tool still blocking in a thread must not hold the process open.
    os._exit(code)
