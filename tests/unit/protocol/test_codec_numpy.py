"""numpy arrays through the codec: exact with dtype, published tensor form, binary fields."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from google.protobuf.any_pb2 import Any as PbAny
from hypothesis import given, settings
from hypothesis.extra import numpy as hnp

from snakepit_nb._errors import InvalidArgumentError
from snakepit_nb.protocol import codec
from snakepit_nb.protocol.codec import decode_any, decode_json, encode_any, encode_json

pytestmark = pytest.mark.timeout(120)


def assert_same_array(got: Any, want: np.ndarray) -> None:
    assert isinstance(got, np.ndarray)
    assert got.dtype == want.dtype
    assert got.shape == want.shape
    # Bit-exact: NaN payloads, -0.0 and NaT included.
    assert got.tobytes() == want.tobytes()


DTYPES = [
    "float64",
    "float32",
    "float16",
    "int64",
    "int8",
    "uint8",
    "uint64",
    "bool",
    "complex128",
    "<U4",
    "datetime64[ns]",
    ">i4",
]


@pytest.mark.parametrize("dtype", DTYPES)
def test_nested_arrays_round_trip_with_dtype(dtype: str) -> None:
    array = np.arange(6).astype(dtype).reshape(2, 3)
    decoded = decode_json(encode_json({"a": array, "list": [array[:, 1]]}))
    assert_same_array(decoded["a"], array)
    assert_same_array(decoded["list"][0], np.ascontiguousarray(array[:, 1]))
    # The result is an ordinary, writable array.
    decoded["a"][0, 0] = decoded["a"][1, 1]


@settings(max_examples=150, deadline=None)
@given(
    hnp.arrays(
        dtype=hnp.scalar_dtypes(),
        shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4),
    )
)
def test_any_array_round_trips_exactly(array: np.ndarray) -> None:
    assert_same_array(decode_json(encode_json([array]))[0], array)
    assert_same_array(decode_any(encode_any(array)), array)
    any_value, binary = codec.encode_any_with_binary(array, threshold=16)
    assert_same_array(codec.decode_any_with_binary(any_value, binary), array)


def test_top_level_arrays_use_the_published_tensor_form() -> None:
    array = np.array([[1.5, 2.0], [3.0, 4.25]], dtype=np.float32)
    encoded = encode_any(array)
    assert encoded.type_url == "type.googleapis.com/snakepit.tensor"
    body = json.loads(encoded.value)
    # What a published worker reads: shape and data (nested lists); dtype is our addition.
    assert body == {"shape": [2, 2], "data": [[1.5, 2.0], [3.0, 4.25]], "dtype": "<f4"}
    assert_same_array(decode_any(encoded), array)


def test_arrays_the_tensor_form_cannot_carry_use_the_tag() -> None:
    for array in (np.array([np.nan, 1.0]), np.array([1 + 2j]), np.array(["ab"])):
        encoded = encode_any(array)
        assert encoded.type_url.endswith(".tensor")
        assert b'"$sp":"ndarray"' in encoded.value
        assert_same_array(decode_any(encoded), array)


def test_published_tensors_decode_to_arrays() -> None:
    raw = b'{"shape":[2,2],"data":[[1,2],[3,4]]}'
    decoded = decode_any(PbAny(type_url="type.googleapis.com/snakepit.tensor", value=raw))
    assert_same_array(decoded, np.array([[1, 2], [3, 4]]))
    flat = b'{"shape":[2,2],"data":[1.0,2.0,3.0,4.0]}'
    decoded = decode_any(PbAny(type_url="type.googleapis.com/snakepit.tensor", value=flat))
    assert_same_array(decoded, np.array([[1.0, 2.0], [3.0, 4.0]]))
    with pytest.raises(InvalidArgumentError, match="malformed tensor"):
        decode_any(
            PbAny(
                type_url="type.googleapis.com/snakepit.tensor",
                value=b'{"shape":[3],"data":[1,2]}',
            )
        )


def test_embeddings_travel_as_plain_lists() -> None:
    vector = np.array([0.25, 0.5, 1.0])
    encoded = encode_any(vector, type_hint="embedding")
    assert encoded.type_url == "type.googleapis.com/snakepit.embedding"
    assert json.loads(encoded.value) == [0.25, 0.5, 1.0]
    assert decode_any(encoded) == [0.25, 0.5, 1.0]


def test_numpy_scalars_become_python_numbers() -> None:
    assert decode_json(encode_json({"f": np.float32(0.5), "i": np.int64(3)})) == {
        "f": 0.5,
        "i": 3,
    }
    assert decode_any(encode_any(np.float64("nan"))) != 0
    assert decode_any(encode_any(np.int16(7))) == 7
    assert encode_any(np.bool_(True)).type_url.endswith(".boolean")


def test_large_arrays_use_the_binary_field() -> None:
    array = np.random.default_rng(0).standard_normal((300, 100)).astype(np.float32)
    any_value, binary = codec.encode_any_with_binary(array)
    assert any_value.type_url == "type.googleapis.com/snakepit.tensor.binary"
    assert len(binary) == array.nbytes
    meta = json.loads(any_value.value)
    assert meta == {
        "binary_format": "ndarray",
        "type": "tensor",
        "dtype": "<f4",
        "shape": [300, 100],
    }
    assert_same_array(codec.decode_any_with_binary(any_value, binary), array)
    # Fortran-ordered input comes back equal (C order on the wire).
    fortran = np.asfortranarray(array)
    any_value, binary = codec.encode_any_with_binary(fortran)
    assert_same_array(codec.decode_any_with_binary(any_value, binary), array)


def test_object_and_structured_arrays_are_refused_with_a_remedy() -> None:
    with pytest.raises(InvalidArgumentError, match=r"value at \['x'\] .* dtype object.*tolist"):
        encode_json({"x": np.array([{}, 1], dtype=object)})
    structured = np.zeros(2, dtype=[("a", "i4"), ("b", "f8")])
    with pytest.raises(InvalidArgumentError, match="tolist"):
        encode_json([structured])


@pytest.mark.parametrize(
    "tag",
    [
        {"$sp": "ndarray", "dtype": "O", "shape": [1], "b64": "AAAAAAAAAAA="},
        {"$sp": "ndarray", "dtype": "<f8", "shape": [3], "b64": "AAAAAAAAAAA="},
        {"$sp": "ndarray", "dtype": "not a dtype", "shape": [1], "b64": ""},
        {"$sp": "ndarray", "dtype": "<f8", "shape": "x", "b64": ""},
    ],
)
def test_malformed_arrays_are_invalid_argument(tag: dict[str, Any]) -> None:
    with pytest.raises(InvalidArgumentError):
        decode_json(json.dumps(tag).encode())
