"""What a worker's tools print, captured per call and shipped to the kernel.

The worker replaces ``sys.stdout`` and ``sys.stderr`` with writers that know which call is
running (a context variable set around each call, which sync tools' threads inherit) and adds a
``logging`` handler for records at WARNING and above. Every write becomes a record of the
:class:`OutputHub`: the text, its stream (stdout, stderr, log), the kernel's tag of the call
(``OUTPUT_KEY`` in the call's metadata; empty outside any call) and whether it is for the
calling cell.

Floods stay bounded at the source. A call shows at most ``cell_lines`` lines in its cell; the
rest are shipped for the worker's log tail only, and when the call ends a notice says how many
lines were not shown and where to read them. Pending text is capped at ``max_pending`` bytes
(the oldest log-only text goes first, and is counted). The kernel reads the hub with the
``WorkerOutput`` RPC: one batch at most every ``interval`` seconds, consecutive writes of one
call and stream coalesced into one record.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import io
import itertools
import logging
import sys
import threading
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO, TypeVar

from snakepit_nb.protocol import pb

__all__ = [
    "CELL_LINES_KEY",
    "LOG",
    "OUTPUT_KEY",
    "STDERR",
    "STDOUT",
    "CallOutput",
    "OutputHub",
    "current_call",
    "in_context",
]

T = TypeVar("T")

#: Request metadata: the kernel's tag for the output of this call.
OUTPUT_KEY = "snakepit_nb.output"
#: Request metadata: how many lines this call may show in its cell ("0": none).
CELL_LINES_KEY = "snakepit_nb.output_lines"

STDOUT = pb.OutputRecord.STDOUT
STDERR = pb.OutputRecord.STDERR
LOG = pb.OutputRecord.LOG

DEFAULT_CELL_LINES = 1000
DEFAULT_MAX_PENDING = 4 * 2**20
DEFAULT_INTERVAL = 0.1
#: How long a call's answer may wait for its output to reach the kernel.
SETTLE_TIMEOUT = 1.0
#: One write longer than this is cut (the cut is said in the text).
MAX_WRITE = 64 * 1024
#: Characters one call may show in its cell, whatever its line count.
CELL_BYTES = 256 * 1024
#: An unfinished line longer than this goes out as it is (a progress bar's carriage returns).
PARTIAL_LINE = 4096


@dataclass
class CallOutput:
    """The output state of one running call."""

    tag: str
    tool: str
    cell_lines: int
    shown: int = 0
    shown_bytes: int = 0
    hidden: int = 0  # lines past the cap
    cut: bool = False  # some output was past the cap
    wrote: bool = False
    end_seq: int = 0
    number: int = 0  # the worker's count of calls with output, for the kernel
    #: The call's unfinished last line per stream: a call's lines go out whole, so calls
    #: running at once in one worker never split each other's lines.
    partial: dict[int, str] = field(default_factory=dict)


_current: contextvars.ContextVar[CallOutput | None] = contextvars.ContextVar(
    "snakepit_nb_call_output", default=None
)


def current_call() -> CallOutput | None:
    """The call whose output the current thread or task writes, if any."""
    return _current.get()


def in_context(fn: Callable[[], T]) -> Callable[[], T]:
    """``fn`` to run in a thread with the caller's context (so its writes keep their call)."""
    return functools.partial(contextvars.copy_context().run, fn)


@dataclass
class _Pending:
    tag: str
    stream: int
    text: str
    shown: bool
    tool: str
    end: bool = False
    call: int = 0


