"""The kernel's side of large pickled messages over gRPC: upload before a call, take after.

For our own workers that have no lane (on another machine): a call whose packed arguments are
larger than :data:`THRESHOLD` uploads them first with ``PutBlob`` in 1 MiB pieces and sends only
the blob's id; a result the worker kept as a blob is taken with ``TakeBlob``. Pieces are sent
and received by gRPC on the loop, a piece at a time, so heartbeats keep flowing; the message
limit (``max_message_bytes``) applies to each piece, never to the value.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from snakepit_nb.protocol import pb
from snakepit_nb.protocol.lane import pieces

if TYPE_CHECKING:
    from snakepit_nb.protocol import pb_grpc

__all__ = ["PIECE", "THRESHOLD", "take", "threshold", "upload"]

#: Packed arguments larger than this travel as a blob.
THRESHOLD = 4 * 1024 * 1024
#: Bytes per BlobChunk.
PIECE = 1024 * 1024


def threshold(max_message_bytes: int) -> int:
    """Packed messages larger than this go as blobs (half the message limit at most)."""
    return min(THRESHOLD, max_message_bytes // 2)


async def upload(
    stub: pb_grpc.BridgeServiceStub,
    data: bytes,
    *,
    metadata: Sequence[tuple[str, str]],
    timeout: float | None,  # noqa: ASYNC109 - the call's deadline
    max_message_bytes: int,
) -> str:
    """Upload ``data`` to the worker behind ``stub``; the blob's id."""
    piece = min(PIECE, threshold(max_message_bytes))
    ref: pb.BlobRef = await stub.PutBlob(pieces(data, piece), metadata=metadata, timeout=timeout)
    return ref.blob_id


async def take(
    stub: pb_grpc.BridgeServiceStub,
    blob_id: str,
    *,
    metadata: Sequence[tuple[str, str]],
    timeout: float | None,  # noqa: ASYNC109 - the call's deadline
) -> bytearray:
    """Take blob ``blob_id`` from the worker behind ``stub``."""
    out = bytearray()
    call: Any = stub.TakeBlob(pb.BlobRef(blob_id=blob_id), metadata=metadata, timeout=timeout)
    async for piece in call:
        out += piece.data
    return out
