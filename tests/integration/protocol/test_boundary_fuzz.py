"""T18 at the gRPC boundary: hypothesis throws random bytes and random well-formed messages at
EVERY ``BridgeService`` method of a real orchestrator and of a real worker, over loopback.

The method list comes from the generated descriptor, so a new RPC is fuzzed without touching
this file; messages are built from the descriptors too (random strings for tool, session and
variable names, random ``Any`` labels and JSON with NaN/Infinity and deep nesting, huge
numbers, random metadata), with a bias towards names that exist so the fuzz reaches the code
behind the checks. A few calls go out without the token or with a wrong one (T14 with random
payloads).

What must hold (reliability.md §4.2): the status is always a documented one and never UNKNOWN;
INTERNAL only when a tool raised (the status then names ``RemoteToolError``); DEADLINE_EXCEEDED
only on streams that never end by themselves (anywhere else it is a hang); UNAVAILABLE never
(it means a worker died, and only tools that cannot crash it are called); errors inside the
call channel's frames obey the same rules; and afterwards the runtime is healthy: a real call
works, every worker is ready, and none was restarted.
"""

from __future__ import annotations

import functools
import json
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2, descriptor, message_factory, timestamp_pb2
from google.protobuf.message import Message
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from snakepit_nb.protocol import pb
from snakepit_nb.protocol.auth import TOKEN_KEY, channel_options
from snakepit_nb.protocol.codec import encode_any, encode_json
from snakepit_nb.protocol.status import ERROR_CLASS_KEY

pytestmark = pytest.mark.integration

SERVICE = pb.DESCRIPTOR.services_by_name["BridgeService"]
METHODS: tuple[descriptor.MethodDescriptor, ...] = tuple(SERVICE.methods)
PREFIX = f"/{SERVICE.full_name}/"

SESSION = "fz"
SC = grpc.StatusCode
ALLOWED = {
    SC.OK,
    SC.INVALID_ARGUMENT,
    SC.NOT_FOUND,
    SC.FAILED_PRECONDITION,
    SC.ABORTED,
    SC.RESOURCE_EXHAUSTED,
    SC.UNIMPLEMENTED,
    SC.CANCELLED,
}
# Streams that never end by themselves (a watch, a telemetry feed, the worker's output): they
# are read for a moment and end with the caller's deadline.
OPEN_ENDED = {"WatchVariables", "StreamTelemetry", "WorkerOutput"}
OPEN_ENDED_SECONDS = 0.15
# Every other call answers at once (only safe tools run); one still open after this is a hang,
# and its DEADLINE_EXCEEDED fails the test.
CALL_SECONDS = 4.0
MAX_RESPONSES = 5000
BUDGET = 480  # random calls per server
UNSERVED_EXAMPLES = 6

# Showcase tools that cannot hang, crash or exhaust the worker whatever their arguments are
# (the ones that can -- crash, slow, spin, sleep_sync, spawn_child -- are the reliability
# suite's business, with their own assertions).
SAFE_TOOLS = ["add", "echo", "noop", "whoami", "fail", "count", "incr_var", "ask_kernel", "nbytes"]
SHOWCASE_TOOLS = {*SAFE_TOOLS, "crash", "slow", "spin", "sleep_sync", "spawn_child"}
KERNEL_TOOL = "fz_kernel"
VARIABLES = ["v_int", "v_float", "v_list", "v_str"]
LABELS = [
    "null", "boolean", "integer", "float", "string", "list", "map", "bytes", "tensor",
    "embedding", "choice", "module", "x.binary",
]  # fmt: skip


# ------------------------------------------------------------------------------ values


def _mix(choices: Sequence[st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """Like ``st.one_of``, but each choice equally likely (one_of favours the first ones)."""
    return st.sampled_from(choices).flatmap(lambda chosen: chosen)


def _small_text(size: int = 12) -> st.SearchStrategy[str]:
    return st.text(max_size=size)


_ints = st.integers(-1000, 1000) | st.sampled_from(
    [2**31, -(2**31) - 1, 2**53 + 1, 2**63, -(2**63) - 1, 2**64, 10**30, 10**300]
)
_floats = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(
    [float("nan"), float("inf"), float("-inf"), -0.0, 5e-324, 1.7976931348623157e308]
)
_json_values: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | _ints | _floats | _small_text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_small_text(5), inner, max_size=4),
    max_leaves=10,
)
# Codec tags with wrong or hostile contents (PROTOCOL.md's {"$sp": ...} objects).
_hostile_tags = st.sampled_from(
    [
        {"$sp": "float", "v": "bogus"},
        {"$sp": "float"},
        {"$sp": "bytes", "b64": "!!not base64!!"},
        {"$sp": "bytes", "b64": 3},
        {"$sp": "ndarray", "dtype": "object", "shape": [2], "b64": "AAAA"},
        {"$sp": "ndarray", "dtype": "<f8", "shape": [10**12, 10**12], "b64": ""},
        {"$sp": "ndarray", "dtype": "<f8", "shape": [-1], "b64": "AAAAAAAAAAA="},
        {"$sp": "ndarray", "dtype": "V0", "shape": [3], "b64": ""},
        {"$sp": "dict", "items": [[[1, 2], 3]]},
        {"$sp": "dict", "items": [[{"$sp": "dict", "items": []}, 1]]},
        {"$sp": "dict", "items": 5},
        {"$sp": "map", "v": 3},
        {"$sp": "map", "v": {"$sp": "map", "v": {}}},
        {"$sp": "int", "hex": "zz"},
        {"$sp": "nope"},
        {"$sp": ["float"]},
    ]
)


