"""Calls that arrive pickled from the kernel: a tool or a Python function, run in this thread.

Used by the lane (each connection has a thread of its own, so a sync tool runs right there:
no hop to an executor and back) and by the gRPC paths when a request carries ``pickled``
arguments. Async tools are handed to the worker's loop. The envelope of a call is
``(session_id, target, args, kwargs, metadata)``: ``target`` is a tool name or a
:class:`FunctionRef` (a function shipped from the notebook, cached here by its digest).

Answers: ``("ok", value)``; ``("raised", error_info)`` when the tool raised (its traceback
starts in the tool's code); ``("error", status_name, message)`` for an infrastructure error
(unknown tool, bad arguments, a result that cannot be sent).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from snakepit_nb._errors import CancelledError, InvalidArgumentError, SnakepitError
from snakepit_nb.protocol import pb
from snakepit_nb.protocol.codec import error_info
from snakepit_nb.protocol.lane import FUNCTION_UNKNOWN
from snakepit_nb.protocol.pickling import FunctionRef
from snakepit_nb.tools.definition import StreamKind
from snakepit_nb.worker.calls.batches import (
    Answer,
    error_answer,
    function_items,
    results_answer,
    tool_items,
    trim_traceback,
)
from snakepit_nb.worker.context import CallControl
from snakepit_nb.worker.output import OutputHub

if TYPE_CHECKING:
    from snakepit_nb.tools.adapter import ToolTable
    from snakepit_nb.tools.definition import ToolDefinition
    from snakepit_nb.worker.calls.functions import FunctionCache
    from snakepit_nb.worker.context import SessionContext
    from snakepit_nb.worker.telemetry import TelemetryEmitter

__all__ = ["CallHost", "DirectRunner"]


class CallHost(Protocol):
    """What the runner needs of the worker's invoker."""

    table: ToolTable
    functions: FunctionCache
    telemetry: TelemetryEmitter
    loop: asyncio.AbstractEventLoop
    output: OutputHub | None

    async def run_async_items(
        self, definition: ToolDefinition, items: list[object], ctx: SessionContext
    ) -> list[list[object]]: ...

    def make_context(  # noqa: PLR0917
        self,
        definition: ToolDefinition,
        session_id: str,
        correlation_id: str,
        metadata: Mapping[str, str],
        variables: Sequence[pb.Variable] = (),
        control: CallControl | None = None,
    ) -> SessionContext: ...


