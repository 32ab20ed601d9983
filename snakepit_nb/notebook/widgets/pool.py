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
                    self._html = (
                        f'<div style="color:{fmt.MUTED};font-family:{fmt.FONT}">'
                        f"pool stopped ({fmt.esc(type(exc).__name__)}) at "
                        f"{time.strftime('%H:%M:%S')}</div>"
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
        return bool(self._html != self.table.value)

    def render(self) -> int:
        sent = self.set_value(self.table, self._html)
        if self.closed:
            sent += self.refresh_fallback()
        return sent

    def stop(self) -> None:
        self.closed = True
        if self._future is not None and not self._future.done():
            self._future.cancel()

    def fallback_text(self) -> str:
        workers = list(getattr(self.status, "workers", []) or [])
        lines = [f"snakepit pool: {len(workers)} workers"]
        for wk in workers:
            lines.append(
                f"  {getattr(wk, 'worker_id', '?')} pid={getattr(wk, 'pid', None)} "
                f"{getattr(wk, 'state', '?')} calls={getattr(wk, 'calls', 0)} "
                f"restarts={getattr(wk, 'restarts', 0)}"
            )
        return "\n".join(lines)

    def fallback_html(self) -> str:
        return str(self.table.value)
