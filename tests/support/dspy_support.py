"""Helpers shared by the DSPy adapter's tests (not a test module).

Every pool they start runs offline: the workers arm the guard that refuses (and logs) any
connection or lookup beyond loopback (``SNAKEPIT_NB_NO_NETWORK=1``); a test asserts the log
stayed empty.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from pool_support import wait_until

import snakepit_nb as sp

ADAPTER = "snakepit_nb.adapters.dspy:DSPyAdapter"


def offline_env(log: Path, **extra: str) -> dict[str, str]:
    return {"SNAKEPIT_NB_NO_NETWORK": "1", "SNAKEPIT_NB_NETWORK_LOG": str(log), **extra}


def start_dspy_pool(log: Path, workers: int = 2, **extra_env: str) -> Any:
    """A pool of DSPy workers with the offline guard armed; the caller closes it."""
    env = offline_env(log, **extra_env)
    return sp.start(workers=workers, adapter=ADAPTER, env=env, startup_timeout=60.0)


def wait_for(
    condition: Callable[[], Any],
    timeout: float = 20.0,
    what: str = "",
    *,
    tolerate: tuple[type[BaseException], ...] = (),
) -> Any:
    """Poll ``condition`` until it is truthy (errors in ``tolerate`` count as not yet)."""

    def attempt() -> Any:
        try:
            return condition()
        except tolerate:
            return None

    return wait_until(attempt, timeout, what)
