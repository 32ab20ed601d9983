"""The live variable watch: one table per watch, sliders for bounded numbers, sparklines.

A watch task on the snakepit-loop thread reads the session's change feed and updates plain
row state; the UI pump re-renders the table (one HTML widget, so one comm message however many
rows changed) and moves a slider only when its variable changed. Rows that changed since the
last render are highlighted. A slider edit (sent when the handle is released) writes the
variable with the version the slider was showing as ``expected_version``: if a worker or an
optimizer wrote it in between, the write is refused, the conflict is shown under the table and
the slider snaps back to the current value. Nothing is ever overwritten blindly.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from snakepit_nb._loop import LoopThread
from snakepit_nb.display import formatting as fmt

from .pump import UIPump
from .view import DisplayedView

HISTORY_POINTS = 60


class VariableLike(Protocol):
    name: str
    type: str
    value: Any
    version: int
    constraints: Any
    source: str
    updated_at: float


class ChangeLike(Protocol):
    kind: str
    source: str
    at: float

    @property
    def variable(self) -> Any: ...


class AsyncVariablesLike(Protocol):
    """The slice of the async ``session.vars`` the watch view uses."""

    def watch(self, *names: str, **kwargs: Any) -> AsyncIterator[Any]: ...

    async def set(self, name: str, value: Any, **kwargs: Any) -> Any: ...


@dataclass
class Row:
    name: str
    type: str
    value: Any
    version: int
    source: str
    updated_at: float
    constraints: dict[str, Any]
    deleted: bool = False
    history: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY_POINTS))
    changed_seq: int = 0
    changes: int = 0

    def bounded(self) -> bool:
        c = self.constraints
        return (
            self.type in ("float", "integer")
            and isinstance(c.get("min"), int | float)
            and isinstance(c.get("max"), int | float)
        )


def _numeric(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def row_from_record(record: VariableLike) -> Row:
    row = Row(
        name=record.name,
        type=record.type,
        value=record.value,
        version=record.version,
        source=record.source,
        updated_at=record.updated_at,
        constraints=dict(record.constraints or {}),
    )
    number = _numeric(record.value)
    if number is not None:
        row.history.append(number)
    return row


class WatchView(DisplayedView):
    """A live table of variables (all of a session's, or the names given)."""

    def __init__(
        self,
        avars: AsyncVariablesLike,
        records: Sequence[VariableLike],
        *,
        names: Sequence[str],
        session_id: str,
        pump: UIPump,
        loop_thread: LoopThread,
        histories: dict[str, list[float]] | None = None,
    ) -> None:
        import ipywidgets as w

        self._avars = avars
        self._names = list(names)
        self.session_id = session_id
        self._pump = pump
        self._loop_thread = loop_thread
        self.rows: dict[str, Row] = {}
        for record in records:
            row = row_from_record(record)
            for point in (histories or {}).get(record.name, [])[-HISTORY_POINTS:]:
                row.history.append(point)
            if histories and record.name in histories:
                number = _numeric(record.value)
                if number is not None and (not row.history or row.history[-1] != number):
                    row.history.append(number)
            self.rows[record.name] = row
        self._seq = 0
        self._rendered_seq = -1
        self._shown_seq = 0
        self.message = ""
        self.message_kind = "info"
        self._message_shown = ""
        self.table = w.HTML(_dom_classes=["snakepit-watch-table"])
        self.status = w.HTML(_dom_classes=["snakepit-watch-status"])
        self.sliders: dict[str, Any] = {}
        self._slider_written: dict[str, Any] = {}
        self._slider_version: dict[str, int] = {}
        slider_rows = []
        for row in self.rows.values():
            if row.bounded():
                slider = self._make_slider(row)
                self.sliders[row.name] = slider
                slider_rows.append(slider)
        self.updates = 0
        self.error: BaseException | None = None
        self._future: concurrent.futures.Future[None] | None = None
        super().__init__([self.table, *slider_rows, self.status], css_class="snakepit-watch")
        self.table.value = self._table_html()
        self._rendered_seq = self._seq

    # -- sliders (created on the main thread) ------------------------------------------------
    def _make_slider(self, row: Row) -> Any:
        import ipywidgets as w

        lo, hi = row.constraints["min"], row.constraints["max"]
        common: dict[str, Any] = {
            "description": row.name,
            "continuous_update": False,
            "style": {"description_width": "initial"},
            "layout": w.Layout(width="420px"),
            "_dom_classes": ["snakepit-watch-slider", f"snakepit-var-{row.name}"],
        }
        if row.type == "integer":
            slider = w.IntSlider(value=int(row.value or lo), min=int(lo), max=int(hi), **common)
        else:
            step = (float(hi) - float(lo)) / 100 or 0.01
            value = float(row.value) if _numeric(row.value) is not None else float(lo)
            slider = w.FloatSlider(
                value=value, min=float(lo), max=float(hi), step=step, readout_format=".3g", **common
            )
        self._slider_written[row.name] = slider.value
        self._slider_version[row.name] = row.version
        slider.observe(lambda change, name=row.name: self._on_slider(name, change), names="value")
        return slider

    def _on_slider(self, name: str, change: dict[str, Any]) -> None:
        # The pump's own writes arrive here too (on the loop thread): they are not edits.
        if self._loop_thread.in_loop_thread():
            return
        new = change["new"]
        if new == self._slider_written.get(name):
            return
        expected = self._slider_version.get(name)
        self._loop_thread.submit(self._write(name, new, expected))

    async def _write(self, name: str, value: Any, expected: int | None) -> None:
        from snakepit_nb._errors import SnakepitError, VersionConflictError

        try:
            await self._avars.set(name, value, expected_version=expected)
        except VersionConflictError as exc:
            row = self.rows.get(name)
            now = f"{fmt.short_repr(row.value)} (v{row.version}, by {row.source})" if row else "?"
            self._say(
                f"conflict: {name} was changed (now version {exc.current_version}) while you "
                f"edited it, so your value {fmt.short_repr(value)} was not written; it is {now}. "
                "Move the slider again to overwrite it.",
                "error",
            )
            self._touch(name)
        except SnakepitError as exc:
            self._say(f"{name} = {fmt.short_repr(value)} refused: {exc}", "error")
            self._touch(name)
        else:
            self._say(f"you set {name} = {fmt.short_repr(value)}", "ok")

    def _say(self, message: str, kind: str) -> None:
        self.message = message
        self.message_kind = kind
        self._seq += 1
        self._pump.poke()

    def _touch(self, name: str) -> None:
        # Force the slider back to the stored value on the next render.
        self._slider_written[name] = object()
        self._seq += 1
        self._pump.poke()

    # -- the feed (loop thread) --------------------------------------------------------------
    def start(self) -> None:
        self._future = self._loop_thread.submit(self._follow())

    async def _follow(self) -> None:
        try:
            async for change in self._avars.watch(*self._names):
                self.apply(change)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.error = exc
            self._say(f"watch ended: {exc}", "error")
        finally:
            self.closed = True
            self._seq += 1
            self._pump.poke()

    def apply(self, change: ChangeLike) -> None:
        """Fold one change into the rows (loop thread)."""
        record = change.variable
        kind = getattr(change, "kind", "value_change")
        row = self.rows.get(record.name)
        if kind == "deleted":
            if row is not None:
                row.deleted = True
                row.source = change.source
        elif row is None:
            row = row_from_record(record)
            self.rows[record.name] = row
        else:
            if kind == "initial_value" and record.version == row.version:
                return
            row.value = record.value
            row.version = record.version
            row.type = record.type
            row.source = change.source or record.source
            row.updated_at = getattr(change, "at", time.time())
            row.constraints = dict(record.constraints or {})
            row.deleted = False
            number = _numeric(record.value)
            if number is not None:
                row.history.append(number)
        if row is not None:
            self._seq += 1
            row.changed_seq = self._seq
            row.changes += 1
        self.updates += 1
        self._pump.poke()

    # -- pump protocol ----------------------------------------------------------------------
    def pending(self) -> bool:
        return self._seq != self._rendered_seq or self.fallback_due()

    def cost(self) -> int:
        return 2 + sum(1 for n in self.sliders if self._slider_due(n))

    def _slider_due(self, name: str) -> bool:
        row = self.rows.get(name)
        return row is not None and self._slider_written.get(name) != row.value

    def render(self) -> int:
        sent = 0
        self._shown_seq = self._rendered_seq
        self._rendered_seq = self._seq
        sent += self.set_value(self.table, self._table_html())
        for name, slider in self.sliders.items():
            row = self.rows.get(name)
            if row is None or row.deleted or _numeric(row.value) is None:
                continue
            self._slider_version[name] = row.version
            if self._slider_due(name):
                self._slider_written[name] = row.value
                value = min(max(row.value, slider.min), slider.max)
                sent += self.set_value(slider, value)
        if self.message != self._message_shown:
            self._message_shown = self.message
            sent += self.set_value(self.status, self._status_html())
        return sent + self.refresh_fallback_when_due(sent > 0 or self.closed)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop following changes (main thread)."""
        future = self._future
        if future is not None and not future.done():
            future.cancel()
            with contextlib.suppress(
                concurrent.futures.CancelledError, concurrent.futures.TimeoutError
            ):
                future.exception(timeout)
        self.closed = True
        # The final frame ("watch ended") is due now, before the stop returns: the cancelled
        # feed's own ``finally`` may run only after the pump was asked to go idle.
        if self._loop_thread.is_alive():
            with contextlib.suppress(Exception):
                self._loop_thread.run(self._mark_closed(), timeout=timeout)

    async def _mark_closed(self) -> None:
        self.closed = True
        self._seq += 1
        self._pump.poke()

    def running(self) -> bool:
        return self._future is not None and not self._future.done()

    # -- HTML -------------------------------------------------------------------------------
    def _table_html(self) -> str:
        rows = []
        styles = []
        for row in sorted(self.rows.values(), key=lambda r: r.name):
            fresh = row.changed_seq > self._shown_seq and row.changes > 0
            value_html = (
                f'<span style="color:{fmt.MUTED}">deleted</span>'
                if row.deleted
                else fmt.mono(fmt.short_repr(row.value, 60))
            )
            rows.append(
                [
                    f'<b class="snakepit-var-name">{fmt.esc(row.name)}</b>',
                    f'<span class="snakepit-var-value" data-var="{fmt.esc(row.name)}">'
                    f"{value_html}</span>",
                    fmt.esc(row.type),
                    f"v{row.version}",
                    fmt.esc(row.source),
                    fmt.esc(time.strftime("%H:%M:%S", time.localtime(row.updated_at))),
                    fmt.sparkline(list(row.history)) if len(row.history) > 1 else "",
                ]
            )
            styles.append("background:rgba(59,130,246,0.10)" if fresh else "")
        title = (
            f'<div style="font-family:{fmt.FONT};font-size:12px;color:{fmt.MUTED};'
            f'margin-bottom:3px">variables of session <b>{fmt.esc(self.session_id)}</b>'
            f"{' · watch ended' if self.closed else ' · live'}</div>"
        )
        if not rows:
            return title + f'<div style="color:{fmt.MUTED}">no variables yet</div>'
        return title + fmt.table(
            ["name", "value", "type", "version", "by", "at", "recent"],
            rows,
            row_styles=styles,
            css_class="snakepit-watch-rows",
        )

    def _status_html(self) -> str:
        if not self.message:
            return ""
        color = {"error": fmt.RED, "ok": fmt.GREEN}.get(self.message_kind, fmt.MUTED)
        return (
            f'<div style="font-family:{fmt.FONT};font-size:12px;color:{color}">'
            f"{fmt.esc(self.message)}</div>"
        )

    def fallback_text(self) -> str:
        lines = [f"variables of session {self.session_id!r}:"]
        for row in sorted(self.rows.values(), key=lambda r: r.name):
            value = "deleted" if row.deleted else fmt.short_repr(row.value, 60)
            lines.append(f"  {row.name} = {value}  (v{row.version}, by {row.source})")
        lines.append("  (watch ended)" if self.closed else "  (live)")
        return "\n".join(lines)

    def fallback_html(self) -> str:
        return str(self.table.value) + str(self.status.value)
