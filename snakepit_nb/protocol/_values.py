"""The codec's JSON: plain JSON for plain data, ``{"$sp": tag, ...}`` objects for the rest.

Public names are re-exported by :mod:`snakepit_nb.protocol.codec`; see its docstring for the
tags. This module holds the engine: a fast path that is the C JSON encoder/decoder alone, and a
tag walk used only when the fast path cannot represent a value exactly.
"""

from __future__ import annotations

import base64
import enum
import json
import math
import re
from types import ModuleType
from typing import Any

from snakepit_nb._errors import InvalidArgumentError
from snakepit_nb.protocol.arrays import ndarray_from_buffer, numpy_module

#: Default maximum nesting of containers (lists, tuples, dicts) in a value.
MAX_DEPTH = 100

TAG = "$sp"
_TAG_JSON = '"$sp"'
_TAG_JSON_B = b'"$sp"'

_ENCODER = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, separators=(",", ":"), check_circular=False
)
# Used when a str holds lone surrogates (not encodable as UTF-8): \\u escapes round-trip them.
_ASCII_ENCODER = json.JSONEncoder(
    ensure_ascii=True, allow_nan=False, separators=(",", ":"), check_circular=False
)
_DECODE = json.JSONDecoder().decode

# Python refuses int <-> str conversions beyond 4300 digits (CVE-2020-10735); such ints are
# sent as hex in a tag instead. 14_000 bits is about 4200 decimal digits.
_MAX_JSON_INT_BITS = 14_000

_QUOTED_RE = re.compile(rb'"[^"]*"')
_NON_STRUCTURE = bytes(b for b in range(256) if b not in b'[]{}"')
_BRACES_TO_BRACKETS = bytes.maketrans(b"{}", b"[]")

_NONFINITE = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}

# orjson, when installed, is the fast path (5-10x the stdlib's speed); the results are the same
# either way (the tests run both engines). Subclasses, dataclasses and datetimes are passed
# through to the stdlib path so they are treated exactly as without orjson.
_orjson: ModuleType | None
try:
    import orjson as _orjson
except ImportError:  # pragma: no cover - orjson is installed in the dev environment
    _orjson = None
_ORJSON_OPTIONS = 0
if _orjson is not None:
    _ORJSON_OPTIONS = (
        _orjson.OPT_PASSTHROUGH_SUBCLASS
        | _orjson.OPT_PASSTHROUGH_DATACLASS
        | _orjson.OPT_PASSTHROUGH_DATETIME
    )
_DIGITS_TO_ZERO = bytes.maketrans(b"123456789", b"000000000")
_LONG_DIGIT_RUN = b"0" * 19


def _too_deep_error(max_depth: int) -> InvalidArgumentError:
    return InvalidArgumentError(
        f"value is nested too deeply (max depth {max_depth}) or contains itself; flatten it "
        "(or send it as bytes) before passing it"
    )


def json_too_deep(data: bytes, limit: int) -> bool:
    """Whether the JSON text ``data`` nests arrays/objects deeper than ``limit``.

    Cheap and exact, with C-level byte operations only: escapes, string contents and everything
    but brackets are deleted (short texts stop there), then innermost bracket pairs are peeled
    once per level (one ``bytes.replace`` each).
    """
    if len(data) <= limit:
        return False  # too short to hold more than `limit` brackets
    text = bytes(data)
    if b"\\" in text:
        # Escaped backslashes first, then escaped quotes: what is left are string delimiters.
        text = text.replace(b"\\\\", b"").replace(b'\\"', b"")
    text = text.translate(_BRACES_TO_BRACKETS, _NON_STRUCTURE)
    if len(text) <= limit:
        return False
    if b'"' in text:
        # Removing adjacent quotes keeps every bracket on its side of the string boundaries.
        text = text.replace(b'""', b"")
        if b'"' in text:
            text = _QUOTED_RE.sub(b"", text)
        if len(text) <= limit:
            return False
    for _ in range(limit):
        if not text:
            return False
        peeled = text.replace(b"[]", b"")
        if len(peeled) == len(text):
            return False  # unbalanced: the JSON decoder reports the syntax error
        text = peeled
    return bool(text)


# ---------------------------------------------------------------------------------------------
# Encoding


def encode_json(value: object, *, max_depth: int = MAX_DEPTH) -> bytes:
    """Encode ``value`` as the codec's JSON (UTF-8 bytes).

    Raises :class:`~snakepit_nb.InvalidArgumentError` for unsupported types (naming the type
    and where it sits) and for values nested deeper than ``max_depth`` containers.
    """
    fast = _orjson
    if fast is not None:
        try:
            data: bytes = fast.dumps(value, option=_ORJSON_OPTIONS)
        except TypeError:
            pass  # not plain data (or too deep for orjson): the stdlib path decides
        else:
            if json_too_deep(data, max_depth):
                raise _too_deep_error(max_depth)
            # orjson writes NaN and infinities as null; the stdlib encoder refuses them.
            if _TAG_JSON_B in data or (b"null" in data and not _all_finite(value)):
                return _encode_tagged(value, max_depth)
            return data
    try:
        text = _ENCODER.encode(value)
    except (TypeError, ValueError, RecursionError):
        return _encode_tagged(value, max_depth)
    try:
        data = text.encode()
    except UnicodeEncodeError:
        data = _ASCII_ENCODER.encode(value).encode()
    if json_too_deep(data, max_depth):
        raise _too_deep_error(max_depth)
    if _TAG_JSON in text or ("{" in text and not _plain_keys(value)):
        return _encode_tagged(value, max_depth)
    return data


