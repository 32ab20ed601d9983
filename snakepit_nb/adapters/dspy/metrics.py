"""Metrics by name: what ``evaluate`` and ``optimize`` score predictions with.

Built in: ``exact_match`` (normalized equality of one output field), ``contains`` (the gold
text appears in the prediction), ``answer_exact_match`` and ``answer_passage_match`` (DSPy's
own). Any importable function ``(example, prediction, trace=None) -> float | bool`` works by
its path, ``"mypkg.metrics:my_metric"`` (it must be importable in the workers).

A function defined in the notebook arrives as its source, ``{"source": "def m(...): ...",
"name": "m"}`` (the notebook helper sends that when given the function itself): it is
compiled in a fresh module of its own in the worker, like a ``%%snakepit_tool`` cell, so the
imports it needs go inside it.
"""

from __future__ import annotations

import hashlib
import importlib
import linecache
import re
import threading
import types
from collections.abc import Callable, Mapping
from typing import Any

from snakepit_nb._errors import InvalidArgumentError

__all__ = ["BUILTIN_METRICS", "Metric", "metric_from_source", "normalize", "resolve_metric"]

Metric = Callable[..., Any]

BUILTIN_METRICS = ("exact_match", "contains", "answer_exact_match", "answer_passage_match")
_SPACES = re.compile(r"\s+")
_MAX_SOURCE = 256 * 1024
_compiled: dict[str, Metric] = {}
_compiled_lock = threading.Lock()


def normalize(text: object) -> str:
    """Lower case, single spaces, no surrounding punctuation: ``" Paris. "`` -> ``"paris"``."""
    return _SPACES.sub(" ", str(text)).strip().strip(".!?\"'").strip().lower()


def _field_value(obj: Any, field: str) -> object:
    try:
        return obj[field]
    except (KeyError, TypeError, IndexError):
        return getattr(obj, field, None)


def _exact_match(field: str) -> Metric:
    def exact_match(example: Any, prediction: Any, trace: Any = None) -> bool:
        return normalize(_field_value(example, field)) == normalize(_field_value(prediction, field))

    return exact_match


def _contains(field: str) -> Metric:
    def contains(example: Any, prediction: Any, trace: Any = None) -> bool:
        gold = normalize(_field_value(example, field))
        return bool(gold) and gold in normalize(_field_value(prediction, field))

    return contains


def metric_from_source(spec: Mapping[str, Any]) -> Metric:
    """Compile a notebook-defined metric (``{"source", "name"}``) in a module of its own."""
    source, name = spec.get("source"), spec.get("name")
    if not isinstance(source, str) or not isinstance(name, str) or not name.isidentifier():
        raise InvalidArgumentError(
            "a metric from the notebook is {'source': 'def my_metric(example, prediction, "
            "trace=None): ...', 'name': 'my_metric'}; pass the function itself to the helper"
        )
    if len(source) > _MAX_SOURCE:
        raise InvalidArgumentError("the metric's source is larger than 256 KB")
    key = hashlib.sha256(f"{name}\0{source}".encode()).hexdigest()
    with _compiled_lock:
        found = _compiled.get(key)
        if found is not None:
            return found
        filename = f"<snakepit-metric {name}#{key[:8]}>"
        module = types.ModuleType(f"snakepit_nb_metric_{key[:8]}")
        try:
            code = compile(source, filename, "exec")
            # The lines stay readable in tracebacks of the metric.
            linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
            exec(code, module.__dict__)
        except Exception as exc:
            raise InvalidArgumentError(
                f"the metric {name!r} from the notebook does not run on its own in the worker "
                f"({type(exc).__name__}: {exc}); put the imports it needs inside the function"
            ) from exc
        metric = module.__dict__.get(name)
        if not callable(metric):
            raise InvalidArgumentError(f"the source of metric {name!r} does not define {name}()")
        if len(_compiled) >= 64:
            _compiled.pop(next(iter(_compiled)))
        _compiled[key] = metric
        return metric  # type: ignore[no-any-return]


def resolve_metric(name: object, *, field: str = "answer") -> Metric:
    """The metric function for a name, an importable ``"module:function"`` path, or a
    notebook function's source (``{"source", "name"}``)."""
    if isinstance(name, Mapping):
        return metric_from_source(name)
    if name == "exact_match":
        return _exact_match(field)
    if name == "contains":
        return _contains(field)
    if name in ("answer_exact_match", "answer_passage_match"):
        from .models.environment import import_dspy

        import_dspy()
        from dspy.evaluate import metrics as dspy_metrics

        metric: Metric = getattr(dspy_metrics, str(name))
        return metric
    if isinstance(name, str) and ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            found = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise InvalidArgumentError(
                f"metric {name!r} cannot be imported in the worker ({exc}); make the module "
                "importable by the workers or use one of " + ", ".join(BUILTIN_METRICS)
            ) from exc
        if not callable(found):
            raise InvalidArgumentError(f"metric {name!r} is not callable")
        return found  # type: ignore[no-any-return]
    raise InvalidArgumentError(
        f"unknown metric {name!r}; use one of {', '.join(BUILTIN_METRICS)} or an importable "
        "'module:function' path"
    )
