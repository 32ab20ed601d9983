"""DSPy's response cache, shared by every worker and kept after the pool stops.

DSPy caches LM responses in memory and in a ``diskcache`` folder. Workers keep only the disk
tier, in one folder: a response one worker received is what any other worker (or the next
pool, after a restart of the kernel) gets for the same request, without sending it again. A
per-process memory tier would make a cleared cache keep answering in the other workers.

The folder is ``DSPY_CACHEDIR`` when set (pass it to the workers with
``sp.start(env={"DSPY_CACHEDIR": ...})`` or set it in the kernel before starting), else
``snakepit_nb/dspy`` under the user's cache folder (``$XDG_CACHE_HOME`` or ``~/.cache``).
Entries are unpickled with DSPy's restricted unpickler (known-safe types only), since the
folder is a file-system path rather than one of our authenticated processes.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from .environment import default_cache_dir, import_dspy

__all__ = ["cache_info", "clear_cache", "default_cache_dir", "ensure_shared_cache"]

_lock = threading.Lock()
_configured: str | None = None


def ensure_shared_cache() -> Any:
    """Point this process's ``dspy.cache`` at the shared folder (disk only); returns it."""
    global _configured
    dspy = import_dspy()
    folder = default_cache_dir()
    with _lock:
        if _configured != folder:
            Path(folder).mkdir(parents=True, exist_ok=True)
            dspy.configure_cache(
                enable_disk_cache=True,
                enable_memory_cache=False,
                disk_cache_dir=folder,
                restrict_pickle=True,
            )
            _configured = folder
    return dspy.cache


def cache_info() -> dict[str, Any]:
    """The shared cache's folder, entry count and size on disk."""
    disk = ensure_shared_cache().disk_cache
    return {"dir": default_cache_dir(), "entries": len(disk), "bytes": int(disk.volume())}


def clear_cache() -> dict[str, Any]:
    """Remove every cached response (for all workers); returns what was removed."""
    disk = ensure_shared_cache().disk_cache
    before = cache_info()
    removed = int(disk.clear())
    return {"dir": before["dir"], "removed": removed, "bytes_before": before["bytes"]}
