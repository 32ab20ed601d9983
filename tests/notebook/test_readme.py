"""The README's examples run as written: its notebook block and its library block, each as a
cell of a real kernel (nbclient), with no error."""

from __future__ import annotations

import re

import nbformat
import paths
import pytest
from nbclient import NotebookClient

pytestmark = [pytest.mark.notebook, pytest.mark.slow]


def block_after(heading: str) -> str:
    text = (paths.ROOT / "README.md").read_text()
    section = text[text.index(heading) :]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match is not None, heading
    return match.group(1)


@pytest.mark.parametrize(
    "heading", ["## In a notebook", "## As a Python library", "### Data: arrays, DataFrames"]
)
def test_a_readme_example_runs_as_written(heading: str) -> None:
    nb = nbformat.v4.new_notebook()
    code = block_after(heading)
    if heading != "## In a notebook":
        code = "%load_ext snakepit_nb\n" + code  # the library block needs no magics; harmless
    nb.cells = [nbformat.v4.new_code_cell(code)]
    NotebookClient(nb, timeout=300, kernel_name="python3").execute()
    errors = [o for o in nb.cells[0].outputs if o["output_type"] == "error"]
    assert not errors, errors
    text = "".join(o.get("text", "") for o in nb.cells[0].outputs)
    assert "Traceback" not in text
