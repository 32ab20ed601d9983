"""What a person sees of a DSPy stream, evaluation or optimization: HTML built from its chunks.

``render(tool, chunks, result, done)`` gives the HTML for the chunks so far of
``dspy.stream`` (each output field's text as it grows), ``dspy.evaluate`` (progress and one
table row per scored example: inputs, gold, prediction, score) and ``dspy.optimize`` (a
trials table, a plot of each trial's score and the best so far, and the current best
instructions and demos). The live view of ``%snakepit stream`` calls it as chunks arrive; the
handles returned by ``Program.evaluate``/``optimize`` use it for their ``_repr_html_``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from snakepit_nb.display import formatting as fmt

__all__ = ["render", "result_html"]

MAX_ROWS = 200
MAX_TRIALS = 40


def _text(value: Any, limit: int = 160) -> str:
    if isinstance(value, dict):
        value = ", ".join(f"{k}: {v}" for k, v in value.items())
    text = "" if value is None else str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _mark(score: float) -> str:
    colour = fmt.GREEN if score >= 1 else fmt.RED if score <= 0 else fmt.AMBER
    return f'<span style="color:{colour};font-weight:600">{score:g}</span>'


# -- dspy.stream -------------------------------------------------------------------------
def stream_html(chunks: Sequence[Any], result: Any, done: bool) -> str:
    fields: dict[str, str] = {}
    status = ""
    for chunk in chunks:
        if not isinstance(chunk, dict):
            continue
        if chunk.get("type") == "token":
            key = f"{chunk.get('predictor', '')}.{chunk.get('field', '')}".lstrip(".")
            fields[key] = fields.get(key, "") + str(chunk.get("text", ""))
        elif chunk.get("type") == "status":
            status = str(chunk.get("message", ""))
    if done and isinstance(result, dict) and not fields:
        # A cached answer streams no tokens: show the prediction.
        fields = {k: str(v) for k, v in (result.get("prediction") or {}).items()}
    rows = [
        (fmt.esc(name), f'<span style="white-space:pre-wrap">{fmt.esc(text)}</span>')
        for name, text in fields.items()
    ]
    table = fmt.table(("field", "text"), rows, css_class="snakepit-dspy-fields")
    line = f'<div style="color:{fmt.MUTED};font-size:11px">{fmt.esc(status)}</div>'
    return f'<div class="snakepit-dspy-stream">{table}{line if status else ""}</div>'


# -- dspy.evaluate -----------------------------------------------------------------------
def evaluation_html(chunks: Sequence[Any], result: Any, done: bool) -> str:
    if done and isinstance(result, dict) and isinstance(result.get("rows"), list):
        rows = list(result["rows"])
        total = len(rows)
    else:
        rows = [c for c in chunks if isinstance(c, dict) and c.get("type") == "example"]
        total = max((int(c.get("total") or 0) for c in rows), default=0)
    scores = [float(r.get("score") or 0.0) for r in rows]
    mean = 100 * sum(scores) / len(scores) if scores else 0.0
    score = float(result["score"]) if done and isinstance(result, dict) else mean
    head = (
        f"<b>score {score:.1f} %</b> "
        f'<span style="color:{fmt.MUTED}">· {len(rows)} of {total or "?"} examples</span>'
    )
    bar = fmt.progress_bar(len(rows) / total, state="done" if done else "running") if total else ""
    body = [
        (
            str(i),
            fmt.esc(_text(r.get("inputs"))),
            fmt.esc(_text(r.get("gold"))),
            fmt.esc(_text(r.get("prediction"))),
            _mark(float(r.get("score") or 0.0)),
        )
        for i, r in enumerate(rows[:MAX_ROWS], 1)
    ]
    table = fmt.table(
        ("#", "inputs", "gold", "prediction", "score"), body, css_class="snakepit-dspy-rows"
    )
    more = (
        f'<div style="color:{fmt.MUTED};font-size:11px">… {len(rows) - MAX_ROWS} more rows '
        "(all are in .rows)</div>"
        if len(rows) > MAX_ROWS
        else ""
    )
    return f'<div class="snakepit-dspy-evaluation">{head}{bar}{table}{more}</div>'


# -- dspy.optimize -----------------------------------------------------------------------
def _plot(trials: Sequence[dict[str, Any]], width: int = 420, height: int = 110) -> str:
    """Each trial's score (dots; hollow for mini-batches) and the best so far (a line)."""
    if not trials:
        return ""
    values = [float(t.get("score") or 0.0) for t in trials]
    bests = [t.get("best") for t in trials]
    lo, hi = min([*values, 0.0]), max([*values, 100.0])
    span = (hi - lo) or 1.0
    step = (width - 30) / max(1, len(trials) - 1)

    def xy(i: int, v: float) -> tuple[float, float]:
        return 24 + i * step, height - 14 - (v - lo) / span * (height - 24)

    dots = []
    for i, (t, v) in enumerate(zip(trials, values, strict=True)):
        x, y = xy(i, v)
        fill = fmt.ACCENT if t.get("full") else "none"
        dots.append(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{fill}" stroke="{fmt.ACCENT}"/>'
        )
    line = " ".join(
        "{:.1f},{:.1f}".format(*xy(i, float(b))) for i, b in enumerate(bests) if b is not None
    )
    axis = (
        f'<text x="0" y="{height - 10}" font-size="10" fill="{fmt.GREY}">{lo:g}</text>'
        f'<text x="0" y="12" font-size="10" fill="{fmt.GREY}">{hi:g}</text>'
    )
    return (
        f'<svg class="snakepit-dspy-plot" width="{width}" height="{height}" '
        f'style="border:1px solid {fmt.SUBTLE_BG};margin:4px 0">{axis}'
        f'<polyline points="{line}" fill="none" stroke="{fmt.GREEN}" stroke-width="2"/>'
        f"{''.join(dots)}</svg>"
    )


