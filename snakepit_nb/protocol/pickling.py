"""Python values between the kernel and our own workers: pickle protocol 5, buffers out of band.

Only for peers that proved they are ours (the runtime token on a private channel): unpickling
runs code, so a value from anyone else is never unpickled. The kernel pickles only for its own
workers with ``auth`` on; a worker unpickles only when it was started with the runtime token
(every RPC and lane connection to it then carries that token).

:func:`dumps` tries the C pickler first (a fraction of a microsecond for small values) and
falls back to cloudpickle when the value holds something defined in ``__main__`` (a notebook's
classes, functions, lambdas and closures travel by value), or something plain pickle cannot
reach (a lambda, a local function). Importable functions and classes travel by reference.

Large buffers (numpy arrays, pandas columns, ``bytearray``, and top-level ``bytes`` or
``memoryview`` values) go *out of band*: :func:`dumps` returns them apart from the pickle
stream, so the transport can put them in shared memory (local workers) or send them raw (remote
ones) instead of copying them into the stream.
"""

from __future__ import annotations

import hashlib
import io
import pickle
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from snakepit_nb._errors import InvalidArgumentError

__all__ = [
    "FUNCTION_TOOL",
    "OOB_THRESHOLD",
    "FunctionRef",
    "Pickled",
    "dumps",
    "dumps_function",
    "loads",
    "pickle_refused",
    "wrap_call",
    "wrap_large",
]

#: ``tool_name`` of a gRPC call that runs a Python function shipped in its ``pickled`` field.
FUNCTION_TOOL = "snakepit_nb.function"

#: Buffers at least this large travel out of band (shared memory or raw frames).
OOB_THRESHOLD = 64 * 1024

_MAIN_MARK = b"__main__"


class Pickled:
    """A pickle stream and its out-of-band buffers (in order)."""

    __slots__ = ("buffers", "data")

    def __init__(self, data: bytes, buffers: list[pickle.PickleBuffer]) -> None:
        self.data = data
        self.buffers = buffers

    @property
    def nbytes(self) -> int:
        return len(self.data) + sum(b.raw().nbytes for b in self.buffers)


def _rebuild_bytes(buffer: memoryview) -> bytes:
    return bytes(buffer)


def _rebuild_bytearray(buffer: memoryview) -> bytearray:
    return bytearray(buffer)


class _LargeBytes:
    """A big ``bytes``/``memoryview`` value, pickled through a PickleBuffer (out of band).

    The C pickler writes ``bytes`` into the stream itself; wrapping the top-level ones lets their
    contents skip the stream (the receiver still makes its own ``bytes`` of them: one copy).
    """

    __slots__ = ("kind", "value")

    def __init__(self, value: bytes | memoryview, kind: str) -> None:
        self.value = value
        self.kind = kind

    def __reduce_ex__(self, protocol: Any) -> tuple[Callable[[memoryview], object], tuple[Any]]:
        rebuild = _rebuild_bytes if self.kind == "bytes" else _rebuild_bytearray
        return rebuild, (pickle.PickleBuffer(self.value),)


def _wrap(value: object) -> object:
    cls = type(value)
    if cls is bytes and len(value) >= OOB_THRESHOLD:  # type: ignore[arg-type]
        return _LargeBytes(value, "bytes")  # type: ignore[arg-type]
    if cls is memoryview and value.nbytes >= OOB_THRESHOLD:  # type: ignore[attr-defined]
        return _LargeBytes(value, "bytes")  # type: ignore[arg-type]
    return value


def wrap_large(values: Sequence[object]) -> list[object]:
    """``values`` with their large ``bytes``/``memoryview`` items made out-of-band-able."""
    return [_wrap(v) for v in values]


def wrap_call(
    args: Sequence[object], kwargs: Mapping[str, object]
) -> tuple[list[object], dict[str, object]]:
    """A call's positional and keyword arguments, each wrapped as by :func:`wrap_large`."""
    return wrap_large(args), {name: _wrap(value) for name, value in kwargs.items()}


