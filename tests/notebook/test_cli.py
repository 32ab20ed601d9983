"""``snakepit-nb``: the kernelspec installer and the headless notebook runner."""

from __future__ import annotations

import json
from pathlib import Path

import paths
import pytest
from IPython.core.interactiveshell import InteractiveShell

from snakepit_nb.cli import main
from snakepit_nb.notebook.runtime import runtime_for

pytestmark = pytest.mark.notebook

ROOT = paths.ROOT


def test_install_kernel_writes_the_snakepit_kernelspec(tmp_path: Path, capsys):
    assert main(["install-kernel", "--prefix", str(tmp_path)]) == 0
    spec = json.loads((tmp_path / "share/jupyter/kernels/snakepit/kernel.json").read_text())
    assert spec["display_name"] == "Python (snakepit)"
    assert spec["argv"][1:4] == ["-m", "ipykernel_launcher", "-f"]
    assert spec["argv"][-2:] == ["--ext", "snakepit_nb"]
    assert "installed kernelspec 'snakepit'" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["install-kernel", "--user", "--prefix", str(tmp_path)])  # one place only


@pytest.mark.slow
def test_run_notebook_writes_an_html_copy_with_the_widget_state(tmp_path: Path):
    html_path = tmp_path / "quickstart.html"
    out = tmp_path / "quickstart.ipynb"
    code = main(
        ["run-notebook", str(ROOT / "notebooks/quickstart.ipynb"), "--html", str(html_path),
         "--output", str(out)]
    )  # fmt: skip
    assert code == 0
    page = html_path.read_text()
    assert "application/vnd.jupyter.widget-state+json" in page
    assert "snakepit-stream-value" in page  # the final stream value is in the saved state
    assert json.loads(out.read_text())["cells"][3]["outputs"]
    assert main(["run-notebook", str(tmp_path / "missing.ipynb")]) == 2


def test_autostart_env_starts_the_pool_at_load(monkeypatch: pytest.MonkeyPatch):
    shell = InteractiveShell.instance()
    if "snakepit_nb" in shell.extension_manager.loaded:
        shell.run_line_magic("unload_ext", "snakepit_nb")
    monkeypatch.setenv("SNAKEPIT_NB_AUTOSTART", "1")
    shell.run_line_magic("load_ext", "snakepit_nb")
    try:
        runtime = runtime_for(shell)
        assert runtime.running()
        assert len(runtime.client.status().workers) == runtime.settings.workers
    finally:
        shell.run_line_magic("unload_ext", "snakepit_nb")
    assert not runtime.running()
