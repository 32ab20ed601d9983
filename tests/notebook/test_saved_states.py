"""What a saved notebook shows after it ran under nbclient: the final states of live views.

A pool widget after ``%snakepit stop`` says the pool stopped (its widget state and its text and
HTML fallbacks); a variable watch that was never stopped shows the latest value in its text
fallback, not the first snapshot; a slider that moved between two cells is in the state
``%snakepit wait`` and ``%snakepit stop`` record.
"""

from __future__ import annotations

import json
import time
from typing import Any

import nbformat
import pytest
from kernels import Kernel
from nbclient import NotebookClient

pytestmark = [pytest.mark.notebook, pytest.mark.slow]

CELLS = [
    "%load_ext snakepit_nb",
    "%snakepit start -n 1",
    "%snakepit status",
    "%snakepit var set temperature 0.5 --type float --min 0 --max 2",
    "%snakepit var watch temperature",
    # Three writes; the last one is what the saved notebook must show.
    "for t in (0.75, 1.0, 1.5):\n"
    "    get_ipython().run_line_magic('snakepit', f'var set temperature {t}')\n"
    "import time; time.sleep(2.5)  # longer than the fallbacks' refresh period",
    "%snakepit call add a=1 b=2",
    "%snakepit stop",
]


def run(cells: list[str], snapshots: dict[int, Any]) -> Any:
    """Run ``cells``; ``snapshots[i]`` is every cell's outputs right after cell ``i`` ran."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]

    def snapshot(cell: Any, cell_index: int, **_: Any) -> None:
        snapshots[cell_index] = json.loads(json.dumps([c.get("outputs", []) for c in nb.cells]))

    NotebookClient(
        nb,
        timeout=120,
        kernel_name="python3",
        store_widget_state=True,
        on_cell_executed=snapshot,
    ).execute()
    return nb


def widget_states(nb: Any) -> dict[str, dict[str, Any]]:
    widgets = nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {})
    return {mid: model["state"] for mid, model in widgets.get("state", {}).items()}


def with_class(states: dict[str, dict[str, Any]], css: str) -> list[dict[str, Any]]:
    return [s for s in states.values() if css in s.get("_dom_classes", [])]


def test_saved_notebook_shows_the_stopped_pool_and_the_latest_watched_value() -> None:
    snapshots: dict[int, Any] = {}
    nb = run(CELLS, snapshots)
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o["output_type"] == "error"]
    assert not errors, errors
    states = widget_states(nb)

    # The pool view: its widget says stopped, and so do both fallbacks of its output.
    (table,) = with_class(states, "snakepit-pool-table")
    assert "snakepit-pool-stopped" in table["value"]
    assert "pool stopped at" in table["value"]
    (pool_output,) = nb.cells[2].outputs
    assert pool_output["data"]["text/plain"].startswith("snakepit pool stopped at")
    assert "pool stopped at" in pool_output["data"]["text/html"]

    # While the watch still runs, its text fallback already carries the last value written.
    (live_output,) = snapshots[5][4]
    live_text = live_output["data"]["text/plain"]
    assert "temperature = 1.5" in live_text, live_text
    assert "(live)" in live_text

    # After the stop: the last value, and the fallback says the watch ended.
    (watch_output,) = nb.cells[4].outputs
    text = watch_output["data"]["text/plain"]
    assert "temperature = 1.5" in text, text
    assert "(v4" in text
    assert "watch ended" in text  # the stop closed it, and the fallback says so
    (watch_table,) = with_class(states, "snakepit-watch-table")
    assert "watch ended" in watch_table["value"]
    assert "1.5" in json.dumps(watch_output["data"]["text/html"])


# A write that lands between two cells, from a thread the first cell started: the pump renders
# it after that cell went idle, so its messages carry that cell's request and a notebook runner
# (which records only the running cell's messages) never sees them.
LATE_WRITE = (
    "import threading\n"
    "from snakepit_nb.notebook.runtime import runtime_for\n"
    "_s = runtime_for(get_ipython()).session()\n"
    "threading.Timer(0.5, lambda: _s.vars.__setitem__('temperature', {value})).start()\n"
)


def slider_updates(messages: list[dict[str, Any]], model_id: str) -> list[Any]:
    return [
        m["content"]["data"]["state"]["value"]
        for m in messages
        if m["msg_type"] == "comm_msg"
        and m["content"]["comm_id"] == model_id
        and "value" in m["content"]["data"].get("state", {})
    ]


def await_slider(kernel: Kernel, model_id: str, value: float, timeout: float = 20) -> str:
    """Read IOPub until the slider's update to ``value``; returns the request it carries."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"the slider never showed {value}"
        msg = kernel.kc.get_iopub_msg(timeout=remaining)
        if slider_updates([msg], model_id) == [value]:
            return str(msg["parent_header"].get("msg_id"))


def test_wait_and_stop_send_again_what_was_rendered_between_cells(kernel: Kernel) -> None:
    for line in (
        "%snakepit start -n 1",
        "%snakepit var set temperature 0.5 --type float --min 0 --max 2",
    ):
        reply, _ = kernel.execute(line)
        assert reply["status"] == "ok", reply
    reply, messages = kernel.execute("%snakepit var watch temperature")
    assert reply["status"] == "ok", reply
    (slider_id,) = [
        m["content"]["comm_id"]
        for m in messages
        if m["msg_type"] == "comm_open"
        and "snakepit-var-temperature" in m["content"]["data"]["state"].get("_dom_classes", [])
    ]

    for value, closing in ((1.25, "%snakepit wait"), (1.75, "%snakepit stop")):
        late_cell = kernel.kc.execute(LATE_WRITE.format(value=value))
        # The slider moves half a second after the cell, which had nothing left to do: its
        # message carries that cell's request, so a notebook runner would not record it.
        assert await_slider(kernel, slider_id, value) == late_cell
        reply, messages = kernel.execute(closing)
        assert reply["status"] == "ok", reply
        assert value in slider_updates(messages, slider_id), (closing, messages)