def _deep(depth: int, opener: str = "[", closer: str = "]") -> bytes:
    return (opener * depth + closer * depth).encode()


def _dumps(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


# Bytes that claim to be codec JSON: valid JSON (with NaN/Infinity tokens), hostile tags, very
# deep nesting, huge numbers, truncated or not JSON at all.
_json_bytes = st.one_of(
    _json_values.map(_dumps),
    _hostile_tags.map(_dumps),
    st.lists(_hostile_tags | _json_values, max_size=3).map(_dumps),
    st.sampled_from(
        [
            _deep(10_000),
            _deep(10_000, '{"a":', "}").replace(b"}", b"", 1),
            _deep(101),
            _deep(99),
            b'"' + b"x" * 100_000 + b'"',
            b"9" * 5000,
            b"1e999",
            b"-1e999",
            b"NaN",
            b"[NaN, Infinity, -Infinity]",
            b'"NaN"',
            b'"Infinity"',
            b"",
            b"{",
            b"\xff\xfe",
            b'"\\ud800"',
            b"[" + b"{}," * 20_000 + b"{}]",
        ]
    ),
    st.binary(max_size=40),
)


def _any_message(type_url: str, value: bytes) -> any_pb2.Any:
    return any_pb2.Any(type_url=type_url, value=value)


_type_urls = st.one_of(
    st.sampled_from(LABELS).map(lambda label: f"type.googleapis.com/snakepit.{label}"),
    st.sampled_from(
        [
            "type.googleapis.com/google.protobuf.StringValue",
            "type.googleapis.com/google.protobuf.Value",
            "type.googleapis.com/snakepit.bridge.Variable",
            "",
            "snakepit.float",
            "float",
            "/",
        ]
    ),
    _small_text(30),
)
_anys = st.builds(_any_message, _type_urls, _json_bytes)

# ------------------------------------------------------------------------------ names

_sessions = st.sampled_from([SESSION, SESSION, SESSION, "", "no-such-session"]) | _small_text()
_tools = st.sampled_from([*SAFE_TOOLS, *SAFE_TOOLS, "", "no_such_tool", "fz_cell"]) | _small_text()
_variables = st.sampled_from([*VARIABLES, *VARIABLES, "", "missing", "v_*"]) | _small_text()
_param_names = st.sampled_from(
    ["a", "b", "value", "n", "message", "kind", "name", "by", "tool", "delay", "ctx", "self"]
) | _small_text(6)
_meta_keys = st.sampled_from(
    [
        "correlation_id",
        "snakepit_nb.chunk_batching",
        "snakepit_nb.remove",
        "snakepit_nb.return",
        "binary_format:value",
        "binary_format:a",
        "idempotent",
        "source",
        "optimizer_id",
        "tool_type",
    ]
) | _small_text(8)
_meta_values = st.sampled_from(["1", "0", "pickle", "raw", "json", "true", ""]) | _small_text(8)
_cell_sources = st.sampled_from(
    [
        "def fz_cell(x=0):\n    return x\n",
        "def fz_cell(n: int = 3):\n    for i in range(n):\n        yield i\n",
        "async def fz_cell(x=0):\n    return [x, float('nan')]\n",
        "raise RuntimeError('import-time failure')\n",
        "def fz_cell(:\n",
        "import no_such_module_for_the_fuzz\n",
        "x = 1\n",
        "",
    ]
) | _small_text(40)


def _bounded_argument(name: str) -> st.SearchStrategy[any_pb2.Any]:
    """Arguments that keep the safe tools safe: small counts, tiny delays, small byte counts."""
    if name in ("n", "delay"):
        small = st.integers(-3, 40) | st.floats(-1.0, 0.002) | st.sampled_from([float("nan")])
        junk = st.sampled_from(["3", None, [1], {"a": 1}, True, float("inf")])
        return st.builds(
            _any_message,
            st.sampled_from(["type.googleapis.com/snakepit.integer", "float", ""]),
            (small | junk).map(_dumps),
        )
    return _anys


_parameters = st.lists(_param_names, max_size=4, unique=True).flatmap(
    lambda names: st.fixed_dictionaries({n: _bounded_argument(n) for n in names})
)

# Two kinds of messages. "Hostile" ones put a hostile value in every field they set (garbage
# names, hostile JSON, extreme numbers). "Plausible" ones look like what a real peer sends
# (names that exist, valid codec values, small numbers) so that the fuzz gets past the first
# check and into the handlers, tools and stores behind it -- with NaN, huge ints and odd
# strings still in the values. Keys are "Message.field" or "*.field".
_HOSTILE: dict[str, st.SearchStrategy[Any]] = {
    "*.session_id": _sessions,
    "CleanupSessionRequest.session_id": st.sampled_from(["doomed", "", "nope"]) | _small_text(),
    "*.tool_name": _tools,
    "*.variable_identifier": _variables,
    "*.variable_identifiers": st.lists(_variables, max_size=4),
    "*.from_variable": _variables,
    "*.to_variable": _variables,
    "*.name": _variables | _tools,
    "DefineToolRequest.name": st.sampled_from(["fz_cell", "", "fz other"])
    | _small_text(6).filter(lambda name: name not in SHOWCASE_TOOLS),
    "DefineToolRequest.function": st.sampled_from(["fz_cell", "", "missing"]) | _small_text(6),
    "DefineToolRequest.source": _cell_sources,
    "*.type": st.sampled_from(["integer", "float", "string", "list", "map", "bytes", ""])
    | _small_text(8),
    "*.constraints_json": _json_bytes.map(lambda b: b.decode("utf-8", "replace")),
    "*.access_control_json": _json_bytes.map(lambda b: b.decode("utf-8", "replace")),
    "*.validation_json": _json_bytes.map(lambda b: b.decode("utf-8", "replace")),
    "*.metadata": st.dictionaries(_meta_keys, _meta_values, max_size=3),
    "*.optimizer_config": st.dictionaries(_small_text(5), _small_text(5), max_size=2),
    "ExecuteToolRequest.parameters": _parameters,
    "ExecuteElixirToolRequest.parameters": _parameters,
    "ExecuteToolRequest.binary_parameters": st.dictionaries(
        _param_names, st.binary(max_size=64), max_size=2
    ),
    "BatchCall.arguments": st.one_of(
        st.lists(
            st.dictionaries(st.sampled_from(["a", "b", "value"]), _json_values), max_size=4
        ).map(_dumps),
        _json_bytes,
    ),
    "*.worker_id": st.sampled_from(["fz-peer", ""]) | _small_text(6),
    "*.timeout": st.sampled_from([0.0, -1.0, 1e-9, 0.5, float("nan"), float("inf"), 1e308]),
    "*.call_id": st.integers(0, 3) | st.integers(0, 2**64 - 1),
    "*.limit": st.integers(-(2**31), 2**31 - 1),
    "*.expected_version": st.integers(-3, 5) | st.integers(-(2**31), 2**31 - 1),
    "*.target_version": st.integers(-3, 5) | st.integers(-(2**31), 2**31 - 1),
}

_plain_values: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers(-100, 100) | _floats | _small_text(8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_small_text(4), inner, max_size=3),
    max_leaves=6,
)
_plain_anys = _plain_values.map(encode_any)
_numbers = st.integers(-100, 100) | _ints | _floats
_fresh_variables = st.sampled_from([*VARIABLES, "fz_new", "fz_other"])
# Arguments each safe tool takes, with values that are mostly right.
_plausible_parameters = st.one_of(
    st.fixed_dictionaries({"a": _numbers.map(encode_any), "b": _numbers.map(encode_any)}),
    st.fixed_dictionaries({"value": _plain_anys}),
    st.fixed_dictionaries({}, optional={"n": st.integers(0, 30).map(encode_any)}),
    st.fixed_dictionaries(
        {},
        optional={
            "message": _small_text().map(encode_any),
            "kind": st.just(encode_any("KeyError")),
        },
    ),
    st.fixed_dictionaries(
        {"name": _fresh_variables.map(encode_any), "by": _numbers.map(encode_any)}
    ),
    st.fixed_dictionaries({"tool": _tools.map(encode_any)}),
    st.fixed_dictionaries({"n": st.integers(0, 2048).map(encode_any)}),
)
_PLAUSIBLE: dict[str, st.SearchStrategy[Any]] = {
    "*.session_id": st.just(SESSION),
    "CleanupSessionRequest.session_id": st.just("doomed"),
    "*.tool_name": st.sampled_from(SAFE_TOOLS),
    "*.variable_identifier": _fresh_variables,
    "*.variable_identifiers": st.lists(_fresh_variables, max_size=3),
    "*.from_variable": _fresh_variables,
    "*.to_variable": _fresh_variables,
    "*.name": _fresh_variables,
    "ParameterSpec.name": st.sampled_from(["a", "b", "value"]),
    "ToolRegistration.name": st.sampled_from(["fz_published", "fz_other"]),
    "ToolSpec.name": st.sampled_from(["fz_published", "fz_other"]),
    "DefineToolRequest.name": st.sampled_from(["fz_cell", ""]),
    "DefineToolRequest.function": st.sampled_from(["fz_cell", ""]),
    "DefineToolRequest.source": _cell_sources,
    "*.type": st.sampled_from(["integer", "float", "string", "list", "map", "bytes", "embedding"]),
    "*.constraints_json": st.sampled_from(["", '{"min": 0}', '{"allow_nan": true}', "{}"]),
    "*.access_control_json": st.sampled_from(["", '{"workers": "read"}']),
    "*.validation_json": st.just(""),
    "*.metadata": st.sampled_from(
        [{}, {"correlation_id": "fz-1"}, {"snakepit_nb.chunk_batching": "1"}]
    ),
    "ExecuteToolRequest.parameters": _plausible_parameters,
    "ExecuteElixirToolRequest.parameters": _plausible_parameters,
    "ExecuteToolRequest.binary_parameters": st.just({}),
    "BatchCall.arguments": st.lists(
        st.fixed_dictionaries({"a": _numbers, "b": _numbers}), max_size=5
    ).map(encode_json),
    "*.worker_id": st.sampled_from(["fz-peer", ""]),
    "*.timeout": st.sampled_from([0.0, 5.0]),
    "*.call_id": st.integers(1, 4),
    "*.limit": st.integers(0, 5),
    "*.expected_version": st.integers(0, 3),
    "*.target_version": st.integers(0, 3),
    "*.batch_count": st.integers(0, 3),
}
# Whole plausible messages where a field-by-field draw would rarely match (a tool with the
# arguments it takes).
_call_args = _mix(
    [
        st.tuples(st.just("add"), st.fixed_dictionaries({"a": _numbers, "b": _numbers})),
        st.tuples(st.just("echo"), st.fixed_dictionaries({"value": _plain_values})),
        st.tuples(st.sampled_from(["noop", "whoami"]), st.just({})),
        st.tuples(
            st.just("fail"),
            st.fixed_dictionaries(
                {"message": _small_text(), "kind": st.sampled_from(["KeyError", "Bogus", "int"])}
            ),
        ),
        st.tuples(st.just("count"), st.fixed_dictionaries({"n": st.integers(0, 30)})),
        st.tuples(
            st.just("incr_var"), st.fixed_dictionaries({"name": _fresh_variables, "by": _numbers})
        ),
        st.tuples(
            st.just("ask_kernel"),
            st.fixed_dictionaries(
                {"tool": st.sampled_from([KERNEL_TOOL, "nope"]), "x": _plain_values}
            ),
        ),
        st.tuples(st.just("nbytes"), st.fixed_dictionaries({"n": st.integers(0, 2048)})),
    ]
)


