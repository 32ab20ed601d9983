"""Stream chunks: ``ToolChunk.data`` one value at a time, or ``ToolChunk.batch`` many at once.

Re-exported by :mod:`snakepit_nb.protocol.codec`.
"""

from __future__ import annotations

from collections.abc import Mapping

from snakepit_nb._errors import InvalidArgumentError
from snakepit_nb.protocol._values import MAX_DEPTH, decode_json, encode_json

__all__ = [
    "CHUNK_KIND_KEY",
    "decode_chunk",
    "decode_chunk_batch",
    "encode_chunk",
    "encode_chunk_batch",
]

#: Chunk metadata key naming how ``ToolChunk.data`` was encoded (our peers set it).
CHUNK_KIND_KEY = "snakepit_nb.kind"
_BYTES_LIKE = (bytes, bytearray, memoryview)


def encode_chunk(value: object) -> tuple[bytes, dict[str, str]]:
    """Encode one stream chunk as ``(data, metadata)`` for ``ToolChunk``.

    Published convention: UTF-8 for str, raw for bytes, JSON for everything else; the metadata
    ``snakepit_nb.kind`` (``text``/``bytes``/``json``) lets our peers decode it exactly.
    """
    if type(value) is str:
        return value.encode("utf-8", "surrogatepass"), {CHUNK_KIND_KEY: "text"}
    if isinstance(value, _BYTES_LIKE):
        return bytes(value), {CHUNK_KIND_KEY: "bytes"}
    return encode_json(value), {CHUNK_KIND_KEY: "json"}


def decode_chunk(data: bytes, metadata: Mapping[str, str] | None = None) -> object:
    """Decode a ``ToolChunk.data``.

    With our ``snakepit_nb.kind`` metadata the result is exact. Without it (a published worker)
    an empty chunk is ``None``; otherwise JSON is tried, then UTF-8 text, else raw bytes.
    """
    kind = metadata.get(CHUNK_KIND_KEY) if metadata else None
    if kind == "json":
        return decode_json(data)
    if kind == "text":
        return bytes(data).decode("utf-8", "surrogatepass")
    if kind == "bytes":
        return bytes(data)
    if not data:
        return None
    try:
        return decode_json(data)
    except InvalidArgumentError:
        pass
    try:
        return bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        return bytes(data)


def encode_chunk_batch(values: list[object], *, max_depth: int = MAX_DEPTH) -> bytes:
    """Encode many chunks (in order) as one codec JSON array, for ``ToolChunk.batch``."""
    # The batch's own list is one level; the chunks keep the full depth allowance.
    return encode_json(values, max_depth=max_depth + 1)


def decode_chunk_batch(data: bytes, *, max_depth: int = MAX_DEPTH) -> list[object]:
    """Decode a ``ToolChunk.batch`` into the list of chunk values, in order."""
    values = decode_json(data, max_depth=max_depth + 1)
    if not isinstance(values, list):
        raise InvalidArgumentError(
            f"a chunk batch must be a JSON array, got {type(values).__name__}"
        )
    return values
