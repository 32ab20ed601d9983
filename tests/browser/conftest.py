"""The browser tests' JupyterLab server: on 127.0.0.1, a random port, a fresh workspace."""

from __future__ import annotations

import glob
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lab_support import ROOT


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A JupyterLab server on 127.0.0.1, a random port, a fresh workspace; always stopped."""
    root = tmp_path / "root"
    root.mkdir()
    for notebook in ("quickstart.ipynb", "dspy_exploration.ipynb"):
        shutil.copy(ROOT / "notebooks" / notebook, root / notebook)
    runtime = tmp_path / "runtime"
    token = secrets.token_hex(16)
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(runtime)}
    log = (tmp_path / "lab.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "jupyterlab", "--no-browser", "--port=0",
            "--ServerApp.ip=127.0.0.1", f"--ServerApp.token={token}",
            f"--ServerApp.root_dir={root}", f"--LabApp.workspaces_dir={tmp_path / 'ws'}",
            "--LabApp.expose_app_in_browser=True", "--allow-root",
        ],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        info = None
        deadline = time.monotonic() + 90
        while info is None:
            assert proc.poll() is None, (tmp_path / "lab.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "JupyterLab did not start in 90 s"
            for name in glob.glob(str(runtime / "jpserver-*.json")):
                data = json.loads(Path(name).read_text() or "{}")
                if data.get("pid") == proc.pid and data.get("port"):
                    info = data
            time.sleep(0.2)
        yield {
            "url": f"http://127.0.0.1:{info['port']}",
            "token": token,
            "log": tmp_path / "lab.log",
            "root": root,
        }
    finally:
        # Stop the server and every kernel it started (they are in its session).
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        log.close()
