"""The value codec: Python values <-> JSON bytes <-> ``google.protobuf.Any``.

Everything that crosses the wire as a value goes through here: tool arguments and results,
stream chunks, batched calls, session variables and tool error payloads.

The JSON is plain JSON for plain data (what the published Snakepit bridge and any other peer
expect) and *tagged objects* for what JSON lacks, ``{"$sp": "<tag>", ...}``:

==========  ==================================================================================
``float``   non-finite floats: ``{"$sp": "float", "v": "NaN" | "Infinity" | "-Infinity"}``
``bytes``   ``{"$sp": "bytes", "b64": "..."}``
``ndarray`` numpy arrays, exact with dtype: ``{"$sp": "ndarray", "dtype", "shape", "b64"}``
``dict``    dicts with non-str keys: ``{"$sp": "dict", "items": [[k, v], ...]}``
``map``     a user dict that itself has a ``"$sp"`` key: ``{"$sp": "map", "v": {...}}``
``int``     integers too long for a JSON number (> ~4000 digits): ``{"$sp": "int", "hex"}``
==========  ==================================================================================

Tuples travel as lists. Values nested deeper than ``max_depth`` containers (default 100) are
refused with :class:`~snakepit_nb.InvalidArgumentError`, never a ``RecursionError``. Nothing is
ever unpickled unless a caller passes ``allow_pickle=True`` for a peer it trusts.

numpy is optional: it is imported only when an array is encoded or decoded.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from google.protobuf.any_pb2 import Any as PbAny

from snakepit_nb._errors import InvalidArgumentError
from snakepit_nb.protocol._values import MAX_DEPTH, decode_json, encode_json
from snakepit_nb.protocol.arrays import (
    ndarray_from_buffer,
    numpy_module,
    tensor_from_published,
    tensor_to_published,
)
from snakepit_nb.protocol.chunks import (
    CHUNK_KIND_KEY,
    decode_chunk,
    decode_chunk_batch,
    encode_chunk,
    encode_chunk_batch,
)
from snakepit_nb.protocol.payloads import (
    error_info,
    error_payload,
    remote_error_from_info,
    remote_error_from_payload,
)

__all__ = [
    "BINARY_THRESHOLD",
    "CHUNK_KIND_KEY",
    "MAX_DEPTH",
    "TYPE_URL_PREFIX",
    "binary_parameter_metadata",
    "decode_any",
    "decode_any_with_binary",
    "decode_chunk",
    "decode_chunk_batch",
    "decode_json",
    "decode_params",
    "encode_any",
    "encode_any_with_binary",
    "encode_chunk",
    "encode_chunk_batch",
    "encode_json",
    "encode_params",
    "error_info",
    "error_payload",
    "infer_type_label",
    "remote_error_from_info",
    "remote_error_from_payload",
    "type_label",
]

TYPE_URL_PREFIX = "type.googleapis.com/snakepit."
#: Bytes values (and arrays) larger than this travel in the ``binary_*`` fields.
BINARY_THRESHOLD = 64 * 1024

_URL_NULL = TYPE_URL_PREFIX + "null"
_URL_BOOL = TYPE_URL_PREFIX + "boolean"
_URL_INT = TYPE_URL_PREFIX + "integer"
_URL_FLOAT = TYPE_URL_PREFIX + "float"
_URL_STRING = TYPE_URL_PREFIX + "string"
_URL_LIST = TYPE_URL_PREFIX + "list"
_URL_MAP = TYPE_URL_PREFIX + "map"
_URL_BYTES = TYPE_URL_PREFIX + "bytes"
_URL_TENSOR = TYPE_URL_PREFIX + "tensor"

_NONFINITE_JSON = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}
_BYTES_LIKE = (bytes, bytearray, memoryview)


# ---------------------------------------------------------------------------------------------
# Any


def type_label(type_url: str) -> str:
    """The type hint of an ``Any.type_url``: its last ``/`` segment, then its last ``.`` part.

    ``"type.googleapis.com/snakepit.float"`` -> ``"float"``;
    ``"type.googleapis.com/google.protobuf.StringValue"`` -> ``"StringValue"``.
    """
    return type_url.rpartition("/")[2].rpartition(".")[2]


def _float_json(value: float) -> bytes:
    if math.isnan(value):
        return b'"NaN"'
    if value in (float("inf"), float("-inf")):
        return b'"Infinity"' if value > 0 else b'"-Infinity"'
    return repr(value).encode()


def encode_any(value: object, *, type_hint: str | None = None) -> PbAny:
    """Encode ``value`` as an ``Any`` labelled ``type.googleapis.com/snakepit.<type>``.

    The type is inferred (null, boolean, integer, float, string, list, map, bytes, tensor)
    unless ``type_hint`` names it (a variable's declared type: ``choice``, ``embedding``...).
    A top-level NaN or infinity travels as the string ``"NaN"``/``"Infinity"``/``"-Infinity"``
    under ``float`` (the published convention); nested ones use the tagged form.
    """
    cls = type(value)
    # Fast paths for the common scalars: no JSON machinery at all.
    if type_hint is None:
        if isinstance(value, int) and cls is int:
            if -(10**18) < value < 10**18:
                return PbAny(type_url=_URL_INT, value=b"%d" % value)
        elif cls is str:
            return PbAny(type_url=_URL_STRING, value=encode_json(value))
        elif cls is float:
            return PbAny(type_url=_URL_FLOAT, value=_float_json(value))  # type: ignore[arg-type]
        elif cls is bool:
            return PbAny(type_url=_URL_BOOL, value=b"true" if value else b"false")
        elif value is None:
            return PbAny(type_url=_URL_NULL, value=b"null")
        elif cls is dict:
            return PbAny(type_url=_URL_MAP, value=encode_json(value))
        elif cls is list or cls is tuple:
            return PbAny(type_url=_URL_LIST, value=encode_json(value))
    label = type_hint or _infer_label(value)
    url = TYPE_URL_PREFIX + label
    if isinstance(value, float) and not isinstance(value, bool):
        return PbAny(type_url=url, value=_float_json(float(value)))
    if type_hint == "embedding" and _is_ndarray(value):
        # The published convention for embeddings is a plain list of numbers.
        return PbAny(type_url=url, value=encode_json(value.tolist()))  # type: ignore[attr-defined]
    if label == "tensor" and _is_ndarray(value):
        published = tensor_to_published(value)
        if published is not None:
            return PbAny(type_url=url, value=encode_json(published))
    if _is_numpy_scalar(value):
        item = value.item()  # type: ignore[attr-defined]
        if isinstance(item, float):
            return PbAny(type_url=url, value=_float_json(item))
        return PbAny(type_url=url, value=encode_json(item))
    return PbAny(type_url=url, value=encode_json(value))


def infer_type_label(value: object) -> str | None:
    """The type name of a value on the wire (``null``, ``boolean``, ``integer``, ``float``,
    ``string``, ``bytes``, ``list``, ``map``, ``tensor``), None for a type JSON cannot carry.

    The one ladder of value to type: the codec labels values with it, and session variables
    defined without a type take theirs from it.
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, _BYTES_LIKE):
        return "bytes"
    if isinstance(value, list | tuple):
        return "list"
    if isinstance(value, Mapping):
        return "map"
    if _is_numpy_scalar(value):
        return infer_type_label(value.item())  # type: ignore[attr-defined]
    ndim = getattr(value, "ndim", None)
    if _is_ndarray(value) or (isinstance(ndim, int) and hasattr(value, "tolist")):
        return "tensor"
    return None


