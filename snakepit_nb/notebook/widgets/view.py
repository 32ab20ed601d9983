"""What every live view shares: a box of widgets, a display with static fallbacks, counted writes.

A view is displayed once, on the main thread, as one mimebundle holding the widget view plus
``text/html`` and ``text/plain`` fallbacks (the fallbacks are what GitHub, a static nbconvert
page or a terminal show). When a view finishes, the pump refreshes those fallbacks with
``update_display`` so a saved notebook shows the final state even where widgets don't render.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from snakepit_nb.display import formatting as fmt

#: How often a long-lived view (a watch, the pool) re-sends its static fallbacks while it
#: changes, so a saved notebook's text and HTML show a recent state, not the first one.
FALLBACK_EVERY = 2.0


def in_kernel() -> bool:
    """True inside a Jupyter kernel (where widgets render), False in a terminal or a script."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def _execution_count() -> int | None:
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    shell = get_ipython()
    return None if shell is None else int(shell.execution_count)


class DisplayedView:
    """Base of the stream, watch and pool views (the pump calls pending/render/cost/...)."""

    def __init__(self, children: list[Any], *, css_class: str) -> None:
        import ipywidgets as w

        self.box = w.VBox(
            children,
            _dom_classes=["snakepit-view", css_class],
            layout=w.Layout(
                border=f"1px solid {fmt.BORDER}",
                padding="6px 10px",
                margin="2px 0",
                max_width="900px",
            ),
        )
        self.display_id = f"snakepit-{uuid.uuid4().hex[:12]}"
        self.displayed = False
        self._displayed_in: int | None = None
        self._fallback_at = 0.0
        self._fallback_stale = False
        self.closed = False

    # -- pump protocol defaults ------------------------------------------------------------
    def pending(self) -> bool:
        raise NotImplementedError  # pragma: no cover - each view defines it

    def render(self) -> int:
        raise NotImplementedError  # pragma: no cover - each view defines it

    def cost(self) -> int:
        return 1

    def finished(self) -> bool:
        return self.closed

    def waits(self) -> bool:
        return False

    # -- fallbacks ---------------------------------------------------------------------------
    def fallback_text(self) -> str:
        return f"<{type(self).__name__}>"

    def fallback_html(self) -> str:
        return ""

    def __repr__(self) -> str:
        return self.fallback_text()

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(self.fallback_text())

    def mimebundle(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "text/plain": self.fallback_text(),
            "text/html": fmt.card("", self.fallback_html(), css_class="snakepit-fallback"),
        }
        model_id = getattr(self.box, "model_id", None)
        if model_id:
            data["application/vnd.jupyter.widget-view+json"] = {
                "version_major": 2,
                "version_minor": 0,
                "model_id": model_id,
            }
        return data

    def display(self) -> None:
        """Show the view in the current cell (main thread, inside the magic)."""
        from IPython.display import display

        display(self.mimebundle(), raw=True, display_id=self.display_id)  # type: ignore[no-untyped-call]
        self.displayed = True
        self._displayed_in = _execution_count()

    def _ipython_display_(self) -> None:
        """As a cell's value: nothing in the cell that already shows it, else shown again."""
        if self.displayed and self._displayed_in == _execution_count():
            return
        self.display()

    def refresh_fallback(self) -> int:
        """Re-send the display with up-to-date fallbacks; returns the messages sent (0 or 1)."""
        self._fallback_stale = False
        self._fallback_at = time.monotonic()
        if not self.displayed or not in_kernel():
            return 0
        from IPython.display import update_display

        update_display(self.mimebundle(), raw=True, display_id=self.display_id)  # type: ignore[no-untyped-call]
        return 1

    def fallback_due(self) -> bool:
        """True when the fallbacks lag the widgets: at once when closed, else every 2 s."""
        if not self._fallback_stale:
            return False
        return self.closed or time.monotonic() - self._fallback_at >= FALLBACK_EVERY

    def refresh_fallback_when_due(self, changed: bool) -> int:
        """After a render that ``changed`` the widgets: refresh the fallbacks if due."""
        if changed:
            self._fallback_stale = True
        return self.refresh_fallback() if self.fallback_due() else 0

    def resend(self) -> int:
        """Send every widget's whole state again, then the fallbacks; returns the messages."""
        sent = 0
        stack = [self.box]
        while stack:
            widget = stack.pop()
            if getattr(widget, "comm", None) is not None:
                widget.send_state()
                sent += 1
            stack.extend(getattr(widget, "children", ()))
        return sent + self.refresh_fallback()

    @staticmethod
    def set_value(widget: Any, value: object, trait: str = "value") -> int:
        """Write one trait if it changed; returns the comm messages that sent (0 or 1)."""
        if getattr(widget, trait) == value:
            return 0
        with widget.hold_sync():
            setattr(widget, trait, value)
        return 1

    def close(self) -> None:
        """Stop updating (the pump drops the view after its last render)."""
        self.closed = True
