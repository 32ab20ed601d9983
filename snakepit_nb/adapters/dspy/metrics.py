"""Metrics by name: what ``evaluate`` and ``optimize`` score predictions with.

Built in: ``exact_match`` (normalized equality of one output field), ``contains`` (the gold
text appears in the prediction), ``answer_exact_match`` and ``answer_passage_match`` (DSPy's
own). Any importable function ``(example, prediction, trace=None) -> float | bool`` works by
its path, ``"mypkg.metrics:my_metric"`` (it must be importable in the workers).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from typing import Any

from snakepit_nb._errors import InvalidArgumentError

__all__ = ["BUILTIN_METRICS", "Metric", "normalize", "resolve_metric"]

Metric = Callable[..., Any]

BUILTIN_METRICS = ("exact_match", "contains", "answer_exact_match", "answer_passage_match")
_SPACES = re.compile(r"\s+")


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


def resolve_metric(name: object, *, field: str = "answer") -> Metric:
    """The metric function for a name or an importable ``"module:function"`` path."""
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