class DirectRunner:
    """Runs pickled calls and batches against the worker's tools (thread-safe)."""

    def __init__(self, invoker: CallHost) -> None:
        self.invoker = invoker
        self.controls: dict[int, CallControl] = {}

    # ------------------------------------------------------------------ one call

    def call(  # noqa: PLR0917
        self,
        session_id: str,
        target: str | FunctionRef,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        metadata: Mapping[str, str],
        call_id: int = 0,
        *,
        variables: Sequence[bytes] = (),
        control: CallControl | None = None,
    ) -> Answer:
        """Run one call (see :meth:`_call`); what the tool writes goes to the caller's cell,
        and the answer leaves once that output went out (``worker/output.py``)."""
        run = functools.partial(
            self._call, session_id, target, args, kwargs, metadata, call_id,
            variables=variables, control=control,
        )  # fmt: skip
        hub = self.invoker.output
        if hub is None:
            return run()
        return hub.run(metadata, target if isinstance(target, str) else target.name, run)

    def _call(  # noqa: PLR0917
        self,
        session_id: str,
        target: str | FunctionRef,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        metadata: Mapping[str, str],
        call_id: int = 0,
        *,
        variables: Sequence[bytes] = (),
        control: CallControl | None = None,
    ) -> Answer:
        """Run one call in this thread (sync tools, functions) or on the loop (async tools).

        ``variables``: serialised snapshots of the variables the tool declared it reads.
        """
        control = control or CallControl()
        if call_id:
            self.controls[call_id] = control
        try:
            snapshots = [pb.Variable.FromString(v) for v in variables]
            run = self._prepare(session_id, target, args, kwargs, metadata, control, snapshots)
            if run is None:
                return ("error", FUNCTION_UNKNOWN, "send the function's body", "")
            telemetry = self.invoker.telemetry
            if not telemetry.active:
                return self._outcome(run)
            with _observed(telemetry, target, session_id, metadata) as seen:
                answer = self._outcome(run)
                if answer[0] == "raised":
                    seen.error_type = str(answer[1].get("type", ""))
                seen.failed = answer[0] != "ok"
            return answer
        except SnakepitError as exc:
            return error_answer(exc)
        finally:
            if call_id:
                self.controls.pop(call_id, None)

    def cancel(self, call_id: int) -> None:
        """The kernel gave up on call ``call_id``: ``ctx.cancelled`` turns true for it."""
        control = self.controls.get(call_id)
        if control is not None:
            control.cancel()

    def _prepare(  # noqa: PLR0917
        self,
        session_id: str,
        target: str | FunctionRef,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        metadata: Mapping[str, str],
        control: CallControl,
        variables: Sequence[pb.Variable] = (),
    ) -> Callable[[], Any] | None:
        if isinstance(target, FunctionRef):
            shipped = self.invoker.functions.get(target)
            if shipped is None:
                return None
            return lambda: shipped(*args, **kwargs)
        invoker = self.invoker
        definition = invoker.table.get(target)
        if args:
            raise InvalidArgumentError(
                f"tool {definition.name!r} takes its arguments by name; call it as "
                f"s.call({definition.name!r}, name=value, ...)"
            )
        bound = definition.bind(kwargs, owned=type(kwargs) is dict)
        if definition.ctx_param is not None or definition.stream is not StreamKind.NONE:
            ctx = invoker.make_context(
                definition,
                session_id,
                metadata.get("correlation_id", ""),
                metadata,
                variables,
                control,
            )
            if definition.ctx_param is not None:
                bound[definition.ctx_param] = ctx
        func = definition.func
        if definition.is_async or definition.stream is StreamKind.ASYNC:
            loop = invoker.loop
            stream = definition.stream

            async def run_async() -> Any:
                produced = func(**bound)
                if stream is StreamKind.NONE:
                    return await produced
                if inspect.isawaitable(produced):
                    produced = await produced
                return [item async for item in produced]

            return functools.partial(run_on_loop, loop, run_async, control)
        if definition.stream is StreamKind.SYNC:
            return lambda: list(func(**bound))
        return lambda: func(**bound)

    @staticmethod
    def _outcome(run: Callable[[], Any]) -> Answer:
        try:
            value = run()
        except BaseException as exc:  # sys.exit() in a tool is the tool's error, too
            trim_traceback(exc)
            return ("raised", error_info(exc, tool_name="", session_id=""))
        return ("ok", value)

    # ------------------------------------------------------------------ batches

    def batch(  # noqa: PLR0917
        self,
        session_id: str,
        target: str | FunctionRef,
        items: Sequence[Any],
        style: str,
        metadata: Mapping[str, str],
        call_id: int = 0,
        *,
        control: CallControl | None = None,
        scoped: bool = False,
    ) -> Answer:
        """Run one chunk of a map: ``("ok", values, {index: error_info})`` or an error answer.

        ``style``: ``"kwargs"`` (items are dicts of arguments), ``"args"`` (tuples of
        positional arguments) or ``"value"`` (each item is the one argument). What the items
        write goes to the caller's cell, as for a call (``scoped``: the caller opened the
        output scope already).
        """
        run = functools.partial(
            self._batch, session_id, target, items, style, metadata, call_id, control
        )
        hub = self.invoker.output
        if hub is None or scoped:
            return run()
        return hub.run(metadata, target if isinstance(target, str) else target.name, run)

    def _batch(  # noqa: PLR0917
        self,
        session_id: str,
        target: str | FunctionRef,
        items: Sequence[Any],
        style: str,
        metadata: Mapping[str, str],
        call_id: int,
        control: CallControl | None,
    ) -> Answer:
        control = control or CallControl()
        if call_id:
            self.controls[call_id] = control
        try:
            if isinstance(target, FunctionRef):
                func = self.invoker.functions.get(target)
                if func is None:
                    return ("error", FUNCTION_UNKNOWN, "send the function's body", "")
                run = functools.partial(function_items, func, items, style, control)
            else:
                run = functools.partial(
                    self._tool_batch, session_id, target, items, style, metadata, control
                )
            telemetry = self.invoker.telemetry
            if not telemetry.active:
                return run()
            with _observed(telemetry, target, session_id, metadata, count=len(items)):
                return run()
        except SnakepitError as exc:
            return error_answer(exc)
        finally:
            if call_id:
                self.controls.pop(call_id, None)

    def _tool_batch(  # noqa: PLR0917
        self,
        session_id: str,
        target: str,
        items: Sequence[Any],
        style: str,
        metadata: Mapping[str, str],
        control: CallControl,
    ) -> Answer:
        invoker = self.invoker
        definition = invoker.table.get(target)
        if style != "kwargs":
            raise InvalidArgumentError(
                f"tool {definition.name!r} takes its arguments by name: map it over dicts, "
                "e.g. s.map('tool', [{'x': 1}, {'x': 2}])"
            )
        if definition.is_async:
            # Async tools (and async generators, collected) of a chunk run concurrently on the
            # worker's loop, in groups, as the gRPC batch path runs them.
            shared = invoker.make_context(
                definition, session_id, metadata.get("correlation_id", ""), metadata, (), control
            )
            results = run_on_loop(
                invoker.loop,
                lambda: invoker.run_async_items(definition, list(items), shared),
                control,
            )
            return results_answer(results)
        ctx = None
        if definition.ctx_param is not None:
            ctx = invoker.make_context(
                definition, session_id, metadata.get("correlation_id", ""), metadata, (), control
            )
        return tool_items(definition, items, ctx, session_id, control)


