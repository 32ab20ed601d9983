"""The adapter base, ``@tool`` and tool definitions: specs from signatures, argument binding."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any, Literal

import pytest

from snakepit_nb._errors import InvalidArgumentError, ToolNotFoundError
from snakepit_nb.protocol.codec import decode_any
from snakepit_nb.tools.definition import StreamKind, ToolDefinition
from snakepit_nb.tools.source import define_tool_from_source
from snakepit_nb.worker import Adapter, SessionContext, ToolTable, tool


@dataclasses.dataclass
class Point:
    x: int
    y: int


class Sample(Adapter):
    @tool
    def add(self, a: int, b: int = 0) -> int:
        """Add two integers.

        Args:
            a: the first one.
            b: the second one,
                defaulting to zero.

        Returns:
            the sum.
        """
        return a + b

    @tool(name="count", idempotent=True, required_variables=["temperature"])
    async def counter(self, ctx: SessionContext, n: int) -> AsyncIterator[int]:
        """Count to n."""
        for i in range(n):
            yield i

    @tool("lines")
    def lines(self, text: str) -> Iterator[str]:
        yield from text.splitlines()

    @tool
    def typed(
        self,
        ints: list[int],
        mapping: dict[str, float],
        mode: Literal["fast", "slow"] = "fast",
        maybe: int | None = None,
        point: Point | None = None,
        anything: Any = None,
    ) -> object:
        return [ints, mapping, mode, maybe, point, anything]

    @tool
    def extra(self, ctx, name: str, **options: object) -> dict[str, object]:  # type: ignore[no-untyped-def]
        return {"name": name, **options}

    def not_a_tool(self) -> None:
        """Plain methods are not tools."""


def tools() -> dict[str, ToolDefinition]:
    return Sample().tool_definitions()


def test_tools_are_found_with_names_from_the_decorator() -> None:
    assert set(tools()) == {"add", "count", "lines", "typed", "extra"}


def test_spec_from_signature_and_docstring() -> None:
    spec = tools()["add"].spec()
    assert spec.description == "Add two integers."
    assert [(p.name, p.type, p.required) for p in spec.parameters] == [
        ("a", "integer", True),
        ("b", "integer", False),
    ]
    assert spec.parameters[0].description == "the first one."
    assert spec.parameters[1].description == "the second one, defaulting to zero."
    assert decode_any(spec.parameters[1].default_value) == 0
    assert spec.metadata["source"] == "adapter"
    assert spec.metadata["adapter_class"] == "Sample"
    assert spec.metadata["idempotent"] == "false"
    assert not spec.supports_streaming


def test_streaming_detection_ctx_injection_and_options() -> None:
    count = tools()["count"]
    assert count.stream is StreamKind.ASYNC
    assert count.ctx_param == "ctx"
    assert [p.name for p in count.parameters] == ["n"]
    spec = count.spec()
    assert spec.supports_streaming
    assert list(spec.required_variables) == ["temperature"]
    assert spec.metadata["idempotent"] == "true"
    assert tools()["lines"].stream is StreamKind.SYNC
    assert tools()["add"].stream is StreamKind.NONE
    # The pool counts calls of async tools against async_capacity, the others against capacity.
    assert spec.metadata["async"] == "true"  # async generator
    assert tools()["lines"].spec().metadata["async"] == "false"  # sync generator
    assert tools()["add"].spec().metadata["async"] == "false"
    assert tools()["extra"].ctx_param == "ctx"  # named ctx, unannotated


def test_type_labels_and_validation_json() -> None:
    spec = tools()["typed"].spec()
    labels = {p.name: p.type for p in spec.parameters}
    assert labels == {
        "ints": "list", "mapping": "map", "mode": "string", "maybe": "integer",
        "point": "map", "anything": "any",
    }  # fmt: skip
    mode = next(p for p in spec.parameters if p.name == "mode")
    assert json.loads(mode.validation_json)["enum"] == ["fast", "slow"]


def test_binding_accepts_good_arguments_and_converts_where_exact() -> None:
    add = tools()["add"]
    assert add.bind({"a": 1}) == {"a": 1}
    assert add.bind({"a": 2.0, "b": 3}) == {"a": 2, "b": 3}  # published bridge sends 2.0
    typed = tools()["typed"]
    bound = typed.bind(
        {"ints": [1, 2], "mapping": {"x": 1}, "mode": "slow", "point": {"x": 1, "y": 2}}
    )
    assert bound["point"] == Point(1, 2)
    assert bound["mode"] == "slow"


@pytest.mark.parametrize(
    ("tool_name", "arguments", "message"),
    [
        ("add", {}, "tool 'add': missing required parameter 'a' (expects int)"),
        ("add", {"a": 1, "c": 2}, "tool 'add': unknown parameter 'c'; its parameters are: a, b"),
        ("add", {"a": "x"}, "tool 'add': parameter 'a' expects int, got str ('x')"),
        ("add", {"a": True}, "parameter 'a' expects int, got bool (True)"),
        ("add", {"a": 1.5}, "parameter 'a' expects int, got float (1.5)"),
        ("typed", {"ints": [1, "2"], "mapping": {}}, "parameter 'ints' expects list[int]"),
        ("typed", {"ints": [], "mapping": {"k": "v"}}, "'mapping' expects dict[str, float]"),
        ("typed", {"ints": [], "mapping": {}, "mode": "medium"}, "'mode' expects Literal"),
        ("typed", {"ints": [], "mapping": {}, "maybe": "1"}, "'maybe' expects int | None"),
        ("typed", {"ints": [], "mapping": {}, "point": {"z": 1}}, "parameter 'point' expects"),
        ("extra", {"name": "n", "ctx": 1}, "parameter 'ctx' is the session context"),
    ],
)  # fmt: skip
def test_binding_refuses_bad_arguments_naming_the_parameter(
    tool_name: str, arguments: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        tools()[tool_name].bind(arguments)
    assert message in str(info.value)


def test_var_keyword_tools_take_extra_arguments() -> None:
    assert tools()["extra"].bind({"name": "n", "k": 1}) == {"name": "n", "k": 1}
    assert tools()["extra"].spec().metadata["var_keyword"] == "true"


def test_duplicate_tool_names_are_refused() -> None:
    class Twice(Adapter):
        @tool(name="same")
        def one(self) -> None: ...

        @tool(name="same")
        def two(self) -> None: ...

    with pytest.raises(InvalidArgumentError, match="defines tool 'same' twice"):
        Twice().tool_definitions()


@pytest.mark.parametrize("name", ["", "-x", "a b", "x" * 65, "é"])
def test_bad_tool_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidArgumentError, match="is not valid"):
        ToolDefinition.from_function(lambda: None, name=name)


def test_positional_only_parameters_are_refused() -> None:
    def f(a: int, /) -> int:
        return a

    with pytest.raises(InvalidArgumentError, match="positional-only"):
        ToolDefinition.from_function(f)


def test_tool_table_lookup_define_and_remove() -> None:
    table = ToolTable(tools(), worker_id="w9")
    with pytest.raises(ToolNotFoundError) as info:
        table.get("nope")
    assert str(info.value).startswith("tool 'nope' is not registered; registered: add, count")
    with pytest.raises(ToolNotFoundError) as info:
        table.get("ad")
    assert "tool 'ad' is not registered (did you mean 'add'?)" in str(info.value)
    assert "w9" not in str(info.value)
    cell = define_tool_from_source("def twice(x: int) -> int:\n    return 2 * x\n", "twice")
    table.define(cell)
    assert table.get("twice").func(x=4) == 8
    with pytest.raises(InvalidArgumentError, match="defined by the worker's adapter"):
        table.define(define_tool_from_source("def add(a):\n    return a\n", "add"))
    assert table.remove("twice")
    assert not table.remove("twice")


def test_source_tool_picks_the_only_function_and_keeps_imports_private() -> None:
    source = "import math\n\ndef area(r: float) -> float:\n    return math.pi * r * r\n"
    definition = define_tool_from_source(source)
    assert definition.name == "area"
    assert definition.spec().metadata["source"] == "cell"
    assert definition.func(r=1.0) == pytest.approx(3.14159, rel=1e-4)


def test_source_tool_declared_streaming_but_plain_iterates_its_result() -> None:
    definition = define_tool_from_source(
        "def parts(s: str):\n    return s.split()\n", "parts", supports_streaming=True
    )
    assert definition.stream is StreamKind.SYNC