def _infer_label(value: object) -> str:
    # Not a type we know: encode_json raises a clear error for it.
    return infer_type_label(value) or "map"


def _is_ndarray(value: object) -> bool:
    return type(value).__module__ == "numpy" and type(value).__name__ == "ndarray"


def _is_numpy_scalar(value: object) -> bool:
    if type(value).__module__ != "numpy":
        return False
    np = numpy_module()
    return isinstance(value, np.generic)


def decode_any(any_value: PbAny) -> object:
    """Decode an ``Any`` from our peers or the published bridge.

    Accepts our labels, ``google.protobuf.StringValue``/``google.protobuf.Value`` with JSON
    inside, the published quirks (an integer sent as ``42.0`` under ``float`` stays the float
    ``42.0``; under ``integer`` it becomes ``42``; ``"None"`` under ``string`` stays a string),
    and an empty ``Any`` (``None``). Values whose label ends in ``.binary`` need their binary
    field: use :func:`decode_any_with_binary`.
    """
    url = any_value.type_url
    data = any_value.value
    if url.endswith(".binary"):
        raise InvalidArgumentError(
            f"the value labelled {url!r} keeps its data in a binary field; decode it with "
            "decode_any_with_binary(any, binary)"
        )
    if not data:
        return None
    # Fast paths for what our own encoder produces most.
    if url == _URL_INT:
        if data.isdigit() and len(data) < 19:
            return int(data)
    elif (
        url == _URL_STRING
        and data[:1] == b'"'
        and data[-1:] == b'"'
        and data.count(b'"') == 2
        and b"\\" not in data
        and data.isascii()
    ):
        return data[1:-1].decode("ascii")
    label = type_label(url)
    try:
        value = decode_json(data)
    except InvalidArgumentError:
        if label in ("string", "StringValue"):
            text = _maybe_text(data)
            if text is not None:
                return text
        raise
    return _apply_label(label, value)


