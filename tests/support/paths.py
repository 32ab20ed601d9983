"""Where things are, for tests at any depth of the tree (not a test module)."""

from __future__ import annotations

from pathlib import Path

#: tests/support: the adapters and helpers that worker processes import through PYTHONPATH.
SUPPORT = Path(__file__).resolve().parent
#: The repository's root.
ROOT = SUPPORT.parents[1]
