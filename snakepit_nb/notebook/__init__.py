"""The notebook surface: ``%snakepit`` magics, ``%%snakepit_tool``, live widgets, rich reprs.

Nothing here is imported by ``import snakepit_nb``; ``%load_ext snakepit_nb`` loads it
(:mod:`.extension`). The shell's state lives in :mod:`.runtime`, the commands in :mod:`.magics`,
the live views in :mod:`.widgets`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["load_ipython_extension", "unload_ipython_extension"]


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext snakepit_nb.notebook`` does what ``%load_ext snakepit_nb`` does."""
    from snakepit_nb.notebook.extension import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    from snakepit_nb.notebook.extension import unload_ipython_extension as unload

    unload(ipython)
