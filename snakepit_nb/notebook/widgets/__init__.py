"""Live widgets (stream, variable watch, pool status) and the UI pump that feeds them."""

from __future__ import annotations

from .pump import UIPump

__all__ = ["UIPump"]
