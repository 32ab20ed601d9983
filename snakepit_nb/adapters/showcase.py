"""The showcase adapter: reference tools that show what a worker can do.

Start a pool with it (it is the default adapter) and try them from a notebook::

    client = sp.start(workers=2)
    s = client.session("demo")
    s.call("add", a=1, b=2)                 # 3
    for chunk in s.stream("count", n=5): ...   # {"i": 0, "progress": 0.2}, ...
    s.call("fail", message="boom")          # RemoteToolError with the worker's traceback

Some tools exist for reliability demos and tests (``crash``, ``spin``, ``sleep_sync``,
``spawn_child``); they do exactly what their names say to the worker that runs them.
"""

from __future__ import annotations

import asyncio
import builtins
import os
import subprocess
import time
from collections.abc import AsyncIterator
from typing import Any

from snakepit_nb._errors import VersionConflictError
from snakepit_nb.tools.adapter import Adapter, tool
from snakepit_nb.worker.context import SessionContext

__all__ = ["ShowcaseAdapter"]


class ShowcaseAdapter(Adapter):
    """Reference tools: echo, arithmetic, slow and streaming tools, errors, variables, callbacks."""

    def __init__(self) -> None:
        self._children: list[subprocess.Popen[bytes]] = []

    # ------------------------------------------------------------------ basics

    @tool(idempotent=True)
    def echo(self, value: Any = None) -> Any:
        """Return ``value`` unchanged: every value type round-trips exactly.

        Args:
            value: any value the codec carries (None, bool, int, float with NaN/Infinity, str,
                bytes, lists, dicts, numpy arrays).
        """
        return value

    @tool(idempotent=True)
    def add(self, a: float, b: float) -> float:
        """Add two numbers (integers stay integers).

        Args:
            a: the first number.
            b: the second number.
        """
        return a + b

    @tool(idempotent=True)
    def noop(self) -> None:
        """Do nothing and return None: the cost of a call itself."""
        return

    @tool(idempotent=True)
    async def anoop(self) -> None:
        """Do nothing, on the worker's event loop: the cost of an async call itself.

        Async tools overlap in a worker (up to ``async_capacity``), sync tools do not.
        """

    @tool(idempotent=True)
    def whoami(self, ctx: SessionContext) -> dict[str, Any]:
        """Which worker runs this call: its worker id, process id and the session's id."""
        return {"worker_id": ctx.worker_id, "pid": os.getpid(), "session_id": ctx.session_id}

    @tool(idempotent=True)
    def nbytes(self, n: int) -> bytes:
        """Return ``n`` bytes (zeros): for payload-size experiments.

        Args:
            n: how many bytes.
        """
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        return bytes(n)

    # ------------------------------------------------------------------ time

    @tool
    async def slow(self, ctx: SessionContext, seconds: float = 1.0) -> dict[str, float]:
        """Wait ``seconds`` without blocking the worker, then report how long it took.

        Cancellable: interrupting the notebook cell (or the call's timeout) stops it at once.

        Args:
            seconds: how long to wait.
        """
        started = time.monotonic()
        steps = max(1, int(seconds / 0.1))
        for step in range(steps):
            await asyncio.sleep(seconds / steps)
            ctx.emit_telemetry("showcase.slow.progress", {"fraction": (step + 1) / steps})
        return {"slept": time.monotonic() - started}

    @tool
    async def count(
        self, ctx: SessionContext, n: int = 5, delay: float = 0.0
    ) -> AsyncIterator[dict[str, Any]]:
        """Stream ``n`` progress chunks ``{"i": i, "progress": (i + 1) / n}``; returns ``n``.

        Args:
            n: how many chunks.
            delay: seconds to wait before each chunk (0: as fast as possible).
        """
        for i in range(n):
            if delay > 0:
                await asyncio.sleep(delay)
            yield {"i": i, "progress": (i + 1) / n}
        ctx.set_result(n)

    @tool
    def sleep_sync(self, ctx: SessionContext, seconds: float = 1.0) -> float:
        """Block a worker thread for ``seconds`` (returns early if the call is cancelled).

        Args:
            seconds: how long to block.
        """
        started = time.monotonic()
        ctx.wait_cancelled(seconds)
        return time.monotonic() - started

    @tool
    def spin(self, seconds: float = 1.0) -> int:
        """Hold the GIL for about ``seconds`` in one C call: the worker cannot even answer pings.

        For hang-detection demos: the pool's heartbeats notice the unresponsive worker.

        Args:
            seconds: how long to hold the GIL.
        """
        probe = 200_000
        started = time.perf_counter()
        sum(range(probe))
        per_item = max((time.perf_counter() - started) / probe, 1e-9)
        return int(sum(range(int(seconds / per_item))))

    # ------------------------------------------------------------------ failures

    @tool
    def fail(self, message: str = "boom", kind: str = "ValueError") -> None:
        """Raise ``kind(message)``: the error arrives as RemoteToolError, the worker stays up.

        Args:
            message: the exception's message.
            kind: the name of a builtin exception class (ValueError, KeyError, RuntimeError...).
        """
        exc_class = getattr(builtins, kind, None)
        if not (isinstance(exc_class, type) and issubclass(exc_class, Exception)):
            raise ValueError(f"{kind!r} is not a builtin exception class; {message}")
        raise exc_class(message)

    @tool
    def crash(self, code: int = 1) -> None:
        """Kill this worker process at once (``os._exit(code)``): the pool replaces it.

        Args:
            code: the process exit code.
        """
        os._exit(code)

    @tool
    def spawn_child(self, seconds: float = 60.0, detach: bool = False) -> int:
        """Start a ``sleep`` subprocess and return its pid: it never outlives the worker.

        Whether the pool is closed, the worker crashes or the kernel is killed, the child goes
        too (the worker's guardian ends it), even when it left the worker's process group.

        Args:
            seconds: how long the child sleeps.
            detach: start it in a session of its own (``setsid``), as a daemon would.
        """
        child = subprocess.Popen(["sleep", str(seconds)], start_new_session=detach)
        self._children = [c for c in self._children if c.poll() is None]
        self._children.append(child)
        return child.pid

    # ------------------------------------------------------------------ session and kernel

    @tool
    def incr_var(self, ctx: SessionContext, name: str = "counter", by: int = 1) -> int:
        """Add ``by`` to the session variable ``name`` (created at 0) and return the new value.

        Safe against concurrent writers: it writes with ``expected_version`` and retries when
        another writer (a notebook cell, another worker) got there first.

        Args:
            name: the variable's name.
            by: the increment.
        """
        variables = ctx.vars
        for _attempt in range(100):
            record = variables.get_record(name, default=None)
            if record is None:
                value = by
                try:
                    variables.define(name, value, type="integer")
                except VersionConflictError:
                    continue
                return value
            value = int(record.value) + by
            try:
                variables.set(name, value, expected_version=record.version)
            except VersionConflictError:
                continue
            return value
        raise RuntimeError(f"variable {name!r} kept changing under 100 attempts to increment it")

    @tool
    async def ask_kernel(self, ctx: SessionContext, tool: str, **kwargs: Any) -> Any:
        """Call the kernel-side tool ``tool`` (a ``%%snakepit_tool --kernel`` cell) with kwargs.

        Shows the worker-to-kernel callback: the result comes back from the notebook kernel.

        Args:
            tool: the kernel tool's name.
        """
        return await ctx.acall_kernel_tool(tool, **kwargs)
