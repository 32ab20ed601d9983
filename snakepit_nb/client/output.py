"""Where a caller sees its workers' output: the calling cell, or the terminal.

The sink is chosen in the caller's thread when a call starts (:func:`sink_for_caller`):

- In a Jupyter kernel ``sys.stdout`` is ipykernel's ``OutStream``, which knows the cell the
  current thread belongs to (its ``parent_header``; ipykernel routes a thread's output to the cell
  that started it). The sink keeps that header and sends the worker's text as ``stream`` messages
  of that cell, so output lands where the call was made even when it arrives on the snakepit
  loop thread, from a thread, a stream or a future. One sink per cell, so many calls of one cell
  share its pace: text is coalesced and sent at most ``PACE`` times a second.
- Anywhere else the text goes to ``sys.stdout``/``sys.stderr``, each line prefixed ``[w1]``.

Only duck typing is used (``session``, ``pub_thread``, ``parent_header``): this module does not
import IPython.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
from collections import OrderedDict
from typing import Any

__all__ = ["CellSink", "ConsoleSink", "caller_sink", "sink_for_caller"]

#: Seconds between two sends of one sink (a few messages a second per cell).
PACE = 0.25
#: Cells whose sinks are kept (the most recent ones).
_CELLS_KEPT = 32


class _Buffered:
    """Text per stream, coalesced, sent by :meth:`_send` at most once per ``pace`` seconds."""

    def __init__(self, *, prefix: bool, pace: float) -> None:
        self.prefix = prefix
        self.pace = pace
        self._parts: list[tuple[str, str]] = []
        self._line_start: dict[tuple[str, str], bool] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._lock = threading.Lock()
        self.sent = 0

    def write(self, worker_id: str, stream: str, text: str) -> None:
        if self.prefix:
            text = self._prefixed(worker_id, stream, text)
        with self._lock:
            if self._parts and self._parts[-1][0] == stream:
                self._parts[-1] = (stream, self._parts[-1][1] + text)
            else:
                self._parts.append((stream, text))
        if self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
            self._timer = loop.call_later(self.pace, self._on_timer)

    def _prefixed(self, worker_id: str, stream: str, text: str) -> str:
        key = (worker_id, stream)
        start = self._line_start.get(key, True)
        mark = f"[{worker_id}] "
        lines = text.split("\n")
        out = []
        for i, line in enumerate(lines):
            last = i == len(lines) - 1
            if last and not line:
                break
            out.append((mark if (start or i > 0) else "") + line)
        self._line_start[key] = text.endswith("\n")
        return "\n".join(out) + ("\n" if text.endswith("\n") else "")

    def _on_timer(self) -> None:
        self._timer = None
        self.flush()

    def flush(self) -> None:
        with self._lock:
            parts, self._parts = self._parts, []
        for stream, text in parts:
            if text:
                self._send(stream, text)
                self.sent += 1

    def _send(self, stream: str, text: str) -> None:
        raise NotImplementedError


class CellSink(_Buffered):
    """Stream messages of one notebook cell (ipykernel), sent from any thread."""

    def __init__(self, out: Any, err: Any, *, prefix: bool, pace: float = PACE) -> None:
        super().__init__(prefix=prefix, pace=pace)
        self._streams = {"stdout": out, "stderr": err}
        self.parent = out.parent_header

    def _send(self, stream: str, text: str) -> None:
        target = self._streams[stream]
        session = target.session
        msg = session.msg("stream", {"name": stream, "text": text}, parent=self.parent)
        # ipykernel's IOPub thread takes messages from any thread.
        with contextlib.suppress(Exception):  # the kernel is shutting down
            session.send(target.pub_thread, msg, ident=target.topic)


class ConsoleSink(_Buffered):
    """``sys.stdout``/``sys.stderr`` of a script or a terminal, lines prefixed ``[w1]``."""

    def __init__(self, *, pace: float = 0.05) -> None:
        super().__init__(prefix=True, pace=pace)

    def _send(self, stream: str, text: str) -> None:
        target = sys.stdout if stream == "stdout" else sys.stderr
        with contextlib.suppress(Exception):
            target.write(text)
            target.flush()


def _is_kernel_stream(stream: Any) -> bool:
    return all(hasattr(stream, a) for a in ("session", "pub_thread", "parent_header", "topic"))


_cells: OrderedDict[str, CellSink] = OrderedDict()
_cells_lock = threading.Lock()


def sink_for_caller(*, prefix: bool = False) -> CellSink | ConsoleSink:
    """The sink for a call made now, from this thread (see the module docstring)."""
    out: Any = sys.stdout
    err: Any = sys.stderr
    if not (_is_kernel_stream(out) and _is_kernel_stream(err)):
        return ConsoleSink()
    parent = out.parent_header or {}  # the cell's execute_request header
    msg_id = str(parent.get("msg_id") or (parent.get("header") or {}).get("msg_id", ""))
    with _cells_lock:
        sink = _cells.get(msg_id)
        if sink is None or sink.prefix != prefix:
            sink = CellSink(out, err, prefix=prefix)
            _cells[msg_id] = sink
            while len(_cells) > _CELLS_KEPT:
                _cells.popitem(last=False)
        else:
            _cells.move_to_end(msg_id)
        return sink


def caller_sink(service: Any) -> CellSink | ConsoleSink | None:
    """The sink of a call made now through ``service``; None unless ``worker_output="cell"``.

    In a cell, lines carry a ``[w1]`` prefix only when the pool has more than one worker.
    """
    if service.output.mode != "cell":
        return None
    return sink_for_caller(prefix=service.config.workers > 1)
