"""Large pickled messages in pieces: the worker's store of uploaded arguments and kept results.

A worker without a lane (one on another machine) still takes and returns values of any size:
the kernel uploads a call's packed arguments with ``PutBlob`` (1 MiB pieces) and names the blob
in ``ExecuteToolRequest.pickled_blob``; a result too large for one message is kept here and
named in ``ExecuteToolResponse.pickled_result_blob``, and the kernel takes it with
``TakeBlob``. A blob is used once: taking it removes it. Everything is bounded: the bytes held
at once (``limit``), the size an upload may declare, and the time an untaken blob is kept.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator

from snakepit_nb._errors import InvalidArgumentError, ResourceExhaustedError
from snakepit_nb.protocol import pb
from snakepit_nb.protocol.lane import pieces

__all__ = ["PIECE", "BlobStore"]

#: Bytes per BlobChunk.
PIECE = 1024 * 1024
#: Bytes a worker holds in blobs at once, by default.
LIMIT = 8 * 1024**3
#: Seconds an untaken blob is kept (a call that never came, a result nobody took).
TTL = 120.0


class BlobStore:
    """Blobs by id; used from the worker's event loop only."""

    def __init__(self, *, limit: int = LIMIT, ttl: float = TTL, piece: int = PIECE) -> None:
        self.limit = limit
        self.ttl = ttl
        self.piece = piece
        self._blobs: dict[str, tuple[float, bytes | bytearray]] = {}
        self._held = 0  # bytes of stored blobs and of uploads under way

    @property
    def held(self) -> int:
        return self._held

    def __len__(self) -> int:
        return len(self._blobs)

    def _reserve(self, size: int, what: str) -> None:
        self.sweep()
        if size < 0:
            raise InvalidArgumentError(f"{what} declares a negative size ({size})")
        if self._held + size > self.limit:
            raise ResourceExhaustedError(
                f"{what} of {size} bytes does not fit: this worker holds {self._held} bytes of "
                f"large messages already (limit {self.limit}); retry when calls in flight end"
            )
        self._held += size

    def keep(self, data: bytes | bytearray) -> str:
        """Store ``data`` (a large result); its id for ``TakeBlob``."""
        self._reserve(len(data), "a result")
        blob_id = secrets.token_hex(16)
        self._blobs[blob_id] = (time.monotonic() + self.ttl, data)
        return blob_id

    async def put(self, pieces: AsyncIterator[pb.BlobChunk]) -> pb.BlobRef:
        """Assemble an upload: the first piece declares ``total_bytes``, the data must match."""
        buffer: bytearray | None = None
        total = 0
        got = 0
        try:
            async for piece in pieces:
                if buffer is None:
                    total = piece.total_bytes
                    self._reserve(total, "an upload")
                    # Grown as pieces arrive: a declared size alone allocates nothing.
                    buffer = bytearray()
                elif piece.total_bytes and piece.total_bytes != total:
                    raise InvalidArgumentError(
                        f"a piece of an upload declares {piece.total_bytes} bytes in all, the "
                        f"first one {total}"
                    )
                end = got + len(piece.data)
                if end > total:
                    raise InvalidArgumentError(
                        f"an upload declared {total} bytes and sent more ({end} so far)"
                    )
                buffer += piece.data
                got = end
        except BaseException:
            if buffer is not None:
                self._held -= total
            raise
        if buffer is None:
            raise InvalidArgumentError("an upload sent no pieces")
        if got != total:
            self._held -= total
            raise InvalidArgumentError(f"an upload declared {total} bytes and sent {got}")
        blob_id = secrets.token_hex(16)
        self._blobs[blob_id] = (time.monotonic() + self.ttl, buffer)
        return pb.BlobRef(blob_id=blob_id, size=total)

    def take(self, blob_id: str) -> bytes | bytearray:
        """Remove and return blob ``blob_id`` (NOT_FOUND-style error if there is none)."""
        entry = self._blobs.pop(blob_id, None)
        if entry is None:
            raise InvalidArgumentError(
                f"blob {blob_id[:40]!r} is not held by this worker (taken already, expired "
                f"after {self.ttl:g} s, or never uploaded)"
            )
        data = entry[1]
        self._held -= len(data)
        return data

    async def pieces(self, blob_id: str) -> AsyncIterator[pb.BlobChunk]:
        """Take blob ``blob_id`` as ``BlobChunk`` pieces (the first one names the total)."""
        for piece in pieces(self.take(blob_id), self.piece):
            yield piece

    def sweep(self) -> None:
        """Drop blobs kept past their time."""
        now = time.monotonic()
        for blob_id, (expires, data) in list(self._blobs.items()):
            if expires <= now:
                del self._blobs[blob_id]
                self._held -= len(data)