def _call_request(cls: Any) -> st.SearchStrategy[Any]:
    def build(call: tuple[str, dict[str, Any]], metadata: dict[str, str], stream: bool) -> Any:
        name, kwargs = call
        return cls(
            session_id=SESSION,
            tool_name=name,
            parameters={k: encode_any(v) for k, v in kwargs.items()},
            metadata=metadata,
            **({"stream": stream} if cls is pb.ExecuteToolRequest else {}),
        )

    return st.builds(build, _call_args, _PLAUSIBLE["*.metadata"], st.booleans())


_PLAUSIBLE_MESSAGES: dict[str, st.SearchStrategy[Any]] = {
    "ExecuteToolRequest": _call_request(pb.ExecuteToolRequest),
    "ExecuteElixirToolRequest": st.builds(
        lambda x, meta: pb.ExecuteElixirToolRequest(
            session_id=SESSION,
            tool_name=KERNEL_TOOL,
            parameters={"x": encode_any(x)},
            metadata=meta,
        ),
        _plain_values,
        _PLAUSIBLE["*.metadata"],
    ),
    "BatchCall": st.builds(
        lambda pairs: pb.BatchCall(
            session_id=SESSION,
            tool_name="add",
            arguments=encode_json([{"a": a, "b": b} for a, b in pairs]),
        ),
        st.lists(st.tuples(_numbers, _numbers), max_size=6),
    ),
}

