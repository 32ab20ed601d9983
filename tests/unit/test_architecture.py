"""The layering of docs/architecture.md, checked on the code's own imports.

Every import counts: module level, inside functions, and under ``TYPE_CHECKING``. The tests
fail naming the importing module and what it imports.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import paths
import pytest

PACKAGE = paths.ROOT / "snakepit_nb"
MAX_MODULES_PER_FOLDER = 15
MAX_LINES = 700


def module_name(path: Path) -> str:
    parts = list(path.relative_to(paths.ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        if "_generated" not in path.parts:
            yield module_name(path), path


def imports_of(name: str, path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            submodules = {f"{target}.{alias.name}" for alias in node.names} & KNOWN
            # ``from pkg import mod`` names the module; ``from mod import name`` the module.
            found.update(submodules or {target})
    return {t for t in found if t in KNOWN and t != name}


KNOWN = {n for n, _ in modules()}
GRAPH = {name: imports_of(name, path) for name, path in modules()}

# room -> rooms it must never import (prefix match on module names)
FORBIDDEN = {
    "snakepit_nb.orchestrator": (
        "snakepit_nb.client",
        "snakepit_nb.notebook",
        "snakepit_nb.worker",
    ),
    "snakepit_nb.worker": (
        "snakepit_nb.orchestrator",
        "snakepit_nb.client",
        "snakepit_nb.notebook",
    ),
    "snakepit_nb.tools": (
        "snakepit_nb.orchestrator",
        "snakepit_nb.client",
        "snakepit_nb.notebook",
        "snakepit_nb.worker",
    ),
    "snakepit_nb.protocol": (
        "snakepit_nb.orchestrator",
        "snakepit_nb.client",
        "snakepit_nb.notebook",
        "snakepit_nb.worker",
        "snakepit_nb.tools",
    ),
    "snakepit_nb.display": ("snakepit_nb.",),
    "snakepit_nb.client": ("snakepit_nb.notebook", "snakepit_nb.worker"),
    "snakepit_nb.orchestrator.server": ("snakepit_nb.orchestrator.orchestrator",),
}
# Leaf modules import nothing of ours but _errors.
LEAVES = ("snakepit_nb._loop", "snakepit_nb._errors", "snakepit_nb.display")


@pytest.mark.parametrize("room", sorted(FORBIDDEN))
def test_rooms_import_only_downwards(room: str) -> None:
    bad = [
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        if module == room or module.startswith(room + ".")
        for target in sorted(targets)
        for banned in FORBIDDEN[room]
        if (target == banned.rstrip(".") or target.startswith(banned.rstrip(".") + "."))
        and not (room == "snakepit_nb.display" and target.startswith("snakepit_nb.display"))
    ]
    assert bad == []


def test_pool_helpers_do_not_import_the_pool() -> None:
    helpers = (
        "calls.unary",
        "calls.batches",
        "calls.streams",
        "calls.direct",
        "calls.direct_map",
        "calls.requests",
        "definitions",
        "dispatch",
        "supervision",
        "lane",
    )
    bad = [
        f"{h} imports the pool"
        for h in helpers
        if "snakepit_nb.orchestrator.pool.pool" in GRAPH[f"snakepit_nb.orchestrator.pool.{h}"]
    ]
    assert bad == []


def test_leaf_modules_import_only_the_error_hierarchy() -> None:
    bad = [
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        if module.startswith(LEAVES)
        for target in targets
        if target != "snakepit_nb._errors" and not target.startswith("snakepit_nb.display")
    ]
    assert bad == []


def test_the_warden_module_imports_nothing_of_ours() -> None:
    # The warden runs snakepit_nb/_processes.py as a script of a bare interpreter (-I -S),
    # without the package on the path.
    assert GRAPH["snakepit_nb._processes"] == set()


def test_there_are_no_import_cycles() -> None:
    # Tarjan's strongly connected components over module -> module edges (package __init__
    # files that only re-export are nodes too: a cycle through one is a cycle).
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in GRAPH.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in GRAPH:
        if node not in index:
            visit(node)
    # A package importing its own submodules (re-exports) and a submodule importing a sibling
    # through the package is not a loop of responsibilities; only module-to-module cycles are.
    real = [c for c in cycles if sum(1 for m in c if not _is_package(m)) > 1]
    assert real == []


def _is_package(name: str) -> bool:
    return (paths.ROOT / name.replace(".", "/") / "__init__.py").exists()


def test_no_module_reaches_into_another_modules_private_names() -> None:
    bad = []
    for name, path in modules():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.ImportFrom)
                and node.module
                and node.module.startswith("snakepit_nb")
            ):
                bad += [
                    f"{name} imports {node.module}.{a.name}"
                    for a in node.names
                    if a.name.startswith("_")
                    and not a.name.startswith("__")
                    and f"{node.module}.{a.name}" not in KNOWN  # a private module of ours
                ]
    assert bad == []


def test_folders_stay_small_and_modules_short() -> None:
    too_many = [
        f"{folder.relative_to(paths.ROOT)}: {count} modules"
        for folder in [PACKAGE, *(p for p in PACKAGE.rglob("*") if p.is_dir())]
        if "_generated" not in folder.parts and "__pycache__" not in folder.parts
        for count in [len(list(folder.glob("*.py")))]
        if count > MAX_MODULES_PER_FOLDER
    ]
    too_long = [
        f"{path.relative_to(paths.ROOT)}: {lines} lines"
        for _, path in modules()
        for lines in [len(path.read_text().splitlines())]
        if lines > MAX_LINES
    ]
    assert too_many == []
    assert too_long == []
