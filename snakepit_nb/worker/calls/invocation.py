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
from typing import Any, NamedTuple, TypeVar

from google.protobuf.any_pb2 import Any as PbAny

from snakepit_nb._errors import InvalidArgumentError, ResourceExhaustedError
from snakepit_nb.protocol import pb, pickling
from snakepit_nb.protocol.boundary import check_correlation_id
from snakepit_nb.protocol.codec import (
    decode_json,
    decode_params,
    encode_any_with_binary,
    encode_json,
    error_info,
    error_payload,
)
from snakepit_nb.protocol.lane import pack_inline, unpack_inline
from snakepit_nb.protocol.pickling import FUNCTION_TOOL, FunctionRef
from snakepit_nb.tools.adapter import ToolTable
from snakepit_nb.tools.definition import StreamKind, ToolDefinition
from snakepit_nb.worker.calls.batches import (
    argument_info,
    pickle_answer,
    tool_items,
    trim_traceback,
)
from snakepit_nb.worker.calls.blobs import BlobStore
from snakepit_nb.worker.calls.direct import DirectRunner
from snakepit_nb.worker.calls.functions import FunctionCache, function_definition
from snakepit_nb.worker.calls.runner import SyncRunner
from snakepit_nb.worker.context import CallControl, SessionContext
from snakepit_nb.worker.link import OrchestratorLink
from snakepit_nb.worker.output import OutputHub, in_context
from snakepit_nb.worker.telemetry import TelemetryEmitter

__all__ = ["Invoker", "PreparedCall"]

CORRELATION_KEY = "correlation_id"
CORRELATION_HEADER = "x-snakepit-correlation-id"
# Async tools of one batch run concurrently in groups of this size (I/O-bound tools overlap).
_ASYNC_BATCH_CONCURRENCY = 256
# Pickled arguments at least this large are unpickled off the loop thread.
OFF_LOOP_BYTES = 256 * 1024
# Pickled results larger than this are kept as blobs, taken by the kernel in pieces.
BLOB_THRESHOLD = 4 * 1024 * 1024

T = TypeVar("T")


class Encoded(NamedTuple):
    """A result ready for the wire: JSON (``any`` and raw ``binary`` parts) or ``pickled``."""

    any: PbAny
    binary: bytes
    pickled: bytes


_EMPTY_ANY = PbAny()


class UnsendableResultError(InvalidArgumentError):
    """A tool's result cannot be encoded: an error of the call (INVALID_ARGUMENT), not the tool."""