# Fields a plausible message always sets (what a handler looks up first).
_KEYS = {"session_id", "tool_name", "variable_identifier", "name", "source", "type"}


def _override(
    message: descriptor.Descriptor, f: descriptor.FieldDescriptor, plausible: bool
) -> Any:
    table = _PLAUSIBLE if plausible else _HOSTILE
    specific = table.get(f"{message.name}.{f.name}")
    return specific if specific is not None else table.get(f"*.{f.name}")


_SCALARS: dict[int, st.SearchStrategy[Any]] = {
    descriptor.FieldDescriptor.TYPE_STRING: _small_text(),
    descriptor.FieldDescriptor.TYPE_BYTES: _json_bytes,
    descriptor.FieldDescriptor.TYPE_BOOL: st.booleans(),
    descriptor.FieldDescriptor.TYPE_INT32: st.integers(-(2**31), 2**31 - 1),
    descriptor.FieldDescriptor.TYPE_INT64: st.integers(-(2**63), 2**63 - 1),
    descriptor.FieldDescriptor.TYPE_UINT64: st.integers(0, 2**64 - 1),
    descriptor.FieldDescriptor.TYPE_DOUBLE: _floats,
    descriptor.FieldDescriptor.TYPE_FLOAT: st.floats(width=32, allow_nan=True),
}
_PLAUSIBLE_SCALARS: dict[int, st.SearchStrategy[Any]] = {
    **_SCALARS,
    descriptor.FieldDescriptor.TYPE_STRING: _small_text(8),
    descriptor.FieldDescriptor.TYPE_BYTES: _plain_values.map(encode_json),
    descriptor.FieldDescriptor.TYPE_INT32: st.integers(0, 10),
    descriptor.FieldDescriptor.TYPE_INT64: st.integers(0, 10),
    descriptor.FieldDescriptor.TYPE_UINT64: st.integers(0, 10),
}


