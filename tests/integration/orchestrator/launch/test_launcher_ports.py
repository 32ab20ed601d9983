"""T8: two launchers in two processes start 4 real workers each at once and cycle them; no
address conflict, because every worker binds port 0 (or a unix socket) and reports it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from launcher_standin import HERE, processes_with_marker

pytestmark = pytest.mark.integration

CYCLER = r"""
import asyncio, json, sys, time
from snakepit_nb.orchestrator.launch.base import WorkerSpec
from snakepit_nb.orchestrator.launch.local import LocalProcessLauncher
from snakepit_nb.orchestrator.launch.registry import ProcessRegistry
from launcher_standin import real_worker_argv, real_worker_env, start_standin_orchestrator

run_id, registry_dir, cycles = sys.argv[1], sys.argv[2], int(sys.argv[3])
token = "ports-token-" + run_id

async def main():
    server, address = await start_standin_orchestrator(token)
    launcher = LocalProcessLauncher(run_id=run_id, registry=ProcessRegistry(registry_dir))
    argv, env = real_worker_argv(address, run_id), real_worker_env(token)
    errors, addresses, ready_s = [], set(), []
    for _ in range(cycles):
        t0 = time.monotonic()
        results = await asyncio.gather(
            *(launcher.launch(WorkerSpec(f"w{i}", argv, env)) for i in range(4)),
            return_exceptions=True,
        )
        ready_s.append(time.monotonic() - t0)
        workers = [r for r in results if not isinstance(r, BaseException)]
        errors += [str(r) for r in results if isinstance(r, BaseException)]
        addresses.update(w.address for w in workers)
        await asyncio.gather(*(w.stop() for w in workers))
    await launcher.close()
    await server.stop(None)
    print(json.dumps({"errors": errors, "addresses": len(addresses), "ready_s": ready_s}))

asyncio.run(main())
"""


def test_two_launchers_in_two_processes_cycle_without_conflicts(tmp_path: Path) -> None:
    cycles = 5
    env = dict(os.environ, PYTHONPATH=HERE)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CYCLER, f"ports{n}", str(tmp_path / "registry"), str(cycles)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for n in range(2)
    ]
    try:
        outputs = [p.communicate(timeout=90) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
        result = json.loads(out.strip().splitlines()[-1])
        assert result["errors"] == []
        assert len(result["ready_s"]) == cycles
        assert result["addresses"] >= 4
        print(json.dumps({"ready_s": [round(s, 3) for s in result["ready_s"]]}))
    assert processes_with_marker("ports0") == []
    assert processes_with_marker("ports1") == []
