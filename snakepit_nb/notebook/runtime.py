"""The notebook's runtime state: one :class:`NotebookRuntime` per IPython shell.

It holds what the magics work with (the client, the current session, live views and streams,
the UI pump, ``%snakepit config`` settings). The extension (:mod:`.extension`) creates and
shuts it down; the magics (:mod:`.magics`) only use it, so neither imports the other.
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from snakepit_nb._loop import get_loop_thread
from snakepit_nb.notebook.widgets.pump import DEFAULT_BUDGET, DEFAULT_HZ, UIPump

__all__ = [
    "DEFAULT_SESSION",
    "NotebookRuntime",
    "NotebookSettings",
    "forget",
    "runtime_for",
    "shutdown_all",
]

NONINTERACTIVE_ENV = "SNAKEPIT_NONINTERACTIVE"
DEFAULT_SESSION = "notebook"


@dataclass
class NotebookSettings:
    """What ``%snakepit config`` shows and changes."""

    workers: int = 2
    adapter: str = "snakepit_nb.adapters.showcase:ShowcaseAdapter"
    python: str | None = None
    start_options: dict[str, Any] = field(default_factory=dict)
    ui_hz: float = DEFAULT_HZ
    ui_budget: float = DEFAULT_BUDGET
    tail_lines: int = 12
    interactive: bool = True

    def as_dict(self) -> dict[str, Any]:
        return {
            "workers": self.workers,
            "adapter": self.adapter,
            "python": self.python,
            "start_options": dict(self.start_options),
            "ui_hz": self.ui_hz,
            "ui_budget": self.ui_budget,
            "tail_lines": self.tail_lines,
            "interactive": self.interactive,
        }


class NotebookRuntime:
    """What the extension owns in one shell: the client, the current session, live views.

    Magics reach it through :func:`runtime_for`. ``client`` is ``None`` until the pool starts.
    """

    def __init__(self, shell: Any) -> None:
        self.shell = shell
        self.settings = NotebookSettings()
        self.settings.interactive = os.environ.get(NONINTERACTIVE_ENV, "") in ("", "0")
        self.client: Any = None
        self.sessions: dict[str, Any] = {}
        self.current_session = DEFAULT_SESSION
        self.pump = UIPump(hz=self.settings.ui_hz, budget=self.settings.ui_budget)
        self.views: list[Any] = []
        self.streams: list[Any] = []
        #: True when the running pool was started by a command that needed one, not by start.
        self.implicit = False
        self._lock = threading.RLock()
        self.closed = False

    # -- the pool ---------------------------------------------------------------------------
    def start(self, **overrides: Any) -> Any:
        """Start the pool with the settings (``overrides`` win); returns the client."""
        from snakepit_nb.client import start

        with self._lock:
            if self.client is not None and not getattr(self.client, "closed", False):
                return self.client
            options: dict[str, Any] = {
                "workers": self.settings.workers,
                "adapter": self.settings.adapter,
                **self.settings.start_options,
            }
            if self.settings.python:
                options["python"] = self.settings.python
            options.update({k: v for k, v in overrides.items() if v is not None})
            self.client = start(**options)
            self.implicit = False
            self.sessions.clear()
            self.closed = False
            return self.client

    def running(self) -> bool:
        return self.client is not None and not getattr(self.client, "closed", False)

    def ensure_client(self, announce: Callable[[str], None] | None = None) -> Any:
        """The running client; starts the pool with the defaults on first use."""
        if self.running():
            return self.client
        if announce is not None:
            announce(
                f"snakepit: no pool was running, so this starts one: {self.settings.workers} "
                f"workers ({self.settings.adapter}); start your own with "
                "%snakepit start --restart -n N --adapter X"
            )
        client = self.start()
        self.implicit = True
        return client

    def stop(self) -> bool:
        """Stop views, streams and the pool; returns whether a pool was running."""
        with self._lock:
            for handle in list(self.streams):
                handle.cancel()
            self.streams.clear()
            views, self.views = list(self.views), []
            for view in views:
                stop = getattr(view, "stop", None)
                if stop is not None:
                    stop()
                else:
                    view.close()
            if views and get_loop_thread().is_alive():
                # Their final states go out now, while this cell runs: a saved notebook shows
                # "pool stopped", not the last live frame, nor one a render between two
                # cells left out (see UIPump.resend_unsaved).
                with contextlib.suppress(Exception):
                    self.pump.wait_idle(timeout=5, resend=True)
                # And whatever a view's own end left undone (a feed that ended late): its
                # last frame and fallbacks, rendered on the loop before this cell returns.
                with contextlib.suppress(Exception):
                    get_loop_thread().run(_final_frames(views), timeout=5)
            client, self.client = self.client, None
            self.sessions.clear()
            if client is None or getattr(client, "closed", False):
                return False
            client.close()
            return True

    def shutdown(self) -> None:
        """Stop everything (unload, kernel exit); never raises."""
        if self.closed:
            return
        self.closed = True
        try:
            self.stop()
        finally:
            thread = get_loop_thread()
            if thread.is_alive():
                # The loop may be going away with the process: nothing left to stop then.
                with contextlib.suppress(Exception):
                    thread.run(self.pump.aclose(), timeout=5)

    # -- sessions ---------------------------------------------------------------------------
    def session(
        self, name: str | None = None, *, announce: Callable[[str], None] | None = None
    ) -> Any:
        """The named session (the current one by default), created if needed."""
        client = self.ensure_client(announce)
        sid = name or self.current_session
        with self._lock:
            session = self.sessions.get(sid)
            if session is None:
                session = client.session(sid)
                self.sessions[sid] = session
            return session

    # -- live views -------------------------------------------------------------------------
    def track(self, view: Any) -> None:
        with self._lock:
            self.views = [v for v in self.views if not v.finished()]
            self.views.append(view)
        self.pump.add(view)

    def track_stream(self, handle: Any) -> None:
        with self._lock:
            self.streams = [h for h in self.streams if not h.done()]
            self.streams.append(handle)

    def apply_ui_settings(self) -> None:
        self.pump.hz = self.settings.ui_hz
        self.pump.budget = self.settings.ui_budget


_runtimes: dict[int, NotebookRuntime] = {}
_shells: dict[int, weakref.ref[Any]] = {}


def runtime_for(shell: Any) -> NotebookRuntime:
    """The runtime of ``shell`` (created on first use)."""
    key = id(shell)
    runtime = _runtimes.get(key)
    if runtime is None or runtime.closed:
        runtime = NotebookRuntime(shell)
        _runtimes[key] = runtime
        _shells[key] = weakref.ref(shell)
    return runtime


def forget(shell: Any) -> NotebookRuntime | None:
    """Drop ``shell``'s runtime (``%unload_ext``); returns it so the caller can shut it down."""
    key = id(shell)
    _shells.pop(key, None)
    return _runtimes.pop(key, None)


def shutdown_all() -> None:
    """Shut every shell's runtime down (the kernel is exiting)."""
    for runtime in list(_runtimes.values()):
        runtime.shutdown()
    _runtimes.clear()


async def _final_frames(views: list[Any]) -> None:
    for view in views:
        with contextlib.suppress(Exception):
            if view.pending():
                view.render()
            refresh = getattr(view, "refresh_fallback", None)
            if refresh is not None:
                refresh()
