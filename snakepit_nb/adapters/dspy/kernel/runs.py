"""Handles on running DSPy work: streams you iterate, results you read, views you look at.

``Program.stream``, ``evaluate`` and ``optimize`` return a ``DSPyRun``: iterate it for the
events as they come (closing it cancels the work), read ``result`` for the final value, and
in a notebook it shows as a table (``views.py``) instead of a list of dicts. ``Evaluation``
adds ``score`` and ``rows``; reading them waits for the end.

``metric_argument`` turns a metric given as a notebook function into its source, which the
workers compile (see ``metrics.py``).
"""

from __future__ import annotations

import inspect
import textwrap
from collections.abc import Iterator
from typing import Any

from .views import render

__all__ = ["DSPyRun", "Evaluation", "metric_argument"]


class DSPyRun:
    """A streaming DSPy call: iterable, closable, with ``result`` and an HTML view."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    # -- the stream --------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        return next(self._stream)

    def close(self) -> None:
        """Stop the work (an optimization leaves the program as it was)."""
        self._stream.close()

    def __enter__(self) -> DSPyRun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def tool(self) -> str:
        return str(self._stream.tool)

    @property
    def chunks(self) -> list[Any]:
        """Every event received so far."""
        return list(self._stream.chunks)

    @property
    def done(self) -> bool:
        return bool(self._stream.done)

    @property
    def result(self) -> Any:
        """The final value; waits for the end of the stream first."""
        return self._stream.result

    # -- what a person sees ------------------------------------------------------------------
    def __repr__(self) -> str:
        state = "done" if self.done else "running"
        return f"<{type(self).__name__} {self.tool} {state}, {len(self.chunks)} events>"

    def _repr_html_(self) -> str:
        done = self.done
        html = render(self.tool, self.chunks, self._stream.result if done else None, done)
        return html if html is not None else f"<pre>{self!r}</pre>"


class Evaluation(DSPyRun):
    """``dspy.evaluate``: ``score`` (a percentage) and ``rows`` (one dict per example)."""

    @property
    def score(self) -> float:
        return float(self.result["score"])

    @property
    def rows(self) -> list[dict[str, Any]]:
        """Each example's ``inputs``, ``gold`` labels, ``prediction`` and ``score``."""
        return list(self.result["rows"])


def metric_argument(metric: Any) -> Any:
    """A metric as the workers take it: names and paths as they are, functions as source."""
    if not callable(metric):
        return metric
    name = getattr(metric, "__name__", "")
    if not name.isidentifier():
        raise ValueError(
            "a metric function needs a name (def my_metric(example, prediction, trace=None): "
            "...); a lambda cannot be sent to the workers"
        )
    try:
        source = textwrap.dedent(inspect.getsource(metric))
    except (OSError, TypeError) as exc:
        raise ValueError(
            f"the source of metric {name!r} is not available to send to the workers ({exc}); "
            "define it in a notebook cell or a file, or pass 'module:function'"
        ) from exc
    return {"source": source, "name": name}
