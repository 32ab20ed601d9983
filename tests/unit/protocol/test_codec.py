"""The value codec: exact round trips (property-based), depth limits, published-bridge input."""

from __future__ import annotations

import datetime
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from google.protobuf.any_pb2 import Any as PbAny
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from snakepit_nb._errors import InvalidArgumentError, RemoteToolError
from snakepit_nb.protocol import _values, codec
from snakepit_nb.protocol.codec import (
    CHUNK_KIND_KEY,
    decode_any,
    decode_chunk,
    decode_chunk_batch,
    decode_json,
    encode_any,
    encode_chunk,
    encode_chunk_batch,
    encode_json,
)

pytestmark = pytest.mark.timeout(120)


def same(a: Any, b: Any) -> bool:
    """Exact equality: same types all the way down, NaN equal to NaN, -0.0 distinct from 0.0."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if math.isnan(a):
            return math.isnan(b)
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        if len(a) != len(b):
            return False
        # Keys: same types and values, in the same order.
        if not all(same(x, y) for x, y in zip(a, b, strict=True)):
            return False
        return all(same(a[k], b[k]) for k in a)
    return bool(a == b)


SPECIAL_STRINGS = st.sampled_from(
    ["NaN", "Infinity", "-Infinity", "None", "null", "$sp", '"$sp"', "", "{[", "\\u0000"]
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**200), max_value=2**200)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text()
    | SPECIAL_STRINGS
    | st.binary(max_size=64)
)
STR_KEYS = st.text(max_size=8) | st.sampled_from(["$sp", "v", "b64", "items", "shape", "data"])


def _containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return (
        st.lists(children, max_size=5)
        | st.dictionaries(STR_KEYS, children, max_size=5)
        | st.dictionaries(st.integers(), children, max_size=4)
        | st.dictionaries(st.integers() | st.text(max_size=3) | st.none(), children, max_size=4)
    )


VALUES = st.recursive(SCALARS, _containers, max_leaves=40)
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------------------------------------
# Property-based round trips


# The codec has two JSON engines: orjson when installed, the stdlib otherwise. Both must give
# the same values, and each must read what the other wrote.
ENGINES: list[Any] = [None] + ([_values._orjson] if _values._orjson is not None else [])


@contextmanager
def engine(module: Any) -> Iterator[None]:
    saved = _values._orjson
    _values._orjson = module
    try:
        yield
    finally:
        _values._orjson = saved


@pytest.fixture(params=ENGINES, ids=lambda m: "orjson" if m else "stdlib")
def each_engine(request: pytest.FixtureRequest) -> Iterator[None]:
    with engine(request.param):
        yield


def test_both_engines_are_exercised() -> None:
    assert len(ENGINES) == 2, "install orjson so both JSON engines are tested"


@FAST
@given(VALUES)
def test_json_round_trip_is_exact(value: Any) -> None:
    encoded = []
    for module in ENGINES:
        with engine(module):
            data = encode_json(value)
            assert same(decode_json(data), value)
            encoded.append(data)
    for module in ENGINES:
        with engine(module):
            for data in encoded:
                assert same(decode_json(data), value)


@FAST
@given(VALUES)
def test_any_round_trip_is_exact(value: Any) -> None:
    for module in ENGINES:
        with engine(module):
            encoded = encode_any(value)
            assert encoded.type_url.startswith("type.googleapis.com/snakepit.")
            # An Any survives serialisation as a protobuf message too.
            again = PbAny.FromString(encoded.SerializeToString())
            assert same(decode_any(again), value)


@FAST
@given(VALUES)
def test_chunk_round_trip_is_exact(value: Any) -> None:
    for module in ENGINES:
        with engine(module):
            data, metadata = encode_chunk(value)
            assert isinstance(data, bytes)
            assert set(metadata) == {CHUNK_KIND_KEY}
            assert same(decode_chunk(data, metadata), value)


@FAST
@given(st.lists(VALUES, max_size=20))
def test_chunk_batch_round_trip_is_exact(values: list[Any]) -> None:
    for module in ENGINES:
        with engine(module):
            assert same(decode_chunk_batch(encode_chunk_batch(values)), values)


@FAST
@given(st.dictionaries(st.text(max_size=10), VALUES, max_size=6))
def test_params_round_trip_is_exact(kwargs: dict[str, Any]) -> None:
    for module in ENGINES:
        with engine(module):
            params, binary = codec.encode_params(kwargs)
            assert binary == {}
            assert same(codec.decode_params(params, binary, {}), kwargs)


@FAST
@given(VALUES)
def test_encoding_is_deterministic_and_decoding_does_not_mutate(value: Any) -> None:
    for module in ENGINES:
        with engine(module):
            data = encode_json(value)
            assert encode_json(value) == data
            decoded = decode_json(data)
            assert encode_json(decoded) == data


@pytest.mark.usefixtures("each_engine")
def test_special_values_in_detail() -> None:
    nan, inf = float("nan"), float("inf")
    value = {
        "nan": nan,
        "inf": [inf, -inf, {"deep": [nan]}],
        "$sp": "a user key",
        "none": None,
        "None": "None",
        "big": 2**300,
        "huge": 7**6000,  # more digits than Python converts to text by default
        "neg0": -0.0,
        "bytes": b"\x00\xff",
        "tuple": (1, (2, 3)),
        "intkeys": {1: "a", -2: "b", (1, "x"): "tuple key", None: 0, 1.5: "float key"},
    }
    decoded = decode_json(encode_json(value))
    assert same(decoded["nan"], nan)
    assert same(decoded["inf"], [inf, -inf, {"deep": [nan]}])
    assert decoded["$sp"] == "a user key"
    assert decoded["none"] is None
    assert decoded["None"] == "None"
    assert decoded["big"] == 2**300
    assert decoded["huge"] == 7**6000
    assert same(decoded["neg0"], -0.0)
    assert decoded["bytes"] == b"\x00\xff"
    assert decoded["tuple"] == [1, [2, 3]]
    assert decoded["intkeys"] == value["intkeys"]


@pytest.mark.usefixtures("each_engine")
def test_plain_data_is_plain_json() -> None:
    # What any JSON peer reads: no tags unless needed, compact separators, UTF-8.
    assert encode_json({"a": [1, 2.5, True, None, "é"]}) == '{"a":[1,2.5,true,null,"é"]}'.encode()
    assert b"$sp" not in encode_json([{"k": "v"}] * 3)


@pytest.mark.usefixtures("each_engine")
def test_lone_surrogates_round_trip() -> None:
    value = {"s": "a\udc80b", "\ud800": 1}
    assert decode_json(encode_json(value)) == value


# ---------------------------------------------------------------------------------------------
# Depth limits


def _nested_list(depth: int) -> Any:
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


def _nested_dict(depth: int) -> Any:
    value: Any = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


@pytest.mark.parametrize("build", [_nested_list, _nested_dict])
@pytest.mark.usefixtures("each_engine")
def test_depth_100_passes_and_101_is_refused(build: Any) -> None:
    ok = build(100)
    assert decode_json(encode_json(ok)) == ok
    with pytest.raises(InvalidArgumentError, match=r"nested too deeply \(max depth 100\)"):
        encode_json(build(101))
    text = encode_json(build(101), max_depth=200)
    with pytest.raises(InvalidArgumentError, match=r"nested too deeply \(max depth 100\)"):
        decode_json(text)
    assert decode_json(text, max_depth=101) == build(101)


@pytest.mark.usefixtures("each_engine")
def test_depth_counts_tagged_containers_like_plain_ones() -> None:
    # Dicts with int keys and "$sp" maps add JSON levels, not value levels.
    value: Any = "leaf"
    for i in range(100):
        value = {i: value} if i % 2 else {"$sp": value}
    assert decode_json(encode_json(value)) == value
    with pytest.raises(InvalidArgumentError, match="nested too deeply"):
        encode_json({0: value})


@pytest.mark.parametrize(
    "text",
    [
        b"[" * 10_000 + b"]" * 10_000,
        b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
        b'[{"$sp":"map","v":' * 5_000 + b"{}" + b"}]" * 5_000,
        b"[" * 100_000,  # not even valid JSON
    ],
)
@pytest.mark.usefixtures("each_engine")
def test_deep_json_is_refused_fast_without_recursion_error(text: bytes) -> None:
    start = time.perf_counter()
    with pytest.raises(InvalidArgumentError, match=r"nested too deeply \(max depth 100\)"):
        decode_json(text)
    with pytest.raises(InvalidArgumentError, match="nested too deeply"):
        decode_any(PbAny(type_url="type.googleapis.com/snakepit.list", value=text))
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("build", [_nested_list, _nested_dict])
@pytest.mark.usefixtures("each_engine")
def test_deep_python_values_are_refused_fast(build: Any) -> None:
    value = build(10_000)
    start = time.perf_counter()
    with pytest.raises(InvalidArgumentError, match=r"nested too deeply \(max depth 100\)"):
        encode_json(value)
    with pytest.raises(InvalidArgumentError, match="nested too deeply"):
        encode_any(value)
    with pytest.raises(InvalidArgumentError, match="nested too deeply"):
        encode_chunk(value)
    assert time.perf_counter() - start < 1.0


@pytest.mark.usefixtures("each_engine")
def test_self_containing_values_are_refused() -> None:
    loop: list[Any] = [1]
    loop.append(loop)
    with pytest.raises(InvalidArgumentError, match="contains itself"):
        encode_json(loop)


@pytest.mark.usefixtures("each_engine")
def test_brackets_inside_strings_do_not_count() -> None:
    value = ["[" * 500 + "{" * 500, {"k": "]" * 300, "[[[": '"\\[['}]
    assert decode_json(encode_json(value)) == value


@pytest.mark.usefixtures("each_engine")
def test_wide_shallow_values_pass() -> None:
    value = [{"i": i, "l": [i]} for i in range(5000)]
    assert decode_json(encode_json(value)) == value


# ---------------------------------------------------------------------------------------------
# Errors that say what to do


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"a": [1, 2, {3}]}, r"value at \['a'\]\[2\] is a set; send a list instead"),
        ({1: [object()]}, r"value at \[1\]\[0\] is a object"),
        ([1, 2j], r"value at \[1\] is a complex; send \[real, imag\] instead"),
        ({"x": {"y": frozenset()}}, r"value at \['x'\]\['y'\] is a frozenset"),
        (print, r"^value is a builtin_function_or_method"),
        (
            {"when": datetime.datetime(2024, 1, 1)},
            r"value at \['when'\] is a datetime.datetime; send value.isoformat\(\) instead",
        ),
    ],
)
@pytest.mark.usefixtures("each_engine")
def test_unsupported_types_name_the_type_and_the_path(value: Any, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        encode_json(value)
    with pytest.raises(InvalidArgumentError):
        encode_any(value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b'{"$sp":"mystery"}', "unknown tag 'mystery'"),
        (b'{"$sp":"bytes","b64":"***"}', "malformed 'bytes'"),
        (b'{"$sp":"float","v":"Nope"}', "malformed 'float'"),
        (b'{"$sp":"dict","items":[[1]]}', "malformed 'dict'"),
        (b'{"$sp":"map","v":[]}', "malformed 'map'"),
        (b"\xff\xfe", "not valid JSON"),
    ],
)
@pytest.mark.usefixtures("each_engine")
def test_bad_input_is_invalid_argument(text: bytes, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        decode_json(text)


@pytest.mark.usefixtures("each_engine")
def test_subclasses_travel_as_their_base_types() -> None:
    import collections
    import enum

    class Color(enum.IntEnum):
        RED = 1

    class Name(enum.StrEnum):
        ADA = "ada"

    class Plain(enum.Enum):
        ONE = "one"

    import uuid

    point = collections.namedtuple("point", "x y")
    ident = uuid.UUID(int=5)
    value = {
        "c": Color.RED,
        "n": Name.ADA,
        "p": point(1, 2),
        "o": collections.OrderedDict(a=1),
        "e": Plain.ONE,
        "u": ident,
    }
    assert decode_json(encode_json(value)) == {
        "c": 1,
        "n": "ada",
        "p": [1, 2],
        "o": {"a": 1},
        "e": "one",
        "u": str(ident),
    }
    tagged = dict(value, f=float("nan"))
    decoded = decode_json(encode_json(tagged))
    assert decoded["c"] == 1
    assert type(decoded["c"]) is int
    assert decoded["n"] == "ada"
    assert type(decoded["n"]) is str
    assert decoded["p"] == [1, 2]


# ---------------------------------------------------------------------------------------------
# Any: labels and the published bridge's conventions


def _any(label: str, value: bytes) -> PbAny:
    return PbAny(type_url=f"type.googleapis.com/{label}", value=value)


@pytest.mark.parametrize(
    ("value", "label", "raw"),
    [
        (None, "null", b"null"),
        (True, "boolean", b"true"),
        (42, "integer", b"42"),
        (2**70, "integer", str(2**70).encode()),
        (1.5, "float", b"1.5"),
        (float("nan"), "float", b'"NaN"'),
        (float("inf"), "float", b'"Infinity"'),
        (float("-inf"), "float", b'"-Infinity"'),
        ("None", "string", b'"None"'),
        ([1, "a"], "list", b'[1,"a"]'),
        ((1, 2), "list", b"[1,2]"),
        ({"a": 1}, "map", b'{"a":1}'),
    ],
)
def test_encode_any_labels_follow_the_published_convention(
    value: Any, label: str, raw: bytes
) -> None:
    encoded = encode_any(value)
    assert encoded.type_url == f"type.googleapis.com/snakepit.{label}"
    assert encoded.value == raw


def test_type_hints_set_the_label() -> None:
    encoded = encode_any("gpt-4", type_hint="choice")
    assert encoded.type_url == "type.googleapis.com/snakepit.choice"
    assert decode_any(encoded) == "gpt-4"
    assert decode_any(encode_any(0.5, type_hint="float")) == 0.5
    assert decode_any(encode_any(float("nan"), type_hint="float")) != 0  # NaN, not an error
    assert encode_any(float("-inf"), type_hint="float").value == b'"-Infinity"'


@pytest.mark.parametrize(
    ("label", "raw", "expected"),
    [
        ("snakepit.float", b"42.0", 42.0),  # the published worker's int
        ("snakepit.float", b"42", 42.0),
        ("snakepit.integer", b"42.0", 42),
        ("snakepit.integer", b'"7"', 7),
        ("snakepit.string", b'"None"', "None"),  # the published worker's None
        ("snakepit.null", b'"None"', None),
        ("snakepit.null", b"null", None),
        ("snakepit.float", b'"NaN"', float("nan")),
        ("snakepit.float", b'"Infinity"', float("inf")),
        ("snakepit.float", b'"-Infinity"', float("-inf")),
        ("snakepit.boolean", b"true", True),
        ("snakepit.string", b"\"b'abc'\"", "b'abc'"),  # the published worker's bytes
        ("snakepit.map", b'{"__ffi_unserializable__":true,"__type__":"m.C"}', None),
        ("google.protobuf.StringValue", b'{"a":[1,2]}', {"a": [1, 2]}),
        ("google.protobuf.StringValue", b'"text"', "text"),
        ("google.protobuf.StringValue", b"plain text", "plain text"),
        ("google.protobuf.Value", b"[1,null]", [1, None]),
        ("snakepit.choice", b'"gpt"', "gpt"),
        ("snakepit.embedding", b"[0.5,1.0]", [0.5, 1.0]),
    ],
)
def test_decodes_what_the_published_bridge_sends(label: str, raw: bytes, expected: Any) -> None:
    decoded = decode_any(_any(label, raw))
    if label == "snakepit.map":
        assert decoded == {"__ffi_unserializable__": True, "__type__": "m.C"}
    else:
        assert same(decoded, expected)


def test_decodes_odd_labels_and_empty_values() -> None:
    assert decode_any(PbAny()) is None
    assert decode_any(PbAny(type_url="dspex.variables/float", value=b"1")) == 1.0
    assert decode_any(PbAny(type_url="float", value=b'"NaN"')) != 0
    assert decode_any(_any("snakepit.string", b"")) is None
    from google.protobuf.wrappers_pb2 import StringValue

    real = StringValue(value="wrapped").SerializeToString()
    assert decode_any(_any("google.protobuf.StringValue", real)) == "wrapped"
    with pytest.raises(InvalidArgumentError, match="not valid JSON"):
        decode_any(_any("snakepit.map", b"{oops"))


def test_binary_labels_need_the_binary_field() -> None:
    with pytest.raises(InvalidArgumentError, match="decode_any_with_binary"):
        decode_any(_any("snakepit.tensor.binary", b"{}"))


def test_large_bytes_go_to_the_binary_field() -> None:
    big = bytes(range(256)) * 1000
    any_value, binary = codec.encode_any_with_binary(big)
    assert binary == big
    assert len(any_value.value) < 100
    assert any_value.type_url.endswith(".bytes.binary")
    assert codec.decode_any_with_binary(any_value, binary) == big
    small_any, small_binary = codec.encode_any_with_binary(b"small")
    assert small_binary == b""
    assert codec.decode_any_with_binary(small_any, small_binary) == b"small"
    # A peer that only fills binary_result.
    assert codec.decode_any_with_binary(PbAny(), b"raw") == b"raw"


def test_published_pickled_tensors_are_refused_unless_opted_in() -> None:
    import pickle

    meta = b'{"shape":[2],"dtype":"float32","binary_format":"pickle","type":"embedding"}'
    any_value = _any("snakepit.embedding.binary", meta)
    data = pickle.dumps([0.5, 1.5])
    with pytest.raises(InvalidArgumentError, match="allow_pickle=True"):
        codec.decode_any_with_binary(any_value, data)
    assert codec.decode_any_with_binary(any_value, data, allow_pickle=True) == [0.5, 1.5]
    with pytest.raises(InvalidArgumentError, match="unknown binary_format 'zip'"):
        codec.decode_any_with_binary(_any("snakepit.bytes.binary", b'{"binary_format":"zip"}'), b"")


# ---------------------------------------------------------------------------------------------
# Parameters


def test_params_large_bytes_use_binary_parameters() -> None:
    big = b"x" * (codec.BINARY_THRESHOLD + 1)
    params, binary = codec.encode_params({"blob": big, "n": 1, "small": b"ab"})
    assert set(params) == {"n", "small"}
    assert binary == {"blob": big}
    metadata = codec.binary_parameter_metadata(binary)
    assert metadata == {"binary_format:blob": "raw"}
    assert codec.decode_params(params, binary, metadata) == {"n": 1, "small": b"ab", "blob": big}
    # Without the metadata, binary parameters are raw bytes (the published default).
    assert codec.decode_params(params, binary)["blob"] == big


def test_params_never_unpickle_unless_allowed() -> None:
    import pickle

    payload = pickle.dumps({"a": 1})
    meta = {"binary_format:p": "pickle"}
    with pytest.raises(InvalidArgumentError, match="parameter 'p' arrived pickled"):
        codec.decode_params({}, {"p": payload}, meta)
    assert codec.decode_params({}, {"p": payload}, meta, allow_pickle=True) == {"p": {"a": 1}}
    with pytest.raises(InvalidArgumentError, match="binary_format 'msgpack'"):
        codec.decode_params({}, {"p": b""}, {"binary_format:p": "msgpack"})


def test_params_errors_name_the_parameter() -> None:
    with pytest.raises(InvalidArgumentError, match="parameter 'cfg': value is not valid JSON"):
        codec.decode_params({"cfg": _any("snakepit.map", b"{")})


# ---------------------------------------------------------------------------------------------
# Chunks


@pytest.mark.parametrize(
    ("value", "data", "kind"),
    [
        ({"i": 1}, b'{"i":1}', "json"),
        ([1, 2], b"[1,2]", "json"),
        (3.5, b"3.5", "json"),
        (None, b"null", "json"),
        ("héllo", "héllo".encode(), "text"),
        ("42", b"42", "text"),
        (b"\x00\x01", b"\x00\x01", "bytes"),
        (bytearray(b"ab"), b"ab", "bytes"),
    ],
)
def test_chunks_use_the_published_encoding(value: Any, data: bytes, kind: str) -> None:
    assert encode_chunk(value) == (data, {CHUNK_KIND_KEY: kind})


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b'{"i":1,"progress":0.5}', {"i": 1, "progress": 0.5}),
        (b"[1,2]", [1, 2]),
        (b"7", 7),
        (b"hello world", "hello world"),
        ("héllo".encode(), "héllo"),
        (b"\xff\xfe\x00", b"\xff\xfe\x00"),
        (b"", None),
    ],
)
def test_chunks_from_a_published_worker_decode_best_effort(data: bytes, expected: Any) -> None:
    assert decode_chunk(data, {}) == expected
    assert decode_chunk(data) == expected


def test_chunk_batch_must_be_a_list() -> None:
    with pytest.raises(InvalidArgumentError, match="must be a JSON array"):
        decode_chunk_batch(b'{"a":1}')
    # Chunks at the full depth allowance still fit in a batch.
    deep = _nested_list(100)
    assert decode_chunk_batch(encode_chunk_batch([deep, deep])) == [deep, deep]


# ---------------------------------------------------------------------------------------------
# Tool error payloads


def _raise(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:
        return caught


def test_error_payload_round_trip() -> None:
    exc = _raise(ValueError("bad input"))
    payload = codec.error_payload(exc, tool_name="add", session_id="s1")
    import json

    info = json.loads(payload)
    assert set(info) == {"type", "message", "traceback", "context"}
    assert info["context"] == {"tool_name": "add", "session_id": "s1"}
    err = codec.remote_error_from_payload(payload, worker_id="w1")
    assert isinstance(err, RemoteToolError)
    assert err.remote_type == "ValueError"
    assert err.remote_message == "bad input"
    assert "raise exc" in err.remote_traceback
    assert "ValueError: bad input" in err.remote_traceback
    assert (err.tool_name, err.session_id, err.worker_id) == ("add", "s1", "w1")
    again = codec.remote_error_from_info(codec.error_info(exc, tool_name="t", session_id=""))
    assert (again.remote_type, again.remote_message, again.tool_name) == (
        "ValueError",
        "bad input",
        "t",
    )
    assert again.remote_traceback == err.remote_traceback


def test_remote_errors_from_odd_peers() -> None:
    err = codec.remote_error_from_payload("Segfault in native code", tool_name="t")
    assert (err.remote_type, err.remote_message, err.tool_name) == (
        "RemoteError",
        "Segfault in native code",
        "t",
    )
    published = (
        '{"type":"KeyError","message":"\'x\'","stacktrace":["line 1\\n","line 2\\n"],'
        '"context":{"tool_name":"get","session_id":"s"}}'
    )
    err = codec.remote_error_from_payload(published)
    assert err.remote_type == "KeyError"
    assert err.remote_traceback == "line 1\nline 2\n"
    assert err.tool_name == "get"
    assert codec.remote_error_from_payload(b'{"no": "fields"}').remote_type == "RemoteError"
    assert codec.remote_error_from_payload("[" * 5000).remote_type == "RemoteError"


def test_error_payload_survives_broken_exceptions() -> None:
    class Broken(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    info = codec.error_info(_raise(Broken()), tool_name="t", session_id="s")
    assert info["type"] == "Broken"
    assert "unprintable" in info["message"]
    long = codec.error_info(_raise(ValueError("x" * 200_000)), tool_name="t", session_id="s")
    assert len(long["traceback"]) < 70_000


# ---------------------------------------------------------------------------------------------
# The depth scan of JSON text agrees with the depth of the decoded value


def _depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    return 0


TRICKY_TEXT = st.text(alphabet='[]{}"\\/ab:,\n\té\u2028', max_size=6)
JSON_VALUES = st.recursive(
    st.none() | st.integers() | TRICKY_TEXT,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(TRICKY_TEXT, c, max_size=3),
    max_leaves=40,
)


@settings(max_examples=500, deadline=None)
@given(JSON_VALUES, st.booleans(), st.booleans())
def test_depth_scan_matches_the_value(value: Any, ascii_only: bool, spaced: bool) -> None:
    import json

    from snakepit_nb.protocol._values import json_too_deep

    separators = (", ", ": ") if spaced else (",", ":")
    text = json.dumps(value, ensure_ascii=ascii_only, separators=separators).encode()
    depth = _depth(value)
    for limit in range(depth + 2):
        assert json_too_deep(text, limit) == (depth > limit), (text, limit)
