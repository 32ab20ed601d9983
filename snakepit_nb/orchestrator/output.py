"""Where the workers' output goes in the kernel: the calling cell, and a tail per worker.

Each worker streams its output records (``WorkerOutput``, see ``worker/output.py``) to the
pool, which hands every batch to :meth:`OutputRouter.feed` on the loop thread. A record carries
the tag the kernel gave its call (request metadata ``snakepit_nb.output``): the router looks the
tag up among the open :class:`OutputScope` objects and writes the record's text to that scope's
sink (the cell that made the call, or ``sys.stdout``/``sys.stderr`` in plain Python). Every
record, shown or not, also goes to the worker's tail: the last ``tail_lines`` lines of each
worker slot, kept across the slot's restarts, which ``client.logs()`` reads.

``mode`` (``sp.start(worker_output=...)``): ``"cell"`` shows output in the calling cell and
keeps the tails, ``"log"`` only keeps the tails, ``"off"`` captures nothing (the worker's own
output then goes to its stderr file, as before).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc
import grpc.aio

from snakepit_nb._errors import ConfigurationError
from snakepit_nb.protocol import pb

__all__ = [
    "MODES",
    "OUTPUT_KEY",
    "LogText",
    "OutputRouter",
    "OutputScope",
    "OutputSink",
]

OUTPUT_KEY = "snakepit_nb.output"
MODES = ("cell", "log", "off")
DEFAULT_TAIL_LINES = 2000
#: How long a finished call waits for the rest of its output (records seen, end not yet).
SETTLE_TIMEOUT = 1.0

STREAM_NAMES = {
    pb.OutputRecord.STDOUT: "stdout",
    pb.OutputRecord.STDERR: "stderr",
    pb.OutputRecord.LOG: "stderr",
}


class OutputSink(Protocol):
    """Where one caller's output goes. Called on the loop thread."""

    def write(self, worker_id: str, stream: str, text: str) -> None:
        """``text`` written by ``worker_id`` to ``stream`` ("stdout" or "stderr")."""

    def flush(self) -> None:
        """Send what is buffered now (the call ended)."""


@dataclass
class OutputScope:
    """One call's (or one map's) output: its tag, its sink, what arrived."""

    tag: str
    sink: OutputSink | None
    #: (worker, call) of the calls that wrote and have not sent their end yet.
    writing: set[tuple[str, int]] = field(default_factory=set)
    _settled: threading.Condition = field(default_factory=threading.Condition, repr=False)
    _event: asyncio.Event | None = field(default=None, repr=False)

    @property
    def metadata(self) -> dict[str, str]:
        """The request metadata that carries this scope's tag to the worker."""
        return {OUTPUT_KEY: self.tag}

    def _started(self, key: tuple[str, int]) -> None:
        with self._settled:
            self.writing.add(key)

    def _ended(self, key: tuple[str, int]) -> None:
        with self._settled:
            self.writing.discard(key)
            if not self.writing:
                self._settled.notify_all()
                if self._event is not None:  # feed runs on the loop thread, as close does
                    self._event.set()

    def wait_settled(self, timeout: float) -> bool:
        """Block until every call of the scope that wrote has sent its end (any thread)."""
        with self._settled:
            return self._settled.wait_for(lambda: not self.writing, timeout)


class LogText(str):
    """Text of ``client.logs()``: a str that prints as its lines in a notebook."""

    __slots__ = ()

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(str(self) or "(no output yet)")


class _Tail:
    """The last lines one worker slot wrote, across its restarts."""

    def __init__(self, maxlen: int) -> None:
        self.lines: deque[str] = deque(maxlen=maxlen)
        self.partial: dict[str, str] = {}
        self.total = 0

    def add(self, stream: str, text: str) -> None:
        maxlen = self.lines.maxlen or 1
        text = self.partial.pop(stream, "") + text
        if not text.endswith("\n"):
            head, sep, last = text.rpartition("\n")
            self.partial[stream] = last[-4096:]
            text = head + sep
        if not text:
            return
        count = text.count("\n")
        self.total += count
        # Only the lines the tail can hold are split out (a 200,000-line batch costs little).
        pieces = text.rstrip("\n").rsplit("\n", maxlen)
        if len(pieces) > maxlen:
            pieces = pieces[1:]
        mark = "" if stream == "stdout" else "! "
        self.lines.extend(mark + line for line in pieces)


