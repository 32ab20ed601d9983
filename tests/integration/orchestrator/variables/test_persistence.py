"""Opt-in persistence (``sp.start(state=...)``): SIGKILL in the middle of 1,000 writes loses no
acknowledged write; sessions, variables and history come back after a restart."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from snakepit_nb._errors import VersionConflictError
from snakepit_nb.orchestrator.variables.stores import VariableStores

pytestmark = pytest.mark.integration

WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from snakepit_nb.orchestrator.variables.stores import VariableStores

    async def main(path):
        stores = VariableStores(state=path)
        await stores.open()
        store = stores.for_session("exp")
        await store.register("counter", "integer", 0)
        await store.register("notes", "map", {"step": 0})
        print("ready", flush=True)
        for i in range(1, 1001):
            record = await store.set("counter", i, expected_version=i)
            await store.set("notes", {"step": i, "text": "x" * 200})
            # Acknowledged: the write is committed before set() returned.
            print(record.version, flush=True)

    asyncio.run(main(sys.argv[1]))
    """
)


def _reopen(path: str) -> Any:
    async def body() -> Any:
        stores = VariableStores(state=path)
        await stores.open()
        try:
            assert stores.database is not None
            integrity = await stores.database.integrity_check()
            store = stores.for_session("exp")
            record = await store.get("counter")
            history = [e.version for e in await store.history("counter")]
            with pytest.raises(VersionConflictError):
                await store.set("counter", -1, expected_version=record.version - 1)
            following = await store.set(
                "counter", record.value + 1, expected_version=record.version
            )
            return integrity, record, history, following
        finally:
            await stores.close()

    return asyncio.run(body())


def test_sigkill_in_the_middle_of_1000_writes_loses_no_acknowledged_write(tmp_path: Path) -> None:
    path = str(tmp_path / "state.db")
    child = subprocess.Popen(
        [sys.executable, "-c", WRITER, path], stdout=subprocess.PIPE, text=True, bufsize=1
    )
    acked: list[int] = []
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 60
        while len(acked) < 300 and time.monotonic() < deadline:
            line = child.stdout.readline()
            if not line:
                break
            acked.append(int(line))
        os.kill(child.pid, signal.SIGKILL)
        # Lines already in the pipe were acknowledged before the kill, too.
        acked.extend(int(line) for line in child.stdout.read().split())
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(10)
        if child.stdout is not None:
            child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    assert len(acked) >= 300
    assert acked[-1] < 1001
    integrity, record, history, following = _reopen(path)
    assert integrity == "ok"
    assert record.version >= acked[-1]  # every acknowledged write is there
    assert record.value == record.version - 1
    assert set(acked) <= set(history) | set(range(1, history[0]))
    assert history == list(range(history[0], record.version + 1))  # no gap in what is kept
    assert following.version == record.version + 1  # the next write continues
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_restart_with_state_brings_back_sessions_variables_and_history(
    tmp_path: Path, client_factory: Any
) -> None:
    path = str(tmp_path / "exploration.db")
    first = client_factory(workers=1, state=path)
    s = first.session("exp1")
    s.vars.define("lr", 0.1, "float", min=0, max=1, read_only_for_workers=True)
    s.vars["lr"] = 0.2
    s.vars["tags"] = ["a", "b"]
    s.vars.depend("lr", "tags")
    gone = first.session("gone")
    gone.vars["x"] = 1
    gone.close()
    first.close()

    second = client_factory(workers=1, state=path)
    assert "exp1" in [info.session_id for info in second.sessions()]
    s2 = second.session("exp1")
    info = s2.vars.info("lr")
    assert (info.value, info.version, info.constraints["max"]) == (0.2, 2, 1)
    assert info.read_only_for_workers
    assert [h.value for h in s2.vars.history("lr")] == [0.1, 0.2]
    assert s2.vars["tags"] == ["a", "b"]
    assert s2.vars.set("lr", 0.3, expected_version=2).version == 3
    with pytest.raises(Exception, match="constraint max"):
        s2.vars["lr"] = 5.0
    with s2.vars.watch("tags", include_initial=False) as watch:
        s2.vars["lr"] = 0.4
        assert watch.next(5).kind == "dependency_change"  # dependencies came back too
    assert "x" not in second.session("gone").vars  # a closed session's state was deleted
    assert s2.call("incr_var", name="hits", by=2) == 2  # workers use the restored session
