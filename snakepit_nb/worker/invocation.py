"""Running tool calls: decode and bind arguments, run the tool where it belongs, encode the answer.

Sync tools run in a bounded thread pool (the event loop keeps serving heartbeats, cancels and
other calls); async tools run on the loop. A cancelled call (its caller gave up, or its
deadline passed) is answered only once the tool has really stopped: an async tool when its
task ends, a sync tool when its thread returns (it sees ``ctx.cancelled``). So the answer to a
cancel confirms that the worker is free again; a tool that ignores the cancel keeps its call
unconfirmed, and the pool replaces the worker after ``cancel_grace``.

A tool's own exception becomes a ``success=false`` answer with the error payload (type,
message, traceback) and the worker carries on; problems with the call itself (unknown tool, bad
arguments, an unencodable or oversize result) raise a :class:`SnakepitError` that the transport
turns into a gRPC status.

A batch (``session.map``) of a sync tool runs in ONE executor hop for all its items, and its
results are encoded once, so a trivial tool costs a few microseconds per item.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import time
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from google.protobuf.any_pb2 import Any as PbAny

from snakepit_nb._errors import InvalidArgumentError, ResourceExhaustedError
from snakepit_nb.protocol import pb
from snakepit_nb.protocol.boundary import check_correlation_id
from snakepit_nb.protocol.codec import (
    decode_json,
    decode_params,
    encode_any_with_binary,
    encode_json,
    error_info,
    error_payload,
)
from snakepit_nb.tools.adapter import ToolTable
from snakepit_nb.tools.definition import StreamKind, ToolDefinition
from snakepit_nb.worker.context import CallControl, SessionContext
from snakepit_nb.worker.link import OrchestratorLink
from snakepit_nb.worker.runner import SyncRunner
from snakepit_nb.worker.telemetry import TelemetryEmitter

__all__ = ["Invoker", "PreparedCall"]

CORRELATION_KEY = "correlation_id"
CORRELATION_HEADER = "x-snakepit-correlation-id"
# Async tools of one batch run concurrently in groups of this size (I/O-bound tools overlap).
_ASYNC_BATCH_CONCURRENCY = 256

T = TypeVar("T")


class UnsendableResultError(InvalidArgumentError):
    """A tool's result cannot be encoded: an error of the call (INVALID_ARGUMENT), not the tool."""


class PreparedCall:
    """A call whose tool is found and whose arguments are bound: ready to run."""

    __slots__ = ("control", "correlation_id", "ctx", "definition", "kwargs", "session_id")

    def __init__(  # noqa: PLR0917
        self,
        definition: ToolDefinition,
        kwargs: dict[str, object],
        ctx: SessionContext | None,
        session_id: str,
        correlation_id: str,
        control: CallControl,
    ) -> None:
        self.definition = definition
        self.kwargs = kwargs
        self.ctx = ctx
        self.session_id = session_id
        self.correlation_id = correlation_id
        self.control = control

    def cancel(self) -> None:
        """Tell the tool (through ``ctx.cancelled``) that its caller gave up."""
        self.control.cancel()