def _timestamps(plausible: bool) -> st.SearchStrategy[timestamp_pb2.Timestamp]:
    if plausible:
        return st.builds(
            lambda s: timestamp_pb2.Timestamp(seconds=s), st.integers(0, 2_000_000_000)
        )
    return st.builds(
        lambda s, n: timestamp_pb2.Timestamp(seconds=s, nanos=n),
        st.integers(-(2**63), 2**63 - 1) | st.integers(0, 2_000_000_000),
        st.integers(-(2**31), 2**31 - 1),
    )


def _value_strategy(
    message: descriptor.Descriptor, f: descriptor.FieldDescriptor, depth: int, plausible: bool
) -> st.SearchStrategy[Any] | None:
    override: st.SearchStrategy[Any] | None = _override(message, f, plausible)
    if override is not None:
        return override
    if f.type == descriptor.FieldDescriptor.TYPE_MESSAGE:
        sub = f.message_type
        assert sub is not None
        if sub.GetOptions().map_entry:
            key = _value_strategy(sub, sub.fields_by_name["key"], depth, plausible)
            value = _value_strategy(sub, sub.fields_by_name["value"], depth, plausible)
            if key is None or value is None:
                return None
            return st.dictionaries(key, value, max_size=3)
        element = _element_strategy(sub, depth, plausible)
        if element is None:
            return None
        return st.lists(element, max_size=3) if f.is_repeated else element
    if f.type == descriptor.FieldDescriptor.TYPE_ENUM:
        assert f.enum_type is not None
        numbers = [v.number for v in f.enum_type.values]
        scalar: st.SearchStrategy[Any] = st.sampled_from(numbers)
        if not plausible:
            scalar = scalar | st.integers(-5, 1000)  # proto3 enums are open
    else:
        scalar = (_PLAUSIBLE_SCALARS if plausible else _SCALARS)[f.type]
    return st.lists(scalar, max_size=3) if f.is_repeated else scalar


def _element_strategy(
    sub: descriptor.Descriptor, depth: int, plausible: bool
) -> st.SearchStrategy[Any] | None:
    if sub.full_name == "google.protobuf.Any":
        return _plain_anys if plausible else _anys
    if sub.full_name == "google.protobuf.Timestamp":
        return _timestamps(plausible)
    if depth >= 4:
        return None
    return messages(sub, depth + 1, plausible=plausible)


@functools.cache
def messages(
    message: descriptor.Descriptor, depth: int = 0, *, plausible: bool = False
) -> st.SearchStrategy[Message]:
    """Random well-formed instances of ``message``: a subset of its fields, random values."""
    if plausible and message.name in _PLAUSIBLE_MESSAGES:
        return _PLAUSIBLE_MESSAGES[message.name]
    cls = message_factory.GetMessageClass(message)
    required: dict[str, st.SearchStrategy[Any]] = {}
    optional: dict[str, st.SearchStrategy[Any]] = {}
    for f in message.fields:
        strategy = _value_strategy(message, f, depth, plausible)
        if strategy is not None:
            (required if plausible and f.name in _KEYS else optional)[f.name] = strategy
    return st.fixed_dictionaries(required, optional=optional).map(lambda kwargs: cls(**kwargs))


# ------------------------------------------------------------------------------ cases


def _mutate(data: bytes, cut: int, flips: Sequence[tuple[int, int]]) -> bytes:
    """Valid protobuf bytes, truncated and with some bytes replaced: almost valid messages."""
    mutable = bytearray(data[: max(0, len(data) - cut)])
    for position, value in flips:
        if mutable:
            mutable[position % len(mutable)] = value
    return bytes(mutable)


