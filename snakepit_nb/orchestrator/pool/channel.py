"""The call channel: one long-lived bidirectional gRPC stream per worker, multiplexing calls.

A unary gRPC call costs a fresh HTTP/2 stream, headers and a status for every call (about
0.45 ms on a 2-core box); a message on an open stream costs about half of that, and several
messages packed into one frame cost little more than one. So the orchestrator keeps one
``CallChannel`` RPC open per worker and sends :class:`pb.ChannelMessage` s tagged with call ids
of its own; the worker answers with the same ids, in any order.

Frames coalesce: the sender task drains everything queued since its last write into one
``ChannelFrame``. Messages are serialised once, when submitted, and a frame is the
concatenation of its messages' wire encodings (a ``ChannelFrame`` is just ``repeated
ChannelMessage messages = 1``), so coalescing copies bytes, not protobuf objects.

The outbox holds at most one message per call in flight plus one cancel per call, and the pool
bounds the calls in flight per worker, so it is bounded too.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import struct
from collections.abc import Callable, Sequence
from typing import Any

import grpc
import grpc.aio

from snakepit_nb._errors import ClosedError, ResourceExhaustedError
from snakepit_nb.protocol import pb

#: grpc.aio's end-of-stream marker (missing from its type stubs).
EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]

__all__ = ["CallChannel", "ChannelBrokenError", "describe_rpc_failure", "encode_channel_message"]

log = logging.getLogger("snakepit_nb.channel")

METHOD = "/snakepit.bridge.BridgeService/CallChannel"

# A frame never grows past this many bytes unless one message alone is larger; big frames only
# delay the small calls queued behind them.
FRAME_SOFT_LIMIT = 1 << 20
FRAME_MAX_MESSAGES = 4096

# ChannelMessage field tags (field number << 3 | wire type).
_TAG_CALL_ID = b"\x08"  # 1, varint
_TAG_REQUEST = b"\x12"  # 2, length-delimited
_TAG_CANCEL = b"\x22"  # 4, length-delimited
_TAG_BATCH = b"\x2a"  # 5, length-delimited
_TAG_TIMEOUT = b"\x41"  # 8, 64-bit
_TAG_FRAME_MESSAGE = b"\x0a"  # ChannelFrame.messages = 1, length-delimited


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def encode_channel_message(
    call_id: int,
    *,
    request: bytes | None = None,
    batch: bytes | None = None,
    cancel: bytes | None = None,
    timeout: float = 0.0,
) -> bytes:
    """The wire encoding of one ``ChannelMessage`` wrapped as a ``ChannelFrame.messages`` entry.

    ``request``/``batch``/``cancel`` are already-serialised ``ExecuteToolRequest`` /
    ``BatchCall`` / ``CallCancel`` messages (exactly one of them). Concatenating the results
    gives a serialised ``ChannelFrame``.
    """
    parts = [_TAG_CALL_ID, _varint(call_id)]
    if request is not None:
        parts += [_TAG_REQUEST, _varint(len(request)), request]
    elif batch is not None:
        parts += [_TAG_BATCH, _varint(len(batch)), batch]
    elif cancel is not None:
        parts += [_TAG_CANCEL, _varint(len(cancel)), cancel]
    if timeout > 0:
        parts += [_TAG_TIMEOUT, struct.pack("<d", timeout)]
    body = b"".join(parts)
    return _TAG_FRAME_MESSAGE + _varint(len(body)) + body


def describe_rpc_failure(exc: BaseException) -> str:
    """``"UNAVAILABLE: Socket closed"`` for an RPC error; ``str(exc)`` for anything else."""
    code = getattr(exc, "code", None)
    details = getattr(exc, "details", None)
    if callable(code) and callable(details):
        status = code()
        name = getattr(status, "name", str(status))
        return f"{name}: {details() or ''}".rstrip(": ")
    return str(exc) or type(exc).__name__


def _identity(data: bytes) -> bytes:
    return data


class ChannelBrokenError(Exception):
    """Internal: the channel's stream ended or failed; the pool turns it into a user error."""


