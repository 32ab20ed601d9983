"""The prompts a program sent and what came back, kept by the orchestrator per session.

Each run (``dspy.run``, ``dspy.stream``, each input of ``dspy.batch``) writes one version of
the session variable ``<program>.calls``: the LM calls that run made, each with its messages
(role and content), outputs, usage, model, temperature, the worker that made it and when. The
variable's version history *is* the program's history: bounded by the session's
``max_history`` (1000 versions by default), in the orchestrator, so it survives a restart of
every worker, and readable from the notebook without asking a worker.

Keys are never part of it (DSPy's ``kwargs`` of a call, which may hold ``api_key``, are left
out), and very long texts are cut so that one run stays a modest variable value.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["MAX_CALLS_PER_RUN", "MAX_TEXT", "flatten_runs", "lm_calls", "run_record"]

MAX_CALLS_PER_RUN = 50
MAX_TEXT = 20_000


def _cut(text: str) -> str:
    if len(text) <= MAX_TEXT:
        return text
    return text[:MAX_TEXT] + f"\n... [{len(text) - MAX_TEXT} more characters not kept]"


def _messages(messages: Any) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for message in messages or []:
        if isinstance(message, dict):
            content = message.get("content")
            if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
                content = "".join(
                    str(p.get("text", "")) if isinstance(p, dict) else str(p) for p in content
                )
            elif not isinstance(content, str):
                content = "" if content is None else str(content)
            out.append({"role": str(message.get("role", "")), "content": _cut(content)})
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _output(output: Any) -> str:
    if isinstance(output, dict):  # {"text": ..., "reasoning_content": ...}
        output = output.get("text", output)
    return _cut(str(output))


def lm_calls(
    lms: Iterable[Any], *, temperature: float | None, worker_id: str
) -> list[dict[str, Any]]:
    """The calls recorded in the ``history`` of the per-run LM copies, oldest first."""
    calls: list[dict[str, Any]] = []
    for lm in lms:
        for entry in list(getattr(lm, "history", None) or []):
            calls.append(
                {
                    "messages": _messages(entry.get("messages")),
                    "outputs": [_output(o) for o in entry.get("outputs") or []],
                    "model": str(entry.get("model") or getattr(lm, "model", "")),
                    "temperature": temperature,
                    "usage": _plain(entry.get("usage") or {}),
                    "cost": _plain(entry.get("cost")),
                    "timestamp": str(entry.get("timestamp") or ""),
                    "worker_id": worker_id,
                }
            )
    return calls[-MAX_CALLS_PER_RUN:]


def run_record(
    calls: list[dict[str, Any]], *, inputs: dict[str, Any], prediction: Any, worker_id: str
) -> dict[str, Any]:
    """One version of ``<program>.calls``: a run's inputs, prediction and LM calls."""
    return {
        "inputs": _plain(inputs),
        "prediction": _plain(prediction),
        "calls": calls,
        "worker_id": worker_id,
        "at": time.time(),
    }


def flatten_runs(runs: Sequence[Any], n: int) -> list[dict[str, Any]]:
    """The last ``n`` LM calls across run records (oldest first), each with its run's time."""
    calls: list[dict[str, Any]] = []
    for run in runs:
        if not isinstance(run, dict):
            continue
        for call in run.get("calls") or []:
            if isinstance(call, dict):
                calls.append({**call, "at": run.get("at"), "inputs": run.get("inputs")})
    return calls[-n:] if n > 0 else []