@functools.cache
def _payloads(method: descriptor.MethodDescriptor) -> st.SearchStrategy[bytes]:
    plausible = messages(method.input_type, plausible=True).map(lambda m: m.SerializeToString())
    hostile = messages(method.input_type).map(lambda m: m.SerializeToString())
    mutated = st.builds(
        _mutate,
        plausible | hostile,
        st.integers(0, 3),
        st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=3),
    )
    return _mix([plausible] * 5 + [hostile] * 3 + [mutated, st.binary(max_size=200)])


@dataclass(frozen=True)
class Case:
    method: str
    payloads: tuple[bytes, ...]
    auth: str = "good"  # "good" | "missing" | "wrong"
    headers: tuple[tuple[str, str], ...] = ()


_headers = st.lists(
    st.tuples(
        st.sampled_from(["x-snakepit-correlation-id", "snakepit_nb.chunk_batching", "x-fuzz"]),
        st.sampled_from(["1", "0", "corr-1", ""])
        | st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=20),
    ),
    max_size=2,
).map(tuple)


def cases(method: descriptor.MethodDescriptor) -> st.SearchStrategy[Case]:
    """Random calls of ``method``: payloads, token (mostly right), request headers."""
    payloads: st.SearchStrategy[tuple[bytes, ...]]
    if method.client_streaming:
        payloads = st.lists(_payloads(method), max_size=4).map(tuple)
    else:
        payloads = _payloads(method).map(lambda payload: (payload,))
    return st.builds(
        Case,
        st.just(method.name),
        payloads,
        st.sampled_from(["good"] * 18 + ["missing", "wrong"]),
        _headers,
    )


# ------------------------------------------------------------------------------ calling


def _rpc(channel: Any, kind: str, path: str) -> Any:
    """A raw-bytes callable of ``kind`` ("unary_unary", ...): bytes in, bytes out."""
    return getattr(channel, kind)(path, request_serializer=None, response_deserializer=None)


@dataclass
class Outcome:
    code: Any
    details: str
    trailing: dict[str, str] = field(default_factory=dict)
    responses: list[bytes] = field(default_factory=list)


@dataclass
class Target:
    """One server under fuzz: its address, token and a raw-bytes channel to it."""

    name: str
    address: str
    token: str
    channel: grpc.Channel = field(init=False)

    def __post_init__(self) -> None:
        self.channel = grpc.insecure_channel(self.address, options=channel_options())

    def close(self) -> None:
        self.channel.close()

    def call(self, case: Case) -> Outcome:
        method = SERVICE.methods_by_name[case.method]
        metadata: list[tuple[str, str]] = list(case.headers)
        if case.auth == "good":
            metadata.append((TOKEN_KEY, self.token))
        elif case.auth == "wrong":
            metadata.append((TOKEN_KEY, self.token[:-2] + "xx"))
        path = PREFIX + method.name
        seconds = OPEN_ENDED_SECONDS if method.name in OPEN_ENDED else CALL_SECONDS
        responses: list[bytes] = []
        try:
            if method.client_streaming:
                requests = iter(case.payloads)
                if method.server_streaming:
                    stream = _rpc(self.channel, "stream_stream", path)(
                        requests, metadata=metadata, timeout=seconds
                    )
                    _drain(stream, responses)
                else:
                    responses.append(
                        _rpc(self.channel, "stream_unary", path)(
                            requests, metadata=metadata, timeout=seconds
                        )
                    )
            elif method.server_streaming:
                stream = _rpc(self.channel, "unary_stream", path)(
                    case.payloads[0], metadata=metadata, timeout=seconds
                )
                _drain(stream, responses)
            else:
                responses.append(
                    _rpc(self.channel, "unary_unary", path)(
                        case.payloads[0], metadata=metadata, timeout=seconds
                    )
                )
        except grpc.RpcError as err:
            failed: Any = err  # a grpc.Call as well as an RpcError
            trailing = {str(k): str(v) for k, v in (failed.trailing_metadata() or ())}
            return Outcome(failed.code(), failed.details() or "", trailing, responses)
        return Outcome(SC.OK, "", {}, responses)


def _drain(stream: Any, into: list[bytes]) -> None:
    for item in stream:
        into.append(item)
        if len(into) >= MAX_RESPONSES:
            stream.cancel()
            return


# ------------------------------------------------------------------------------ checking


