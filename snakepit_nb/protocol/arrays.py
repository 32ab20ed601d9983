"""numpy arrays on the wire: imported lazily, rebuilt exactly, never from pickles.

numpy is optional for snakepit_nb: nothing here imports it until an array is actually encoded
or decoded, and a missing numpy gives a clear error only then.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from snakepit_nb._errors import InvalidArgumentError

__all__ = ["ndarray_from_buffer", "numpy_module", "tensor_from_published", "tensor_to_published"]

_numpy: ModuleType | None = None


def numpy_module() -> ModuleType:
    """Import numpy on first use (it is optional), with a clear error when it is missing."""
    global _numpy
    if _numpy is None:
        try:
            import numpy
        except ImportError as exc:  # pragma: no cover - numpy is installed in the test env
            raise InvalidArgumentError(
                "a numpy array was sent but numpy is not installed here; install it with "
                "`pip install numpy` or send lists instead"
            ) from exc
        _numpy = numpy
    return _numpy


def ndarray_from_buffer(raw: bytes, dtype: Any, shape: Any) -> Any:
    """A writable numpy array of ``dtype`` and ``shape`` over a copy of ``raw``."""
    np = numpy_module()
    try:
        dt = np.dtype(dtype)
        if dt.hasobject:
            raise ValueError(f"dtype {dtype!r} holds Python objects")
        dims = tuple(int(n) for n in shape)
        return np.frombuffer(bytearray(raw), dtype=dt).reshape(dims)
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(
            f"cannot rebuild a numpy array (dtype {dtype!r}, shape {shape!r}) from "
            f"{len(raw)} bytes: {exc}"
        ) from exc


def tensor_to_published(array: Any) -> dict[str, Any] | None:
    """The published ``tensor`` form ``{"shape", "data", "dtype"}``, when it is exact.

    ``None`` for arrays it cannot carry exactly (non-finite floats, complex, strings...):
    those travel as the ``ndarray`` tag instead.
    """
    np = numpy_module()
    if array.dtype.kind not in "biuf":
        return None
    if array.dtype.kind == "f" and not bool(np.isfinite(array).all()):
        return None
    return {"shape": list(array.shape), "data": array.tolist(), "dtype": array.dtype.str}


def tensor_from_published(value: Any) -> Any:
    """Rebuild a numpy array from ``{"shape", "data"[, "dtype"]}``; other values unchanged."""
    if type(value) is not dict or "shape" not in value or "data" not in value:
        return value
    try:
        np = numpy_module()
    except InvalidArgumentError:
        return value  # no numpy here: the plain dict is the best we can do
    try:
        dtype = value.get("dtype")
        dt = np.dtype(dtype) if dtype is not None else None
        if dt is not None and dt.hasobject:
            raise ValueError(f"dtype {dtype!r} holds Python objects")
        return np.array(value["data"], dtype=dt).reshape(tuple(int(n) for n in value["shape"]))
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"malformed tensor value: {exc}") from exc
