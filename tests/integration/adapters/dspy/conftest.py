"""The DSPy tests' shared pool (one per test module) and a fresh session per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dspy_support import start_dspy_pool

from snakepit_nb.adapters.dspy import DSPy


@pytest.fixture(scope="module")
def network_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("dspy") / "network.log"


@pytest.fixture(scope="module")
def pool(network_log: Path) -> Iterator[Any]:
    """Two DSPy workers shared by a module's tests (each test uses its own session)."""
    client = start_dspy_pool(network_log, workers=2)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def d(pool: Any, request: pytest.FixtureRequest, network_log: Path) -> Iterator[DSPy]:
    """The DSPy helper on a fresh session with the fake model at temperature 0."""
    helper = DSPy(pool.session(f"t-{request.node.name}"[:60]))
    helper.configure_lm("fake/rules", temperature=0.0)
    yield helper
    # Nothing in these tests may reach for the network (the guard would have logged it).
    assert not network_log.exists() or network_log.read_text() == ""