class CallChannel:
    """Client side of one worker's ``CallChannel`` stream.

    ``submit`` queues a call and returns its id and a future resolved with the worker's
    ``ChannelMessage`` answer. When the stream fails, ``on_broken`` is called once; the futures
    of calls still pending are left for the owner to fail (it knows why the worker went away,
    for example its exit code) through :meth:`fail_all`.
    """

    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        worker_id: str,
        metadata: Sequence[tuple[str, str]],
        max_message_bytes: int,
        on_broken: Callable[[BaseException], None],
    ) -> None:
        self.worker_id = worker_id
        self._multicallable = channel.stream_stream(
            METHOD,
            request_serializer=_identity,
            response_deserializer=pb.ChannelFrame.FromString,
        )
        self._metadata = tuple(metadata)
        self._max_message_bytes = max_message_bytes
        self._on_broken = on_broken
        self._call: Any = None
        self._pending: dict[int, asyncio.Future[pb.ChannelMessage]] = {}
        self._outbox: collections.deque[bytes] = collections.deque()
        self._wake = asyncio.Event()
        self._next_id = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._broken: BaseException | None = None
        self._closed = False

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Start the stream and its sender and receiver tasks.

        Whether the worker serves CallChannel at all is probed before (DescribeTools, our other
        addition); a failure of the stream later breaks the channel through ``on_broken``.
        """
        self._call = self._multicallable(None, metadata=self._metadata)
        self._tasks = [
            asyncio.create_task(self._send_loop(), name=f"snakepit-chan-send-{self.worker_id}"),
            asyncio.create_task(self._recv_loop(), name=f"snakepit-chan-recv-{self.worker_id}"),
        ]

    async def close(self) -> None:
        """Close the stream; pending calls fail with ClosedError."""
        self._closed = True
        for task in self._tasks:
            task.cancel()
        if self._call is not None:
            self._call.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.fail_all(ClosedError("the pool was closed while the call was running"))

    @property
    def broken(self) -> bool:
        return self._broken is not None or self._closed

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    # ------------------------------------------------------------------ calls

    def submit(
        self,
        *,
        request: bytes | None = None,
        batch: bytes | None = None,
        timeout: float = 0.0,
    ) -> tuple[int, asyncio.Future[pb.ChannelMessage]]:
        """Queue one call (a serialised ExecuteToolRequest or BatchCall)."""
        if self._broken is not None or self._closed:
            raise ChannelBrokenError(f"the call channel to worker {self.worker_id} is closed")
        size = len(request if request is not None else batch or b"")
        # The message's own framing adds a few bytes; keep clear of the worker's hard limit.
        if size > self._max_message_bytes - 1024:
            raise ResourceExhaustedError(
                f"the call's arguments are {size} bytes, over max_message_bytes="
                f"{self._max_message_bytes}; pass large data through a file or shared memory, "
                "or start the pool with a larger max_message_bytes"
            )
        self._next_id += 1
        call_id = self._next_id
        future: asyncio.Future[pb.ChannelMessage] = asyncio.get_running_loop().create_future()
        self._pending[call_id] = future
        self._outbox.append(
            encode_channel_message(call_id, request=request, batch=batch, timeout=timeout)
        )
        self._wake.set()
        return call_id, future

    def cancel(self, call_id: int, reason: str = "cancelled by the caller") -> None:
        """Ask the worker to stop a call. Its future stays pending until the worker answers
        (the worker keeps the slot busy until the tool has actually stopped)."""
        if call_id not in self._pending or self._broken is not None or self._closed:
            return
        self._outbox.append(
            encode_channel_message(call_id, cancel=pb.CallCancel(reason=reason).SerializeToString())
        )
        self._wake.set()

    def track(self, call_id: int) -> asyncio.Future[pb.ChannelMessage]:
        """A fresh future for a call whose first future was cancelled by its caller: resolved
        by the worker's late answer (or failed with the channel), so its slot can be freed."""
        future: asyncio.Future[pb.ChannelMessage] = asyncio.get_running_loop().create_future()
        if self._broken is not None or self._closed:
            future.set_exception(
                ChannelBrokenError(f"the call channel to {self.worker_id} is closed")
            )
        else:
            self._pending[call_id] = future
        return future

    def forget(self, call_id: int) -> None:
        """Drop a call's future without waiting for its answer."""
        self._pending.pop(call_id, None)

    def fail_all(self, exc: BaseException) -> None:
        """Fail every pending call with ``exc`` (after the worker died or the pool closed)."""
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(exc)

    # ------------------------------------------------------------------ loops

    async def _send_loop(self) -> None:
        outbox = self._outbox
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while outbox:
                    parts = [outbox.popleft()]
                    size = len(parts[0])
                    while outbox and len(parts) < FRAME_MAX_MESSAGES:
                        nxt = len(outbox[0])
                        if size + nxt > FRAME_SOFT_LIMIT:
                            break
                        parts.append(outbox.popleft())
                        size += nxt
                    await self._call.write(b"".join(parts))
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self._mark_broken(exc)

    async def _recv_loop(self) -> None:
        pending = self._pending
        try:
            while True:
                frame = await self._call.read()
                if frame is EOF:
                    code = await self._call.code()
                    details = await self._call.details()
                    self._mark_broken(_RpcFailure(code, details))
                    return
                for message in frame.messages:
                    future = pending.pop(message.call_id, None)
                    if future is not None and not future.done():
                        future.set_result(message)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self._mark_broken(exc)

    def _mark_broken(self, exc: BaseException) -> None:
        if self._broken is not None or self._closed:
            return
        self._broken = exc
        log.debug("call channel to %s broke: %s", self.worker_id, exc)
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()
        self._on_broken(exc)


class _RpcFailure(Exception):
    """The channel RPC ended with a status (kept with its code for the caller)."""

    def __init__(self, code: grpc.StatusCode | None, details: str | None) -> None:
        super().__init__(f"{getattr(code, 'name', code)}: {details or ''}")
        self.status_code = code
        self.details_text = details or ""

    def code(self) -> grpc.StatusCode | None:
        return self.status_code

    def details(self) -> str:
        return self.details_text
