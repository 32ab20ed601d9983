"""Evaluation and optimization runs, executed on a ``BackgroundRun`` thread.

Both report progress as events (plain dicts; the adapter yields them as stream chunks):

* ``{"type": "status", "phase": ..., "message": ...}`` when a phase starts;
* ``{"type": "example", "phase": ..., "n": n, "score": s}`` after each metric call;
* ``{"type": "candidate", "phase": ..., "index": i, "score": s, "best": b}`` after each full
  evaluation of a candidate program (the unoptimized baseline, the candidates an optimizer
  evaluates itself, and the optimized result). Scores are percentages, as DSPy reports them.

Cancellation is cooperative: each metric call first checks the run, and an ``emit`` on a
cancelled run raises ``Cancelled`` (a ``BaseException``, which DSPy's error handling lets
through), so an optimizer stops within one LM call of the cancellation.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from snakepit_nb._errors import InvalidArgumentError

from .background import BackgroundRun, Cancelled
from .metrics import Metric

__all__ = ["OPTIMIZERS", "OptimizationOutcome", "Progress", "evaluate", "optimize", "to_examples"]

# The parameters each optimizer accepts from callers (an allow-list: nothing else passes).
OPTIMIZERS: Mapping[str, tuple[str, ...]] = {
    "LabeledFewShot": ("k",),
    "BootstrapFewShot": (
        "max_bootstrapped_demos",
        "max_labeled_demos",
        "max_rounds",
        "max_errors",
        "metric_threshold",
    ),
    "BootstrapFewShotWithRandomSearch": (
        "max_bootstrapped_demos",
        "max_labeled_demos",
        "max_rounds",
        "max_errors",
        "metric_threshold",
        "num_candidate_programs",
        "num_threads",
        "stop_at_score",
    ),
    "COPRO": ("breadth", "depth", "init_temperature"),
}
_TAKES_VALSET = ("BootstrapFewShotWithRandomSearch",)
_TAKES_METRIC = ("BootstrapFewShot", "BootstrapFewShotWithRandomSearch", "COPRO")


def to_examples(rows: object, input_keys: Sequence[str], *, what: str) -> list[Any]:
    """Turn a list of dicts into ``dspy.Example``s with ``input_keys`` as inputs (validated)."""
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        raise InvalidArgumentError(
            f"{what} must be a non-empty list of dicts like "
            f"{{'question': ..., 'answer': ...}}; nothing was changed"
        )
    for i, row in enumerate(rows):
        missing = [k for k in input_keys if k not in row]
        if missing:
            raise InvalidArgumentError(
                f"{what}[{i}] lacks the input key(s) {', '.join(missing)}; every row needs "
                f"{', '.join(input_keys)}"
            )
    from .models.environment import import_dspy

    dspy = import_dspy()
    return [dspy.Example(**row).with_inputs(*input_keys) for row in rows]


def check_params(optimizer: object, params: Mapping[str, object] | None) -> dict[str, object]:
    if optimizer not in OPTIMIZERS:
        raise InvalidArgumentError(
            f"unknown optimizer {optimizer!r}; use one of {', '.join(OPTIMIZERS)}"
        )
    allowed = OPTIMIZERS[str(optimizer)]
    params = dict(params or {})
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise InvalidArgumentError(
            f"{optimizer} does not take {', '.join(unknown)}; it takes {', '.join(allowed)}"
        )
    return params


@dataclass
class Progress:
    """Shared between the metric wrapper, DSPy callbacks and the run: what has happened."""

    run: BackgroundRun
    phase: str = "baseline"
    examples: int = 0
    candidates: int = 0
    best: float | None = None
    scores: list[float] = field(default_factory=list)

    def metric(self, metric: Metric) -> Metric:
        def wrapped(example: Any, prediction: Any, trace: Any = None) -> Any:
            self.run.check()
            value = metric(example, prediction, trace)
            self.examples += 1
            self.run.emit(
                {"type": "example", "phase": self.phase, "n": self.examples, "score": float(value)}
            )
            return value

        return wrapped

    def candidate(self, score: float) -> None:
        self.candidates += 1
        self.scores.append(score)
        if self.best is None or score > self.best:
            self.best = score
        self.run.emit(
            {
                "type": "candidate",
                "phase": self.phase,
                "index": self.candidates,
                "score": score,
                "best": self.best,
            }
        )

    def status(self, phase: str, message: str) -> None:
        self.phase = phase
        self.run.emit({"type": "status", "phase": phase, "message": message})

    def callback(self) -> Any:
        """A DSPy callback that reports every ``Evaluate`` an optimizer runs internally."""
        from dspy.utils.callback import BaseCallback

        progress = self

        class _EvaluateProgress(BaseCallback):  # type: ignore[misc]
            def on_evaluate_end(
                self, call_id: str, outputs: Any, exception: Exception | None = None
            ) -> None:
                score = getattr(outputs, "score", None)
                if exception is None and isinstance(score, int | float):
                    # DSPy swallows callback errors; the next metric call stops the run.
                    with contextlib.suppress(Cancelled):
                        progress.candidate(float(score))

        return _EvaluateProgress()


def evaluate(
    run: BackgroundRun,
    *,
    program: Any,
    lm: Any,
    devset: list[Any],
    metric: Metric,
    num_threads: int = 1,
) -> dict[str, Any]:
    """Score ``program`` on ``devset``; the result has ``score`` and per-example ``results``."""
    import dspy

    progress = Progress(run, phase="evaluate")
    with dspy.context(lm=lm, callbacks=[progress.callback()]):
        result = dspy.Evaluate(
            devset=devset,
            metric=progress.metric(metric),
            num_threads=num_threads,
            display_progress=False,
        )(program)
    return {
        "score": float(result.score),
        "results": [
            {
                "example": dict(example.inputs()),
                "prediction": dict(prediction) if prediction is not None else None,
                "score": float(score) if isinstance(score, int | float) else 0.0,
            }
            for example, prediction, score in result.results
        ],
    }


@dataclass
class OptimizationOutcome:
    program: Any
    baseline: float
    score: float
    best: float
    candidates: int
    seconds: float


def optimize(
    run: BackgroundRun,
    *,
    program: Any,
    lm: Any,
    optimizer: str,
    params: dict[str, object],
    trainset: list[Any],
    valset: list[Any],
    metric: Metric,
    num_threads: int = 1,
) -> OptimizationOutcome:
    """Evaluate the program, compile it with the optimizer, evaluate the result."""
    import dspy

    started = time.perf_counter()
    progress = Progress(run)
    scored = progress.metric(metric)

    def score(candidate: Any) -> float:
        result = dspy.Evaluate(
            devset=valset, metric=scored, num_threads=num_threads, display_progress=False
        )(candidate)
        return float(result.score)

    with dspy.context(lm=lm, callbacks=[progress.callback()]):
        progress.status("baseline", f"scoring the program as it is on {len(valset)} examples")
        baseline = score(program)
        progress.status("compile", f"{optimizer} on {len(trainset)} examples")
        teleprompter = getattr(dspy, optimizer)(
            **({"metric": scored} if optimizer in _TAKES_METRIC else {}), **params
        )
        extra: dict[str, Any] = {}
        if optimizer in _TAKES_VALSET:
            extra["valset"] = valset
        if optimizer == "COPRO":
            extra["eval_kwargs"] = {"num_threads": num_threads, "display_progress": False}
        compiled = teleprompter.compile(program.deepcopy(), trainset=trainset, **extra)
        run.check()
        progress.status("final", f"scoring the optimized program on {len(valset)} examples")
        final = score(compiled)
    return OptimizationOutcome(
        program=compiled,
        baseline=baseline,
        score=final,
        best=progress.best if progress.best is not None else final,
        candidates=progress.candidates,
        seconds=time.perf_counter() - started,
    )