def check(case: Case, outcome: Outcome) -> None:
    """The boundary's contract for one call (see the module docstring)."""
    code = outcome.code
    where = f"{case.method} -> {code} {outcome.details[:300]!r}\n{_describe(case)}"
    assert code is not SC.UNKNOWN, where
    if case.auth != "good":
        assert code is SC.UNAUTHENTICATED, where
        return
    if code is SC.INTERNAL:
        # Only a tool's own exception may end a call INTERNAL, and it says so.
        assert outcome.trailing.get(ERROR_CLASS_KEY) == "RemoteToolError", where
        assert json.loads(outcome.details)["type"], where
        return
    if code is SC.DEADLINE_EXCEEDED:
        assert case.method in OPEN_ENDED, where
        return
    assert code in ALLOWED, where
    if code is SC.OK:
        _check_responses(case, outcome)


def _describe(case: Case) -> str:
    """The case, with its payloads decoded where they parse (for failure messages)."""
    method = SERVICE.methods_by_name[case.method]
    cls = message_factory.GetMessageClass(method.input_type)
    lines = [f"Case({case.method!r}, auth={case.auth!r}, headers={case.headers!r})"]
    for payload in case.payloads:
        try:
            lines.append(f"  {cls.FromString(payload)!r:.3000}")
        except Exception:
            lines.append(f"  raw {payload[:200]!r}")
    return "\n".join(lines)


def _check_responses(case: Case, outcome: Outcome) -> None:
    if case.method == "CallChannel":
        for data in outcome.responses:
            for message in pb.ChannelFrame.FromString(data).messages:
                if message.WhichOneof("body") == "error":
                    code = message.error.code
                    assert code not in (SC.UNKNOWN.value[0], SC.INTERNAL.value[0]), message
                    assert message.error.message, message
    elif case.method in ("ExecuteTool", "ExecuteElixirTool"):
        (data,) = outcome.responses
        response = pb.ExecuteToolResponse.FromString(data)
        if not response.success:
            # A tool's failure travels as its error payload, never as free text.
            assert json.loads(response.error_message)["type"], response.error_message


# ------------------------------------------------------------------------------ the runtime


@dataclass
class Runtime:
    client: Any
    orchestrator: Target
    worker: Target
    worker_pid: int


def _start(client_factory: Callable[..., Any]) -> Runtime:
    client = client_factory(workers=1)
    s = client.session(SESSION)
    s.vars.define("v_int", 1, type="integer", min=0)
    s.vars.define("v_float", 0.5, type="float")
    s.vars.define("v_list", [1, 2], type="list")
    s.vars.define("v_str", "x", type="string", max_length=10)
    client.session("doomed")
    client.register_kernel_tool(lambda x=None: x, name=KERNEL_TOOL)
    (worker,) = client.status().workers
    token = client.orchestrator.token
    return Runtime(
        client,
        Target("orchestrator", client.address, token),
        Target(f"worker {worker.worker_id}", worker.address, token),
        worker.pid,
    )


def assert_healthy(runtime: Runtime) -> None:
    """A real call works, every worker is ready, and none was restarted (nothing crashed)."""
    client = runtime.client
    assert client.session("health").call("add", a=1, b=2) == 3
    status = client.status()
    assert [w.state for w in status.workers] == ["ready"], status
    assert [w.restarts for w in status.workers] == [0], status
    assert [w.pid for w in status.workers] == [runtime.worker_pid], status
    for target in (runtime.orchestrator, runtime.worker):
        reply = pb.PingResponse.FromString(
            _rpc(target.channel, "unary_unary", PREFIX + "Ping")(
                pb.PingRequest(message="still there").SerializeToString(),
                metadata=((TOKEN_KEY, target.token),),
                timeout=10,
            )
        )
        assert reply.message == "pong: still there"


@pytest.fixture
def runtime(client_factory: Callable[..., Any]) -> Iterator[Runtime]:
    made = _start(client_factory)
    yield made
    made.orchestrator.close()
    made.worker.close()


def _bad_correlation(cls: Any, tool: str) -> bytes:
    request = cls(session_id=SESSION, tool_name=tool, metadata={"correlation_id": "caf\u00e9\n"})
    return bytes(request.SerializeToString())


# Regressions found by this fuzz; each stays as an explicit example.
_REGRESSIONS = [
    # The worker's server had no decoding guard: gRPC answered UNKNOWN for bytes that are not
    # the method's message (unary and server-streaming), and silently dropped them in its
    # request streams (CallChannel ended OK, StreamTelemetry kept going).
    Case("ExecuteTool", (b"\xff\xff\xff",)),
    Case("Ping", (b"\x0a\x05ab",)),
    Case("ExecuteStreamingTool", (b"\xff",)),
    Case("DefineTool", (b"\x0a\x05ab",)),
    Case("CallChannel", (b"\xff\xff\xff",)),
    Case("CallChannel", (pb.ChannelFrame().SerializeToString(), b"\xff\xff")),
    Case("StreamTelemetry", (b"\xff\xff\xff",)),
    Case("ExecuteTool", (b"\xff\xff\xff",), auth="missing"),
    # Garbage after a frame the worker answered: the handler was cancelled mid-write and gRPC
    # could send no status at all -- the call hung until the caller's deadline.
    Case("CallChannel", (b"\n\x00", b"U]")),
    # A correlation id that is not header-safe was echoed as a gRPC header: INTERNAL
    # "Invalid metadata" (orchestrator), a failing callback (worker).
    Case("ExecuteTool", (_bad_correlation(pb.ExecuteToolRequest, "add"),)),
    Case("ExecuteStreamingTool", (_bad_correlation(pb.ExecuteToolRequest, "count"),)),
    Case("ExecuteElixirTool", (_bad_correlation(pb.ExecuteElixirToolRequest, KERNEL_TOOL),)),
]