class Invoker:
    """Runs calls against a worker's ToolTable."""

    def __init__(
        self,
        table: ToolTable,
        *,
        loop: asyncio.AbstractEventLoop,
        executor: concurrent.futures.ThreadPoolExecutor,
        worker_id: str,
        telemetry: TelemetryEmitter,
        link: OrchestratorLink | None,
        max_message_bytes: int,
        threads: int = 16,
    ) -> None:
        self.table = table
        self.runner = SyncRunner(loop, executor, threads)
        self.loop = loop
        self.executor = executor
        self.worker_id = worker_id
        self.telemetry = telemetry
        self.link = link
        self.max_message_bytes = max_message_bytes
        # Resolved when the worker stops: nobody waits for a cancelled tool's thread then.
        self._closing: asyncio.Future[None] = loop.create_future()

    def close(self) -> None:
        """The worker is stopping: stop waiting for the threads of cancelled calls."""
        if not self._closing.done():
            self._closing.set_result(None)

    async def _in_thread(
        self, future: asyncio.Future[T], control: CallControl, *, queued: bool = False
    ) -> T:
        """Await a call running in a thread. If the caller cancels, tell the tool
        (``ctx.cancelled``) and return only once its thread is done with it, so the answer to
        the cancel means the tool really stopped. ``queued``: the future is the runner's, so a
        call that has not started yet is simply taken off its queue."""
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            control.cancel()
            if not (queued and self.runner.withdraw(future)):
                await self._outlast(future)
            raise

    async def _outlast(self, future: asyncio.Future[Any]) -> None:
        closing = self._closing
        while not future.done() and not closing.done():
            # Cancelled again (a second cancel, the deadline): still waiting for the thread.
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait((future, closing), return_when=asyncio.FIRST_COMPLETED)
        if future.done() and not future.cancelled():
            future.exception()  # retrieved: the caller has gone, nobody else will

    # ------------------------------------------------------------------ preparing

    def make_context(  # noqa: PLR0917
        self,
        definition: ToolDefinition,
        session_id: str,
        correlation_id: str,
        metadata: Mapping[str, str],
        variables: Sequence[pb.Variable] = (),
        control: CallControl | None = None,
    ) -> SessionContext:
        return SessionContext(
            session_id=session_id,
            worker_id=self.worker_id,
            tool_name=definition.name,
            correlation_id=correlation_id,
            metadata=metadata,
            loop=self.loop,
            link=self.link,
            telemetry=self.telemetry,
            prefetched=variables,
            control=control,
        )

    def prepare(self, request: pb.ExecuteToolRequest, correlation_id: str = "") -> PreparedCall:
        """Find the tool and bind the request's arguments (raises NOT_FOUND / INVALID_ARGUMENT)."""
        definition = self.table.get(request.tool_name)
        metadata = request.metadata
        try:
            arguments = decode_params(request.parameters, request.binary_parameters, metadata)
        except InvalidArgumentError as exc:
            raise InvalidArgumentError(f"tool {definition.name!r}: {exc}") from exc
        kwargs = definition.bind(arguments)
        # It goes on as a gRPC header in callbacks to the kernel: refuse what cannot.
        correlation_id = check_correlation_id(metadata.get(CORRELATION_KEY, "") or correlation_id)
        control = CallControl()
        ctx: SessionContext | None = None
        if definition.ctx_param is not None or definition.stream is not StreamKind.NONE:
            ctx = self.make_context(
                definition, request.session_id, correlation_id, metadata, request.variables, control
            )
            if definition.ctx_param is not None:
                kwargs[definition.ctx_param] = ctx
        return PreparedCall(definition, kwargs, ctx, request.session_id, correlation_id, control)

    # ------------------------------------------------------------------ unary calls

    async def run(self, call: PreparedCall) -> pb.ExecuteToolResponse:
        """Run a prepared call to completion; tool exceptions become ``success=false``."""
        definition = call.definition
        started = time.perf_counter_ns()
        telemetry = self.telemetry
        if telemetry.active:
            telemetry.tool_event(
                "start",
                tool=definition.name,
                session_id=call.session_id,
                correlation_id=call.correlation_id,
            )
        ok: bool
        value: Any
        try:
            if definition.stream is not StreamKind.NONE:
                ok, value = await self._collect_stream(call)
                if ok:
                    ok, value = await self._encode_off_loop(value)
            elif definition.is_async:
                try:
                    result = await definition.func(**call.kwargs)
                except Exception as exc:  # the tool's own error: reported, worker carries on
                    trim_traceback(exc)
                    ok, value = False, exc
                else:
                    ok, value = True, self._encode(definition, result)
            else:
                job = self.runner.submit(functools.partial(self._run_sync, definition, call.kwargs))
                ok, value = await self._in_thread(job, call.control, queued=True)
        except asyncio.CancelledError:
            call.cancel()
            raise
        duration = time.perf_counter_ns() - started
        if ok:
            any_value, binary = value
            response = pb.ExecuteToolResponse(
                success=True, result=any_value, execution_time_ms=duration // 1_000_000
            )
            if binary:
                response.binary_result = binary
            if len(binary) + any_value.ByteSize() > self.max_message_bytes:
                raise self._too_large(definition, len(binary) + any_value.ByteSize())
            phase = "stop"
        else:
            if isinstance(value, UnsendableResultError):
                raise value
            response = pb.ExecuteToolResponse(
                success=False,
                error_message=error_payload(
                    value, tool_name=definition.name, session_id=call.session_id
                ),
                execution_time_ms=duration // 1_000_000,
            )
            phase = "exception"
        if call.correlation_id:
            response.metadata[CORRELATION_KEY] = call.correlation_id
        if telemetry.active:
            extra = None if ok else {"error_type": type(value).__name__}
            telemetry.tool_event(
                phase,
                tool=definition.name,
                session_id=call.session_id,
                correlation_id=call.correlation_id,
                duration_ns=duration,
                extra=extra,
            )
        return response

    def _run_sync(self, definition: ToolDefinition, kwargs: dict[str, object]) -> tuple[bool, Any]:
        # Runs in an executor thread: the call and the encoding, in one hop.
        try:
            result = definition.func(**kwargs)
        except BaseException as exc:
            trim_traceback(exc)
            return False, exc
        try:
            return True, self._encode(definition, result)
        except UnsendableResultError as exc:
            return False, exc

    def _encode(self, definition: ToolDefinition, value: object) -> tuple[PbAny, bytes]:
        try:
            return encode_any_with_binary(value)
        except InvalidArgumentError as exc:
            raise UnsendableResultError(
                f"tool {definition.name!r} returned a value that cannot be sent: {exc}"
            ) from exc

    async def _encode_off_loop(self, value: object) -> tuple[bool, Any]:
        def job() -> tuple[bool, Any]:
            try:
                return True, encode_any_with_binary(value)
            except InvalidArgumentError as exc:
                return False, UnsendableResultError(
                    f"a streaming tool's chunks cannot be sent: {exc}"
                )

        return await self.loop.run_in_executor(self.executor, job)

    def _too_large(self, definition: ToolDefinition, size: int) -> ResourceExhaustedError:
        return ResourceExhaustedError(
            f"tool {definition.name!r} returned {size} bytes, over the "
            f"{self.max_message_bytes} byte message limit; return less data, or write it to a "
            "file or shared memory and return its name"
        )

    async def _collect_stream(self, call: PreparedCall) -> tuple[bool, object]:
        """A streaming tool called as a unary call: its chunks as one list."""
        definition = call.definition
        if definition.stream is StreamKind.SYNC:

            def job() -> tuple[bool, object]:
                try:
                    return True, list(definition.func(**call.kwargs))
                except BaseException as exc:
                    trim_traceback(exc)
                    return False, exc

            return await self._in_thread(
                self.loop.run_in_executor(self.executor, job), call.control
            )
        items: list[object] = []
        try:
            produced = definition.func(**call.kwargs)
            if asyncio.iscoroutine(produced):
                produced = await produced
            if hasattr(produced, "__aiter__"):
                try:
                    async for item in produced:
                        items.append(item)
                finally:
                    aclose = getattr(produced, "aclose", None)
                    if aclose is not None:
                        await aclose()
            else:
                items.extend(produced)
        except Exception as exc:  # the tool's own error
            trim_traceback(exc)
            return False, exc
        return True, items

    # ------------------------------------------------------------------ batches

    async def run_batch(self, batch: pb.BatchCall) -> bytes:
        """Run one tool over many argument sets; the codec JSON array of per-item results."""
        definition = self.table.get(batch.tool_name)
        try:
            items = decode_json(batch.arguments)
        except InvalidArgumentError as exc:
            raise InvalidArgumentError(f"batch for tool {definition.name!r}: {exc}") from exc
        if not isinstance(items, list):
            raise InvalidArgumentError(
                f"batch for tool {definition.name!r}: arguments must be a JSON array of "
                f"argument objects, got {type(items).__name__}"
            )
        correlation_id = check_correlation_id(batch.metadata.get(CORRELATION_KEY, ""))
        control = CallControl()
        ctx = self.make_context(
            definition, batch.session_id, correlation_id, batch.metadata, control=control
        )
        started = time.perf_counter_ns()
        if self.telemetry.active:
            self.telemetry.tool_event(
                "start",
                tool=definition.name,
                session_id=batch.session_id,
                correlation_id=correlation_id,
                count=len(items),
            )
        try:
            if definition.is_async:
                results = await self._run_async_items(definition, items, ctx)
                data = await self.loop.run_in_executor(
                    self.executor, self._encode_results, definition, results, batch.session_id
                )
            else:
                job = self.loop.run_in_executor(
                    self.executor, self._run_sync_batch, definition, items, ctx, batch.session_id
                )
                data = await self._in_thread(job, control)
        except asyncio.CancelledError:
            control.cancel()
            raise
        if len(data) > self.max_message_bytes:
            raise self._too_large(definition, len(data))
        if self.telemetry.active:
            self.telemetry.tool_event(
                "stop",
                tool=definition.name,
                session_id=batch.session_id,
                correlation_id=correlation_id,
                duration_ns=time.perf_counter_ns() - started,
                count=len(items),
            )
        return data

    def _bind_item(
        self, definition: ToolDefinition, item: object, ctx: SessionContext
    ) -> dict[str, object]:
        if not isinstance(item, dict):
            raise InvalidArgumentError(
                f"tool {definition.name!r}: each batch item must be an object of arguments, "
                f"got {type(item).__name__}"
            )
        kwargs = definition.bind(item)
        if definition.ctx_param is not None:
            kwargs[definition.ctx_param] = ctx
        return kwargs

    def _run_sync_batch(
        self,
        definition: ToolDefinition,
        items: list[object],
        ctx: SessionContext,
        session_id: str,
    ) -> bytes:
        # One executor hop for the whole batch: bind, call and collect every item, then encode.
        func = definition.func
        collect = definition.stream is StreamKind.SYNC
        results: list[list[object]] = []
        append = results.append
        for item in items:
            if ctx.cancelled:
                break
            try:
                kwargs = self._bind_item(definition, item, ctx)
            except InvalidArgumentError as exc:
                append([False, _argument_error_info(exc, definition.name, session_id)])
                continue
            try:
                value = func(**kwargs)
                if collect:
                    value = list(value)
            except BaseException as exc:
                trim_traceback(exc)
                append([False, error_info(exc, tool_name=definition.name, session_id=session_id)])
                continue
            append([True, value])
        return self._encode_results(definition, results, session_id)

    async def _run_async_items(
        self, definition: ToolDefinition, items: list[object], ctx: SessionContext
    ) -> list[list[object]]:
        session_id = ctx.session_id

        async def one(item: object) -> list[object]:
            try:
                kwargs = self._bind_item(definition, item, ctx)
            except InvalidArgumentError as exc:
                return [False, _argument_error_info(exc, definition.name, session_id)]
            try:
                produced = definition.func(**kwargs)
                if definition.stream is StreamKind.NONE:
                    return [True, await produced]
                if asyncio.iscoroutine(produced):
                    produced = await produced
                return [True, [x async for x in produced]]
            except Exception as exc:  # per-item tool error
                trim_traceback(exc)
                return [False, error_info(exc, tool_name=definition.name, session_id=session_id)]

        results: list[list[object]] = []
        for start in range(0, len(items), _ASYNC_BATCH_CONCURRENCY):
            group = items[start : start + _ASYNC_BATCH_CONCURRENCY]
            if len(group) == 1:
                results.append(await one(group[0]))
            else:
                results.extend(await asyncio.gather(*(one(item) for item in group)))
        return results

    def _encode_results(
        self, definition: ToolDefinition, results: list[list[object]], session_id: str
    ) -> bytes:
        try:
            return encode_json(results)
        except InvalidArgumentError:
            pass
        # Some item's value cannot be sent: find it and report it for that item alone.
        for entry in results:
            if not entry[0]:
                continue
            try:
                encode_json(entry[1])
            except InvalidArgumentError as exc:
                err = InvalidArgumentError(
                    f"tool {definition.name!r} returned a value that cannot be sent: {exc}"
                )
                entry[0], entry[1] = False, _argument_error_info(err, definition.name, session_id)
        return encode_json(results)


def trim_traceback(exc: BaseException) -> None:
    """Drop the worker's own dispatch frame, so the traceback starts in the tool's code."""
    tb = exc.__traceback__
    if (
        tb is not None
        and tb.tb_next is not None
        and tb.tb_frame.f_globals.get("__name__", "").startswith("snakepit_nb.worker.")
    ):
        exc.__traceback__ = tb.tb_next


def _argument_error_info(exc: BaseException, tool_name: str, session_id: str) -> dict[str, Any]:
    info = error_info(exc, tool_name=tool_name, session_id=session_id)
    # The traceback of the binding code says nothing to the user; the message says it all.
    info["traceback"] = ""
    info["context"]["code"] = "INVALID_ARGUMENT"
    return info
