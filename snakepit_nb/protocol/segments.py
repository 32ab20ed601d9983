"""Shared memory for large buffers between the kernel and its local workers: sealed memfds.

The sender writes every out-of-band buffer of a message into one anonymous memory file
(``memfd_create``), seals it (nobody can change it afterwards) and passes its file descriptor
over the unix socket with the message. The receiver maps it copy-on-write and gets writable
views, zero-copy: an array that arrives this way is a view of the mapping, which lives as long
as the array does.

Nothing is ever named in ``/dev/shm``, so nothing can be left behind: the memory belongs to the
open descriptors and mappings, and goes with the last of them, whether the call ended, failed,
was cancelled, or a process died.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import mmap
import os
import weakref
from collections.abc import Sequence
from typing import Any

__all__ = ["ALIGN", "Layout", "available", "map_segment", "write_segment"]

#: Buffers start at multiples of this (numpy and SIMD code like aligned data).
ALIGN = 64

#: ``(offset, length)`` of each buffer inside a segment, in order.
Layout = list[tuple[int, int]]

_SEALS = (
    getattr(fcntl, "F_SEAL_SEAL", 0)
    | getattr(fcntl, "F_SEAL_SHRINK", 0)
    | getattr(fcntl, "F_SEAL_GROW", 0)
    | getattr(fcntl, "F_SEAL_WRITE", 0)
)


def available() -> bool:
    """Whether this platform has memfds (Linux): else large buffers travel inside messages."""
    return hasattr(os, "memfd_create")


def write_segment(buffers: Sequence[Any], name: str = "snakepit") -> tuple[int, Layout]:
    """A sealed memfd holding ``buffers`` (objects with the buffer protocol); ``(fd, layout)``.

    The caller owns the descriptor (close it once it was sent).
    """
    layout: Layout = []
    offset = 0
    views = [_flat(b) for b in buffers]
    for view in views:
        layout.append((offset, view.nbytes))
        offset += -(-view.nbytes // ALIGN) * ALIGN
    fd = os.memfd_create(name, os.MFD_CLOEXEC | getattr(os, "MFD_ALLOW_SEALING", 0))
    try:
        os.ftruncate(fd, max(offset, 1))
        for view, (start, length) in zip(views, layout, strict=True):
            _pwrite_all(fd, view, start, length)
        if _SEALS:
            with contextlib.suppress(OSError):
                fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
    except BaseException:
        os.close(fd)
        raise
    return fd, layout


def _flat(buffer: Any) -> memoryview:
    raw = getattr(buffer, "raw", None)  # a pickle.PickleBuffer
    view = raw() if callable(raw) else memoryview(buffer)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def _pwrite_all(fd: int, view: memoryview, offset: int, length: int) -> None:
    done = 0
    while done < length:
        done += os.pwrite(fd, view[done:], offset + done)


def map_segment(fd: int, layout: Layout) -> list[memoryview]:
    """Writable (copy-on-write) views of the buffers in a received segment; closes ``fd``.

    The views keep the mapping alive; it is unmapped when the last object using it is gone.
    No descriptor stays open for it (``mmap.mmap`` would keep a duplicate per mapping, and a
    notebook holding thousands of arrays would run out of descriptors).
    """
    try:
        size = os.fstat(fd).st_size
        if not layout:
            return []
        end = max(start + length for start, length in layout)
        if end > size:
            raise ValueError(f"a shared segment of {size} bytes cannot hold {end} bytes of buffers")
        whole = _map_private(fd, size)
    finally:
        os.close(fd)
    return [whole[start : start + length] for start, length in layout]


def _libc() -> Any:
    global _LIBC
    if _LIBC is None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_long,
        ]
        libc.munmap.restype = ctypes.c_int
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        _LIBC = libc
    return _LIBC


_LIBC: Any = None
_MAP_FAILED = ctypes.c_void_p(-1).value


def _map_private(fd: int, size: int) -> memoryview:
    """``mmap(2)`` of ``fd`` (private, read-write), unmapped when the returned view's
    exporter is collected."""
    libc = _libc()
    address = libc.mmap(None, size, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE, fd, 0)
    if address is None or address == _MAP_FAILED:
        err = ctypes.get_errno()
        raise OSError(err, f"mapping a shared segment of {size} bytes failed: {os.strerror(err)}")
    block = (ctypes.c_char * size).from_address(address)
    weakref.finalize(block, libc.munmap, address, size)
    return memoryview(block).cast("B")