class OutputRouter:
    """The kernel's side of worker output (loop thread only, except :meth:`logs`)."""

    def __init__(self, mode: str = "cell", *, tail_lines: int = DEFAULT_TAIL_LINES) -> None:
        if mode not in MODES:
            raise ConfigurationError(
                f"worker_output must be one of {', '.join(repr(m) for m in MODES)}, not {mode!r}"
            )
        if not 1 <= tail_lines <= 1_000_000:
            raise ConfigurationError("output tail_lines must be between 1 and 1,000,000")
        self.mode = mode
        self.tail_lines = tail_lines
        self._scopes: dict[str, OutputScope] = {}
        self._tails: dict[str, _Tail] = {}
        self._ids = itertools.count(1)
        self._prefix = f"{os.getpid():x}-{int(time.time() * 1000) % 0xFFFFFF:x}"
        self.records = 0
        self.dropped_lines = 0
        self._readers: dict[str, asyncio.Task[None]] = {}

    @property
    def captures(self) -> bool:
        return self.mode != "off"

    # -- scopes --------------------------------------------------------------------------------
    def open(self, sink: OutputSink | None) -> OutputScope:
        """A scope for one caller's calls; its ``metadata`` goes with each of them."""
        tag = f"{self._prefix}-{next(self._ids)}"
        scope = OutputScope(tag, sink if self.mode == "cell" else None)
        self._scopes[scope.tag] = scope
        return scope

    async def close(self, scope: OutputScope, timeout: float = SETTLE_TIMEOUT) -> None:  # noqa: ASYNC109
        """The scope's calls are done: wait (bounded) for output still on its way, then flush.

        On the loop thread the records arrive on, so the wait yields to it.
        """
        try:
            if scope.writing:
                scope._event = asyncio.Event()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        while scope.writing:
                            await scope._event.wait()
                            scope._event.clear()
        finally:
            self._forget(scope)

    def close_blocking(self, scope: OutputScope, timeout: float = SETTLE_TIMEOUT) -> None:
        """:meth:`close` for a caller thread that is not the loop's."""
        try:
            if scope.writing:
                scope.wait_settled(timeout)
        finally:
            self._forget(scope)

    def discard(self, scope: OutputScope) -> None:
        """Drop a scope whose call never started (nothing can arrive for it)."""
        self._forget(scope)

    def _forget(self, scope: OutputScope) -> None:
        self._scopes.pop(scope.tag, None)
        if scope.sink is not None:
            scope.sink.flush()

    # -- records ------------------------------------------------------------------------------
    def feed(self, batch: pb.OutputBatch) -> None:
        """One batch from a worker: to the callers' sinks and the worker's tail."""
        worker_id = batch.worker_id
        tail = self._tails.get(worker_id)
        if tail is None:
            tail = self._tails[worker_id] = _Tail(self.tail_lines)
        for record in batch.records:
            self.records += 1
            scope = self._scopes.get(record.tag) if record.tag else None
            if record.end:
                if scope is not None:
                    scope._ended((worker_id, record.call))
                continue
            if record.dropped_lines:
                self.dropped_lines += record.dropped_lines
                tail.lines.append(
                    f"! [{record.dropped_lines:,} lines were dropped: the worker wrote faster "
                    "than the kernel read]"
                )
            if not record.text:
                continue
            stream = STREAM_NAMES.get(record.stream, "stderr")
            tail.add(stream, record.text)
            if scope is not None:
                if (worker_id, record.call) not in scope.writing:
                    scope._started((worker_id, record.call))
                if record.shown and scope.sink is not None:
                    scope.sink.write(worker_id, stream, record.text)

    # -- the workers' streams ---------------------------------------------------------------
    def follow(self, worker_id: str, stub: Any, metadata: tuple[tuple[str, str], ...]) -> None:
        """Read a (new incarnation of a) worker's ``WorkerOutput`` stream until it ends."""
        if not self.captures:
            return
        self.unfollow(worker_id)
        self._readers[worker_id] = asyncio.get_running_loop().create_task(
            self._read(worker_id, stub, metadata), name=f"snakepit-output-{worker_id}"
        )

    def unfollow(self, worker_id: str) -> None:
        task = self._readers.pop(worker_id, None)
        if task is not None:
            task.cancel()

    async def _read(self, worker_id: str, stub: Any, metadata: tuple[tuple[str, str], ...]) -> None:
        call = stub.WorkerOutput(metadata=metadata)
        try:
            async for batch in call:
                batch.worker_id = worker_id
                self.feed(batch)
                if any(record.end for record in batch.records):
                    # Its calls wait for this before they answer: their output is in the
                    # callers' sinks now, ahead of the answers.
                    await call.write(pb.OutputAck(seq=batch.seq))
        except grpc.aio.AioRpcError:
            pass  # the worker went away (its slot's next incarnation is followed anew)
        finally:
            call.cancel()

    async def aclose(self) -> None:
        tasks = list(self._readers.values())
        self._readers.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task

    # -- reading the tails (any thread) ---------------------------------------------------
    def workers(self) -> list[str]:
        return sorted(self._tails)

    def logs(self, worker: str | None = None, lines: int = 200) -> LogText:
        """The last ``lines`` lines of one worker (or of each, prefixed ``[w1]``)."""
        if isinstance(lines, bool) or not isinstance(lines, int) or lines < 1:
            raise ValueError(f"lines must be a positive whole number, not {lines!r}")
        if worker is not None:
            tail = self._tails.get(worker)
            return LogText("\n".join(list(tail.lines)[-lines:]) if tail is not None else "")
        parts: list[str] = []
        for wid in self.workers():
            parts.extend(f"[{wid}] {line}" for line in list(self._tails[wid].lines)[-lines:])
        return LogText("\n".join(parts))

    def forget(self, worker_ids: Iterable[str]) -> None:
        for wid in worker_ids:
            self._tails.pop(wid, None)
