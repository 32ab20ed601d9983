"""``sp.progress(futures)``: a live progress view of many calls.

In a kernel it displays a :class:`~snakepit_nb.notebook.widgets.progress.ProgressView` (a bar
with count, errors, rate and elapsed time) and returns it at once; the calls go on. Anywhere
else it prints the summary to ``sys.stderr`` about once a second until the calls are done,
then returns the tally.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from snakepit_nb.client.futures import SessionFuture, Tally
from snakepit_nb.client.mapping import set_progress_display

__all__ = ["progress", "register_map_progress", "show_tally"]

_pump: Any = None


def _runtime_pump() -> Any:
    """The notebook runtime's UI pump when the extension is loaded, else one of our own."""
    global _pump
    from IPython import get_ipython

    from .runtime import _runtimes

    shell = get_ipython()
    runtime = _runtimes.get(id(shell)) if shell is not None else None
    if runtime is not None and not runtime.closed:
        return runtime.pump
    if _pump is None:
        from .widgets.pump import UIPump

        _pump = UIPump()
    return _pump


def show_tally(tally: Tally) -> Any:
    """Display a live view of ``tally`` in the current cell; returns the view."""
    from .widgets.progress import ProgressView

    pump = _runtime_pump()
    view = ProgressView(tally, pump=pump, loop_thread=pump.loop_thread)
    view.display()
    pump.add(view)
    return view


def progress(calls: Iterable[SessionFuture] | Tally, *, label: str = "calls") -> Any:
    """Show how far ``calls`` (futures of ``s.submit``, or a Tally) got.

    >>> futures = [s.submit("slow", seconds=0.1) for _ in range(50)]
    >>> sp.progress(futures)        # a live bar in a notebook; a text line in a script
    """
    from .widgets.view import in_kernel

    tally = calls if isinstance(calls, Tally) else Tally.of(calls, label)
    if in_kernel():
        return show_tally(tally)
    from .widgets.progress import text_progress

    text_progress(tally)
    return tally


def _show_in_kernel(tally: Tally) -> Any:
    from .widgets.view import in_kernel

    if not in_kernel():
        raise RuntimeError("not in a kernel: the text form is used")
    return show_tally(tally)


def register_map_progress() -> None:
    """Long ``s.map`` calls show :class:`ProgressView` widgets (in a kernel; text elsewhere)."""
    set_progress_display(_show_in_kernel)


register_map_progress()
