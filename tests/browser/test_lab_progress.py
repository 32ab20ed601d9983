"""JupyterLab in headless Chromium: the progress widget of many submitted calls, and a tool's
print in the cell that called it, as a person sees them."""

from __future__ import annotations

import re
import shutil
from typing import Any

import nbformat
import pytest
from lab_support import CHROMIUM_FLAGS, artifacts_dir, open_and_run_all

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CELLS = [
    "%load_ext snakepit_nb\nimport snakepit_nb as sp\nclient = %snakepit start -n 2",
    "%%snakepit_tool\nimport time\ndef work(i: int) -> int:\n"
    "    print(f'working on item {i}')\n    time.sleep(0.05)\n    return i * i\n",
    "s = client.session('browser')\n"
    "futures = [s.submit('work', i=i) for i in range(40)]\n"
    "view = sp.progress(futures)",
    "%snakepit wait --timeout 120",
    "%snakepit call work i=7",
    "sum(f.result() for f in futures)",
]


def test_progress_widget_and_worker_output_in_jupyterlab(lab: dict[str, Any]) -> None:
    from playwright.sync_api import sync_playwright

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in CELLS]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
    nbformat.write(nb, lab["root"] / "progress.ipynb")
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is needed: apt-get install chromium"
    shots = artifacts_dir()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1600})
            open_and_run_all(page, lab, "progress.ipynb")
            page.wait_for_function(
                "() => (document.querySelector('.snakepit-progress-count') || {})"
                ".textContent === '40/40'",
                timeout=60_000,
            )
            count = page.inner_text(".snakepit-progress-count")
            label = page.inner_text(".snakepit-progress-label")
            bar = page.evaluate(
                """() => {
                    const bar = document.querySelector('.snakepit-progress-bar .progress-bar')
                        || document.querySelector('.snakepit-progress-bar [role=progressbar]');
                    return bar ? bar.getAttribute('style') || '' : '';
                }"""
            )
            outputs = page.evaluate(
                """() => [...document.querySelectorAll('.jp-Notebook .jp-CodeCell')].map(
                    c => c.querySelector('.jp-OutputArea') ?
                        c.querySelector('.jp-OutputArea').innerText : '')"""
            )
            page.locator(".snakepit-progress").first.screenshot(path=str(shots / "progress.png"))
        finally:
            browser.close()
    assert count == "40/40"
    assert "done" in label
    assert "failed" not in label
    assert re.search(r"\d+(\.\d+)?/s", label)  # the rate
    assert "100%" in bar.replace(" ", "") or "width:100" in bar.replace(" ", "")
    # The print of the %snakepit call cell shows in that cell, above its value.
    call_output = outputs[4]
    assert "working on item 7" in call_output
    assert "49" in call_output
    assert outputs[5].strip().endswith(str(sum(i * i for i in range(40))))
