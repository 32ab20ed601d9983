"""The "Python (snakepit)" Jupyter kernelspec: an IPython kernel that loads snakepit_nb at start.

Install it with ``snakepit-nb install-kernel --user`` (or ``--sys-prefix``, ``--prefix P``);
then pick "Python (snakepit)" in JupyterLab's launcher and ``%snakepit`` works in the first
cell, no ``%load_ext`` needed. The kernel runs the interpreter that installed it, so
snakepit_nb and its workers use the same environment.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

KERNEL_NAME = "snakepit"
DISPLAY_NAME = "Python (snakepit)"

__all__ = ["DISPLAY_NAME", "KERNEL_NAME", "install", "kernel_json"]


def kernel_json(python: str | None = None, display_name: str = DISPLAY_NAME) -> dict[str, Any]:
    """The kernel.json contents: ipykernel with the snakepit_nb extension loaded at start."""
    return {
        "argv": [
            python or sys.executable,
            "-m",
            "ipykernel_launcher",
            "-f",
            "{connection_file}",
            "--ext",
            "snakepit_nb",
        ],
        "display_name": display_name,
        "language": "python",
        "interrupt_mode": "signal",
        "metadata": {"debugger": True, "snakepit_nb": {"extension": "snakepit_nb"}},
    }


def install(
    *,
    user: bool = False,
    prefix: str | None = None,
    name: str = KERNEL_NAME,
    display_name: str = DISPLAY_NAME,
    python: str | None = None,
) -> str:
    """Install the kernelspec; returns the directory it was written to.

    ``user=True`` installs for the current user, ``prefix`` under ``<prefix>/share/jupyter``
    (pass ``sys.prefix`` for the active environment); neither: the system-wide location.
    """
    from jupyter_client.kernelspec import KernelSpecManager

    if user and prefix:
        raise ValueError("install the kernel either for the user or under a prefix, not both")
    with tempfile.TemporaryDirectory() as tmp:
        spec_dir = Path(tmp) / name
        spec_dir.mkdir()
        spec = kernel_json(python, display_name)
        (spec_dir / "kernel.json").write_text(json.dumps(spec, indent=2) + "\n")
        dest = KernelSpecManager().install_kernel_spec(
            str(spec_dir), kernel_name=name, user=user, prefix=prefix
        )
    return str(dest)
