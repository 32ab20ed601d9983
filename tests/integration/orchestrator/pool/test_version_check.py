"""Workers report their snakepit_nb and Python versions; a mismatched worker is refused.

The stale worker is real: a copy of the package with another version, placed first on the
worker's ``sys.path`` (its working directory), as a forgotten checkout or an old virtual
environment would be.
"""

from __future__ import annotations

import re
import shutil
import sys
import time
from pathlib import Path

import paths
import pytest

import snakepit_nb as sp
from snakepit_nb._version import __version__

pytestmark = pytest.mark.integration


def test_the_package_version_is_the_projects() -> None:
    pyproject = (paths.ROOT / "pyproject.toml").read_text()
    match = re.search(r'^version = "([^"]+)"', pyproject, re.MULTILINE)
    assert match is not None
    assert match.group(1) == __version__ == sp.__version__


def test_a_worker_of_another_snakepit_nb_version_is_refused_at_once(tmp_path: Path) -> None:
    stale = tmp_path / "snakepit_nb"
    shutil.copytree(paths.ROOT / "snakepit_nb", stale, ignore=shutil.ignore_patterns("__pycache__"))
    (stale / "_version.py").write_text('__version__ = "0.0.1"\n')
    started = time.monotonic()
    with pytest.raises(sp.StartupError) as info:
        sp.start(workers=1, cwd=str(tmp_path), startup_timeout=60)
    message = str(info.value)
    assert "worker w1 runs snakepit_nb 0.0.1" in message
    assert f"this kernel runs snakepit_nb {__version__}" in message
    assert sys.executable in message
    assert "install the same snakepit_nb" in message
    assert time.monotonic() - started < 30  # refused, not retried until a timeout


def test_a_worker_of_the_same_version_reports_its_versions(showcase_client: sp.Client) -> None:
    import platform

    from snakepit_nb.protocol import pb

    async def describe() -> pb.DescribeToolsResponse:
        pool = showcase_client.orchestrator.pool
        handle = pool.handles[0]
        return await handle.stub.DescribeTools(
            pb.DescribeToolsRequest(), metadata=pool.supervisor.metadata, timeout=10
        )

    from snakepit_nb._loop import get_loop_thread

    described = get_loop_thread().run(describe())
    assert described.snakepit_nb_version == __version__
    assert described.python_version == platform.python_version()
    assert described.python_executable == sys.executable
