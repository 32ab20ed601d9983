"""The worker's blob store: bounded, used once, checked against what uploads declare."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable

import pytest

from snakepit_nb._errors import InvalidArgumentError, ResourceExhaustedError
from snakepit_nb.protocol import pb
from snakepit_nb.worker.calls.blobs import PIECE, BlobStore


async def _feed(pieces: Iterable[pb.BlobChunk]) -> AsyncIterator[pb.BlobChunk]:
    for piece in pieces:
        yield piece


def _put(store: BlobStore, *pieces: pb.BlobChunk) -> pb.BlobRef:
    return asyncio.run(store.put(_feed(pieces)))


def _take_pieces(store: BlobStore, blob_id: str) -> list[pb.BlobChunk]:
    async def go() -> list[pb.BlobChunk]:
        return [piece async for piece in store.pieces(blob_id)]

    return asyncio.run(go())


def test_an_upload_is_assembled_and_taken_once() -> None:
    store = BlobStore()
    ref = _put(
        store, pb.BlobChunk(data=b"abc", total_bytes=6), pb.BlobChunk(data=b"def", total_bytes=0)
    )
    assert ref.size == 6
    assert store.held == 6
    assert bytes(store.take(ref.blob_id)) == b"abcdef"
    assert store.held == 0
    with pytest.raises(InvalidArgumentError, match="not held"):
        store.take(ref.blob_id)


def test_a_kept_result_is_served_in_pieces_that_name_the_total() -> None:
    store = BlobStore()
    data = bytes(range(256)) * (PIECE // 256 * 2 + 3)
    blob_id = store.keep(data)
    pieces = _take_pieces(store, blob_id)
    assert len(pieces) == 3
    assert pieces[0].total_bytes == len(data)
    assert all(p.total_bytes == 0 for p in pieces[1:])
    assert b"".join(p.data for p in pieces) == data
    assert len(store) == 0
    assert store.held == 0


@pytest.mark.parametrize(
    ("pieces", "words"),
    [
        ([pb.BlobChunk(data=b"abcd", total_bytes=3)], "sent more"),
        ([pb.BlobChunk(data=b"ab", total_bytes=3)], "sent 2"),
        (
            [pb.BlobChunk(data=b"a", total_bytes=3), pb.BlobChunk(data=b"b", total_bytes=9)],
            "declares 9",
        ),
        ([], "no pieces"),
        ([pb.BlobChunk(data=b"", total_bytes=-1)], "negative"),
    ],
)
def test_a_malformed_upload_is_refused_and_holds_nothing(
    pieces: list[pb.BlobChunk], words: str
) -> None:
    store = BlobStore()
    with pytest.raises(InvalidArgumentError, match=words):
        _put(store, *pieces)
    assert store.held == 0
    assert len(store) == 0


def test_the_store_is_bounded_and_says_what_to_do() -> None:
    store = BlobStore(limit=10)
    store.keep(b"x" * 8)
    with pytest.raises(ResourceExhaustedError, match="retry when calls in flight end"):
        _put(store, pb.BlobChunk(data=b"abc", total_bytes=3))
    assert store.held == 8  # the refused upload reserved nothing


def test_untaken_blobs_expire() -> None:
    store = BlobStore(ttl=0.0)
    blob_id = store.keep(b"stale")
    store.sweep()
    assert len(store) == 0
    assert store.held == 0
    with pytest.raises(InvalidArgumentError, match="expired"):
        store.take(blob_id)
