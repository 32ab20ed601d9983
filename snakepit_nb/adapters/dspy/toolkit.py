"""The base of the DSPy adapter: the worker's DSPy state and what every tool shares.

``DSPyToolkit`` holds the per-worker ``Runtime`` (built LMs, rebuilt programs, prompts seen)
and the running background work; the tools themselves live in ``adapter.py``, ``tuning.py``
and ``saving.py``, combined into ``DSPyAdapter``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from typing import Any

from snakepit_nb._errors import InvalidArgumentError
from snakepit_nb.tools.adapter import Adapter
from snakepit_nb.worker.context import SessionContext

from .background import BackgroundRun
from .models import environment
from .models.lm import LM_VARIABLE, TEMPERATURE_VARIABLE
from .programs import ProgramVariables, decompose_program
from .runtime import CallSetup, Runtime
from .store import Definition, VariableStore

__all__ = ["KNOBS", "DSPyToolkit"]

# Sent along with each call by the orchestrator (no round trip to read them).
KNOBS = (LM_VARIABLE, TEMPERATURE_VARIABLE)


class DSPyToolkit(Adapter):
    """Worker state and helpers shared by the DSPy tools."""

    def __init__(self) -> None:
        if os.environ.get(environment.NETWORK_ENV) == "1":
            environment.install_network_guard()
        import importlib.util

        if importlib.util.find_spec("dspy") is None:
            raise ImportError(
                "the DSPy adapter needs DSPy, which is not installed in the worker's Python; "
                + environment.INSTALL_HINT
            )
        environment.prepare_environment()
        self.runtime = Runtime()
        self._runs: set[BackgroundRun] = set()

    def setup(self) -> None:
        if os.environ.get("SNAKEPIT_NB_DSPY_PRELOAD") == "1":
            import threading

            threading.Thread(target=environment.import_dspy, daemon=True).start()

    def teardown(self) -> None:
        for run in self._runs:
            run.cancel()

    async def _write_program(
        self, ctx: SessionContext, names: ProgramVariables, spec: dict[str, Any], program: Any
    ) -> dict[str, int]:
        state, instructions, demos = await asyncio.to_thread(decompose_program, program)
        values: dict[str, Any] = {names.spec: spec, names.state: state}
        definitions = {names.spec: Definition("map"), names.state: Definition("map")}
        for predictor in names.predictors:
            values[names.instructions(predictor)] = instructions[predictor]
            values[names.demos(predictor)] = demos[predictor]
            definitions[names.instructions(predictor)] = Definition("string")
            definitions[names.demos(predictor)] = Definition("list")
        store = self._store(ctx)
        versions = await store.write(values, definitions, skip_unchanged=True)
        # Progress variables exist from the start, so a watch can follow them before the
        # first optimization; an existing best score is kept.
        await store.write(
            {names.best_score: None, names.optimizer_status: {"phase": "idle"}},
            {names.best_score: Definition("float", {"nullable": True}, "best score so far")},
            only_missing=True,
        )
        return versions

    # -- helpers -------------------------------------------------------------------------
    @staticmethod
    def _store(ctx: SessionContext) -> VariableStore:
        return VariableStore(ctx.vars)

    async def _prepare(
        self,
        ctx: SessionContext,
        name: str,
        config: dict[str, Any] | None = None,
        api_key: str | None = None,
    ) -> CallSetup:
        return await self.runtime.prepare(
            self._store(ctx), ctx.session_id, name, config, api_key=api_key
        )

    def _start(self, run: BackgroundRun) -> BackgroundRun:
        self._runs = {r for r in self._runs if r.alive}
        self._runs.add(run)
        run.start()
        return run

    def _stop(self, run: BackgroundRun) -> None:
        run.cancel()  # no-op for a finished run: its thread has ended


def check_threads(num_threads: object) -> int:
    if (
        isinstance(num_threads, bool)
        or not isinstance(num_threads, int)
        or not 1 <= num_threads <= 32
    ):
        raise InvalidArgumentError(
            f"num_threads must be an integer in [1, 32], got {num_threads!r}"
        )
    return num_threads


def check_inputs(setup: CallSetup, inputs: dict[str, Any]) -> None:
    expected = list(setup.spec.get("inputs", []))
    missing = [k for k in expected if k not in inputs]
    unknown = [k for k in inputs if k not in expected]
    if missing or unknown:
        raise InvalidArgumentError(
            f"program {setup.name!r} takes inputs {', '.join(expected)}; "
            + (f"missing {', '.join(missing)}" if missing else "")
            + ("; " if missing and unknown else "")
            + (f"unknown {', '.join(unknown)}" if unknown else "")
        )


def shipped_rows(setup: CallSetup, rows: Any) -> list[dict[str, Any]]:
    if setup.spec.get("inputs") == ["question"] and "answer" in setup.spec.get("outputs", []):
        return list(rows())
    raise InvalidArgumentError(
        f"program {setup.name!r} is not a question -> answer program, so the shipped data set "
        "does not fit it; pass your own examples (a list of dicts with its fields)"
    )


def demos_of(program: Any) -> dict[str, list[Any]]:
    return {n: list(p.demos) for n, p in program.named_predictors()}


def describe_program(names: ProgramVariables, spec: dict[str, Any], program: Any) -> dict[str, Any]:
    predictors = []
    for pname, predictor in program.named_predictors():
        predictors.append(
            {
                "name": pname,
                "signature": str(predictor.signature.signature),
                "instructions": str(predictor.signature.instructions),
                "input_fields": list(predictor.signature.input_fields),
                "output_fields": list(predictor.signature.output_fields),
                "demos": json.loads(json.dumps([dict(d) for d in predictor.demos], default=str)),
                "instructions_variable": names.instructions(pname),
                "demos_variable": names.demos(pname),
            }
        )
    return {"name": names.name, "spec": spec, "predictors": predictors}


async def quietly(coro: Any) -> None:
    """Best-effort write while unwinding (the call is being cancelled or has failed)."""
    # The original error is what the caller must see; this write only informs watchers.
    with contextlib.suppress(Exception):
        await asyncio.wait_for(coro, 2.0)
