"""The lane: a private unix-socket connection between the kernel and one of its local workers.

The call path for our own workers on this machine. gRPC costs ~0.5 ms per call on this kind of
machine, nearly all of it in hand-offs between threads; the lane is a plain socket that the
calling thread reads and writes itself, served in the worker by a thread of its own, so a call
costs two wake-ups and a few microseconds of encoding (see docs/protocol.md, "The lane").

Framing: a 16-byte header ``<u32 payload length><u8 kind><u8 descriptor count><u16 0><u64 call
id>`` and the payload. A frame may carry file descriptors (``SCM_RIGHTS``): the sealed memfd of
its large buffers (:mod:`.segments`).

A message payload is a pickle stream and its out-of-band buffers (:mod:`.pickling`):
``<u32 buffer count><u32 stream length>``, the stream, then ``<u64 offset><u64 length>`` per
buffer; the buffers are in the frame's memfd at those offsets, or, without one, follow the
table inline. Security: the socket lives in the pool's private 0700 directory and is 0600; the
first frame of a connection must carry the runtime token (checked with
``hmac.compare_digest``) or the worker closes it. Only then is anything unpickled.
"""

from __future__ import annotations

import array
import contextlib
import socket
import struct
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from snakepit_nb._errors import InvalidArgumentError
from snakepit_nb.protocol import pb, pickling, segments
from snakepit_nb.protocol.pickling import Pickled

__all__ = [
    "AUTH",
    "AUTH_OK",
    "BATCH",
    "CALL",
    "CANCEL",
    "FUNCTION_UNKNOWN",
    "HEADER",
    "REPLY",
    "LaneClosed",
    "LaneSocket",
    "pack_inline",
    "pack_message",
    "pieces",
    "unpack_inline",
    "unpack_message",
]

HEADER = struct.Struct("<IBBHQ")
_COUNTS = struct.Struct("<II")
_ENTRY = struct.Struct("<QQ")

# Frame kinds.
AUTH = 1  # kernel -> worker: the runtime token
AUTH_OK = 2  # worker -> kernel
CALL = 3  # kernel -> worker: one call
BATCH = 4  # kernel -> worker: one chunk of a map
REPLY = 5  # worker -> kernel: the answer to a CALL or BATCH
CANCEL = 6  # kernel -> worker (on a control connection): stop call <call id>

#: The status of an answer asking for a function's body again (the worker no longer has it).
FUNCTION_UNKNOWN = "FUNCTION_UNKNOWN"

_MAX_FDS = 4
_ANC_SIZE = socket.CMSG_SPACE(_MAX_FDS * array.array("i").itemsize)

#: Called while a read waits; raises to give up (only between frames).
Waiter = Callable[[], None]


class LaneClosed(ConnectionError):
    """The other end closed the lane (the worker exited, or the kernel went away)."""


def pack_message(message: Pickled, *, shared: bool) -> tuple[list[Any], list[int]]:
    """The payload parts and descriptors of ``message`` (``shared``: buffers in a memfd).

    The caller closes the descriptors once the frame is sent.
    """
    buffers = message.buffers
    head = _COUNTS.pack(len(buffers), len(message.data))
    if not buffers:
        return [head, message.data], []
    if shared and segments.available():
        fd, layout = segments.write_segment(buffers)
        table = b"".join(_ENTRY.pack(start, length) for start, length in layout)
        return [head, message.data, table], [fd]
    parts: list[Any] = [head, message.data]
    entries = []
    offset = 0
    raws = [b.raw() for b in buffers]
    for raw in raws:
        entries.append(_ENTRY.pack(offset, raw.nbytes))
        offset += raw.nbytes
    return [*parts, b"".join(entries), *raws], []


def unpack_message(payload: memoryview, fds: Sequence[int]) -> tuple[memoryview, list[memoryview]]:
    """``(pickle stream, buffers)`` of a payload made by :func:`pack_message`; takes the fds."""
    count, stream_len = _COUNTS.unpack_from(payload, 0)
    at = _COUNTS.size
    stream = payload[at : at + stream_len]
    at += stream_len
    layout = [_ENTRY.unpack_from(payload, at + i * _ENTRY.size) for i in range(count)]
    at += count * _ENTRY.size
    if not count:
        for fd in fds:
            with contextlib.suppress(OSError):
                socket.close(fd)
        return stream, []
    if fds:
        for extra in fds[1:]:
            with contextlib.suppress(OSError):
                socket.close(extra)
        return stream, segments.map_segment(fds[0], layout)
    inline = payload[at:]
    return stream, [inline[start : start + length] for start, length in layout]