def _wire(message: Message) -> tuple[bytes, ...]:
    return (bytes(message.SerializeToString()),)


# Huge counts, which random draws keep small: every one is an explicit example.
_HUGE = [
    Case("GetVariables", _wire(pb.BatchGetVariablesRequest(
        session_id=SESSION, variable_identifiers=[f"v{i}" for i in range(10_000)]))),
    Case("WatchVariables", _wire(pb.WatchVariablesRequest(
        session_id=SESSION, variable_identifiers=VARIABLES * 2_500, include_initial_values=True))),
    Case("SetVariables", _wire(pb.BatchSetVariablesRequest(
        session_id=SESSION, updates={f"n{i}": encode_any(i) for i in range(5_000)}, atomic=True))),
    Case("ExecuteTool", _wire(pb.ExecuteToolRequest(
        session_id=SESSION, tool_name="echo",
        parameters={f"p{i}": encode_any(i) for i in range(5_000)}))),
    Case("ExecuteStreamingTool", _wire(pb.ExecuteToolRequest(
        session_id=SESSION, tool_name="count", parameters={"n": encode_any(20_000)}))),
    Case("CallChannel", _wire(pb.ChannelFrame(messages=[
        pb.ChannelMessage(call_id=i % 700, request=pb.ExecuteToolRequest(
            session_id=SESSION, tool_name="add",
            parameters={"a": encode_any(i), "b": encode_any(1)}))
        for i in range(1_000)]))),
    Case("CallChannel", _wire(pb.ChannelFrame(messages=[pb.ChannelMessage(
        call_id=1, batch=pb.BatchCall(session_id=SESSION, tool_name="add",
                                      arguments=encode_json([{"a": 1, "b": 2}] * 20_000)))]))),
    Case("RegisterTools", _wire(pb.RegisterToolsRequest(
        worker_id="fz-peer", tools=[pb.ToolRegistration(name=f"fz_t{i}") for i in range(2_000)]))),
]  # fmt: skip


def _fuzz(target: Target, method: descriptor.MethodDescriptor, examples: int) -> Counter[str]:
    """Run ``examples`` random calls of ``method`` against ``target``; tally the codes."""
    tally: Counter[str] = Counter()

    def run(case: Case) -> None:
        outcome = target.call(case)
        tally[outcome.code.name] += 1
        tally[f"{case.method}:{outcome.code.name}"] += 1
        check(case, outcome)

    fuzz = given(case=cases(method))(run)
    for case in [*_REGRESSIONS, *_HUGE]:
        if case.method == method.name:
            fuzz = example(case=case)(fuzz)
    settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        # No shrinking: a hang costs CALL_SECONDS per shrink step (minutes); the failure
        # message shows the case decoded (see _describe) instead.
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )(fuzz)()
    return tally


def _serves(target: Target, method: descriptor.MethodDescriptor) -> bool:
    empty = () if method.client_streaming else (b"",)
    return target.call(Case(method.name, empty)).code is not SC.UNIMPLEMENTED


def _report(target: Target, tally: Counter[str], seconds: float) -> None:
    print(f"\n{target.name}: {seconds:.1f} s, {dict(sorted(tally.items()))}")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("side", ["orchestrator", "worker"])
def test_t18_random_requests_to_every_method_never_break_the_boundary(
    runtime: Runtime, side: str
) -> None:
    target: Target = getattr(runtime, side)
    started = time.monotonic()
    # Every RPC of the service is fuzzed (new ones included); the methods this side serves get
    # most of the budget, those it answers UNIMPLEMENTED a few examples each.
    served = [m for m in METHODS if _serves(target, m)]
    unserved = [m for m in METHODS if m not in served]
    per_served = max(12, (BUDGET - UNSERVED_EXAMPLES * len(unserved)) // len(served))
    tally: Counter[str] = Counter()
    for method in METHODS:
        examples = per_served if method in served else UNSERVED_EXAMPLES
        tally.update(_fuzz(target, method, examples))
    _report(target, tally, time.monotonic() - started)
    codes = Counter({k: v for k, v in tally.items() if ":" not in k})
    assert codes.total() >= 300, codes
    assert codes["OK"] > 0.15 * codes.total(), codes  # the fuzz reached the handlers
    assert_healthy(runtime)
