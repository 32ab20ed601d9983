"""Small HTML and text building blocks shared by the widgets and the rich reprs.

Everything is inline-styled (JupyterLab keeps inline styles of widget HTML and of trusted
output) and uses JupyterLab's CSS variables with fallbacks, so it reads well in light and dark
themes and in a static nbconvert page.
"""

from __future__ import annotations

import html
import math
import re
import reprlib
from collections.abc import Iterable, Sequence

FONT = "var(--jp-ui-font-family, -apple-system, 'Segoe UI', Roboto, sans-serif)"
MONO = "var(--jp-code-font-family, SFMono-Regular, Menlo, Consolas, monospace)"
FG = "var(--jp-ui-font-color1, #1f2328)"
MUTED = "var(--jp-ui-font-color2, #656d76)"
BORDER = "var(--jp-border-color2, #d0d7de)"
SUBTLE_BG = "var(--jp-layout-color2, #f6f8fa)"
ACCENT = "#3b82f6"
GREEN = "#16a34a"
RED = "#dc2626"
AMBER = "#d97706"
GREY = "#6b7280"

STATE_COLORS = {
    "running": ACCENT,
    "ready": GREEN,
    "idle": GREEN,
    "busy": ACCENT,
    "done": GREEN,
    "starting": AMBER,
    "restarting": AMBER,
    "draining": AMBER,
    "cancelled": GREY,
    "stopped": GREY,
    "closed": GREY,
    "failed": RED,
    "crashed": RED,
    "dead": RED,
}

_repr = reprlib.Repr()
_repr.maxstring = 120
_repr.maxother = 120
_repr.maxlist = 12
_repr.maxdict = 12
_repr.maxlevel = 4


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


_LITERAL = re.compile(r"``(.+?)``")


def prose(text: str) -> str:
    """Escaped docstring prose, with its ``literals`` shown as code."""
    return _LITERAL.sub(lambda m: f"<code>{m.group(1)}</code>", esc(text))


def short_repr(value: object, limit: int = 120) -> str:
    """A one-line repr, bounded in size however big the value is."""
    try:
        text = _repr.repr(value)
    except Exception as exc:  # a user's __repr__ can raise
        text = f"<{type(value).__name__}: repr failed: {exc}>"
    text = text.replace("\n", "\\n")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def full_repr(value: object, limit: int = 4000) -> tuple[str, bool]:
    """``repr(value)`` cut at ``limit`` characters; the flag says whether it was cut."""
    try:
        text = repr(value)
    except Exception as exc:
        text = f"<{type(value).__name__}: repr failed: {exc}>"
    if len(text) <= limit:
        return text, False
    return text[:limit], True


def duration(seconds: float | None) -> str:
    if seconds is None or math.isnan(seconds):
        return "–"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, sec = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {sec:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def size(nbytes: int | float | None) -> str:
    if nbytes is None:
        return "–"
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def count(n: int) -> str:
    return f"{n:,}"


def rate(per_second: float) -> str:
    if per_second >= 10_000:
        return f"{per_second / 1000:,.0f}k/s"
    if per_second >= 100:
        return f"{per_second:,.0f}/s"
    return f"{per_second:,.1f}/s"


def badge(state: str) -> str:
    color = STATE_COLORS.get(state, GREY)
    return (
        f'<span style="display:inline-block;padding:0 7px;border-radius:9px;'
        f"background:{color}1f;color:{color};border:1px solid {color}66;"
        f'font-size:11px;line-height:17px;font-weight:600">{esc(state)}</span>'
    )


def progress_bar(fraction: float, *, state: str = "running", width: str = "100%") -> str:
    frac = min(1.0, max(0.0, fraction))
    color = STATE_COLORS.get(state, ACCENT)
    return (
        f'<div style="width:{width};height:6px;border-radius:3px;background:{SUBTLE_BG};'
        f'border:1px solid {BORDER};overflow:hidden;margin:4px 0">'
        f'<div style="width:{frac * 100:.1f}%;height:100%;background:{color}"></div></div>'
    )


def card(title_html: str, body_html: str, *, css_class: str = "") -> str:
    cls = f' class="{esc(css_class)}"' if css_class else ""
    return (
        f'<div{cls} style="font-family:{FONT};color:{FG};font-size:13px;'
        f"border:1px solid {BORDER};border-radius:6px;padding:8px 10px;margin:2px 0;"
        f'max-width:900px">'
        f'<div style="margin-bottom:4px">{title_html}</div>{body_html}</div>'
    )


def table(
    headers: Sequence[str],
    rows: Iterable[Sequence[str]],
    *,
    row_styles: Sequence[str] | None = None,
    css_class: str = "",
) -> str:
    """An HTML table; cells are HTML already (escape text with :func:`esc` first)."""
    cls = f' class="{esc(css_class)}"' if css_class else ""
    th = "".join(
        f'<th style="text-align:left;padding:3px 10px 3px 0;color:{MUTED};font-weight:600;'
        f'border-bottom:1px solid {BORDER};white-space:nowrap">{esc(h)}</th>'
        for h in headers
    )
    body = []
    for i, row in enumerate(rows):
        style = row_styles[i] if row_styles and i < len(row_styles) else ""
        tds = "".join(
            f'<td style="padding:3px 10px 3px 0;vertical-align:middle;text-align:left;'
            f'border-bottom:1px solid {SUBTLE_BG}">{cell}</td>'
            for cell in row
        )
        body.append(f'<tr style="{style}">{tds}</tr>')
    return (
        f'<table{cls} style="border-collapse:collapse;font-size:12px;font-family:{FONT};'
        f'color:{FG}"><thead><tr>{th}</tr></thead><tbody>{"".join(body)}</tbody></table>'
    )


def mono(text: str) -> str:
    return f'<code style="font-family:{MONO};font-size:12px">{esc(text)}</code>'


def sparkline(values: Sequence[float], *, width: int = 120, height: int = 26) -> str:
    """An inline SVG line of recent values (the last point is marked)."""
    points = [v for v in values if isinstance(v, int | float) and math.isfinite(v)]
    if len(points) < 2:
        return f'<svg width="{width}" height="{height}"></svg>'
    lo, hi = min(points), max(points)
    span = (hi - lo) or 1.0
    step = (width - 4) / (len(points) - 1)
    coords = [
        (2 + i * step, height - 3 - (v - lo) / span * (height - 6)) for i, v in enumerate(points)
    ]
    path = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
    lx, ly = coords[-1]
    return (
        f'<svg width="{width}" height="{height}" style="vertical-align:middle">'
        f'<polyline points="{path}" fill="none" stroke="{ACCENT}" stroke-width="1.5" '
        f'stroke-linejoin="round"/><circle cx="{lx:.1f}" cy="{ly:.1f}" r="2.2" '
        f'fill="{ACCENT}"/></svg>'
    )