class PreparedCall:
    """A call whose tool is found and whose arguments are bound: ready to run."""

    __slots__ = (
        "control",
        "correlation_id",
        "ctx",
        "definition",
        "kwargs",
        "metadata",
        "pickled",
        "session_id",
    )

    def __init__(  # noqa: PLR0917
        self,
        definition: ToolDefinition,
        kwargs: dict[str, object],
        ctx: SessionContext | None,
        session_id: str,
        correlation_id: str,
        control: CallControl,
        *,
        pickled: bool = False,
    ) -> None:
        self.definition = definition
        self.kwargs = kwargs
        self.ctx = ctx
        self.session_id = session_id
        self.correlation_id = correlation_id
        self.control = control
        #: The call came pickled: its answer goes back pickled (exact types).
        self.pickled = pickled
        self.metadata: Mapping[str, str] = {}

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
        pickles: bool = False,
    ) -> None:
        """``pickles``: this worker was started with the runtime token, so what reaches it
        comes from its own kernel and pickled calls may be unpickled."""
        self.table = table
        self.pickles = pickles
        self.functions = FunctionCache()
        #: Large pickled messages of calls over gRPC (workers without a lane).
        self.blobs = BlobStore(piece=max(1024, min(1024 * 1024, max_message_bytes // 2)))
        #: Runs pickled batches and lane calls in the calling thread.
        self.direct = DirectRunner(self)
        self.runner = SyncRunner(loop, executor, threads)
        self.loop = loop
        self.executor = executor
        self.worker_id = worker_id
        self.telemetry = telemetry
        self.link = link
        self.max_message_bytes = max_message_bytes
        #: Captures what tools write, per call (set by the worker; None: not captured).
        self.output: OutputHub | None = None
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
        metadata = request.metadata
        # It goes on as a gRPC header in callbacks to the kernel: refuse what cannot.
        correlation_id = check_correlation_id(metadata.get(CORRELATION_KEY, "") or correlation_id)
        control = CallControl()
        if request.pickled_blob:
            self.check_pickles("a pickled call")
            packed = self.blobs.take(request.pickled_blob)
            definition, arguments = self._unpickle_call(request, packed)
        elif request.pickled:
            definition, arguments = self._unpickle_call(request, request.pickled)
        else:
            definition = self.table.get(request.tool_name)
            try:
                arguments = decode_params(request.parameters, request.binary_parameters, metadata)
            except InvalidArgumentError as exc:
                raise InvalidArgumentError(f"tool {definition.name!r}: {exc}") from exc
        kwargs = definition.bind(arguments)
        ctx: SessionContext | None = None
        if definition.ctx_param is not None or definition.stream is not StreamKind.NONE:
            ctx = self.make_context(
                definition, request.session_id, correlation_id, metadata, request.variables, control
            )
            if definition.ctx_param is not None:
                kwargs[definition.ctx_param] = ctx
        call = PreparedCall(
            definition,
            kwargs,
            ctx,
            request.session_id,
            correlation_id,
            control,
            pickled=bool(request.pickled or request.pickled_blob),
        )
        call.metadata = metadata
        return call

    async def prepare_async(
        self, request: pb.ExecuteToolRequest, correlation_id: str = ""
    ) -> PreparedCall:
        """:meth:`prepare`, in a thread when the arguments are big: the loop keeps answering
        heartbeats while 100 MB are unpickled."""
        if len(request.pickled) < OFF_LOOP_BYTES and not request.pickled_blob:
            return self.prepare(request, correlation_id)
        return await self.loop.run_in_executor(self.executor, self.prepare, request, correlation_id)

    def _unpickle_call(
        self, request: pb.ExecuteToolRequest, packed: bytes | bytearray
    ) -> tuple[ToolDefinition, Mapping[str, object]]:
        """The tool (or shipped function) and arguments of a pickled request."""
        self.check_pickles("a pickled call")
        ref, args, kwargs = unpack_inline(packed, what="a call from the kernel")
        if request.tool_name != FUNCTION_TOOL:
            definition = self.table.get(request.tool_name)
            if args:
                raise InvalidArgumentError(
                    f"tool {definition.name!r} takes its arguments by name; call it as "
                    f"s.call({definition.name!r}, name=value, ...)"
                )
            return definition, kwargs
        if not isinstance(ref, FunctionRef):
            raise InvalidArgumentError("a function call arrived without its function")
        func = self.functions.get(ref)
        if func is None:
            raise InvalidArgumentError(
                f"function {ref.name!r} arrived without its body and is not cached here"
            )
        return function_definition(func, ref.name, args, kwargs), {}

    def check_pickles(self, what: str) -> None:
        """Refuse ``what`` unless this worker may unpickle (it holds the runtime token)."""
        if not self.pickles:
            raise InvalidArgumentError(
                f"{what} reached a worker started without the runtime token (auth=False); "
                "such a worker never unpickles: send JSON-friendly keyword arguments"
            )

    # ------------------------------------------------------------------ unary calls

    async def run(self, call: PreparedCall) -> pb.ExecuteToolResponse:
        """Run a prepared call to completion; tool exceptions become ``success=false``.

        What the tool writes goes to the caller's cell (``worker/output.py``): the answer
        leaves once that output went out.
        """
        hub = self.output
        if hub is None:
            return await self._run(call)
        return await hub.arun(call.metadata, call.definition.name, lambda: self._run(call))

    async def _run(self, call: PreparedCall) -> pb.ExecuteToolResponse:
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
                    ok, value = await self._encode_off_loop(definition, value, call.pickled)
            elif definition.is_async:
                try:
                    result = await definition.func(**call.kwargs)
                except Exception as exc:  # the tool's own error: reported, worker carries on
                    trim_traceback(exc)
                    ok, value = False, exc
                else:
                    ok, value = await self._encode_off_loop(definition, result, call.pickled)
            else:
                job = self.runner.submit(
                    in_context(
                        functools.partial(self._run_sync, definition, call.kwargs, call.pickled)
                    )
                )
                ok, value = await self._in_thread(job, call.control, queued=True)
        except asyncio.CancelledError:
            call.cancel()
            raise
        duration = time.perf_counter_ns() - started
        if ok:
            any_value, binary, pickled = value
            response = pb.ExecuteToolResponse(success=True, execution_time_ms=duration // 1_000_000)
            if len(pickled) > min(BLOB_THRESHOLD, self.max_message_bytes // 2):
                # Too large for one message: kept for the kernel to take in pieces.
                response.pickled_result_blob = self.blobs.keep(pickled)
            elif pickled:
                response.pickled_result = pickled
            else:
                response.result.CopyFrom(any_value)
            if binary:
                response.binary_result = binary
            size = len(binary) + len(response.pickled_result) + any_value.ByteSize()
            if size > self.max_message_bytes:
                raise self._too_large(definition, size)
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

    def _run_sync(
        self, definition: ToolDefinition, kwargs: dict[str, object], pickled: bool
    ) -> tuple[bool, Any]:
        # Runs in an executor thread: the call and the encoding, in one hop.
        try:
            result = definition.func(**kwargs)
        except BaseException as exc:
            trim_traceback(exc)
            return False, exc
        try:
            return True, self._encode(definition, result, pickled)
        except UnsendableResultError as exc:
            return False, exc

    def _encode(self, definition: ToolDefinition, value: object, pickled: bool) -> Encoded:
        """The result as JSON (``pickled=False``: the published bridge's form) or a pickle."""
        if pickled:
            try:
                message = pickling.dumps(
                    pickling.wrap_large([value])[0], what=f"the result of {definition.name!r}"
                )
            except InvalidArgumentError as exc:
                raise UnsendableResultError(str(exc)) from exc
            return Encoded(_EMPTY_ANY, b"", pack_inline(message))
        try:
            any_value, binary = encode_any_with_binary(value)
        except InvalidArgumentError as exc:
            raise UnsendableResultError(
                f"tool {definition.name!r} returned a value that cannot be sent: {exc}"
            ) from exc
        return Encoded(any_value, binary, b"")

    async def _encode_off_loop(
        self, definition: ToolDefinition, value: object, pickled: bool
    ) -> tuple[bool, Any]:
        def job() -> tuple[bool, Any]:
            try:
                return True, self._encode(definition, value, pickled)
            except UnsendableResultError as exc:
                return False, exc

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
                self.loop.run_in_executor(self.executor, in_context(job)), call.control
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

    async def run_batch(self, batch: pb.BatchCall) -> pb.BatchResult:
        """Run one tool (or shipped function) over many items (see :meth:`_run_batch`); what
        the items write goes to the caller's cell before the answer leaves."""
        hub = self.output
        if hub is None:
            return await self._run_batch(batch)
        return await hub.arun(batch.metadata, batch.tool_name, lambda: self._run_batch(batch))

    async def _run_batch(self, batch: pb.BatchCall) -> pb.BatchResult:
        """Run one tool (or shipped function) over many items: a chunk of ``session.map``.

        A pickled batch, ``(function_ref_or_None, items, style)``, is answered pickled
        (``BatchResult.pickled``); a JSON one with the codec JSON array of per-item results.
        """
        if batch.pickled:
            return await self._run_pickled_batch(batch)
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
                results = await self.run_async_items(definition, items, ctx)
                data = await self.loop.run_in_executor(
                    self.executor, self._encode_results, definition, results, batch.session_id
                )
            else:
                job = self.loop.run_in_executor(
                    self.executor,
                    in_context(
                        functools.partial(
                            self._run_sync_batch, definition, items, ctx, batch.session_id, control
                        )
                    ),
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
        return pb.BatchResult(results=data)

    async def _run_pickled_batch(self, batch: pb.BatchCall) -> pb.BatchResult:
        self.check_pickles("a pickled map")
        control = CallControl()
        what = f"the results of map({batch.tool_name!r})"

        def job() -> bytes:
            # In an executor thread: unpickling, the items and the answer's pickle.
            ref, items, style = unpack_inline(batch.pickled, what="a map from the kernel")
            target: str | FunctionRef = ref if isinstance(ref, FunctionRef) else batch.tool_name
            answer = self.direct.batch(
                batch.session_id, target, items, style, batch.metadata, control=control, scoped=True
            )
            return pack_inline(pickle_answer(answer, what=what))

        data = await self._in_thread(
            self.loop.run_in_executor(self.executor, in_context(job)), control
        )
        if len(data) > self.max_message_bytes:
            raise ResourceExhaustedError(
                f"{what} are {len(data)} bytes, over the {self.max_message_bytes} byte message "
                "limit; map over smaller chunks (chunksize=) or return less data"
            )
        return pb.BatchResult(pickled=data)

    def _run_sync_batch(
        self,
        definition: ToolDefinition,
        items: list[object],
        ctx: SessionContext,
        session_id: str,
        control: CallControl,
    ) -> bytes:
        # One executor hop for the whole batch: bind, call and collect every item, then encode.
        _, values, errors = tool_items(definition, items, ctx, session_id, control)
        results: list[list[object]] = [[True, value] for value in values]
        for index, info in errors.items():
            results[index] = [False, info]
        return self._encode_results(definition, results, session_id)

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

    async def run_async_items(
        self, definition: ToolDefinition, items: list[object], ctx: SessionContext
    ) -> list[list[object]]:
        session_id = ctx.session_id

        async def one(item: object) -> list[object]:
            try:
                kwargs = self._bind_item(definition, item, ctx)
            except InvalidArgumentError as exc:
                return [False, argument_info(exc, definition.name, session_id)]
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
                entry[0], entry[1] = False, argument_info(err, definition.name, session_id)
        return encode_json(results)
