"""The DSPy adapter's evaluation and optimization tools (streaming, cancellable)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from typing import Any

from snakepit_nb.tools.adapter import tool
from snakepit_nb.worker.context import SessionContext

from .background import BackgroundRun
from .devset import devset as shipped_devset
from .devset import trainset as shipped_trainset
from .metrics import resolve_metric
from .optimizer import check_params, evaluate, optimize, to_examples
from .programs import ProgramVariables, validate_program_name
from .store import Definition
from .toolkit import KNOBS, DSPyToolkit, check_threads, demos_of, quietly, shipped_rows

__all__ = ["TuningTools"]


class TuningTools(DSPyToolkit):
    """``dspy.evaluate`` and ``dspy.optimize``."""

    # -- evaluation and optimization ----------------------------------------------------
    @tool(name="dspy.evaluate", required_variables=KNOBS)
    async def evaluate(
        self,
        ctx: SessionContext,
        *,
        name: str,
        devset: list[dict[str, Any]] | None = None,
        metric: str = "exact_match",
        field: str | None = None,
        num_threads: int = 1,
        api_key: str | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """Score the program on ``devset`` (default: the shipped dev set); streams progress.

        The final value is ``{"score": percent, "results": [...]}``.
        """
        setup = await self._prepare(ctx, name, None, api_key)
        rows = devset if devset is not None else shipped_rows(setup, shipped_devset)
        examples = to_examples(rows, setup.spec["inputs"], what="devset")
        scorer = resolve_metric(metric, field=field or setup.spec["outputs"][-1])
        threads = check_threads(num_threads)
        run = self._start(
            BackgroundRun(
                lambda r: evaluate(
                    r,
                    program=setup.program,
                    lm=setup.lm,
                    devset=examples,
                    metric=scorer,
                    num_threads=threads,
                ),
                name="evaluate",
            )
        )
        try:
            async for event in run:
                yield event
        finally:
            self._stop(run)
        ctx.set_result(run.result)

    @tool(name="dspy.optimize", required_variables=KNOBS)
    async def optimize(
        self,
        ctx: SessionContext,
        *,
        name: str,
        optimizer: str = "BootstrapFewShot",
        trainset: list[dict[str, Any]] | None = None,
        valset: list[dict[str, Any]] | None = None,
        metric: str = "exact_match",
        field: str | None = None,
        params: dict[str, Any] | None = None,
        target: str | None = None,
        num_threads: int = 1,
        api_key: str | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """Optimize the program; progress streams live and ``<target>.best_score`` rises.

        ``optimizer``: BootstrapFewShot, BootstrapFewShotWithRandomSearch, LabeledFewShot or
        COPRO; ``params`` are its settings. The result is written to program ``target``
        (default: the program itself). Cancelling the stream stops the optimizer and leaves
        the program's variables as they were.
        """
        checked = check_params(optimizer, params)
        setup = await self._prepare(ctx, name, None, api_key)
        target = validate_program_name(target or name)
        inputs = setup.spec["inputs"]
        train = to_examples(
            trainset if trainset is not None else shipped_rows(setup, shipped_trainset),
            inputs,
            what="trainset",
        )
        if valset is not None:
            val = to_examples(valset, inputs, what="valset")
        elif trainset is None:
            val = to_examples(shipped_rows(setup, shipped_devset), inputs, what="valset")
        else:
            val = train
        scorer = resolve_metric(metric, field=field or setup.spec["outputs"][-1])
        threads = check_threads(num_threads)
        out = ProgramVariables(target, setup.names.predictors)
        store = self._store(ctx)
        status: dict[str, Any] = {
            "phase": "running",
            "optimizer": optimizer,
            "source": name,
            "candidates": 0,
            "best": None,
            "worker_id": ctx.worker_id,
            "pid": os.getpid(),
            "started_at": time.time(),
        }
        await store.write({out.optimizer_status: status})
        run = self._start(
            BackgroundRun(
                lambda r: optimize(
                    r,
                    program=setup.program,
                    lm=setup.lm,
                    optimizer=optimizer,
                    params=checked,
                    trainset=train,
                    valset=val,
                    metric=scorer,
                    num_threads=threads,
                ),
                name="optimize",
            )
        )
        best: float | None = None
        try:
            async for event in run:
                if event.get("type") == "candidate":
                    status["candidates"] = event["index"]
                    if best is None or event["score"] > best:
                        best = float(event["score"])
                        status["best"] = best
                        await store.write(
                            {out.best_score: best, out.optimizer_status: status},
                            {out.best_score: Definition("float")},
                        )
                        event["improved"] = True
                yield event
        except BaseException as exc:
            self._stop(run)
            cancelled = isinstance(exc, GeneratorExit | asyncio.CancelledError)
            status.update(phase="cancelled" if cancelled else "failed", finished_at=time.time())
            if not cancelled:
                status["error"] = f"{type(exc).__name__}: {exc}"
            await quietly(store.write({out.optimizer_status: status}))
            raise
        outcome = run.result
        spec = dict(setup.spec)
        versions = await self._write_program(ctx, out, spec, outcome.program)
        status.update(phase="done", best=outcome.best, finished_at=time.time())
        await store.write({out.optimizer_status: status})
        self.runtime.forget(ctx.session_id, target)
        ctx.set_result(
            {
                "program": target,
                "baseline": outcome.baseline,
                "score": outcome.score,
                "best_score": outcome.best,
                "candidates": outcome.candidates,
                "seconds": outcome.seconds,
                "demos": {p: len(v) for p, v in demos_of(outcome.program).items()},
                "versions": versions,
            }
        )
