"""Tools for the pool and reliability tests (imported by worker processes via PYTHONPATH).

Set ``POOL_TEST_POISON=<path>``: once that file (or ``<path>.<worker id>``) exists, importing
this module fails, so a worker restarting after that crashes at start-up (the restart-intensity
test).
"""

from __future__ import annotations

import asyncio
import faulthandler
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from snakepit_nb.worker import Adapter, SessionContext, tool

# POOL_TEST_BARRIER=<dir> and POOL_TEST_BARRIER_COUNT=<n>: importing this module waits until
# n workers are importing it at the same time (a pool that starts them one by one never gets
# there, and its start fails).
_barrier = os.environ.get("POOL_TEST_BARRIER")
if _barrier:
    Path(_barrier, str(os.getpid())).write_text("here")
    _deadline = time.monotonic() + 30.0
    while len(os.listdir(_barrier)) < int(os.environ.get("POOL_TEST_BARRIER_COUNT", "1")):
        if time.monotonic() > _deadline:
            print("pool_adapter: the other workers never came", file=sys.stderr)
            sys.exit(8)
        time.sleep(0.01)

_poison = os.environ.get("POOL_TEST_POISON")
_worker = os.environ.get("SNAKEPIT_NB_WORKER_ID", "")
if _poison and (os.path.exists(_poison) or os.path.exists(f"{_poison}.{_worker}")):
    print(f"pool_adapter: poisoned by {_poison}; refusing to start", file=sys.stderr)
    sys.exit(7)


def _bump(path: str) -> int:
    try:
        with open(path) as fh:
            count = int(fh.read() or "0")
    except FileNotFoundError:
        count = 0
    count += 1
    with open(path, "w") as fh:
        fh.write(str(count))
        fh.flush()
        os.fsync(fh.fileno())
    return count


class PoolTestAdapter(Adapter):
    """Small tools with observable side effects."""

    @tool
    def noop(self) -> None:
        return None

    @tool
    def echo(self, value: object = None) -> object:
        return value

    @tool
    def add(self, a: int, b: int = 0) -> int:
        return a + b

    @tool
    def whoami(self, ctx: SessionContext) -> dict[str, object]:
        return {"pid": os.getpid(), "worker_id": ctx.worker_id}

    @tool
    async def slow(self, seconds: float = 1.0, marker: str = "") -> str:
        """Async sleep; writes ``marker`` + '.cancelled' if it is cancelled."""
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            if marker:
                Path(marker + ".cancelled").write_text("cancelled")  # noqa: ASYNC240 - tiny
            raise
        return "done"

    @tool
    def sleep_sync(self, seconds: float = 1.0) -> str:
        """Blocks its thread and ignores cancellation (a stubborn tool)."""
        time.sleep(seconds)
        return "slept"

    @tool
    def polite_sync(self, ctx: SessionContext, seconds: float = 30.0, marker: str = "") -> str:
        """Blocks its thread, polling ``ctx.cancelled``; writes ``marker`` + '.cancelled'."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if ctx.cancelled:
                if marker:
                    Path(marker + ".cancelled").write_text("cancelled")
                return "cancelled"
            time.sleep(0.01)
        return "done"

    @tool
    def orphan(self, seconds: float = 0.5) -> int:
        """A shell starts ``sleep`` in the background and exits: the sleep is orphaned (adopted
        by this worker, a subreaper). Returns its pid."""
        done = subprocess.run(
            ["sh", "-c", f"sleep {seconds} >/dev/null 2>&1 & echo $!"],
            capture_output=True,
            text=True,
            check=True,
        )
        return int(done.stdout.strip())

    @tool
    async def gate(self, ctx: SessionContext, path: str, limit: float = 60.0) -> str:
        """Waits (on the worker's loop) until ``path`` exists; returns this worker's id."""
        async with asyncio.timeout(limit):
            while not os.path.exists(path):  # noqa: ASYNC110, ASYNC240 - a file is the gate
                await asyncio.sleep(0.01)
        return ctx.worker_id

    @tool
    async def hang(self, seconds: float = 60.0) -> str:
        """Busy loop ON the worker's event loop: it stops answering pings (a hung worker)."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            pass
        return "unhung"

    @tool
    def crash(self, how: str = "exit1") -> str:
        """Die in various ways (the crash matrix)."""
        if how == "exit0":
            os._exit(0)
        if how == "exit1":
            os._exit(1)
        if how == "segfault":
            faulthandler._sigsegv()
        if how == "sys_exit3":
            sys.exit(3)
        raise ValueError(f"unknown crash kind {how!r}")

    @tool
    def fail(self, message: str = "boom") -> None:
        raise ValueError(message)

    @tool
    def odd_only(self, i: int) -> int:
        if i % 2 == 0:
            raise ValueError(f"{i} is even")
        return i

    @tool
    def unserialisable(self) -> object:
        return threading.Lock()

    @tool
    def nbytes(self, n: int) -> bytes:
        return b"x" * n

    @tool
    def bump_then_crash(self, path: str) -> int:
        """Increment a counter file, then die (at-most-once test)."""
        _bump(path)
        os._exit(1)

    @tool(idempotent=True)
    def bump_idempotent(self, path: str) -> int:
        """Increment a counter file; the first call dies after incrementing."""
        count = _bump(path)
        if count == 1:
            os._exit(1)
        return count

    @tool
    def count(self, n: int = 5) -> Iterator[dict[str, int]]:
        for i in range(n):
            yield {"i": i}
        return n  # type: ignore[return-value]  # a generator's return value is the result

    @tool
    async def ticks(self, n: int = 1000, delay: float = 0.01, marker: str = "") -> object:
        """Async generator; writes ``marker`` + '.closed' when closed early."""
        try:
            for i in range(n):
                yield i
                await asyncio.sleep(delay)
        finally:
            if marker:
                Path(marker + ".closed").write_text("closed")  # noqa: ASYNC240 - tiny
