"""The DSPy adapter's evaluation and optimization tools (streaming, cancellable)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from typing import Any

from snakepit_nb._errors import InvalidArgumentError
from snakepit_nb.tools.adapter import tool
from snakepit_nb.worker.context import SessionContext

from .background import BackgroundRun
from .catalog import check_params, check_roles
from .devset import devset as shipped_devset
from .devset import trainset as shipped_trainset
from .metrics import resolve_metric
from .models.lm import LMSettings, validate_temperature
from .optimizer import evaluate, optimize, to_examples
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
        metric: str | dict[str, Any] = "exact_match",
        field: str | None = None,
        num_threads: int = 1,
        api_key: str | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """Score the program on ``devset`` (default: the shipped dev set); streams progress.

        Each example streams as it is scored (``inputs``, ``gold``, ``prediction``, ``score``);
        the final value is ``{"score": percent, "rows": [...]}``. ``metric`` is a built-in
        name, a ``"module:function"`` path or a notebook function's ``{"source", "name"}``.
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
        metric: str | dict[str, Any] = "exact_match",
        field: str | None = None,
        params: dict[str, Any] | None = None,
        target: str | None = None,
        num_threads: int = 1,
        teacher_model: dict[str, Any] | str | None = None,
        prompt_model: dict[str, Any] | str | None = None,
        reflection_model: dict[str, Any] | str | None = None,
        api_key: str | None = None,
        model_keys: dict[str, str] | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """Optimize the program; trials stream live and ``<target>.best_score`` rises.

        ``optimizer``: LabeledFewShot, BootstrapFewShot, BootstrapFewShotWithRandomSearch,
        COPRO, MIPROv2, GEPA or SIMBA; ``params`` are its settings. ``teacher_model``,
        ``prompt_model`` and ``reflection_model`` are other models for the optimizer's roles
        (a model name or settings as for ``dspy.configure_lm``; default: the session's
        model); ``model_keys`` their keys by role (used, never stored). The result is
        written to program ``target`` (default: the program itself). Cancelling the stream
        stops the optimizer and leaves the program's variables as they were.
        """
        checked = check_params(optimizer, params)
        roles = {"teacher": teacher_model, "prompt": prompt_model, "reflection": reflection_model}
        check_roles(optimizer, roles)
        models = await asyncio.to_thread(self._role_models, roles, model_keys or {})
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
                    models=models,
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
                    if event["best"] is not None and (best is None or event["best"] > best):
                        best = float(event["best"])
                        # What a live view shows as "the best so far".
                        status.update(
                            best=best,
                            best_instructions=event["instructions"],
                            best_demos=event["demos"],
                        )
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

    def _role_models(
        self, roles: dict[str, dict[str, Any] | str | None], keys: dict[str, str]
    ) -> dict[str, Any]:
        """The LMs for an optimizer's teacher, prompt and reflection roles (given ones only)."""
        models: dict[str, Any] = {}
        for role, given in roles.items():
            if given is None:
                continue
            spec = {"model": given} if isinstance(given, str) else given
            if not isinstance(spec, dict):
                raise InvalidArgumentError(
                    f"{role}_model must be a model name or a dict of settings such as "
                    f"{{'model': 'openai/gpt-4o', 'temperature': 1.0}}, got {spec!r}"
                )
            settings = dict(spec)
            temperature = settings.pop("temperature", None)
            models[role] = self.runtime.lms.lm(
                LMSettings.from_mapping(settings),
                temperature=None if temperature is None else validate_temperature(temperature),
                api_key=keys.get(role),
            )
        return models
