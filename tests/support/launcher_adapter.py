"""A minimal adapter for the real-worker launcher tests (no tests here).

The worker imports it as ``launcher_adapter:LauncherTestAdapter`` with this directory on
its PYTHONPATH, so the launcher tests do not depend on the showcase adapter.
"""

from __future__ import annotations

import os

from snakepit_nb.worker import Adapter, tool


class LauncherTestAdapter(Adapter):
    @tool
    def whoami(self) -> int:
        """The worker's pid."""
        return os.getpid()