def dumps(value: object, *, what: str = "the value", oob: bool = True) -> Pickled:
    """Pickle ``value`` (protocol 5); buffers of :data:`OOB_THRESHOLD` bytes or more out of band.

    ``oob=False`` keeps every buffer in the stream. Raises InvalidArgumentError naming
    ``what`` and the type when it cannot be pickled.
    """
    buffers: list[pickle.PickleBuffer] = []

    def keep(buffer: pickle.PickleBuffer) -> bool:
        # False: out of band. Small buffers stay in the stream (cheaper than a segment).
        if oob and buffer.raw().nbytes >= OOB_THRESHOLD:
            buffers.append(buffer)
            return False
        return True

    try:
        data = pickle.dumps(value, protocol=5, buffer_callback=keep)
        if _MAIN_MARK not in data:
            return Pickled(data, buffers)
    except (pickle.PicklingError, AttributeError, TypeError):
        pass  # a lambda, a local function...: cloudpickle knows how
    except RecursionError:
        raise _too_deep(what, value) from None
    buffers.clear()
    try:
        import cloudpickle

        stream = io.BytesIO()
        cloudpickle.Pickler(stream, protocol=5, buffer_callback=keep).dump(value)
    except RecursionError:
        raise _too_deep(what, value) from None
    except Exception as exc:
        raise InvalidArgumentError(
            f"{what} ({_type_name(value)}) cannot be pickled ({type(exc).__name__}: {exc}); "
            "pass plain data (numbers, strings, lists, dicts, arrays) or an object that pickles"
        ) from None
    return Pickled(stream.getvalue(), buffers)


def _too_deep(what: str, value: object) -> InvalidArgumentError:
    return InvalidArgumentError(
        f"{what} ({_type_name(value)}) is nested too deeply to be pickled; flatten it (or "
        "send it as a file) first"
    )


def loads(
    data: bytes | memoryview, buffers: Sequence[object] = (), *, what: str = "a value"
) -> Any:
    """Unpickle what one of our own peers sent (never call it for anyone else's data)."""
    try:
        return pickle.loads(data, buffers=buffers)
    except Exception as exc:
        raise InvalidArgumentError(
            f"{what} could not be unpickled here ({type(exc).__name__}: {exc}); the kernel and "
            "the workers must see the same modules (check the workers' python and sys.path)"
        ) from exc


def pickle_refused(what: str, value: object, *, why: str) -> InvalidArgumentError:
    """The error for a value only our own workers can take, headed for a peer that is not."""
    return InvalidArgumentError(
        f"{what} is a {_type_name(value)}, which travels only pickled, and only between the "
        f"kernel and its own authenticated workers; {why}. Convert it to JSON-friendly data "
        "(numbers, strings, lists, dicts) first"
    )


def _type_name(value: object) -> str:
    cls = type(value)
    return f"{cls.__module__}.{cls.__qualname__}" if cls.__module__ != "builtins" else cls.__name__


class FunctionRef:
    """A Python function shipped from the kernel: its digest, and its pickle the first time."""

    __slots__ = ("blob", "digest", "name")

    def __init__(self, digest: str, name: str, blob: bytes | None) -> None:
        self.digest = digest
        self.name = name
        self.blob = blob

    def __reduce__(self) -> tuple[type[FunctionRef], tuple[str, str, bytes | None]]:
        return FunctionRef, (self.digest, self.name, self.blob)


def dumps_function(func: Callable[..., Any]) -> FunctionRef:
    """A :class:`FunctionRef` for ``func`` with its pickle (by value when it lives in
    ``__main__``, by reference when importable), named by a digest of that pickle."""
    name = getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or repr(func)
    # One self-contained pickle (the worker caches functions by digest).
    message = dumps(func, what=f"function {name!r}", oob=False)
    digest = hashlib.blake2b(message.data, digest_size=16).hexdigest()
    return FunctionRef(digest, str(name), message.data)
