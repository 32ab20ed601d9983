"""The live pool status widget: one row per worker, refreshed about once a second.

A poller task on the snakepit-loop thread reads the pool's status snapshot (a cheap, local
read) every ``interval`` seconds; the pump sends the table only when it changed, so an idle
pool costs nothing on the wire.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Awaitable, Callable
from typing import Any

from snakepit_nb._loop import LoopThread
from snakepit_nb.display import formatting as fmt
from snakepit_nb.display.reprs import pool_status_html

from .pump import UIPump
from .view import DisplayedView

StatusSource = Callable[[], Awaitable[Any]]


class PoolView(DisplayedView):
    """Pool status, refreshed live while the pool runs."""

    def __init__(
        self,
        source: StatusSource,
        initial: Any,
        *,
        pump: UIPump,
        loop_thread: LoopThread,
        interval: float = 1.0,
    ) -> None:
        import ipywidgets as w

        self._source = source
        self._pump = pump
        self._loop_thread = loop_thread
        self._interval = interval
        self.status = initial
        self.polls = 0
        self.table = w.HTML(_dom_classes=["snakepit-pool-table"])
        self._html = pool_status_html(initial)
        self.table.value = self._html
        self._future: concurrent.futures.Future[None] | None = None
        self.stopped_at: float | None = None
        super().__init__([self.table], css_class="snakepit-pool")

    def start(self) -> None:
        self._future = self._loop_thread.submit(self._poll())

    async def _poll(self) -> None:
        try:
            while not self.closed:
                await asyncio.sleep(self._interval)
                try:
                    self.status = await self._source()
                except Exception as exc:  # the pool stopped (or is stopping)
                    self.stopped_at = time.time()
                    self._html = _stopped_html(
                        f"pool stopped ({type(exc).__name__})", self.stopped_at
                    )
                    break
                self.polls += 1
                html = pool_status_html(self.status)
                if html != self._html:
                    self._html = html
                    self._pump.poke()
        finally:
            self.closed = True
            self._pump.poke()

    def pending(self) -> bool:
        return bool(self._html != self.table.value) or self.fallback_due()

    def render(self) -> int:
        sent = self.set_value(self.table, self._html)
        return sent + self.refresh_fallback_when_due(sent > 0 or self.closed)

    def stop(self) -> None:
        """The pool is stopping: show that, and stop polling (main thread)."""
        self.stopped_at = time.time()
        self._html = _stopped_html("pool stopped", self.stopped_at)
        self.closed = True
        if self._future is not None and not self._future.done():
            self._future.cancel()
        self._loop_thread.loop.call_soon_threadsafe(self._pump.poke)

    def fallback_text(self) -> str:
        if self.stopped_at is not None:
            at = time.strftime("%H:%M:%S", time.localtime(self.stopped_at))
            return f"snakepit pool stopped at {at}"
        workers = list(getattr(self.status, "workers", []) or [])
        lines = [f"snakepit pool: {len(workers)} workers"]
        for wk in workers:
            lines.append(
                f"  {getattr(wk, 'worker_id', '?')} pid={getattr(wk, 'pid', None)} "
                f"node={str(getattr(wk, 'node', '') or '-')[:12]} "
                f"{getattr(wk, 'state', '?')} calls={getattr(wk, 'calls', 0)} "
                f"restarts={getattr(wk, 'restarts', 0)}"
            )
        return "\n".join(lines)

    def fallback_html(self) -> str:
        return str(self.table.value)


def _stopped_html(what: str, at: float) -> str:
    return (
        f'<div class="snakepit-pool-stopped" style="color:{fmt.MUTED};font-family:{fmt.FONT}">'
        f"{fmt.esc(what)} at {time.strftime('%H:%M:%S', time.localtime(at))}</div>"
    )
