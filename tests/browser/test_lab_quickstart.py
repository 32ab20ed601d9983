"""JupyterLab in Debian's headless Chromium (Playwright's Python package) runs the notebooks.

It checks what a person sees: in the quickstart, the stream view's final text equals the
kernel's value and the variable watch row changed when a worker wrote the variable; in the
DSPy notebook, the optimizer's live view shows its trials table, the plot of the best score
and the best instructions. No "IOPub message rate exceeded" anywhere; screenshots are kept
(the folder is printed; env SNAKEPIT_NB_ARTIFACTS moves it).
"""

from __future__ import annotations

import re
import shutil
from typing import Any

import pytest
from lab_support import CHROMIUM_FLAGS, artifacts_dir, open_and_run_all

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_quickstart_runs_in_jupyterlab(lab: dict[str, Any]) -> None:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is needed: apt-get install chromium"
    shots = artifacts_dir()
    print(f"\nbrowser artifacts: {shots}")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 2400})
            open_and_run_all(page, lab, "quickstart.ipynb")
            stream_text = page.inner_text(".snakepit-stream-result pre.snakepit-stream-value")
            value_output = page.evaluate(
                """() => {
                    const cells = [...document.querySelectorAll('.jp-Notebook .jp-CodeCell')];
                    const cell = cells.find(c => c.querySelector('.jp-InputArea-editor')
                        .textContent.startsWith('h.value'));
                    return cell.querySelector('.jp-OutputArea-output').innerText;
                }"""
            )
            counter = page.inner_text('.snakepit-watch-table [data-var="counter"]')
            temperature = page.inner_text('.snakepit-watch-table [data-var="temperature"]')
            body = page.inner_text("body")
            no_news = page.locator(".jp-toast-button", has_text="No")
            if no_news.count():
                no_news.first.click()
            page.locator(".snakepit-stream").first.scroll_into_view_if_needed()
            page.screenshot(path=str(shots / "quickstart.png"), full_page=True)
            page.locator(".snakepit-watch").first.screenshot(path=str(shots / "watch.png"))
            page.locator(".snakepit-stream").first.screenshot(path=str(shots / "stream.png"))
            page.locator(".snakepit-pool").first.screenshot(path=str(shots / "pool.png"))
        finally:
            browser.close()
    assert re.match(rf"^\({re.escape(stream_text.strip())}, 200,", value_output.strip())
    assert stream_text.strip() == "200"
    # The watch was displayed with counter = 0; a worker's incr_var made it 5 in the page.
    assert counter.strip() == "5"
    assert temperature.strip() == "1.25"
    assert "IOPub message rate exceeded" not in body
    assert "IOPub message rate exceeded" not in lab["log"].read_text()


def test_the_dspy_notebook_shows_the_optimizer_live_in_jupyterlab(lab: dict[str, Any]) -> None:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is needed: apt-get install chromium"
    shots = artifacts_dir()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 2400})
            open_and_run_all(page, lab, "dspy_exploration.ipynb")
            view = page.locator(".snakepit-dspy-optimization").first
            view.scroll_into_view_if_needed()
            trials = page.locator(".snakepit-dspy-optimization .snakepit-dspy-trials tbody tr")
            n_trials = trials.count()
            plot_dots = page.locator(".snakepit-dspy-optimization svg.snakepit-dspy-plot circle")
            n_dots = plot_dots.count()
            best = page.inner_text(".snakepit-dspy-optimization .snakepit-dspy-best")
            header = page.inner_text(".snakepit-dspy-optimization > div")
            rows = page.locator(".snakepit-dspy-evaluation .snakepit-dspy-rows tbody tr").count()
            history = page.locator(".snakepit-dspy-history .snakepit-dspy-call").count()
            errors = page.locator(".jp-OutputArea-output[data-mime-type*='error']").count()
            body = page.inner_text("body")
            view.screenshot(path=str(shots / "dspy-optimizer.png"))
            page.screenshot(path=str(shots / "dspy.png"), full_page=True)
        finally:
            browser.close()
    assert errors == 0, body[-3000:]
    assert n_trials >= 6  # the baseline, MIPROv2's trials and the final score
    assert n_dots == n_trials  # one point per trial in the plot
    assert "best so far" in best
    assert "only" in best  # the proposed instruction that won: short answers
    assert "→ 100.0 %" in header
    assert rows == 10  # every example of the evaluation
    assert history >= 1
    assert "IOPub message rate exceeded" not in body
