"""The live stream view and the handle ``%snakepit stream`` returns.

The consumer task (snakepit-loop thread) appends every chunk to the handle's full list and to a
bounded tail, and updates counters; it never touches a widget. The UI pump renders the view at
most 10 times a second: a header (status, chunks, rate, elapsed, a progress bar when chunks
carry ``progress``), the tail (last lines only), and at the end the final value.

>>> h = %snakepit stream count n=5
>>> h.value, len(h.chunks)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Protocol

from snakepit_nb._loop import LoopThread, wait_interruptibly
from snakepit_nb.display import formatting as fmt

from .pump import UIPump
from .view import DisplayedView

TAIL_LINES = 12
_PARTIAL_LIMIT = 2000


class ChunkSource(Protocol):
    """What the consumer reads: an async iterator of chunks with ``result`` after the end."""

    def __aiter__(self) -> AsyncIterator[object]: ...

    @property
    def result(self) -> object: ...

    async def aclose(self) -> None: ...


OpenStream = Callable[[], Awaitable[ChunkSource]]


class Tail:
    """The last ``lines`` lines of a stream: text chunks flow together, others one per line."""

    def __init__(self, lines: int = TAIL_LINES) -> None:
        self.lines: deque[str] = deque(maxlen=max(1, lines))
        self.partial = ""
        self.total_lines = 0

    def add(self, chunk: object) -> None:
        if isinstance(chunk, str):
            parts = (self.partial + chunk).split("\n")
            for line in parts[:-1]:
                self.lines.append(line[-_PARTIAL_LIMIT:])
                self.total_lines += 1
            self.partial = parts[-1][-_PARTIAL_LIMIT:]
        else:
            if self.partial:
                self.lines.append(self.partial)
                self.total_lines += 1
                self.partial = ""
            self.lines.append(fmt.short_repr(chunk, 200))
            self.total_lines += 1

    def _shown(self) -> list[str]:
        shown = list(self.lines)
        if self.partial:
            shown.append(self.partial)
        limit = self.lines.maxlen or 1
        return shown[-limit:]

    def text(self) -> str:
        return "\n".join(self._shown())

    def hidden(self) -> int:
        complete = self.total_lines + (1 if self.partial else 0)
        return max(0, complete - len(self._shown()))


class StreamHandle:
    """A running or finished ``%snakepit stream``; keeps the chunks and the final value.

    ``chunks`` holds all chunks in order (the last ``keep`` with ``--keep N``), ``received``
    counts them all, ``result`` is the tool's return value (``None`` if the generator returned
    nothing), and ``value`` what the view shows as the outcome: the return value if there is
    one, else the text for a stream of strings, else the list of chunks (of those kept).
    ``wait()`` blocks until the end and returns ``value`` (or raises the tool's error);
    ``cancel()`` stops the stream; ``await handle`` works in a cell too.
    """

    def __init__(
        self,
        tool: str,
        kwargs: Mapping[str, object],
        *,
        session_id: str,
        loop_thread: LoopThread,
        tail_lines: int = TAIL_LINES,
        keep: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.tool = tool
        self.kwargs = dict(kwargs)
        self.session_id = session_id
        self.chunks: list[object] | deque[object] = [] if keep is None else deque(maxlen=keep)
        self.received = 0
        self._keep = keep
        self.result: object = None
        self.error: BaseException | None = None
        self.status = "starting"
        self.progress: float | None = None
        self.tail = Tail(tail_lines)
        self._clock = clock
        self.started_at = clock()
        self.finished_at: float | None = None
        self.version = 0
        self._loop_thread = loop_thread
        self._future: concurrent.futures.Future[None] | None = None
        self._listeners: list[Callable[[], None]] = []
        self._shared = False
        # Set when the consumer's cleanup ran: a cancelled concurrent future is "done" at
        # once, before the task on the loop has even seen the cancellation.
        self._finished = threading.Event()
        self.view: StreamView | None = None

    # -- consumption (loop thread) --------------------------------------------------------
    def start(self, open_stream: OpenStream) -> None:
        self._future = self._loop_thread.submit(self._consume(open_stream))

    def on_change(self, callback: Callable[[], None]) -> None:
        self._listeners.append(callback)

    def _changed(self) -> None:
        self.version += 1
        for callback in self._listeners:
            callback()

    async def _consume(self, open_stream: OpenStream) -> None:
        source: ChunkSource | None = None
        try:
            source = await open_stream()
            if self._keep is None and getattr(source, "keeps_all", False):
                # The runtime's stream already keeps every chunk: share its list.
                self.chunks = source.chunks  # type: ignore[attr-defined]
                self._shared = True
            self.status = "running"
            self._changed()
            async for chunk in source:
                self._add(chunk)
            self.result = source.result
            self.status = "done"
        except asyncio.CancelledError:
            self.status = "cancelled"
            raise
        except BaseException as exc:
            self.error = exc
            self.status = "failed"
        finally:
            if source is not None and self.status != "done":
                # Stop the remote generator now (on a failure or a cancel).
                with contextlib.suppress(BaseException):
                    await asyncio.shield(source.aclose())
            self.finished_at = self._clock()
            self._finished.set()
            self._changed()

    def _add(self, chunk: object) -> None:
        self.received += 1
        if not self._shared:
            self.chunks.append(chunk)
        self.tail.add(chunk)
        if isinstance(chunk, dict):
            progress = chunk.get("progress")
            if isinstance(progress, int | float) and not isinstance(progress, bool):
                self.progress = float(progress)
        self._changed()

    # -- the user's side (any thread) -------------------------------------------------------
    @property
    def value(self) -> object:
        if self.result is not None:
            return self.result
        if self.chunks and all(isinstance(c, str) for c in self.chunks):
            return "".join(self.chunks)  # type: ignore[arg-type]
        return list(self.chunks)

    @property
    def elapsed(self) -> float:
        end = self.finished_at if self.finished_at is not None else self._clock()
        return end - self.started_at

    def rate(self) -> float:
        elapsed = self.elapsed
        return self.received / elapsed if elapsed > 0 else 0.0

    def done(self) -> bool:
        return self.finished_at is not None

    def wait(self, timeout: float | None = None) -> object:
        """Block until the stream ends; return :attr:`value` or raise the stream's error.

        A KeyboardInterrupt (the kernel's Interrupt button) cancels the stream, which
        cancels the remote generator, and is re-raised.
        """
        assert self._future is not None, "the stream was never started"
        try:
            wait_interruptibly(self._future, timeout)
        except KeyboardInterrupt:
            self.cancel()
            raise
        except concurrent.futures.CancelledError:
            pass
        return self._outcome()

    def wait_quietly(self, timeout: float | None = None) -> None:
        """Block until the stream ends without raising its error (TimeoutError if it runs on).

        A KeyboardInterrupt cancels the stream and is re-raised.
        """
        if self._future is None:
            return
        try:
            wait_interruptibly(self._future, timeout)
        except KeyboardInterrupt:
            self.cancel()
            raise
        except concurrent.futures.TimeoutError:
            if not self._future.done():
                raise
        except BaseException:  # the stream's own error or cancellation: read it from the handle
            pass

    def _outcome(self) -> object:
        if self.error is not None:
            raise self.error
        if self.status == "cancelled":
            from snakepit_nb._errors import CancelledError

            raise CancelledError(f"the stream of {self.tool!r} was cancelled")
        return self.value

    def cancel(self, timeout: float = 5.0) -> None:
        """Cancel the stream (and the remote generator); returns once it has stopped."""
        future = self._future
        if future is None or future.done():
            return
        future.cancel()
        self._finished.wait(timeout)

    def __await__(self) -> Any:
        assert self._future is not None, "the stream was never started"
        wrapped = asyncio.wrap_future(self._future)

        async def _await() -> object:
            try:
                await wrapped
            except asyncio.CancelledError:
                if not self._future or not self._future.cancelled():
                    raise
            return self._outcome()

        return _await().__await__()

    def summary(self) -> str:
        n = self.received
        return (
            f"{self.tool}: {self.status}, {n:,} chunk{'s' if n != 1 else ''} "
            f"in {fmt.duration(self.elapsed)}"
        )

    def __repr__(self) -> str:
        return f"<StreamHandle {self.summary()}>"

    def _repr_html_(self) -> str:
        from snakepit_nb.display.reprs import stream_handle_html

        return stream_handle_html(self)

    def _ipython_display_(self) -> None:
        # The magic already displayed the live view in its own cell; elsewhere, show it again.
        if self.view is not None:
            self.view._ipython_display_()
            return
        from IPython.display import display

        bundle = {"text/plain": repr(self), "text/html": self._repr_html_()}
        display(bundle, raw=True)  # type: ignore[no-untyped-call]


# Tools whose chunks have a view of their own (tables, plots) instead of the tail of lines:
# tool-name prefix -> module with ``render(tool, chunks, result, done)`` and
# ``result_html(tool, result)``, each returning HTML or None.
TOOL_VIEWS: dict[str, str] = {"dspy.": "snakepit_nb.adapters.dspy.kernel.views"}


def tool_view(tool: str) -> Any:
    """The view module for ``tool``'s chunks, or None for the plain tail."""
    import importlib

    for prefix, module in TOOL_VIEWS.items():
        if tool.startswith(prefix):
            return importlib.import_module(module)
    return None


class StreamView(DisplayedView):
    """Header, bounded tail and final value of one stream, as three HTML widgets."""

    def __init__(self, handle: StreamHandle, pump: UIPump) -> None:
        import ipywidgets as w

        self.handle = handle
        self._pump = pump
        self.header = w.HTML(_dom_classes=["snakepit-stream-header"])
        self.tail = w.HTML(_dom_classes=["snakepit-stream-tail"])
        self.result = w.HTML(_dom_classes=["snakepit-stream-result"])
        self._header_key: tuple[object, ...] = ()
        self._tail_version = -1
        self._rendered_final = False
        self._last_header = 0.0
        self._tail_shown_version = 0
        self._tail_dirty_version = 0
        super().__init__([self.header, self.tail, self.result], css_class="snakepit-stream")
        self.header.value = self._header_html()
        handle.on_change(self._on_change)

    # loop thread
    def _on_change(self) -> None:
        self._tail_dirty_version = self.handle.version
        self._pump.poke()

    def _header_due(self) -> bool:
        h = self.handle
        key = (h.status, h.received, h.progress)
        if key != self._header_key:
            return True
        # While running, refresh elapsed about once a second even without chunks.
        return not h.done() and time.monotonic() - self._last_header >= 1.0

    def _tail_due(self) -> bool:
        return self._tail_dirty_version != self._tail_shown_version

    def _final_due(self) -> bool:
        return self.handle.done() and not self._rendered_final

    def pending(self) -> bool:
        return self._header_due() or self._tail_due() or self._final_due()

    def cost(self) -> int:
        return int(self._header_due()) + int(self._tail_due()) + 2 * int(self._final_due())

    def finished(self) -> bool:
        return self.handle.done()

    def waits(self) -> bool:
        return True

    def render(self) -> int:
        sent = 0
        h = self.handle
        if self._header_due():
            self._header_key = (h.status, h.received, h.progress)
            self._last_header = time.monotonic()
            sent += self.set_value(self.header, self._header_html())
        if self._tail_due():
            self._tail_shown_version = self._tail_dirty_version
            sent += self.set_value(self.tail, self._tail_html())
        if self._final_due():
            self._rendered_final = True
            sent += self.set_value(self.result, self._result_html())
            sent += self.refresh_fallback()
        return sent

    # -- HTML ---------------------------------------------------------------------------------
    def _header_html(self) -> str:
        h = self.handle
        n = h.received
        parts = [
            f"<b>{fmt.esc(h.tool)}</b>",
            fmt.badge(h.status),
            f"{fmt.count(n)} chunk{'s' if n != 1 else ''}",
            fmt.rate(h.rate()),
            fmt.duration(h.elapsed),
        ]
        muted = f"color:{fmt.MUTED}"
        line = f' <span style="{muted}">·</span> '.join(parts)
        bar = ""
        if h.progress is not None:
            state = h.status if h.done() else "running"
            bar = fmt.progress_bar(h.progress, state=state)
        return (
            f'<div style="font-family:{fmt.FONT};font-size:13px;color:{fmt.FG}">{line}{bar}</div>'
        )

    def _tail_html(self) -> str:
        h = self.handle
        view = tool_view(h.tool)
        if view is not None:
            done = h.done()
            shown = view.render(h.tool, list(h.chunks), h.result if done else None, done)
            if shown is not None:
                return str(shown)
        text = h.tail.text()
        if not text:
            return ""
        hidden = h.tail.hidden()
        note = (
            f'<div style="color:{fmt.MUTED};font-size:11px">… {fmt.count(hidden)} earlier '
            "lines not shown (the handle keeps every chunk)</div>"
            if hidden
            else ""
        )
        return (
            f'{note}<pre style="font-family:{fmt.MONO};font-size:12px;margin:2px 0;'
            f"padding:6px 8px;background:{fmt.SUBTLE_BG};border-radius:4px;"
            f'white-space:pre-wrap">{fmt.esc(text)}</pre>'
        )

    def _result_html(self) -> str:
        h = self.handle
        if h.error is not None:
            from snakepit_nb.display.reprs import error_html

            return error_html(h.error)
        if h.status == "cancelled":
            return (
                f'<div style="color:{fmt.MUTED};font-family:{fmt.FONT};font-size:12px">'
                f"cancelled after {fmt.count(h.received)} chunks</div>"
            )
        view = tool_view(h.tool)
        summary = view.result_html(h.tool, h.result) if view is not None else None
        if summary is not None:
            return (
                f'<div class="snakepit-stream-value" style="font-family:{fmt.FONT};'
                f'font-size:12px">{summary}</div>'
            )
        text, cut = fmt.full_repr(h.value)
        note = (
            f'<div style="color:{fmt.MUTED};font-size:11px">(cut for display; the handle '
            "keeps the full value)</div>"
            if cut
            else ""
        )
        return (
            f'<div style="font-family:{fmt.FONT};font-size:12px;color:{fmt.MUTED}">result</div>'
            f'<pre class="snakepit-stream-value" style="font-family:{fmt.MONO};font-size:12px;'
            f'margin:2px 0;white-space:pre-wrap">{fmt.esc(text)}</pre>{note}'
        )

    def fallback_text(self) -> str:
        return repr(self.handle)

    def fallback_html(self) -> str:
        return str(self.header.value) + str(self.tail.value) + str(self.result.value)
