"""The DSPy adapter's process environment, in fresh interpreters: lazy import, offline guard.

Each test runs a small script in a new Python process (the audit hook cannot be removed once
installed, and import costs are only meaningful in a fresh process).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def run_script(source: str, env: dict[str, str] | None = None, timeout: float = 60.0) -> dict:
    # A fresh process as a worker gets it: none of our settings, none of DSPy's.
    full_env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SNAKEPIT_NB_", "DSPY_", "LITELLM_"))
    }
    full_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(source)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def test_importing_the_package_and_the_adapter_does_not_import_dspy(tmp_path: Path) -> None:
    result = run_script(
        """
        import json, os, sys, time
        started = time.perf_counter()
        import snakepit_nb
        from snakepit_nb.adapters.dspy import DSPy, Program
        kernel_side = "dspy" in sys.modules
        from snakepit_nb.adapters.dspy import DSPyAdapter
        adapter = DSPyAdapter()
        ready = time.perf_counter() - started
        worker_side = "dspy" in sys.modules
        cache = os.environ["DSPY_CACHEDIR"]
        created_early = os.path.exists(cache)
        from snakepit_nb.adapters.dspy.models.environment import import_dspy, dspy_import_seconds
        from snakepit_nb.adapters.dspy.models.cache import ensure_shared_cache
        import_dspy()
        shared = ensure_shared_cache()
        adapter.teardown()  # what a worker's graceful stop calls
        print(json.dumps({"kernel_side": kernel_side, "worker_side": worker_side,
                          "ready": ready, "dspy": dspy_import_seconds(), "cache": cache,
                          "created_early": created_early, "kept": os.path.isdir(cache),
                          "memory": shared.enable_memory_cache,
                          "cost_map": os.environ["LITELLM_LOCAL_MODEL_COST_MAP"]}))
        """,
        env={"XDG_CACHE_HOME": str(tmp_path / "user-cache")},
    )
    assert result["kernel_side"] is False
    assert result["worker_side"] is False
    assert result["dspy"] > 0.05  # the cost that lazy import keeps out of worker start-up
    assert result["cost_map"] == "True"
    # One folder under the user's cache folder, made on first use and kept after the stop.
    assert result["cache"] == str(tmp_path / "user-cache" / "snakepit_nb" / "dspy")
    assert result["created_early"] is False
    assert result["kept"] is True
    assert result["memory"] is False  # disk only: what one worker cached, all see
    print(f"adapter ready in {result['ready']:.3f} s; import dspy {result['dspy']:.3f} s")


def test_the_kernel_side_sets_the_offline_switches_before_dspy_is_imported() -> None:
    result = run_script(
        """
        import json, os
        from snakepit_nb.adapters.dspy import DSPy
        DSPy(session=None)  # what a notebook does first
        print(json.dumps({k: os.environ.get(k) for k in
                          ("LITELLM_LOCAL_MODEL_COST_MAP", "LITELLM_MODE", "DSPY_CACHEDIR")}))
        """
    )
    assert result["LITELLM_LOCAL_MODEL_COST_MAP"] == "True"
    assert result["LITELLM_MODE"] == "PRODUCTION"
    assert result["DSPY_CACHEDIR"].endswith("snakepit_nb/dspy")


def test_missing_dspy_names_the_extra_to_install() -> None:
    result = run_script(
        """
        import json, sys
        sys.modules["dspy"] = None  # as if DSPy were not installed
        from snakepit_nb.adapters.dspy import DSPyAdapter
        try:
            DSPyAdapter()
        except ImportError as exc:
            print(json.dumps({"error": str(exc)}))
        """
    )
    assert "pip install snakepit_nb[dspy]" in result["error"]


def test_network_guard_refuses_non_loopback_and_logs_it(tmp_path: Path) -> None:
    log = tmp_path / "network.log"
    result = run_script(
        """
        import json, socket, urllib.request
        from snakepit_nb.adapters.dspy import DSPyAdapter
        from snakepit_nb.adapters.dspy.models.environment import NetworkBlockedError
        DSPyAdapter()  # arms the guard because SNAKEPIT_NB_NO_NETWORK=1
        refused = []
        for attempt in (
            lambda: socket.create_connection(("203.0.113.7", 80), timeout=1),
            lambda: socket.getaddrinfo("api.openai.com", 443),
            lambda: urllib.request.urlopen("https://raw.githubusercontent.com/x", timeout=1),
        ):
            try:
                attempt()
            except NetworkBlockedError as exc:
                refused.append(str(exc))
        server = socket.create_server(("127.0.0.1", 0))
        port = server.getsockname()[1]
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        socket.create_connection(("localhost", port), timeout=1).close()
        server.close()
        print(json.dumps({"refused": refused}))
        """,
        env={"SNAKEPIT_NB_NO_NETWORK": "1", "SNAKEPIT_NB_NETWORK_LOG": str(log)},
    )
    assert len(result["refused"]) == 3
    assert all("offline guard" in text for text in result["refused"])
    lines = log.read_text().splitlines()
    assert len(lines) == 3
    assert "203.0.113.7" in lines[0]
    assert "api.openai.com" in lines[1]
    assert "raw.githubusercontent.com" in lines[2]
