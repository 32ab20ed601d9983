"""The process environment DSPy runs in: offline settings, a lazy import, a network guard.

DSPy and LiteLLM reach for the network on their own (a model-price JSON on GitHub, LiteLLM's
import) unless ``LITELLM_LOCAL_MODEL_COST_MAP=True`` is set, and DSPy's disk cache defaults to
``~/.dspy_cache``. ``prepare_environment`` sets safe defaults (never overriding what the user
set) before DSPy is imported: in every worker, and in the kernel when the notebook side is
used (so a user's own ``import dspy`` there is offline too). ``import_dspy`` imports it once,
on first use, so a worker whose tools never touch DSPy starts as fast as any other.

``install_network_guard`` is an audit hook that refuses every connection and name lookup to a
non-loopback host. Workers arm it when ``SNAKEPIT_NB_NO_NETWORK=1`` (the test suite sets it);
each refusal is appended to the file named by ``SNAKEPIT_NB_NETWORK_LOG``, so a test can assert
that nothing tried.
"""

from __future__ import annotations

import ipaddress
import os
import sys
import threading
import time
import types
from pathlib import Path
from typing import Any

__all__ = [
    "NETWORK_ENV",
    "NETWORK_LOG_ENV",
    "NetworkBlockedError",
    "default_cache_dir",
    "dspy_import_seconds",
    "import_dspy",
    "install_network_guard",
    "network_guard_installed",
    "prepare_environment",
]

NETWORK_ENV = "SNAKEPIT_NB_NO_NETWORK"
NETWORK_LOG_ENV = "SNAKEPIT_NB_NETWORK_LOG"
INSTALL_HINT = "install it with `pip install snakepit_nb[dspy]` (or `pip install dspy`)"

_lock = threading.Lock()
_dspy: types.ModuleType | None = None
_import_seconds: float | None = None
_guard_installed = False


class NetworkBlockedError(PermissionError):
    """A non-loopback connection or name lookup was refused by the network guard."""


def default_cache_dir() -> str:
    """DSPy's response cache folder: ``DSPY_CACHEDIR``, else ``<user cache>/snakepit_nb/dspy``.

    One folder for every worker and every pool (see ``cache.py``).
    """
    explicit = os.environ.get("DSPY_CACHEDIR")
    if explicit:
        return explicit
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return str(Path(base) / "snakepit_nb" / "dspy")


def prepare_environment() -> None:
    """Set DSPy's offline defaults in ``os.environ`` unless the user already set them."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    # LiteLLM in its default DEV mode loads a .env from the working directory on import.
    os.environ.setdefault("LITELLM_MODE", "PRODUCTION")
    # One cache folder for every worker and every pool (see cache.py).
    os.environ.setdefault("DSPY_CACHEDIR", default_cache_dir())


def import_dspy() -> types.ModuleType:
    """Import DSPy once (about a second) and return the module.

    Raises ImportError naming the extra to install when DSPy is missing.
    """
    global _dspy, _import_seconds
    if _dspy is not None:
        return _dspy
    with _lock:
        if _dspy is None:
            prepare_environment()
            started = time.perf_counter()
            try:
                import dspy
            except ImportError as exc:
                raise ImportError(
                    f"DSPy is not installed in this worker's Python ({sys.executable}); "
                    f"{INSTALL_HINT}"
                ) from exc
            _import_seconds = time.perf_counter() - started
            _dspy = dspy
    return _dspy


def dspy_import_seconds() -> float | None:
    """How long ``import dspy`` took in this process (None if not imported through us yet)."""
    return _import_seconds


def _is_loopback_host(host: object) -> bool:
    if host is None:
        return True  # getaddrinfo(None, port) resolves the local wildcard/loopback address
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if not isinstance(host, str):
        return False
    host = host.strip("[]").lower()
    if host in ("localhost", "") or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def _refusal(event: str, args: tuple[Any, ...]) -> str | None:
    """The reason to refuse an audited operation, or None to allow it."""
    if event == "socket.connect":
        address = args[1] if len(args) > 1 else None
        if isinstance(address, tuple) and address and not _is_loopback_host(address[0]):
            return f"connect to {address[0]}:{address[1] if len(address) > 1 else ''}"
        return None  # unix sockets and loopback
    if event == "socket.getaddrinfo":
        return None if _is_loopback_host(args[0] if args else None) else f"lookup {args[0]}"
    if event == "socket.gethostbyname":
        return None if _is_loopback_host(args[0] if args else None) else f"lookup {args[0]}"
    if event == "urllib.Request":
        url = str(args[0]) if args else ""
        from urllib.parse import urlsplit

        host = urlsplit(url).hostname
        return None if _is_loopback_host(host) else f"request {url}"
    return None


def install_network_guard(log_path: str | None = None) -> None:
    """Refuse non-loopback network access in this process from now on (cannot be undone)."""
    global _guard_installed
    if _guard_installed:
        return
    log_path = log_path if log_path is not None else os.environ.get(NETWORK_LOG_ENV)
    watched = {
        "socket.connect",
        "socket.getaddrinfo",
        "socket.gethostbyname",
        "urllib.Request",
    }

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event not in watched:
            return
        reason = _refusal(event, args)
        if reason is None:
            return
        if log_path:
            # The audit hook must not recurse into audited calls; plain file I/O is not one.
            with open(log_path, "a", encoding="utf-8") as log:
                log.write(f"{os.getpid()} {event} {reason}\n")
        raise NetworkBlockedError(
            f"network access refused by snakepit_nb's offline guard ({reason}); unset "
            f"{NETWORK_ENV} to allow it"
        )

    sys.addaudithook(hook)
    _guard_installed = True


def network_guard_installed() -> bool:
    """Whether this process refuses non-loopback network access."""
    return _guard_installed
