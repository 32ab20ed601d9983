"""A live progress view of many calls: count, errors, rate, elapsed.

``sp.progress(futures)`` and a long ``s.map(...)`` show one. The counts live in a ``Tally``
(``client/futures.py``), changed by the calls' done callbacks on the snakepit loop thread; the
view only marks itself dirty there and the UI pump renders it at most ``hz`` times a second, so
a 100,000-item map costs a handful of widget messages a second. When the calls are done the
final state is rendered and the static fallbacks refreshed, so a saved notebook shows it.

Outside a kernel (a script, a terminal) :func:`text_progress` prints the same summary to
``sys.stderr`` about once a second until the calls are done.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from snakepit_nb._loop import LoopThread
from snakepit_nb.display import formatting as fmt

from .pump import UIPump
from .view import DisplayedView


class ProgressView(DisplayedView):
    """A progress bar and a line of counts for one Tally."""

    def __init__(self, tally: Any, *, pump: UIPump, loop_thread: LoopThread) -> None:
        import ipywidgets as w

        self.tally = tally
        self._pump = pump
        self._loop_thread = loop_thread
        self.bar = w.IntProgress(
            value=0,
            min=0,
            max=max(1, tally.total),
            _dom_classes=["snakepit-progress-bar"],
            layout=w.Layout(width="420px"),
        )
        self.label = w.HTML(_dom_classes=["snakepit-progress-label"])
        self._shown: tuple[object, ...] = ()
        self._last_label = 0.0
        self._final_rendered = False
        super().__init__([self.bar, self.label], css_class="snakepit-progress")
        self.label.value = self._label_html()
        tally.on_change(self._changed)

    def _changed(self) -> None:
        # Any thread (a done callback); the pump runs on the loop thread.
        self._loop_thread.loop.call_soon_threadsafe(self._pump.poke)

    def _key(self) -> tuple[object, ...]:
        t = self.tally
        return (t.done, t.failed, t.cancelled, t.finished())

    # -- pump protocol ----------------------------------------------------------------------
    def pending(self) -> bool:
        if self._key() != self._shown:
            return True
        # While running, the rate and elapsed time move: about once a second.
        return not self.tally.finished() and time.monotonic() - self._last_label >= 1.0

    def cost(self) -> int:
        return 2

    def finished(self) -> bool:
        return bool(self.tally.finished()) and self._final_rendered

    def waits(self) -> bool:
        return True

    def render(self) -> int:
        key = self._key()
        self._shown = key
        self._last_label = time.monotonic()
        sent = self.set_value(self.bar, self.tally.done)
        style = "danger" if self.tally.failed else ("success" if self.tally.finished() else "")
        sent += self.set_value(self.bar, style, "bar_style")
        sent += self.set_value(self.label, self._label_html())
        if self.tally.finished() and not self._final_rendered:
            self._final_rendered = True
            sent += self.refresh_fallback()
        return sent

    def close(self) -> None:
        self._final_rendered = True
        super().close()

    # -- HTML and text ------------------------------------------------------------------------
    def _label_html(self) -> str:
        t = self.tally
        state = "done" if t.finished() else "running"
        errors = (
            f' · <span class="snakepit-progress-failed" style="color:{fmt.RED}">'
            f"{t.failed} failed</span>"
            if t.failed
            else ""
        )
        cancelled = f" · {t.cancelled} cancelled" if t.cancelled else ""
        return (
            f'<span style="font-family:{fmt.FONT};font-size:12px;color:{fmt.FG}">'
            f"{fmt.badge(state)} "
            f'<b class="snakepit-progress-count">{t.done}/{t.total}</b> {fmt.esc(t.label)}'
            f"{errors}{cancelled} · {t.rate:.1f}/s · {fmt.duration(t.elapsed)}</span>"
        )

    def fallback_text(self) -> str:
        return f"progress: {self.tally.summary()}"

    def fallback_html(self) -> str:
        fraction = self.tally.done / self.tally.total if self.tally.total else 1.0
        state = "done" if self.tally.finished() else "running"
        return fmt.progress_bar(fraction, state=state, width="420px") + self._label_html()


def text_progress(tally: Any, *, every: float = 1.0, stream: Any = None) -> None:
    """Print ``tally``'s summary about once a second until it is done (plain Python)."""
    out = stream if stream is not None else sys.stderr
    last = ""
    while not tally.wait(every):
        line = tally.summary()
        if line != last:
            print(f"progress: {line}", file=out, flush=True)
            last = line
    print(f"progress: {tally.summary()}", file=out, flush=True)
