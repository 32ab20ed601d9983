"""Shared fixtures. Factories always clean up what they start: a test never leaks a worker."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

# The helpers and adapters of tests/support are imported by name, from tests at any depth.
sys.path.insert(0, str(Path(__file__).resolve().parent / "support"))
# Ray (the Ray launcher's tests, the Ray notebook's kernel) keeps to the loopback address.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # no usage report to the internet

# DSPy's response cache, for this process and every worker and kernel it starts (they inherit
# the environment): a folder of the test run, never the user's own cache.
if "DSPY_CACHEDIR" not in os.environ:
    _dspy_cache = tempfile.mkdtemp(prefix="snakepit-tests-dspy-cache-")
    os.environ["DSPY_CACHEDIR"] = _dspy_cache
    atexit.register(shutil.rmtree, _dspy_cache, True)

T = TypeVar("T")


@pytest.fixture
def run_on_loop() -> Callable[[Coroutine[Any, Any, T]], T]:
    """Run a coroutine on snakepit_nb's loop thread and wait (grpc.aio objects live there)."""
    from snakepit_nb._loop import get_loop_thread

    loop_thread = get_loop_thread()

    def run(coro: Coroutine[Any, Any, T]) -> T:
        return loop_thread.run(coro, timeout=60)

    return run


@pytest.fixture
def client_factory() -> Iterator[Callable[..., Any]]:
    """``client_factory(**start_kwargs)`` -> a started ``Client``; every one is closed after."""
    import snakepit_nb as sp

    clients: list[Any] = []

    def make(**kwargs: Any) -> Any:
        kwargs.setdefault("workers", 1)
        kwargs.setdefault("startup_timeout", 60.0)
        client = sp.start(**kwargs)
        clients.append(client)
        return client

    yield make
    errors: list[BaseException] = []
    for client in reversed(clients):
        try:
            client.close()
        except BaseException as exc:  # close every client even if one fails
            errors.append(exc)
    if errors:
        raise errors[0]


@pytest.fixture
def showcase_client(client_factory: Callable[..., Any]) -> Any:
    """One showcase worker (``snakepit_nb.adapters.showcase:ShowcaseAdapter``)."""
    return client_factory(workers=1)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Name the folder of the browser tests' screenshots (the CI artifacts) at the end."""
    import os
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    shots = Path(os.environ.get("SNAKEPIT_NB_ARTIFACTS", root / "artifacts")) / "browser"
    if shots.is_dir() and any(shots.glob("*.png")):
        terminalreporter.write_line(f"browser screenshots: {shots}")
