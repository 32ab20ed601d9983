"""JupyterLab in Debian's headless Chromium, for the browser tests (not a test module)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import paths

ROOT = paths.ROOT
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def artifacts_dir() -> Path:
    path = Path(os.environ.get("SNAKEPIT_NB_ARTIFACTS", ROOT / "artifacts")) / "browser"
    path.mkdir(parents=True, exist_ok=True)
    return path


def open_and_run_all(page: Any, lab: dict[str, Any], notebook: str) -> None:
    """Open ``notebook`` (in the lab's root), run every cell, wait until all ran."""
    page.goto(f"{lab['url']}/lab/tree/{notebook}?token={lab['token']}&reset")
    page.wait_for_function(
        "() => window.jupyterapp && document.querySelector('.jp-Notebook')", timeout=90_000
    )
    page.wait_for_function(
        """() => {
            const w = window.jupyterapp.shell.currentWidget;
            const k = w && w.sessionContext && w.sessionContext.session
                && w.sessionContext.session.kernel;
            return k && k.status === 'idle';
        }""",
        timeout=90_000,
    )
    # JupyterLab asks about news in a toast on first start: out of the way.
    page.evaluate(
        "window.jupyterapp.commands.execute('apputils:dismiss-notification', {}).catch(() => {})"
    )
    page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
    n_code = page.evaluate("document.querySelectorAll('.jp-Notebook .jp-CodeCell').length")
    page.wait_for_function(
        """(n) => {
            const prompts = [...document.querySelectorAll(
                '.jp-Notebook .jp-CodeCell .jp-InputArea-prompt')];
            const done = prompts.filter(p => /\\[\\d+\\]/.test(p.textContent));
            const w = window.jupyterapp.shell.currentWidget;
            const k = w.sessionContext.session.kernel;
            return done.length === n && k.status === 'idle';
        }""",
        arg=n_code,
        timeout=180_000,
    )