def pack_inline(message: Pickled) -> bytes:
    """``message`` as one bytes value, its buffers inline (for a gRPC field)."""
    parts, _ = pack_message(message, shared=False)
    return b"".join(parts)


def pieces(data: bytes | bytearray, size: int) -> Iterator[pb.BlobChunk]:
    """A packed message as ``BlobChunk`` pieces of ``size`` bytes (``PutBlob``/``TakeBlob``);
    the first names the total (an empty message is one empty piece)."""
    view = memoryview(data)
    total = len(view)
    if not total:
        yield pb.BlobChunk(total_bytes=0)
        return
    for start in range(0, total, size):
        yield pb.BlobChunk(
            data=bytes(view[start : start + size]), total_bytes=total if not start else 0
        )


def unpack_inline(data: bytes | bytearray | memoryview, *, what: str) -> Any:
    """Unpickle a value made by :func:`pack_inline` (only from one of our own peers)."""
    try:
        stream, buffers = unpack_message(memoryview(data), [])
    except (struct.error, ValueError, IndexError) as exc:
        raise InvalidArgumentError(f"{what} is not a well-formed pickled message ({exc})") from None
    return pickling.loads(stream, buffers, what=what)


class LaneSocket:
    """A connected lane socket, read and written with whole frames (blocking, one user)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._fds: list[int] = []

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
        for fd in self._fds:
            with contextlib.suppress(OSError):
                socket.close(fd)
        self._fds.clear()

    # ------------------------------------------------------------------ writing

    def send(
        self,
        kind: int,
        call_id: int,
        parts: Sequence[Any] = (),
        fds: Sequence[int] = (),
    ) -> None:
        """Write one frame (all of it, or raise LaneClosed)."""
        views = [memoryview(p).cast("B") for p in parts]
        size = sum(v.nbytes for v in views)
        chunks: list[memoryview] = [
            memoryview(HEADER.pack(size, kind, len(fds), 0, call_id)),
            *views,
        ]
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        try:
            while chunks:
                sent = self.sock.sendmsg(chunks, ancillary)
                ancillary = []  # the descriptors went with the first byte
                while chunks and sent >= chunks[0].nbytes:
                    sent -= chunks[0].nbytes
                    chunks.pop(0)
                if sent:
                    chunks[0] = chunks[0][sent:]
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise LaneClosed(str(exc)) from exc

    # ------------------------------------------------------------------ reading

    def recv(self, waiter: Waiter | None = None) -> tuple[int, int, memoryview, list[int]]:
        """The next frame: ``(kind, call id, payload, descriptors)``.

        With a socket timeout set, ``waiter()`` runs each time it expires before the frame
        starts (it may raise to give up); once a frame starts, it is read to its end.
        """
        header = self._read(HEADER.size, waiter)
        size, kind, nfds, _, call_id = HEADER.unpack(header)
        payload = self._read(size, None) if size else bytearray()
        fds, self._fds = self._fds[:nfds], self._fds[nfds:]
        return kind, call_id, memoryview(payload), fds

    def _read(self, n: int, waiter: Waiter | None) -> bytearray:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            try:
                nbytes, ancdata, _flags, _ = self.sock.recvmsg_into([view[got:]], _ANC_SIZE)
            except TimeoutError:
                if got == 0 and waiter is not None:
                    waiter()
                continue
            except (ConnectionResetError, OSError) as exc:
                if isinstance(exc, TimeoutError):
                    raise
                raise LaneClosed(str(exc)) from exc
            for level, kind, data in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds = array.array("i")
                    fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
                    self._fds.extend(fds)
            if nbytes == 0:
                raise LaneClosed("the lane was closed by the other end")
            got += nbytes
        return buf