def _maybe_text(data: bytes) -> str | None:
    # An odd peer may put a raw string (or a real serialized StringValue) under a string label.
    try:
        from google.protobuf.wrappers_pb2 import StringValue

        wrapped = StringValue.FromString(data)
        if wrapped.value and wrapped.SerializeToString() == data:
            return wrapped.value
    except Exception:
        pass
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _apply_label(label: str, value: object) -> object:
    if label == "float":
        if isinstance(value, str):
            special = _NONFINITE_JSON.get(value)
            if special is not None:
                return special
            try:
                return float(value)
            except ValueError:
                return value
        if isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        return value
    if label == "integer":
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                return value
        return value
    if label == "null":
        return None
    if label == "tensor":
        return tensor_from_published(value)
    return value


def encode_any_with_binary(
    value: object, *, type_hint: str | None = None, threshold: int = BINARY_THRESHOLD
) -> tuple[PbAny, bytes]:
    """Like :func:`encode_any`, but large bytes and numpy arrays go to a binary field.

    Returns ``(any, binary)``; ``binary`` is ``b""`` when the value fit in the ``Any``. A
    binary value's ``Any`` is labelled ``snakepit.<type>.binary`` and holds JSON metadata
    (``binary_format`` ``raw`` or ``ndarray``, dtype and shape). Put ``binary`` in
    ``binary_result`` / ``binary_value``.
    """
    if isinstance(value, _BYTES_LIKE):
        raw = bytes(value)
        if len(raw) > threshold:
            meta = b'{"binary_format":"raw","type":"bytes"}'
            return PbAny(type_url=_URL_BYTES + ".binary", value=meta), raw
    elif _is_ndarray(value) and value.nbytes > threshold:  # type: ignore[attr-defined]
        array: Any = value
        if not array.dtype.hasobject and array.dtype.fields is None:
            label = type_hint or "tensor"
            meta = encode_json(
                {
                    "binary_format": "ndarray",
                    "type": label,
                    "dtype": array.dtype.str,
                    "shape": list(array.shape),
                }
            )
            return PbAny(type_url=TYPE_URL_PREFIX + label + ".binary", value=meta), array.tobytes()
    return encode_any(value, type_hint=type_hint), b""


