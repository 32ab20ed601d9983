"""ToolRegistry: per-worker tools, cell and kernel tools, validation limits, lookups."""

from __future__ import annotations

import pytest

from snakepit_nb._errors import InvalidArgumentError, ToolNotFoundError
from snakepit_nb.orchestrator.registry import NO_DEFAULT, ToolRegistry, ToolSpec
from snakepit_nb.protocol import pb
from snakepit_nb.protocol.codec import encode_any
from snakepit_nb.protocol.names import check_tool_name


def spec(name: str, **metadata: str) -> pb.ToolSpec:
    return pb.ToolSpec(name=name, description=f"the {name} tool", metadata=metadata)


def test_worker_tools_are_per_worker_and_forgotten_with_the_worker() -> None:
    registry = ToolRegistry()
    registry.register_worker_tools("w1", [spec("add"), spec("echo")])
    registry.register_worker_tools("w2", [spec("add")])
    assert registry.names() == ["add", "echo"]
    assert sorted(registry.workers_for("add")) == ["w1", "w2"]
    assert registry.workers_for("echo") == ["w1"]
    registry.forget_worker("w1")
    assert registry.names() == ["add"]
    with pytest.raises(ToolNotFoundError, match="tool 'echo' is not registered; available: add"):
        registry.get("echo")
    with pytest.raises(ToolNotFoundError, match=r"'ad' is not registered \(did you mean 'add'\?\)"):
        registry.get("ad")


def test_register_replaces_and_add_extends() -> None:
    registry = ToolRegistry()
    registry.register_worker_tools("w1", [spec("a")])
    registry.register_worker_tools("w1", [spec("b")])
    assert registry.names() == ["b"]
    registry.add_worker_tools("w1", [spec("c")])
    assert registry.names() == ["b", "c"]


def test_registration_messages_are_converted() -> None:
    registry = ToolRegistry()
    reg = pb.ToolRegistration(
        name="published",
        description="d",
        supports_streaming=True,
        metadata={"required_variables": "t, k"},
    )
    reg.parameters.add(name="x", type="integer", required=True)
    (converted,) = registry.add_worker_tools("peer:1", [reg])
    assert converted.supports_streaming
    assert list(converted.required_variables) == ["t", "k"]
    assert registry.get("published").parameters[0].name == "x"


@pytest.mark.parametrize("name", ["", "-lead", "has space", "x" * 65, "ünïcode", "a/b"])
def test_bad_names_are_refused_all_or_nothing(name: str) -> None:
    registry = ToolRegistry()
    with pytest.raises(InvalidArgumentError, match="tool name"):
        registry.register_worker_tools("w1", [spec("fine"), spec(name)])
    assert registry.names() == []


@pytest.mark.parametrize("name", ["a", "A1", "x.y-z_w", "9lives", "x" * 64])
def test_good_names(name: str) -> None:
    assert check_tool_name(name) == name


def test_metadata_limits() -> None:
    registry = ToolRegistry()
    too_many = {f"k{i}": "v" for i in range(33)}
    with pytest.raises(InvalidArgumentError, match="33 metadata entries; at most 32"):
        registry.add_kernel_tool(spec("t", **too_many))
    too_big = {"blob": "x" * 4100}
    with pytest.raises(InvalidArgumentError, match="at most 4096 are"):
        registry.add_cell_tool(spec("t", **too_big))
    assert registry.names() == []
    registry.add_cell_tool(spec("t", **{f"k{i}": "v" for i in range(32)}))
    assert registry.names() == ["t"]


def test_cell_and_kernel_tools_and_lookup_order() -> None:
    registry = ToolRegistry()
    registry.register_worker_tools("w1", [spec("add")])
    registry.add_cell_tool(spec("cellish"))
    registry.add_kernel_tool(spec("lookup"))
    registry.add_kernel_tool(spec("add"))  # a kernel tool shadowed by a worker tool
    assert registry.names() == ["add", "cellish", "lookup"]
    assert registry.get("add").metadata.get("kernel") is None
    assert registry.get("lookup").metadata["kernel"] == "true"
    assert registry.get("cellish").metadata["source"] == "cell"
    assert registry.workers_for("cellish") == ["w1"]
    assert registry.worker_tool("lookup") is None
    assert [s.name for s in registry.kernel_tools()] == ["lookup", "add"]
    assert registry.remove_kernel_tool("lookup") is True
    assert registry.remove_kernel_tool("lookup") is False
    assert registry.remove_cell_tool("cellish") is True
    assert "cellish" not in registry
    generation = registry.generation
    registry.forget_worker("w1")
    assert registry.generation > generation


def test_not_found_when_empty_says_so() -> None:
    with pytest.raises(ToolNotFoundError, match="no tools are registered yet"):
        ToolRegistry().get("x")


def test_not_found_lists_at_most_25() -> None:
    registry = ToolRegistry()
    registry.register_worker_tools("w1", [spec(f"t{i:02}") for i in range(40)])
    with pytest.raises(ToolNotFoundError, match="and 15 more"):
        registry.get("nope")


def test_toolspec_view() -> None:
    message = pb.ToolSpec(
        name="add",
        description="Add two integers.\nMore text.",
        supports_streaming=False,
        metadata={"idempotent": "true"},
        required_variables=["t"],
    )
    message.parameters.add(name="a", type="integer", required=True)
    b = message.parameters.add(name="b", type="integer", required=False)
    b.default_value.CopyFrom(encode_any(0))
    view = ToolSpec.from_pb(message)
    assert view.name == "add"
    assert view.idempotent
    assert view.kind == "worker"
    assert view.parameters[0].default is NO_DEFAULT
    assert view.parameters[1].default == 0
    assert view.signature == "add(a: integer, b: integer = 0)"
    assert str(view) == "add(a: integer, b: integer = 0) — Add two integers."
    assert view.required_variables == ("t",)
    with pytest.raises(AttributeError):
        view.name = "x"  # type: ignore[misc]