class OutputHub:
    """The worker's output records, bounded, waiting for the kernel to read them."""

    def __init__(
        self,
        worker_id: str,
        *,
        cell_lines: int = DEFAULT_CELL_LINES,
        max_pending: int = DEFAULT_MAX_PENDING,
        interval: float = DEFAULT_INTERVAL,
    ) -> None:
        self.worker_id = worker_id
        self.cell_lines = cell_lines
        self.max_pending = max_pending
        self.interval = interval
        self._lock = threading.Lock()
        self._seq = 0  # records appended so far
        self._acked_seq = 0  # of which the kernel has handed to its callers
        self._calls = itertools.count(1)
        self._sent: asyncio.Event | None = None
        self._sent_cond = threading.Condition()  # the same signal, for callers' threads
        # Set when a call ended: its answer waits for the output, so the pause is cut short.
        self._urgent: asyncio.Event | None = None
        self._pending: deque[_Pending] = deque()
        self._bytes = 0
        self.dropped_lines = 0
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._saved: tuple[TextIO, TextIO] | None = None
        self._handler: logging.Handler | None = None
        self.readers = 0

    # -- installation ----------------------------------------------------------------------
    def install(self) -> None:
        """Route ``sys.stdout``, ``sys.stderr`` and WARNING+ log records through the hub."""
        if self._saved is not None:
            return
        self._saved = (sys.stdout, sys.stderr)
        sys.stdout = _Redirect(self, STDOUT, sys.stdout)
        sys.stderr = _Redirect(self, STDERR, sys.stderr)
        handler = _LogHandler(self)
        handler.setLevel(logging.WARNING)
        handler.setFormatter(logging.Formatter("%(levelname)s:%(name)s:%(message)s"))
        logging.getLogger().addHandler(handler)
        self._handler = handler

    def uninstall(self) -> None:
        if self._saved is not None:
            sys.stdout, sys.stderr = self._saved
            self._saved = None
        if self._handler is not None:
            logging.getLogger().removeHandler(self._handler)
            self._handler = None

    # -- calls --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def call(self, metadata: Mapping[str, str], tool: str) -> Iterator[CallOutput | None]:
        """Around one call: its writes carry its tag; the end of a flood leaves a notice."""
        tag = metadata.get(OUTPUT_KEY, "")
        if not tag:
            yield None
            return
        try:
            lines = int(metadata.get(CELL_LINES_KEY, "") or self.cell_lines)
        except ValueError:
            lines = self.cell_lines
        state = CallOutput(tag=tag, tool=tool, cell_lines=max(0, lines), number=next(self._calls))
        token = _current.set(state)
        try:
            yield state
        finally:
            _current.reset(token)
            for stream, text in sorted(state.partial.items()):
                self._write_shown(state, stream, text)  # a last line without its newline
            state.partial.clear()
            if state.cut:
                self._notice(state)
            if state.wrote:
                end = _Pending(tag, STDOUT, "", True, tool, end=True, call=state.number)
                state.end_seq = self._append(end)

    def run(self, metadata: Mapping[str, str], tool: str, fn: Callable[[], T]) -> T:
        """``fn()`` as one call (in this thread): its writes are the call's, and this returns
        once they were acknowledged (see :meth:`settle_blocking`)."""
        with self.call(metadata, tool) as out:
            result = fn()
        self.settle_blocking(out)
        return result

    async def arun(
        self, metadata: Mapping[str, str], tool: str, make: Callable[[], Awaitable[T]]
    ) -> T:
        """:meth:`run` on the loop: ``await make()`` as one call, then :meth:`settle`."""
        with self.call(metadata, tool) as out:
            result = await make()
        await self.settle(out)
        return result

    async def settle(self, state: CallOutput | None, timeout: float = SETTLE_TIMEOUT) -> None:  # noqa: ASYNC109
        """Once the kernel acknowledged the call's last record (a reader connected; bounded).

        The call's answer is sent after this, so the calling cell has all of its output when
        the call returns, whichever way the answer travels (gRPC or the lane).
        """
        if state is None or not state.end_seq or not self.readers:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while self._acked_seq < state.end_seq and self.readers:
                    if self._sent is None:
                        return
                    self._sent.clear()
                    await self._sent.wait()

    def _notice(self, state: CallOutput) -> None:
        text = (
            f"{max(1, state.hidden):,} more lines of output from "
            f"{state.tool!r} were not shown (a call shows at most {state.cell_lines:,}); "
            f"read the last ones with client.logs({self.worker_id!r})"
            f" or %snakepit logs {self.worker_id}\n"
        )
        self._append(_Pending(state.tag, STDERR, text, True, state.tool, call=state.number))

    def settle_blocking(self, state: CallOutput | None, timeout: float = SETTLE_TIMEOUT) -> None:
        """:meth:`settle` for a call run in a thread of its own (the lane's)."""
        if state is None or not state.end_seq or not self.readers:
            return
        with self._sent_cond:
            self._sent_cond.wait_for(
                lambda: self._acked_seq >= state.end_seq or not self.readers, timeout
            )

    def acknowledged(self, seq: int) -> None:
        """The kernel handed every record up to ``seq`` to its callers (the worker's loop)."""
        if seq > self._acked_seq:
            self._acked_seq = seq
            if self._sent is not None:
                self._sent.set()
            with self._sent_cond:
                self._sent_cond.notify_all()

    # -- writes (any thread) ---------------------------------------------------------------
    def write(self, stream: int, text: str) -> None:
        if not text:
            return
        if len(text) > MAX_WRITE:
            text = text[:MAX_WRITE] + f"... [{len(text) - MAX_WRITE:,} characters cut]\n"
        state = _current.get()
        if state is None:
            # Outside any call (imports, the worker's own messages): also to the worker's own
            # stream, whose file the launcher reads when a worker fails to start or crashes.
            self._mirror(stream, text)
            self._append(_Pending("", stream, text, False, ""))
            return
        state.wrote = True
        text = state.partial.pop(stream, "") + text
        if not text.endswith("\n"):
            cut = text.rfind("\n") + 1
            if len(text) - cut < PARTIAL_LINE:
                state.partial[stream] = text[cut:]
                text = text[:cut]
                if not text:
                    return
        self._write_shown(state, stream, text)

    def _write_shown(self, state: CallOutput, stream: int, text: str) -> None:
        shown, rest = _split_at_cap(
            text, state.cell_lines - state.shown, CELL_BYTES - state.shown_bytes
        )
        if shown:
            state.shown += shown.count("\n")
            state.shown_bytes += len(shown)
            self._append(_Pending(state.tag, stream, shown, True, state.tool, call=state.number))
        if rest:
            state.hidden += rest.count("\n")
            state.cut = True
            self._append(_Pending(state.tag, stream, rest, False, state.tool, call=state.number))

    def _mirror(self, stream: int, text: str) -> None:
        if self._saved is None:
            return
        target = self._saved[0] if stream == STDOUT else self._saved[1]
        with contextlib.suppress(Exception):
            target.write(text)
            target.flush()

    def _append(self, item: _Pending) -> int:
        size = len(item.text)
        with self._lock:
            self._seq += 1
            self._pending.append(item)
            self._bytes += size
            while self._bytes > self.max_pending and self._drop_one():
                pass
            seq = self._seq
        self._poke(urgent=item.end)
        return seq

    def _drop_one(self) -> bool:
        # The oldest log-only text goes first; shown text only when nothing else is left.
        for i, old in enumerate(self._pending):
            if not old.shown and not old.end:
                del self._pending[i]
                break
        else:
            if len(self._pending) <= 1:
                return False
            old = self._pending.popleft()
        self._bytes -= len(old.text)
        self.dropped_lines += old.text.count("\n") or 1
        return True

    def _poke(self, urgent: bool = False) -> None:
        loop, wake = self._loop, self._wake
        if loop is None or wake is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closing
            loop.call_soon_threadsafe(wake.set)
            if urgent and self._urgent is not None:
                loop.call_soon_threadsafe(self._urgent.set)

    # -- reading (the worker's loop) ---------------------------------------------------------
    def drain(self) -> list[pb.OutputRecord]:
        """Everything pending, consecutive writes of one call and stream coalesced."""
        records, _ = self._drain()
        return records

    def _drain(self) -> tuple[list[pb.OutputRecord], int]:
        with self._lock:
            items = list(self._pending)
            self._pending.clear()
            self._bytes = 0
            dropped, self.dropped_lines = self.dropped_lines, 0
            seq = self._seq
        records: list[pb.OutputRecord] = []
        parts: list[str] = []
        last: tuple[str, int, bool, int] | None = None
        head: _Pending | None = None
        for item in items:
            if item.end:
                if head is not None:
                    records.append(_record(head, "".join(parts)))
                head, last, parts = None, None, []
                records.append(
                    pb.OutputRecord(tag=item.tag, tool=item.tool, end=True, call=item.call)
                )
                continue
            key = (item.tag, item.stream, item.shown, item.call)
            if key != last and head is not None:
                records.append(_record(head, "".join(parts)))
                parts = []
            if key != last:
                head, last = item, key
            parts.append(item.text)
        if head is not None:
            records.append(_record(head, "".join(parts)))
        if dropped:
            records.append(pb.OutputRecord(stream=LOG, dropped_lines=dropped))
        return records, seq

    async def batches(self) -> AsyncIterator[pb.OutputBatch]:
        """Batches for the kernel, at most one every ``interval`` seconds, until cancelled."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._sent = asyncio.Event()
        self._urgent = asyncio.Event()
        self.readers += 1
        try:
            while True:
                records, seq = self._drain()
                if records:
                    yield pb.OutputBatch(worker_id=self.worker_id, records=records, seq=seq)
                    if not any(r.end for r in records):
                        # At most one batch per interval, unless a call waits for its end.
                        self._urgent.clear()
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._urgent.wait(), self.interval)
                    continue
                self._wake.clear()
                if self._pending:
                    continue
                await self._wake.wait()
        finally:
            self.readers -= 1
            self._sent.set()
            with self._sent_cond:
                self._sent_cond.notify_all()


def _split_at_cap(text: str, lines: int, chars: int) -> tuple[str, str]:
    """``text`` split into what still fits in ``lines`` lines and ``chars`` characters."""
    if lines <= 0 or chars <= 0:
        return "", text
    cut = -1
    for _ in range(lines):
        cut = text.find("\n", cut + 1)
        if cut < 0:
            break
    end = len(text) if cut < 0 else cut + 1
    end = min(end, chars)
    return text[:end], text[end:]


def _record(item: _Pending, text: str) -> pb.OutputRecord:
    return pb.OutputRecord(
        tag=item.tag,
        stream=item.stream,  # type: ignore[arg-type]
        text=text,
        shown=item.shown,
        tool=item.tool,
        call=item.call,
    )


class _Redirect(io.TextIOBase):
    """``sys.stdout``/``sys.stderr`` of the worker: writes go to the hub."""

    def __init__(self, hub: OutputHub, stream: int, original: TextIO) -> None:
        self._hub = hub
        self._stream = stream
        self._original = original

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._original, "encoding", None) or "utf-8"

    @property
    def errors(self) -> str | None:  # type: ignore[override]
        return getattr(self._original, "errors", None)

    @property
    def buffer(self) -> Any:
        return self._original.buffer

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self._original.fileno()

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        self._hub.write(self._stream, text)
        return len(text)

    def flush(self) -> None:
        with contextlib.suppress(Exception):
            self._original.flush()


class _LogHandler(logging.Handler):
    """WARNING and above, as log records of the running call (or of the worker)."""

    def __init__(self, hub: OutputHub) -> None:
        super().__init__()
        self._hub = hub

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._hub.write(LOG, self.format(record) + "\n")
        except Exception:  # logging must never break the tool
            self.handleError(record)
