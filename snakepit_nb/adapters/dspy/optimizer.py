"""Evaluation and optimization runs, executed on a ``BackgroundRun`` thread.

Both report progress as events (plain dicts; the adapter yields them as stream chunks):

* ``{"type": "status", "phase": ..., "message": ...}`` when a phase starts;
* ``{"type": "example", "phase": ..., "n": n, "score": s}`` after each metric call;
* ``{"type": "candidate", "phase": ..., "index": i, "score": s, "best": b, "full": bool,
  "size": n, "instructions": {predictor: text}, "demos": {predictor: count}}`` after each
  evaluation of a candidate program: the unoptimized baseline, every trial the optimizer
  evaluates (with the instructions and demos it tried), and the optimized result. ``full``
  says the candidate was scored on the whole validation set; ``best`` is the best full score
  so far (mini-batch scores are shown but do not count). Scores are percentages, as DSPy
  reports them.

Trials come from DSPy's own ``Evaluate`` calls (a callback sees the program each starts on);
SIMBA scores its candidates without ``Evaluate``, so its trials are read from its log lines.

Cancellation is cooperative: each metric call first checks the run, and an ``emit`` on a
cancelled run raises ``Cancelled`` (a ``BaseException``, which DSPy's error handling lets
through), so an optimizer stops within one LM call of the cancellation.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import re
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from snakepit_nb._errors import InvalidArgumentError

from .background import BackgroundRun, Cancelled
from .catalog import build
from .metrics import Metric

__all__ = ["OptimizationOutcome", "Progress", "evaluate", "optimize", "to_examples"]

_SIMBA_SCORES = re.compile(r"Scores after (\d+) batches: \[([^\]]*)\], Best: ([\d.]+)")


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


def snapshot(program: Any) -> tuple[dict[str, str], dict[str, int]]:
    """A candidate's instructions and demo counts, per predictor."""
    instructions: dict[str, str] = {}
    demos: dict[str, int] = {}
    with contextlib.suppress(Exception):  # not a DSPy module: nothing to show
        for name, predictor in program.named_predictors():
            instructions[name] = str(predictor.signature.instructions)
            demos[name] = len(predictor.demos)
    return instructions, demos


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    text = str(value)
    return text if len(text) <= 2000 else text[:2000] + "..."


def row_of(example: Any, prediction: Any) -> dict[str, Any]:
    """One example of an evaluation: its inputs, the gold labels and the prediction."""
    inputs = dict(example.inputs())
    labels = {k: v for k, v in dict(example.labels()).items() if k not in inputs}
    try:
        predicted = dict(prediction) if prediction is not None else None
    except (TypeError, ValueError):
        predicted = {"value": prediction}
    return {"inputs": _plain(inputs), "gold": _plain(labels), "prediction": _plain(predicted)}


def _accepts_five(metric: Metric) -> bool:
    try:
        inspect.signature(metric).bind(None, None, None, None, None)
    except (TypeError, ValueError):
        return False
    return True


