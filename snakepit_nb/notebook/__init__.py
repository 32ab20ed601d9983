"""The notebook surface: ``%snakepit`` magics, ``%%snakepit_tool``, live widgets, rich reprs.

Nothing here is imported by ``import snakepit_nb``; ``%load_ext snakepit_nb`` loads it.
"""

from __future__ import annotations

from .extension import load_ipython_extension, unload_ipython_extension

__all__ = ["load_ipython_extension", "unload_ipython_extension"]
