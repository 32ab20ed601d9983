"""The IPython extension: ``%load_ext snakepit_nb``.

Loading is cheap and idempotent: it registers the ``%snakepit`` and ``%%snakepit_tool`` magics
and prepares the shell's runtime (:mod:`snakepit_nb.notebook.runtime`). The worker pool starts with
``%snakepit start`` -- or by itself, with the default settings, the first time a magic needs
it -- or at load when the environment says ``SNAKEPIT_NB_AUTOSTART=1`` (or a worker count).
``%unload_ext`` and ``%reload_ext`` stop what the extension started (views, streams, pool);
so does the end of the kernel (an ``atexit`` hook; workers also watch the kernel's pid and
die with it even on SIGKILL).

The runtime lives in this submodule, not in ``snakepit_nb/__init__.py``, because
``%reload_ext`` re-imports only the top module.
"""

from __future__ import annotations

import atexit
import os
from typing import Any

from snakepit_nb.notebook.runtime import forget, runtime_for, shutdown_all

AUTOSTART_ENV = "SNAKEPIT_NB_AUTOSTART"

_atexit_registered = False


def load_ipython_extension(ipython: Any) -> None:
    """Register the magics (idempotent); start the pool now if SNAKEPIT_NB_AUTOSTART says so."""
    global _atexit_registered
    from snakepit_nb.notebook.magics import SnakepitMagics
    from snakepit_nb.notebook.progress import register_map_progress

    register_map_progress()  # a long s.map shows a progress widget in this kernel
    runtime = runtime_for(ipython)
    ipython.register_magics(SnakepitMagics(ipython, runtime))
    if not _atexit_registered:
        # Runs before IPython's own atexit hook (LIFO) while the loop thread is still alive.
        atexit.register(shutdown_all)
        _atexit_registered = True
    autostart = os.environ.get(AUTOSTART_ENV, "").strip()
    if autostart and autostart not in ("0", "false", "no"):
        if autostart.isdigit() and int(autostart) > 1:
            runtime.settings.workers = int(autostart)
        runtime.ensure_client()


def unload_ipython_extension(ipython: Any) -> None:
    """Stop the views, streams and pool this shell's extension started."""
    runtime = forget(ipython)
    if runtime is not None:
        runtime.shutdown()
