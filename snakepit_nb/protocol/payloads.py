"""Tool error payloads: what travels when a tool raised (not an infrastructure error).

A unary call answers ``success=false`` with ``error_message`` holding the JSON object
``{"type", "message", "traceback", "context": {"tool_name", "session_id"}}``; a streaming call
aborts with INTERNAL and the same JSON as details; a batched call puts the object itself in its
result array. This is the published Snakepit convention; the client turns it back into a
:class:`~snakepit_nb.RemoteToolError`.
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Mapping
from typing import Any

from snakepit_nb._errors import RemoteToolError

__all__ = ["error_info", "error_payload", "remote_error_from_info", "remote_error_from_payload"]

# A traceback longer than this is cut in the middle: the head says where, the tail says why.
_MAX_TRACEBACK_CHARS = 64 * 1024


def error_info(exc: BaseException, *, tool_name: str, session_id: str) -> dict[str, Any]:
    """The error payload of ``exc`` as a dict (for batch results)."""
    if isinstance(exc, RemoteToolError):
        # A tool that re-raises a remote error (a kernel tool's) keeps the original's identity.
        remote_type, message, tb = exc.remote_type, exc.remote_message, exc.remote_traceback
    else:
        remote_type = type(exc).__name__
        message = _safe_str(exc)
        try:
            tb = "".join(traceback.format_exception(exc))
        except Exception:
            tb = f"{remote_type}: {message}\n"
    if len(tb) > _MAX_TRACEBACK_CHARS:
        half = _MAX_TRACEBACK_CHARS // 2
        tb = tb[:half] + "\n... (traceback shortened) ...\n" + tb[-half:]
    return {
        "type": remote_type,
        "message": message,
        "traceback": tb,
        "context": {"tool_name": tool_name, "session_id": session_id},
    }


def _safe_str(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:
        return f"<{type(exc).__name__} with an unprintable message>"


def error_payload(exc: BaseException, *, tool_name: str, session_id: str) -> str:
    """The JSON error payload of ``exc`` for ``error_message`` / stream abort details."""
    return json.dumps(error_info(exc, tool_name=tool_name, session_id=session_id))


def remote_error_from_info(
    info: Mapping[str, Any], *, tool_name: str = "", session_id: str = "", worker_id: str = ""
) -> RemoteToolError:
    """Build the :class:`~snakepit_nb.RemoteToolError` a payload object describes."""
    context = info.get("context")
    context = dict(context) if isinstance(context, Mapping) else {}
    tb = info.get("traceback")
    if not isinstance(tb, str):
        # The published bridge also sends "stacktrace": a list of frame strings.
        frames = info.get("stacktrace")
        tb = "".join(str(f) for f in frames) if isinstance(frames, list) else ""
    return RemoteToolError(
        str(info.get("type") or "RemoteError"),
        str(info.get("message", "")),
        tb,
        tool_name=tool_name or str(context.get("tool_name", "")),
        session_id=session_id or str(context.get("session_id", "")),
        worker_id=worker_id,
        context=context,
    )


def remote_error_from_payload(
    text: str | bytes, *, tool_name: str = "", session_id: str = "", worker_id: str = ""
) -> RemoteToolError:
    """Parse an error payload; text that is not a payload object becomes type ``RemoteError``."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    info: object = None
    if text[:1] == "{":
        try:
            info = json.loads(text)
        except (ValueError, RecursionError):
            info = None
    if not isinstance(info, dict) or ("type" not in info and "message" not in info):
        info = {"type": "RemoteError", "message": text}
    return remote_error_from_info(
        info, tool_name=tool_name, session_id=session_id, worker_id=worker_id
    )
