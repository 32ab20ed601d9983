"""``client.reload()`` and ``autoreload=True`` with an adapter module edited on disk.

The adapter lives in a temporary directory (the workers' working directory) and imports a
helper module of its own, as a user's adapter would; both are edited between reloads.
"""

from __future__ import annotations

import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest
from pool_support import wait_until

import snakepit_nb as sp

pytestmark = pytest.mark.integration

ADAPTER = """
import asyncio

from snakepit_nb.worker import Adapter, tool

import helper_{tag}

VERSION = "{version}"


class EditedAdapter(Adapter):
    @tool
    def version(self) -> str:
        return VERSION + "/" + helper_{tag}.suffix()

    @tool
    async def slow_version(self, seconds: float = 1.0) -> str:
        await asyncio.sleep(seconds)
        return VERSION
"""

HELPER = """
def suffix():
    return "{suffix}"
"""


def write(directory: Path, tag: str, version: str, suffix: str) -> None:
    # Different lengths on every edit, so a cached .pyc can never pass for the new source.
    (directory / f"edited_{tag}.py").write_text(
        textwrap.dedent(ADAPTER.format(tag=tag, version=version))
    )
    (directory / f"helper_{tag}.py").write_text(textwrap.dedent(HELPER.format(suffix=suffix)))


def in_flight(client: sp.Client) -> int:
    return sum(w.in_flight for w in client.status().workers)


def test_reload_picks_up_edits_while_a_call_in_flight_finishes_on_its_old_worker(
    tmp_path: Path, client_factory: Any
) -> None:
    write(tmp_path, "a", "v1", "h1")
    client = client_factory(workers=2, adapter="edited_a:EditedAdapter", cwd=str(tmp_path))
    s = client.session("reload")
    s.vars["kept"] = 41
    client.define_tool("def doubled(x: int) -> int:\n    return 2 * x\n")
    assert s.call("version") == "v1/h1"
    pids = sorted(w.pid for w in client.status().workers)

    outcome: dict[str, Any] = {}
    slow = threading.Thread(
        target=lambda: outcome.setdefault("slow", s.call("slow_version", seconds=1.5))
    )
    slow.start()
    wait_until(lambda: in_flight(client) == 1, 30, "the slow call in flight")

    write(tmp_path, "a", "v2-edited", "h2-edited")
    replaced = client.reload()
    slow.join(30)

    assert replaced == ["w1", "w2"]
    assert outcome["slow"] == "v1"  # it finished on the worker that had started it
    assert s.call("version") == "v2-edited/h2-edited"  # the adapter and its import, anew
    new_pids = sorted(w.pid for w in client.status().workers)
    assert set(new_pids).isdisjoint(pids)
    assert s.vars["kept"] == 41  # variables untouched
    assert s.call("doubled", x=21) == 42  # the cell-defined tool was replayed


def test_a_reload_that_breaks_the_adapter_says_why_and_the_rest_keep_serving(
    tmp_path: Path, client_factory: Any
) -> None:
    write(tmp_path, "b", "v1", "h1")
    client = client_factory(
        workers=2, adapter="edited_b:EditedAdapter", cwd=str(tmp_path), max_restarts=1
    )
    s = client.session("broken")
    (tmp_path / "helper_b.py").write_text("def suffix(:\n")  # a syntax error
    with pytest.raises(sp.StartupError, match=r"worker w1 did not start again after the reload"):
        client.reload()
    assert s.call("version") == "v1/h1"  # w2 still runs the old code


def test_autoreload_reloads_when_the_adapters_file_changes(
    tmp_path: Path, client_factory: Any
) -> None:
    write(tmp_path, "c", "v1", "h1")
    client = client_factory(
        workers=1, adapter="edited_c:EditedAdapter", cwd=str(tmp_path), autoreload=True
    )
    s = client.session("auto")
    assert s.call("version") == "v1/h1"
    watcher = client.orchestrator.watcher
    assert watcher is not None
    assert watcher.path == str(tmp_path / "edited_c.py")
    write(tmp_path, "c", "v2-auto", "h1")
    wait_until(lambda: watcher.reloads == 1, 60, "the automatic reload")
    assert watcher.last_reload is not None
    assert watcher.last_reload.workers == ("w1",)
    assert s.call("version") == "v2-auto/h1"


def test_autoreload_needs_a_source_file_it_can_find(tmp_path: Path) -> None:
    with pytest.raises(sp.ConfigurationError, match="autoreload cannot find the source file"):
        sp.start(workers=1, adapter="no_such_module_here:Adapter", autoreload=True)