def optimization_html(chunks: Sequence[Any], result: Any, done: bool) -> str:
    trials = [c for c in chunks if isinstance(c, dict) and c.get("type") == "candidate"]
    statuses = [c for c in chunks if isinstance(c, dict) and c.get("type") == "status"]
    best = max((t["best"] for t in trials if t.get("best") is not None), default=None)
    leader = next(
        (t for t in reversed(trials) if t.get("best") is not None and t.get("score") == best),
        None,
    )
    head = [
        f"<b>best {best:.1f} %</b>" if best is not None else "<b>no full score yet</b>",
        f"{len(trials)} trial{'s' if len(trials) != 1 else ''}",
    ]
    if statuses:
        head.append(fmt.esc(str(statuses[-1].get("message", ""))))
    if done and isinstance(result, dict) and "score" in result:
        head.append(
            f"{result.get('baseline', 0):.1f} % → {result['score']:.1f} % in "
            f"{fmt.duration(result.get('seconds'))}, written to "
            f"{fmt.mono(str(result.get('program', '')))}"
        )
    sep = f' <span style="color:{fmt.MUTED}">·</span> '
    best_box = ""
    if leader is not None:
        lines = "".join(
            f"<div><b>{fmt.esc(name)}</b> ({leader.get('demos', {}).get(name, 0)} demos): "
            f'<span style="white-space:pre-wrap">{fmt.esc(text)}</span></div>'
            for name, text in (leader.get("instructions") or {}).items()
        )
        best_box = (
            f'<div class="snakepit-dspy-best" style="background:{fmt.SUBTLE_BG};padding:6px;'
            f'border-radius:4px;margin:4px 0">best so far (trial {leader.get("index")}):'
            f"{lines}</div>"
        )
    shown = trials[-MAX_TRIALS:]
    rows = [
        (
            str(t.get("index")),
            fmt.esc(str(t.get("phase", ""))),
            _mark_pct(float(t.get("score") or 0.0)),
            "full" if t.get("full") else "mini-batch",
            "" if t.get("best") is None else f"{float(t['best']):.1f}",
            fmt.esc(" | ".join(_text(v, 90) for v in (t.get("instructions") or {}).values())),
            fmt.esc(", ".join(str(v) for v in (t.get("demos") or {}).values())),
        )
        for t in shown
    ]
    table = fmt.table(
        ("trial", "phase", "score", "set", "best", "instructions", "demos"),
        rows,
        css_class="snakepit-dspy-trials",
    )
    earlier = (
        f'<div style="color:{fmt.MUTED};font-size:11px">… {len(trials) - MAX_TRIALS} earlier '
        "trials (all are in the chunks)</div>"
        if len(trials) > MAX_TRIALS
        else ""
    )
    return (
        f'<div class="snakepit-dspy-optimization"><div>{sep.join(head)}</div>{_plot(trials)}'
        f"{best_box}{earlier}{table}</div>"
    )


def _mark_pct(score: float) -> str:
    return f"{score:.1f}"


_RENDERERS = {
    "dspy.stream": stream_html,
    "dspy.evaluate": evaluation_html,
    "dspy.optimize": optimization_html,
}


def render(tool: str, chunks: Sequence[Any], result: Any, done: bool) -> str | None:
    """The HTML for a DSPy tool's chunks so far (None: not a DSPy view)."""
    renderer = _RENDERERS.get(tool)
    return None if renderer is None else renderer(chunks, result, done)


def result_html(tool: str, result: Any) -> str | None:
    """A one-line summary of a DSPy tool's final value (the view already shows the rest)."""
    if tool not in _RENDERERS or not isinstance(result, dict):
        return None
    if tool == "dspy.evaluate":
        text = f"score {float(result.get('score', 0.0)):.1f} % on {len(result.get('rows', []))}"
        return f"<div>{fmt.esc(text)} examples (.rows has each one)</div>"
    if tool == "dspy.optimize":
        keys = ("program", "baseline", "score", "best_score", "candidates", "demos")
        return f"<div>{fmt.esc(_text({k: result.get(k) for k in keys}, 400))}</div>"
    return f"<div>{fmt.esc(_text(result.get('prediction'), 400))}</div>"