def _score_of(value: Any) -> float:
    """A metric's value as a number (GEPA metrics may return a Prediction with ``score``)."""
    value = getattr(value, "score", value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


@dataclass
class Progress:
    """Shared between the metric wrapper, DSPy callbacks and the run: what has happened."""

    run: BackgroundRun
    phase: str = "baseline"
    examples: int = 0
    candidates: int = 0
    best: float | None = None
    full_size: int = 0
    detail: bool = False
    scores: list[float] = field(default_factory=list)
    _started: dict[str, tuple[dict[str, str], dict[str, int], int]] = field(default_factory=dict)

    def metric(self, metric: Metric) -> Metric:
        five = _accepts_five(metric)

        # GEPA binds its metric to five arguments; the others pass three.
        def wrapped(
            example: Any,
            prediction: Any,
            trace: Any = None,
            pred_name: Any = None,
            pred_trace: Any = None,
        ) -> Any:
            self.run.check()
            if five:
                value = metric(example, prediction, trace, pred_name, pred_trace)
            else:
                value = metric(example, prediction, trace)
            self.examples += 1
            event: dict[str, Any] = {
                "type": "example",
                "phase": self.phase,
                "n": self.examples,
                "score": _score_of(value),
            }
            if self.detail:  # an evaluation shows each example as it is scored
                event.update(total=self.full_size, **row_of(example, prediction))
            self.run.emit(event)
            # A bool is a score to DSPy, but GEPA would show the model "a score of True".
            return float(value) if isinstance(value, bool) else value

        return wrapped

    def candidate(
        self,
        score: float,
        *,
        size: int = 0,
        instructions: dict[str, str] | None = None,
        demos: dict[str, int] | None = None,
    ) -> None:
        self.candidates += 1
        self.scores.append(score)
        full = size == 0 or size >= self.full_size
        if full and (self.best is None or score > self.best):
            self.best = score
        self.run.emit(
            {
                "type": "candidate",
                "phase": self.phase,
                "index": self.candidates,
                "score": score,
                "best": self.best,
                "full": full,
                "size": size,
                "instructions": instructions or {},
                "demos": demos or {},
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
            def on_evaluate_start(
                self, call_id: str, instance: Any, inputs: dict[str, Any]
            ) -> None:
                instructions, demos = snapshot(inputs.get("program"))
                size = len(getattr(instance, "devset", None) or ())
                progress._started[call_id] = (instructions, demos, size)

            def on_evaluate_end(
                self, call_id: str, outputs: Any, exception: Exception | None = None
            ) -> None:
                instructions, demos, size = progress._started.pop(call_id, ({}, {}, 0))
                score = getattr(outputs, "score", None)
                if exception is None and isinstance(score, int | float):
                    # DSPy swallows callback errors; the next metric call stops the run.
                    with contextlib.suppress(Cancelled):
                        progress.candidate(
                            float(score), size=size, instructions=instructions, demos=demos
                        )

        return _EvaluateProgress()

    @contextlib.contextmanager
    def simba_trials(self) -> Iterator[None]:
        """Turn SIMBA's per-batch score lines (logged by the run's thread) into trials."""
        progress, thread = self, threading.get_ident()

        class _Scores(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                if record.thread != thread:
                    return
                found = _SIMBA_SCORES.search(record.getMessage())
                if found is None:
                    return
                with contextlib.suppress(Cancelled):
                    progress.candidate(float(found.group(3)) * 100, size=-1)

        handler = _Scores(logging.INFO)
        logger = logging.getLogger("dspy.teleprompt.simba")
        level = logger.level
        logger.addHandler(handler)
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)
        try:
            yield
        finally:
            logger.removeHandler(handler)
            logger.setLevel(level)


def evaluate(
    run: BackgroundRun,
    *,
    program: Any,
    lm: Any,
    devset: list[Any],
    metric: Metric,
    num_threads: int = 1,
) -> dict[str, Any]:
    """Score ``program`` on ``devset``; the result has ``score`` (a percentage) and ``rows``:
    each example's ``inputs``, ``gold`` labels, ``prediction`` and ``score``."""
    import dspy

    progress = Progress(run, phase="evaluate", full_size=len(devset), detail=True)
    with dspy.context(lm=lm, callbacks=[progress.callback()]):
        result = dspy.Evaluate(
            devset=devset,
            metric=progress.metric(metric),
            num_threads=num_threads,
            display_progress=False,
        )(program)
    return {
        "score": float(result.score),
        "rows": [
            {
                **row_of(example, prediction),
                "score": _score_of(score) if score is not None else 0.0,
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
    models: Mapping[str, Any] | None = None,
    num_threads: int = 1,
) -> OptimizationOutcome:
    """Evaluate the program, compile it with the optimizer, evaluate the result."""
    import dspy

    started = time.perf_counter()
    progress = Progress(run, full_size=len(valset))
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
        teleprompter, compile_kwargs = build(
            optimizer,
            params,
            metric=scored,
            task_lm=lm,
            models=models or {},
            trainset=trainset,
            valset=valset,
            num_threads=num_threads,
        )
        trials = progress.simba_trials() if optimizer == "SIMBA" else contextlib.nullcontext()
        with trials:
            try:
                compiled = teleprompter.compile(
                    program.deepcopy(), trainset=trainset, **compile_kwargs
                )
            except (TypeError, ValueError, AssertionError) as exc:
                raise InvalidArgumentError(
                    f"{optimizer} could not run with these settings: {type(exc).__name__}: "
                    f"{exc}; nothing was changed"
                ) from exc
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
