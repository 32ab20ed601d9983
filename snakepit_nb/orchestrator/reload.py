"""``autoreload=True``: reload the workers when the adapter's source file changes.

The watcher polls the file's modification time and size twice a second on the loop thread (one
``stat``, no thread, no dependency) and, once a change has settled for ``settle`` seconds, runs
the pool's reload: the workers are replaced one at a time and import the edited module afresh
(see ``Supervisor.reload``). What happened is said on ``sys.stderr`` (in a notebook: the cell
that runs then) and kept in ``last_reload``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from snakepit_nb._errors import ConfigurationError, SnakepitError

__all__ = ["AdapterWatcher", "ReloadOutcome", "adapter_source"]

log = logging.getLogger("snakepit_nb.reload")

POLL = 0.5
SETTLE = 0.3


@dataclass(frozen=True)
class ReloadOutcome:
    """What one reload did: the workers replaced, or the error that stopped it."""

    at: float
    path: str
    workers: tuple[str, ...] = ()
    error: str = ""


def adapter_source(adapter: str, cwd: str | None = None) -> str:
    """The source file of the adapter's module (``pkg.mod:Class``), found as a worker would."""
    module = adapter.partition(":")[0] if ":" in adapter else adapter.rpartition(".")[0]
    added = cwd or os.getcwd()
    inserted = added not in sys.path
    if inserted:
        sys.path.insert(0, added)
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    finally:
        if inserted:
            with contextlib.suppress(ValueError):
                sys.path.remove(added)
    origin = spec.origin if spec is not None else None
    if not origin or not os.path.isfile(origin):
        raise ConfigurationError(
            f"autoreload cannot find the source file of the adapter's module {module!r} from "
            f"the kernel (looked in sys.path and {added}); make the module importable here, "
            "or reload by hand with client.reload()"
        )
    return origin


def _signature(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)


class AdapterWatcher:
    """Polls one file; calls ``reload()`` when it changed and settled."""

    def __init__(
        self,
        path: str,
        reload: Callable[[], Awaitable[list[str]]],
        *,
        poll: float = POLL,
        settle: float = SETTLE,
    ) -> None:
        self.path = path
        self._reload = reload
        self.poll = poll
        self.settle = settle
        self.last_reload: ReloadOutcome | None = None
        self.reloads = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._watch(), name="snakepit-autoreload"
        )

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _watch(self) -> None:
        seen = _signature(self.path)
        while True:
            await asyncio.sleep(self.poll)
            now = _signature(self.path)
            if now == seen or now is None:
                continue
            # Wait until the editor finished writing (the signature stops moving).
            while True:
                await asyncio.sleep(self.settle)
                later = _signature(self.path)
                if later == now:
                    break
                now = later
            seen = now
            await self._run()

    async def _run(self) -> None:
        name = os.path.basename(self.path)
        try:
            workers = await self._reload()
        except SnakepitError as exc:
            self.last_reload = ReloadOutcome(time.time(), self.path, error=str(exc))
            _say(f"snakepit: {name} changed, but the reload failed: {exc}")
            return
        self.reloads += 1
        self.last_reload = ReloadOutcome(time.time(), self.path, tuple(workers))
        _say(f"snakepit: {name} changed; workers reloaded ({', '.join(workers) or 'none'})")


def _say(message: str) -> None:
    log.info("%s", message)
    with contextlib.suppress(Exception):
        sys.stderr.write(message + "\n")
        sys.stderr.flush()
