"""Variable types and constraints: every type and constraint, accepted and refused."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from snakepit_nb._errors import ConstraintViolationError, InvalidArgumentError
from snakepit_nb.orchestrator.variables.types import (
    TypeSpec,
    check_name,
    infer_type,
    normalize_type,
)

NAN, INF = float("nan"), float("inf")

# (type, constraints, value, stored value)
ACCEPTED: list[tuple[str, dict[str, Any], Any, Any]] = [
    ("float", {}, 0.5, 0.5),
    ("float", {}, 3, 3.0),
    ("float", {"min": 0, "max": 2}, 2, 2.0),
    ("float", {"allow_inf": True}, INF, INF),
    ("integer", {}, 7, 7),
    ("integer", {}, 7.0, 7),
    ("integer", {"min": -1, "max": 1}, -1, -1),
    ("integer", {}, 10**30, 10**30),
    ("string", {}, "hi", "hi"),
    ("string", {"min_length": 2, "max_length": 3}, "abc", "abc"),
    ("string", {"pattern": r"^[a-z]+\d$"}, "ab1", "ab1"),
    ("string", {"enum": ["a", "b"]}, "b", "b"),
    ("boolean", {}, False, False),
    ("choice", {"choices": ["fast", "accurate"]}, "fast", "fast"),
    ("choice", {"choices": [1, 2, True]}, True, True),
    ("module", {}, "ChainOfThought", "ChainOfThought"),
    ("module", {"allowed_modules": ["Predict", "ChainOfThought"]}, "Predict", "Predict"),
    ("embedding", {"dimensions": 3}, [1, 2.5, 3], [1.0, 2.5, 3.0]),
    ("embedding", {}, np.array([0.5, 1.5]), [0.5, 1.5]),
    ("embedding", {"min": -1, "max": 1}, [0, 1, -1], [0.0, 1.0, -1.0]),
    ("tensor", {}, [[1, 2], [3, 4]], {"shape": [2, 2], "data": [1.0, 2.0, 3.0, 4.0]}),
    ("tensor", {}, {"shape": [3], "data": [1, 2, 3]}, {"shape": [3], "data": [1.0, 2.0, 3.0]}),
    ("tensor", {"shape": [None, 2]}, np.zeros((3, 2)), {"shape": [3, 2], "data": [0.0] * 6}),
    ("tensor", {"shape": [2, -1]}, {"shape": [2, 1], "data": [[1], [2]]},
     {"shape": [2, 1], "data": [1.0, 2.0]}),
    ("list", {}, (1, "a", None), [1, "a", None]),
    ("list", {"min_length": 1, "max_length": 2}, [1, 2], [1, 2]),
    ("list", {"allow_nan": True}, [NAN], None),
    ("map", {}, {"a": 1, "b": [1, 2]}, {"a": 1, "b": [1, 2]}),
    ("map", {"required_keys": ["a"]}, {"a": 1}, {"a": 1}),
    ("bytes", {"max_length": 3}, b"abc", b"abc"),
    ("float", {"nullable": True}, None, None),
]  # fmt: skip

# (type, constraints, value, words the message must contain)
REFUSED: list[tuple[str, dict[str, Any], Any, str]] = [
    ("float", {}, "0.5", "needs a number"),
    ("float", {}, True, "needs a number"),
    ("float", {}, NAN, "NaN"),
    ("float", {}, INF, "allow_inf"),
    ("float", {}, -INF, "allow_inf"),
    ("float", {"allow_nan": True}, INF, "allow_inf"),
    ("float", {"min": 0}, -0.1, "constraint min"),
    ("float", {"max": 2}, 2.5, "constraint max"),
    ("float", {}, 10**400, "too large"),
    ("integer", {}, 1.5, "whole number"),
    ("integer", {}, True, "needs an integer"),
    ("integer", {}, "1", "needs an integer"),
    ("integer", {"min": 0}, -1, "constraint min"),
    ("integer", {"max": 10}, 11, "constraint max"),
    ("string", {}, 5, "needs a string"),
    ("string", {"min_length": 2}, "a", "min_length"),
    ("string", {"max_length": 2}, "abc", "max_length"),
    ("string", {"pattern": r"^\d+$"}, "12a", "constraint pattern"),
    ("string", {"enum": ["a"]}, "b", "constraint enum"),
    ("boolean", {}, 1, "True or False"),
    ("boolean", {}, "true", "True or False"),
    ("choice", {"choices": ["x", "y"]}, "z", "constraint choices"),
    ("choice", {"choices": [1, 2]}, True, "constraint choices"),
    ("module", {}, 3, "module name"),
    ("module", {"allowed_modules": ["Predict"]}, "ReAct", "allowed_modules"),
    ("embedding", {}, [1, "a"], "item 1"),
    ("embedding", {}, "abc", "list of numbers"),
    ("embedding", {"dimensions": 2}, [1, 2, 3], "constraint dimensions"),
    ("embedding", {}, [1.0, NAN], "NaN"),
    ("embedding", {"max": 1}, [0.5, 2], "constraint max"),
    ("tensor", {}, {"shape": [2, 2], "data": [1, 2, 3]}, "shape [2, 2]"),
    ("tensor", {}, [[1, 2], [3]], "rectangular"),
    ("tensor", {}, [[1, 2], [3, 4, 5], [6]], "rectangular"),
    ("tensor", {}, {"shape": [2, 2], "data": [[1, 2, 3], [4]]}, "rectangular"),
    ("tensor", {"shape": [2, 2]}, [[1, 2, 3], [4, 5, 6]], "constraint shape"),
    ("tensor", {}, {"shape": "x", "data": []}, "bad shape"),
    ("tensor", {}, 5, "needs a tensor"),
    ("tensor", {}, [[INF]], "allow_inf"),
    ("list", {}, {"a": 1}, "needs a list"),
    ("list", {"max_length": 1}, [1, 2], "max_length"),
    ("list", {}, [1, [2, NAN]], "NaN"),
    ("map", {}, [1], "needs a dict"),
    ("map", {"required_keys": ["a", "b"]}, {"a": 1}, "required_keys"),
    ("map", {}, {"x": {"y": INF}}, "allow_inf"),
    ("bytes", {}, "text", "needs bytes"),
    ("bytes", {"min_length": 4}, b"abc", "min_length"),
    ("float", {}, None, "does not accept None"),
]


@pytest.mark.parametrize(("vtype", "constraints", "value", "stored"), ACCEPTED)
def test_accepted_values_are_stored_normalised(
    vtype: str, constraints: dict[str, Any], value: Any, stored: Any
) -> None:
    spec = TypeSpec.build(vtype, constraints)
    result = spec.validate("v", value)
    if stored is None and value is not None:
        assert isinstance(result, list)
        assert math.isnan(result[0])
    else:
        assert result == stored
        assert type(result) is type(stored)


@pytest.mark.parametrize(("vtype", "constraints", "value", "words"), REFUSED)
def test_refused_values_name_the_variable_and_the_constraint(
    vtype: str, constraints: dict[str, Any], value: Any, words: str
) -> None:
    spec = TypeSpec.build(vtype, constraints)
    with pytest.raises(ConstraintViolationError) as info:
        spec.validate("myvar", value)
    message = str(info.value)
    assert message.startswith("variable 'myvar'")
    assert words in message


@pytest.mark.parametrize(
    ("vtype", "constraints", "words"),
    [
        ("float", {"min_length": 1}, "does not apply to type 'float'"),
        ("float", {"min": 3, "max": 1}, "swap them"),
        ("float", {"min": "0"}, "finite number"),
        ("float", {"max": NAN}, "finite number"),
        ("float", {"allow_nan": "yes"}, "true or false"),
        ("string", {"pattern": "("}, "not a valid regular expression"),
        ("string", {"min_length": 5, "max_length": 1}, "above max_length"),
        ("string", {"enum": [1]}, "list of strings"),
        ("choice", {}, "needs the constraint 'choices'"),
        ("choice", {"choices": []}, "non-empty list"),
        ("embedding", {"dimensions": -1}, "non-negative integer"),
        ("tensor", {"shape": [1.5]}, "list of sizes"),
        ("bogus", {}, "unknown variable type"),
    ],
)
def test_bad_constraint_sets_are_refused_at_definition(
    vtype: str, constraints: dict[str, Any], words: str
) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        TypeSpec.build(vtype, constraints)
    assert not isinstance(info.value, ConstraintViolationError)
    assert words in str(info.value)


def test_type_aliases_and_inference() -> None:
    assert [normalize_type(t) for t in ("int", "str", "bool", "dict", "double", "Float")] == [
        "integer", "string", "boolean", "map", "float", "float",
    ]  # fmt: skip
    assert infer_type(True) == "boolean"
    assert infer_type(3) == "integer"
    assert infer_type(0.7) == "float"
    assert infer_type("x") == "string"
    assert infer_type([1]) == "list"
    assert infer_type({"a": 1}) == "map"
    assert infer_type(b"x") == "bytes"
    assert infer_type(np.zeros(3)) == "embedding"
    assert infer_type(np.zeros((2, 2))) == "tensor"
    with pytest.raises(InvalidArgumentError, match="explicit type"):
        infer_type(None)
    with pytest.raises(InvalidArgumentError, match="cannot infer"):
        infer_type({1, 2})


@pytest.mark.parametrize("name", ["", "1abc", "a b", "x" * 129, "a*", "é"])
def test_unusable_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidArgumentError):
        check_name(name)


def test_error_messages_never_dump_huge_values() -> None:
    spec = TypeSpec.build("integer", {})
    with pytest.raises(ConstraintViolationError) as info:
        spec.validate("n", "x" * 1_000_000)
    assert len(str(info.value)) < 300


def test_deeply_nested_list_is_refused_without_recursion_error() -> None:
    value: Any = 1
    for _ in range(10_000):
        value = [value]
    spec = TypeSpec.build("list", {})
    with pytest.raises(ConstraintViolationError, match="nested too deeply"):
        spec.validate("deep", value)