def _all_finite(value: object) -> bool:
    try:
        _ENCODER.encode(value)
    except (TypeError, ValueError, RecursionError):
        return False
    return True


def _plain_keys(value: Any) -> bool:
    """Whether every dict inside ``value`` has only str keys (json would stringify others).

    Only called on values the depth check has passed, so the recursion is bounded.
    """
    cls = type(value)
    if cls is dict:
        for key in value:
            if type(key) is not str:
                return False
        items = value.values()
    elif cls is list or cls is tuple:
        items = value
    elif isinstance(value, dict):
        if not all(type(key) is str for key in value):
            return False
        items = value.values()
    elif isinstance(value, list | tuple):
        items = value
    else:
        return True
    for item in items:
        kind = type(item)
        if (
            kind is not str
            and kind is not int
            and kind is not float
            and item is not None
            and not _plain_keys(item)
        ):
            return False
    return True


class _PathError(Exception):
    """An unsupported value; ``path`` is filled in while unwinding, without cost on success."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what
        self.path: list[str] = []


def _encode_tagged(value: object, max_depth: int) -> bytes:
    try:
        tree = _tag(value, 0, max_depth)
    except _PathError as err:
        where = "".join(reversed(err.path))
        at = f"value at {where}" if where else "value"
        raise InvalidArgumentError(f"{at} {err.what}") from None
    text = _ENCODER.encode(tree)
    try:
        return text.encode()
    except UnicodeEncodeError:
        return _ASCII_ENCODER.encode(tree).encode()


def _nonfinite_tag(value: float) -> dict[str, str]:
    if math.isnan(value):
        return {TAG: "float", "v": "NaN"}
    return {TAG: "float", "v": "Infinity" if value > 0 else "-Infinity"}


def _tag(value: Any, depth: int, max_depth: int) -> Any:
    cls = type(value)
    if cls is str or cls is bool or value is None:
        return value
    if cls is int:
        if value.bit_length() > _MAX_JSON_INT_BITS:
            return {TAG: "int", "hex": hex(value)}
        return value
    if cls is float:
        if value - value != 0.0:  # NaN or +-inf
            return _nonfinite_tag(value)
        return value
    if cls is dict or cls is list or cls is tuple:
        return _tag_container(value, depth + 1, max_depth)
    if cls is bytes or cls is bytearray or cls is memoryview:
        return {TAG: "bytes", "b64": base64.b64encode(value).decode("ascii")}
    if cls.__module__ == "numpy":
        return _tag_numpy(value, depth, max_depth)
    # Subclasses of the builtins (IntEnum, str enums, OrderedDict, namedtuple...) travel as
    # their base type, like the stdlib json module sends them; other enums as their value and
    # UUIDs as text, like orjson sends them.
    if isinstance(value, enum.Enum) and not isinstance(value, int | float | str):
        return _tag(value.value, depth, max_depth)
    if cls.__name__ == "UUID" and cls.__module__ == "uuid":
        return str(value)
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return _tag(int(value), depth, max_depth)
    if isinstance(value, float):
        return _tag(float(value), depth, max_depth)
    if isinstance(value, str):
        return str.__str__(value)  # the text itself, not an enum's "Name.MEMBER"
    if isinstance(value, dict | list | tuple):
        return _tag_container(value, depth + 1, max_depth)
    hint = _REMEDY.get(cls.__name__, "convert it to JSON-friendly data first")
    raise _PathError(f"is a {cls.__module__}.{cls.__qualname__}; {hint}".replace("builtins.", ""))


_REMEDY = {
    "set": "send a list instead",
    "frozenset": "send a list instead",
    "complex": "send [real, imag] instead",
    "datetime": "send value.isoformat() instead",
    "date": "send value.isoformat() instead",
    "Decimal": "send str(value) or float(value) instead",
}


def _tag_container(value: Any, depth: int, max_depth: int) -> Any:
    if depth > max_depth:
        raise _too_deep_error(max_depth)
    if isinstance(value, dict):
        if all(type(key) is str for key in value):
            out = {}
            for key, item in value.items():
                try:
                    out[key] = _tag(item, depth, max_depth)
                except _PathError as err:
                    err.path.append(f"[{key!r}]")
                    raise
            return {TAG: "map", "v": out} if TAG in value else out
        pairs = []
        for key, item in value.items():
            try:
                pairs.append([_tag(key, depth, max_depth), _tag(item, depth, max_depth)])
            except _PathError as err:
                err.path.append(f"[{key!r}]")
                raise
        return {TAG: "dict", "items": pairs}
    out_list = []
    for index, item in enumerate(value):
        try:
            out_list.append(_tag(item, depth, max_depth))
        except _PathError as err:
            err.path.append(f"[{index}]")
            raise
    return out_list


def _tag_numpy(value: Any, depth: int, max_depth: int) -> Any:
    np = numpy_module()
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject or value.dtype.fields is not None:
            raise _PathError(
                f"is a numpy array of dtype {value.dtype}; only plain numeric, bool, str and "
                "datetime dtypes travel as arrays, send value.tolist() instead"
            )
        return {
            TAG: "ndarray",
            "dtype": value.dtype.str,
            "shape": list(value.shape),
            # tobytes() is C order whatever the layout (Fortran, strided views).
            "b64": base64.b64encode(value.tobytes()).decode("ascii"),
        }
    if isinstance(value, np.generic):
        return _tag(value.item(), depth, max_depth)
    raise _PathError(f"is a numpy {type(value).__name__}; convert it to an array or a list first")


# ---------------------------------------------------------------------------------------------
# Decoding


def decode_json(data: bytes | bytearray | memoryview | str, *, max_depth: int = MAX_DEPTH) -> Any:
    """Decode the codec's JSON (tags included) into Python values.

    Raises :class:`~snakepit_nb.InvalidArgumentError` for text that is not JSON, for unknown or
    malformed tags, and for values nested deeper than ``max_depth`` containers.
    """
    if isinstance(data, str):
        raw = data.encode("utf-8", "surrogatepass")
    elif type(data) is bytes:
        raw = data
    else:
        raw = bytes(data)
    if _TAG_JSON_B not in raw:
        if json_too_deep(raw, max_depth):
            raise _too_deep_error(max_depth)
        return _loads(raw, max_depth)
    # A tag adds at most 3 JSON levels per value level (the "dict" tag: object, items, pair).
    if json_too_deep(raw, 3 * max_depth + 3):
        raise _too_deep_error(max_depth)
    return _untag(_loads(raw, max_depth), 0, max_depth)


def _loads(raw: bytes, max_depth: int) -> Any:
    fast = _orjson
    # orjson turns integers beyond 64 bits into floats; leave texts with long digit runs to the
    # stdlib decoder (19 digits in a row: a translate and a find, both C loops).
    if fast is not None and (
        len(raw) < len(_LONG_DIGIT_RUN) or _LONG_DIGIT_RUN not in raw.translate(_DIGITS_TO_ZERO)
    ):
        try:
            return fast.loads(raw)
        except ValueError:
            pass  # NaN literals, lone surrogates, syntax errors: the stdlib decides and words it
    try:
        return _DECODE(raw.decode("utf-8", "surrogatepass"))
    except RecursionError:
        raise _too_deep_error(max_depth) from None
    except (ValueError, UnicodeDecodeError) as exc:
        preview = raw[:60].decode("utf-8", "replace")
        raise InvalidArgumentError(
            f"value is not valid JSON ({exc}); it starts with {preview!r}"
        ) from None


def _untag(value: Any, depth: int, max_depth: int) -> Any:
    cls = type(value)
    if cls is list:
        depth += 1
        if depth > max_depth:
            raise _too_deep_error(max_depth)
        return [_untag(item, depth, max_depth) for item in value]
    if cls is not dict:
        return value
    tag = value.get(TAG)
    if tag is None:
        depth += 1
        if depth > max_depth:
            raise _too_deep_error(max_depth)
        return {key: _untag(item, depth, max_depth) for key, item in value.items()}
    try:
        return _decode_tag(tag, value, depth, max_depth)
    except InvalidArgumentError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InvalidArgumentError(f"malformed {tag!r} value in the codec's JSON: {exc}") from exc


def _decode_tag(tag: Any, value: dict[str, Any], depth: int, max_depth: int) -> Any:
    if tag == "float":
        return _NONFINITE[value["v"]]
    if tag == "bytes":
        return base64.b64decode(value["b64"], validate=True)
    if tag == "map":
        inner = value["v"]
        if type(inner) is not dict:
            raise TypeError("'v' must be an object")
        depth += 1
        if depth > max_depth:
            raise _too_deep_error(max_depth)
        return {key: _untag(item, depth, max_depth) for key, item in inner.items()}
    if tag == "dict":
        depth += 1
        if depth > max_depth:
            raise _too_deep_error(max_depth)
        out = {}
        for key, item in value["items"]:
            out[_hashable(_untag(key, depth, max_depth))] = _untag(item, depth, max_depth)
        return out
    if tag == "ndarray":
        raw = base64.b64decode(value["b64"], validate=True)
        return ndarray_from_buffer(raw, value["dtype"], value["shape"])
    if tag == "int":
        return int(value["hex"], 16)
    raise InvalidArgumentError(
        f"unknown tag {tag!r} in the codec's JSON; the peer is newer than this snakepit_nb or "
        "sent a dict with a '$sp' key without wrapping it"
    )


def _hashable(key: Any) -> Any:
    # Tuple keys travel as lists; make them hashable again.
    if type(key) is list:
        return tuple(_hashable(item) for item in key)
    return key
