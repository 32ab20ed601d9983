"""notebooks/dspy_exploration.ipynb runs headless (nbclient) and shows what it promises."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nbformat
import paths
import pytest
from nbclient import NotebookClient

pytestmark = [pytest.mark.notebook, pytest.mark.slow]

NOTEBOOK = paths.ROOT / "notebooks" / "dspy_exploration.ipynb"


def test_dspy_notebook_runs_and_shows_the_workflow(tmp_path: Path) -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")
    log = tmp_path / "network.log"
    # The kernel (and the workers it starts) run offline: the guard refuses and logs any try.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("SNAKEPIT_") or k in ("SNAKEPIT_NB_REGISTRY_DIR",)
    }
    env.update({"SNAKEPIT_NB_NO_NETWORK": "1", "SNAKEPIT_NB_NETWORK_LOG": str(log)})
    client = NotebookClient(
        nb,
        timeout=180,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
        store_widget_state=True,
    )
    client.km = client.create_kernel_manager()
    client.start_new_kernel(env=env)
    try:
        client.start_new_kernel_client()
        client.execute(reset_kc=False, cleanup_kc=False)
    finally:
        client._cleanup_kernel()  # nbclient's own teardown

    text = json.dumps([c.get("outputs", []) for c in nb.cells if c.cell_type == "code"])
    assert "IOPub message rate exceeded" not in text
    assert "before: " in text
    assert "after: 'LIMA'" in text
    assert "exact match before: " in text
    assert "t=1.6:" in text
    shown = text + json.dumps(nb.metadata.get("widgets", {}))  # outputs and widget state
    # The optimizer's live view: trials, the plot of the best score, the best instructions.
    for part in ("snakepit-dspy-trials", "snakepit-dspy-plot", "snakepit-dspy-best"):
        assert part in shown, part
    assert "snakepit-dspy-rows" in text  # the evaluation table
    assert "instructions now: " in text
    assert "['rewrite', 'answer.predict']" in text  # the two-step module's predictors
    assert "'answer': 'TOKYO'" in text  # its second step's instructions, edited
    assert "10/10" in text  # batch progress
    assert "snakepit-dspy-history" in text  # the history view (HTML)
    assert "User message:" in text  # and its text form, from %snakepit dspy history
    assert "the repeated call sent 0 new request(s)" in text  # the shared cache, over HTTP
    assert "'network_guard': True" in text  # the workers really ran with the guard armed
    assert not log.exists(), log.read_text()
