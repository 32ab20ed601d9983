"""A program's LM calls as a person reads them, like ``dspy.inspect_history()``.

``program.inspect_history(n)`` returns a ``History``: a list of calls (messages with role and
content, outputs, usage, model, temperature, worker, time) read from the orchestrator's
``<program>.calls`` variable, so it is there after any worker restarted. In a notebook it
renders as HTML (one block per call: the system message, the demos and user turns, the
response); ``str()`` gives the same as text, laid out as DSPy's own ``inspect_history``.
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterator, Sequence
from typing import Any

from snakepit_nb._errors import NotFoundError
from snakepit_nb.adapters.dspy.history import flatten_runs
from snakepit_nb.adapters.dspy.programs import ProgramVariables

__all__ = ["History", "read_history"]

_ROLE_TITLES = {
    "system": "System message",
    "user": "User message",
    "assistant": "Assistant message",
    "developer": "Developer message",
}
_ROLE_COLOURS = {"system": "#6a4c93", "user": "#1f6feb", "assistant": "#2da44e"}


def _when(call: dict[str, Any]) -> str:
    at = call.get("at")
    if isinstance(at, int | float):
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))
    return str(call.get("timestamp") or "")


def _heading(call: dict[str, Any]) -> str:
    parts = [f"[{_when(call)}]", str(call.get("model") or "?")]
    if call.get("temperature") is not None:
        parts.append(f"temperature {call['temperature']:g}")
    if call.get("worker_id"):
        parts.append(f"worker {call['worker_id']}")
    usage = call.get("usage") or {}
    if isinstance(usage, dict) and usage.get("total_tokens"):
        parts.append(f"{usage['total_tokens']} tokens")
    return " · ".join(parts)


class History(Sequence[dict[str, Any]]):
    """The last calls of a program (oldest first); indexable like a list."""

    def __init__(self, program: str, calls: list[dict[str, Any]]) -> None:
        self.program = program
        self.calls = calls

    def __len__(self) -> int:
        return len(self.calls)

    def __getitem__(self, index: Any) -> Any:
        return self.calls[index]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.calls)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, History):
            return self.calls == other.calls
        return isinstance(other, list) and self.calls == other

    __hash__ = None  # type: ignore[assignment]

    # -- text ------------------------------------------------------------------------------
    def __str__(self) -> str:
        if not self.calls:
            return f"no calls recorded for program {self.program!r} yet"
        blocks: list[str] = []
        for call in self.calls:
            lines = [_heading(call), ""]
            for message in call.get("messages") or []:
                title = _ROLE_TITLES.get(message.get("role", ""), str(message.get("role")))
                lines += [f"{title}:", "", str(message.get("content", "")), ""]
            lines += ["Response:", ""]
            lines += [str(o) for o in call.get("outputs") or ["(no output)"]]
            blocks.append("\n".join(lines))
        return ("\n\n" + "-" * 72 + "\n\n").join(blocks)

    def __repr__(self) -> str:
        return f"<History of {self.program!r}: {len(self.calls)} call(s)>"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(str(self))

    # -- HTML ------------------------------------------------------------------------------
    def _repr_html_(self) -> str:
        if not self.calls:
            return f"<p><i>{html.escape(str(self))}</i></p>"
        pre = (
            "white-space:pre-wrap;margin:2px 0 8px 0;padding:6px;background:#f6f8fa;"
            "border-radius:4px;font-size:12px"
        )
        parts = [f'<div class="snakepit-dspy-history" data-program="{html.escape(self.program)}">']
        for i, call in enumerate(self.calls, 1):
            parts.append(
                '<div class="snakepit-dspy-call" style="border-left:3px solid #999;'
                'padding-left:8px;margin:8px 0">'
                f"<div><b>call {i}</b> {html.escape(_heading(call))}</div>"
            )
            for message in call.get("messages") or []:
                role = str(message.get("role", ""))
                colour = _ROLE_COLOURS.get(role, "#555")
                title = _ROLE_TITLES.get(role, role)
                parts.append(
                    f'<div style="color:{colour};font-weight:bold">{html.escape(title)}</div>'
                    f'<pre style="{pre}">{html.escape(str(message.get("content", "")))}</pre>'
                )
            outputs = call.get("outputs") or ["(no output)"]
            parts.append('<div style="color:#bf3989;font-weight:bold">Response</div>')
            parts.extend(f'<pre style="{pre}">{html.escape(str(o))}</pre>' for o in outputs)
            parts.append("</div>")
        parts.append("</div>")
        return "".join(parts)


def read_history(session: Any, program: str, n: int) -> History:
    """The last ``n`` LM calls of ``program``, from the orchestrator (``<program>.calls``)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    try:
        # Each version is one run, holding one call or more: n versions hold n calls or more.
        versions = session.vars.history(ProgramVariables(program).calls, limit=n)
    except (KeyError, NotFoundError):
        versions = []
    return History(program, flatten_runs([v.value for v in versions], n))