def decode_any_with_binary(
    any_value: PbAny, binary: bytes, *, allow_pickle: bool = False
) -> object:
    """Decode a value that may keep its data in a binary field (``binary_result`` etc.).

    ``<type>.binary`` labels carry JSON metadata in the ``Any`` and the data in ``binary``:
    ``binary_format`` ``raw`` (bytes), ``ndarray`` (ours: dtype and shape in the metadata) or
    ``pickle`` (the published bridge's tensors), which is refused unless ``allow_pickle=True``
    was passed for a peer you trust. An empty ``Any`` next to non-empty binary data decodes to
    the raw bytes.
    """
    url = any_value.type_url
    if not url.endswith(".binary"):
        if not url and not any_value.value and binary:
            return bytes(binary)
        return decode_any(any_value)
    meta = decode_json(any_value.value) if any_value.value else {}
    if not isinstance(meta, dict):
        raise InvalidArgumentError(
            f"the metadata of a {url!r} value must be a JSON object, got {type(meta).__name__}"
        )
    label = type_label(url[: -len(".binary")])
    fmt = meta.get("binary_format", "raw")
    if fmt == "raw":
        return bytes(binary)
    if fmt == "ndarray":
        return ndarray_from_buffer(binary, meta.get("dtype"), meta.get("shape"))
    if fmt == "pickle":
        data = _unpickle(binary, allow_pickle, what=f"the {label!r} value")
        if label == "tensor" and isinstance(data, list):
            return tensor_from_published({"shape": meta.get("shape", []), "data": data})
        return data
    raise InvalidArgumentError(
        f"unknown binary_format {fmt!r} for a {url!r} value; expected raw, ndarray or pickle"
    )


def _unpickle(data: bytes, allow_pickle: bool, *, what: str) -> object:
    if not allow_pickle:
        raise InvalidArgumentError(
            f"{what} arrived pickled and unpickling is off (it can run arbitrary code); pass "
            "allow_pickle=True only for a peer you trust, or send raw bytes or JSON"
        )
    import pickle

    return pickle.loads(data)


# ---------------------------------------------------------------------------------------------
# Tool parameters


def encode_params(
    kwargs: Mapping[str, object], *, threshold: int = BINARY_THRESHOLD
) -> tuple[dict[str, PbAny], dict[str, bytes]]:
    """Encode call arguments into ``(parameters, binary_parameters)``.

    Bytes values larger than ``threshold`` (64 KiB) go to ``binary_parameters`` raw; add
    :func:`binary_parameter_metadata` of them to the request metadata (``binary_format:<name>
    = raw``) so any peer knows their format.
    """
    params: dict[str, PbAny] = {}
    binary: dict[str, bytes] = {}
    for name, value in kwargs.items():
        if isinstance(value, _BYTES_LIKE) and len(value) > threshold:
            binary[name] = bytes(value)
        else:
            params[name] = encode_any(value)
    return params, binary


def binary_parameter_metadata(binary_parameters: Mapping[str, bytes]) -> dict[str, str]:
    """The request metadata naming the format of each binary parameter (always ``raw``)."""
    return {f"binary_format:{name}": "raw" for name in binary_parameters}


def decode_params(
    parameters: Mapping[str, PbAny],
    binary_parameters: Mapping[str, bytes] | None = None,
    metadata: Mapping[str, str] | None = None,
    *,
    allow_pickle: bool = False,
) -> dict[str, object]:
    """Decode a request's ``parameters`` and ``binary_parameters`` into keyword arguments.

    A binary parameter is raw bytes unless metadata ``binary_format:<name>`` says otherwise;
    ``pickle`` is refused unless ``allow_pickle=True``.
    """
    out: dict[str, object] = {}
    for name, value in parameters.items():
        try:
            out[name] = decode_any(value)
        except InvalidArgumentError as exc:
            raise InvalidArgumentError(f"parameter {name!r}: {exc}") from exc
    if binary_parameters:
        meta = metadata or {}
        for name, raw in binary_parameters.items():
            fmt = meta.get(f"binary_format:{name}", "raw")
            if fmt == "raw":
                out[name] = bytes(raw)
            elif fmt == "pickle":
                out[name] = _unpickle(raw, allow_pickle, what=f"parameter {name!r}")
            else:
                raise InvalidArgumentError(
                    f"parameter {name!r} has binary_format {fmt!r}; send it raw (the default) "
                    "or as JSON in parameters"
                )
    return out
