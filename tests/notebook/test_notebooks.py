"""Every notebook in notebooks/ runs top to bottom under nbclient, and its saved widget state
shows what a person saw: finished streams with their final values, live tables up to date."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

import nbformat
import paths
import pytest
from nbclient import NotebookClient

pytestmark = [pytest.mark.notebook, pytest.mark.slow]

# ray_cluster.ipynb runs against a 2-node Ray cluster in tests/integration/.../test_ray_launcher.
NOTEBOOKS = sorted(p for p in (paths.ROOT / "notebooks").glob("*.ipynb") if p.stem != "ray_cluster")
VALUE = re.compile(r'<pre class="snakepit-stream-value"[^>]*>(.*?)</pre>', re.DOTALL)


def widget_states(nb: Any) -> dict[str, dict[str, Any]]:
    widgets = nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {})
    return {mid: model["state"] for mid, model in widgets.get("state", {}).items()}


def with_class(states: dict[str, dict[str, Any]], css: str) -> list[dict[str, Any]]:
    return [s for s in states.values() if css in s.get("_dom_classes", [])]


def outputs_text(nb: Any) -> str:
    return json.dumps([c.get("outputs", []) for c in nb.cells if c.cell_type == "code"])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), (
        f"{path.name} is saved with outputs; clear them before committing"
    )
    NotebookClient(
        nb,
        timeout=180,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
        store_widget_state=True,
    ).execute()
    text = outputs_text(nb)
    assert "IOPub message rate exceeded" not in text
    states = widget_states(nb)
    for header in with_class(states, "snakepit-stream-header"):
        # Every stream view reached its end before the notebook did.
        assert re.search(r">(done|failed|cancelled)<", header["value"]), header["value"]
    for result in with_class(states, "snakepit-stream-result"):
        assert "snakepit-stream-value" in result["value"] or "snakepit-error" in result["value"]
    if path.stem == "quickstart":
        check_quickstart(nb, states)


def check_quickstart(nb: Any, states: dict[str, dict[str, Any]]) -> None:
    # The stream view's final text equals the value the kernel holds (cell `h.value, ...`).
    (result,) = with_class(states, "snakepit-stream-result")
    shown = html.unescape(VALUE.search(result["value"]).group(1))  # type: ignore[union-attr]
    value_cell = next(c for c in nb.cells if c.source.startswith("h.value"))
    kernel_value = value_cell.outputs[0]["data"]["text/plain"]
    assert kernel_value.startswith(f"({shown}, 200,")
    # The notebook's own class and function ran in a worker; 100 MB came back as a view.
    norm_cell = next(c for c in nb.cells if c.source.rstrip().endswith("s.call(norm, Point(3, 4))"))
    assert norm_cell.outputs[0]["data"]["text/plain"] == "5.0"
    swapped = next(c for c in nb.cells if c.source.startswith("s.map(lambda p: Point"))
    assert swapped.outputs[0]["data"]["text/plain"] == (
        "[Point(x=10, y=0), Point(x=10, y=1), Point(x=10, y=2)]"
    )
    big_cell = next(c for c in nb.cells if c.source.startswith("big = "))
    assert big_cell.outputs[0]["data"]["text/plain"] == "(100000000, True, False)"
    # The watch table shows the worker's write of `counter` and the notebook's temperature.
    (table,) = with_class(states, "snakepit-watch-table")
    counter = re.search(r'data-var="counter"><code[^>]*>(.*?)</code>', table["value"])
    assert counter is not None
    assert counter.group(1) == "5"
    (slider,) = with_class(states, "snakepit-var-temperature")
    assert slider["value"] == 1.25
    # The notebook ends with %snakepit stop: the saved pool widget says so, not "live".
    (pool,) = with_class(states, "snakepit-pool-table")
    assert "snakepit-pool-stopped" in pool["value"]
    assert "pool stopped at" in pool["value"]