class _Seen:
    failed = False
    error_type = ""


@contextlib.contextmanager
def _observed(
    telemetry: TelemetryEmitter,
    target: str | FunctionRef,
    session_id: str,
    metadata: Mapping[str, str],
    *,
    count: int | None = None,
) -> Iterator[_Seen]:
    """``snakepit.tool.start`` before the block, ``stop`` (or ``exception``) after it."""
    tool = target if isinstance(target, str) else target.name
    correlation_id = metadata.get("correlation_id", "")
    telemetry.tool_event(
        "start", tool=tool, session_id=session_id, correlation_id=correlation_id, count=count
    )
    started = time.perf_counter_ns()
    seen = _Seen()
    try:
        yield seen
    except BaseException as exc:
        seen.failed = True
        seen.error_type = type(exc).__name__
        raise
    finally:
        telemetry.tool_event(
            "exception" if seen.failed else "stop",
            tool=tool,
            session_id=session_id,
            correlation_id=correlation_id,
            duration_ns=time.perf_counter_ns() - started,
            count=count,
            extra={"error_type": seen.error_type} if seen.error_type else None,
        )


def run_on_loop(
    loop: asyncio.AbstractEventLoop,
    make: Callable[[], Coroutine[Any, Any, Any]],
    control: CallControl,
) -> Any:
    """Run an async tool as a task on the worker's loop and wait for it in this thread.

    A cancelled call cancels the task (checked every 50 ms); the wait goes on until the task
    has really ended, so an answer always means the tool stopped.
    """
    done = threading.Event()
    tasks: list[asyncio.Task[Any]] = []

    def start() -> None:
        task = loop.create_task(make())
        task.add_done_callback(lambda _task: done.set())
        tasks.append(task)

    loop.call_soon_threadsafe(start)
    cancelling = False
    while not done.wait(0.05):
        if not cancelling and control.cancelled.is_set():
            cancelling = True
            loop.call_soon_threadsafe(tasks[0].cancel)
    task = tasks[0]
    if task.cancelled():
        raise CancelledError("the call was cancelled")
    return task.result()
