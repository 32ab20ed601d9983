"""Helpers shared by the pool and reliability tests (not a test module)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ADAPTER = "pool_adapter:PoolTestAdapter"
HERE = str(Path(__file__).parent)


def pool_kwargs(**kwargs: Any) -> dict[str, Any]:
    """``sp.start`` settings for a pool of ``pool_adapter`` workers (``env`` is merged)."""
    env = dict(kwargs.pop("env", {}))
    path = os.environ.get("PYTHONPATH", "")
    env["PYTHONPATH"] = HERE + (os.pathsep + path if path else "")
    kwargs.setdefault("adapter", ADAPTER)
    kwargs.setdefault("startup_timeout", 60.0)
    return {"env": env, **kwargs}


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def worker(client: Any, worker_id: str) -> Any:
    return next(w for w in client.status().workers if w.worker_id == worker_id)


def busy_worker(client: Any) -> Any:
    """The first worker with a call in flight, or None."""
    return next((w for w in client.status().workers if w.in_flight > 0), None)


def all_ready(client: Any, n: int | None = None) -> bool:
    workers = client.status().workers
    return all(w.state == "ready" for w in workers) and (n is None or len(workers) == n)
