"""``DSPyAdapter``: DSPy programs defined, run, streamed, evaluated and optimized on the pool.

Start a pool with it and drive it from the notebook (or use the ``DSPy`` helper in
``snakepit_nb.adapters.dspy``, which wraps these calls)::

    client = sp.start(workers=2, adapter="snakepit_nb.adapters.dspy:DSPyAdapter")
    s = client.session("exp")
    s.call("dspy.configure_lm", model="fake/rules", temperature=0.0)
    s.call("dspy.define_program", name="qa", signature="question -> answer",
           module="ChainOfThought")
    s.call("dspy.run", name="qa", inputs={"question": "What is 2 + 3?"})["prediction"]
    for event in s.stream("dspy.optimize", name="qa", optimizer="BootstrapFewShot"): ...

All state lives in session variables (see ``programs.py`` and ``lm.py``), so any worker
serves any call and a killed worker loses nothing. DSPy itself is imported on the first call
that needs it, not when the worker starts.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

from snakepit_nb._errors import InvalidArgumentError, NotFoundError
from snakepit_nb.tools.adapter import tool
from snakepit_nb.worker.context import SessionContext

from .background import BackgroundRun
from .history import flatten_runs, lm_calls, run_record
from .models import cache as lm_cache
from .models import environment
from .models.cache import default_cache_dir
from .models.lm import LM_VARIABLE, TEMPERATURE_VARIABLE, LMSettings, validate_temperature
from .programs import (
    ProgramVariables,
    build_module,
    build_program,
    instantiate,
    module_fields,
    notebook_class,
    validate_demos,
    validate_program_name,
)
from .runtime import CallSetup
from .saving import SavingTools
from .store import Definition
from .streaming import parallel_predictions, run_prediction, stream_prediction
from .toolkit import KNOBS, check_inputs, check_threads, describe_program
from .tuning import TuningTools

__all__ = ["DSPyAdapter"]

_TEMPERATURE_DEF = Definition("float", {"min": 0.0, "max": 2.0}, "sampling temperature")
_CALLS_DEF = Definition("map", None, "one version per run: the LM calls it made")


class DSPyAdapter(TuningTools, SavingTools):
    """Worker tools for exploratory DSPy work; state is kept in session variables."""

    # -- language model ------------------------------------------------------------------
    @tool(name="dspy.configure_lm")
    async def configure_lm(
        self,
        ctx: SessionContext,
        *,
        model: str = "fake/rules",
        temperature: float | None = None,
        max_tokens: int | None = None,
        api_base: str | None = None,
        api_key_env: str | None = None,
        api_key: str | None = None,
        cache: bool | None = None,
        engine: str = "auto",
        num_retries: int = 3,
        options: dict[str, Any] | None = None,
        latency: float = 0.0,
        chunk_delay: float = 0.0,
        chunk_size: int = 6,
        smoke_test: bool = False,
    ) -> dict[str, Any]:
        """Set the session's language model (the variable ``dspy.lm``) and temperature.

        ``model="fake/rules"`` is the offline fake model; anything else goes to ``dspy.LM``
        (``"openai/gpt-4o-mini"``; ``"openai/<name>"`` with ``api_base`` for a local server).
        ``options`` are further ``dspy.LM`` arguments. ``api_key`` is used for this call only
        and never stored (the notebook helper sends it with every call); ``api_key_env``
        names the variable holding it. ``cache`` (default: on for real models) uses DSPy's
        disk cache shared by all workers. ``smoke_test`` sends one prompt to check the model.
        """
        settings = LMSettings(
            model=model,
            max_tokens=max_tokens,
            api_base=api_base,
            api_key_env=api_key_env,
            cache=cache,
            engine=engine,
            num_retries=num_retries,
            options=dict(options or {}),
            latency=float(latency),
            chunk_delay=float(chunk_delay),
            chunk_size=chunk_size,
        )
        values: dict[str, Any] = {LM_VARIABLE: settings.to_mapping()}
        if temperature is not None:
            values[TEMPERATURE_VARIABLE] = validate_temperature(temperature)
        lm = await asyncio.to_thread(
            self.runtime.lms.lm, settings, temperature=temperature, api_key=api_key
        )
        reply = None
        if smoke_test:
            reply = await asyncio.to_thread(_ping, lm)
        await self._store(ctx).write(
            values, {LM_VARIABLE: Definition("map"), TEMPERATURE_VARIABLE: _TEMPERATURE_DEF}
        )
        return {
            "lm": settings.to_mapping(),
            "temperature": temperature,
            "cache": settings.cached,
            "cache_dir": default_cache_dir() if settings.cached else None,
            "smoke_test": reply,
        }

    @tool(name="dspy.cache_info", idempotent=True)
    async def cache_info(self, ctx: SessionContext) -> dict[str, Any]:
        """DSPy's response cache shared by the workers: folder, entries, bytes on disk."""
        return await asyncio.to_thread(lm_cache.cache_info)

    @tool(name="dspy.clear_cache")
    async def clear_cache(self, ctx: SessionContext) -> dict[str, Any]:
        """Remove every cached model response (for all workers and later pools)."""
        return await asyncio.to_thread(lm_cache.clear_cache)

    # -- programs ------------------------------------------------------------------------
    @tool(name="dspy.define_program")
    async def define_program(
        self,
        ctx: SessionContext,
        *,
        name: str,
        signature: str | None = None,
        module: str = "Predict",
        instructions: str | None = None,
        demos: list[dict[str, Any]] | None = None,
        module_class: str | None = None,
        class_variable: str | None = None,
        init: dict[str, Any] | None = None,
        state: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Define (or redefine) a program from a signature such as ``"question -> answer"``
        (``module``: ``Predict`` or ``ChainOfThought``), or from a ``dspy.Module`` class of
        any shape: ``module_class="package.module:ClassName"`` (importable in the workers),
        or the notebook's own class, stored pickled by the notebook in ``class_variable``
        (only the kernel's authenticated workers take it). ``init``: the constructor's keyword
        arguments; ``state``: a ``dump_state()`` to start from. Writes the program's variables
        (``<name>.spec``, ``.state``, and each predictor's ``.instructions`` and ``.demos``)
        and returns its summary.
        """
        validate_program_name(name)
        given = [x for x in (signature, module_class, class_variable) if x is not None]
        if len(given) != 1:
            raise InvalidArgumentError(
                "pass one of a signature such as 'question -> answer', a module_class such as "
                "'mypkg.programs:RAG' or a class_variable; nothing was changed"
            )
        if module_class is not None or class_variable is not None:
            return await self._define_module(
                ctx,
                name,
                module_class=module_class,
                class_variable=class_variable,
                init=init,
                state=state,
                instructions=instructions,
            )

        def build() -> tuple[dict[str, Any], Any]:
            program = build_program(module, signature)
            (_, predictor), *_ = program.named_predictors()
            if instructions is not None:
                for _, p in program.named_predictors():
                    p.signature = p.signature.with_instructions(instructions)
            if demos is not None:
                for pname, p in program.named_predictors():
                    p.demos = validate_demos(program, pname, demos)
            spec = {
                "module": module,
                "signature": str(signature),
                "predictors": [n for n, _ in program.named_predictors()],
                "inputs": list(predictor.signature.input_fields),
                "outputs": list(predictor.signature.output_fields),
            }
            return spec, program

        spec, program = await asyncio.to_thread(build)
        names = ProgramVariables(name, tuple(spec["predictors"]))
        await self._write_program(ctx, names, spec, program)
        self.runtime.forget(ctx.session_id, name)
        return describe_program(names, spec, program)

    async def _define_module(
        self,
        ctx: SessionContext,
        name: str,
        *,
        module_class: str | None,
        class_variable: str | None,
        init: dict[str, Any] | None,
        state: dict[str, Any] | None,
        instructions: str | None,
    ) -> dict[str, Any]:
        found = None
        if class_variable is not None:
            if class_variable != f"{name}.class":
                raise InvalidArgumentError(
                    f"the class of program {name!r} lives in {name}.class, not {class_variable}"
                )
            entry = (await self._store(ctx).read([class_variable])).get(class_variable)
            if entry is None:
                raise InvalidArgumentError(f"no variable {class_variable}; nothing was changed")
            found = await asyncio.to_thread(
                notebook_class, entry.value, entry.updated_by, class_variable
            )

        def build() -> tuple[dict[str, Any], Any]:
            if found is not None:
                program = instantiate(found, init, what=found.__name__)
            else:
                program = build_module(module_class, init)
            if state is not None:
                try:
                    program.load_state(state)
                except Exception as exc:
                    raise InvalidArgumentError(
                        f"the state does not fit {module_class} ({type(exc).__name__}: {exc}); "
                        "nothing was changed"
                    ) from exc
            if instructions is not None:
                for _, p in program.named_predictors():
                    p.signature = p.signature.with_instructions(instructions)
            inputs, outputs = module_fields(program)
            spec = {
                **(
                    {"pickled": True, "class_variable": class_variable}
                    if found is not None
                    else {"class": module_class}
                ),
                "init": dict(init or {}),
                "module": found.__name__
                if found is not None
                else str(module_class).rpartition(":")[2],
                "signature": f"{', '.join(inputs)} -> {', '.join(outputs)}",
                "predictors": [n for n, _ in program.named_predictors()],
                "inputs": inputs,
                "outputs": outputs,
            }
            return spec, program

        spec, program = await asyncio.to_thread(build)
        names = ProgramVariables(name, tuple(spec["predictors"]), found is not None)
        await self._write_program(ctx, names, spec, program)
        self.runtime.forget(ctx.session_id, name)
        return describe_program(names, spec, program)

    @tool(name="dspy.list_programs", idempotent=True)
    async def list_programs(self, ctx: SessionContext) -> list[dict[str, Any]]:
        """The session's DSPy programs: name, module and signature."""
        records = await ctx.vars.alist("*.spec")
        return [
            {
                "name": r.name[: -len(".spec")],
                **{k: r.value.get(k) for k in ("module", "signature")},
            }
            for r in records
            if isinstance(r.value, dict) and "signature" in r.value
        ]

    @tool(name="dspy.inspect_program", idempotent=True, required_variables=KNOBS)
    async def inspect_program(self, ctx: SessionContext, name: str) -> dict[str, Any]:
        """The program's predictors, signatures, instructions, demos and variable versions."""
        setup = await self._prepare(ctx, name)
        described = describe_program(setup.names, setup.spec, setup.program)
        described["versions"] = dict(zip(setup.names.definition(), setup.versions, strict=True))
        described["worker_id"] = ctx.worker_id
        described["cached"] = setup.cached
        return described

    @tool(name="dspy.set_instructions")
    async def set_instructions(
        self, ctx: SessionContext, name: str, instructions: str, predictor: str | None = None
    ) -> int:
        """Replace a predictor's instructions; returns the variable's new version."""
        names, _, _ = await self.runtime.read_program(self._store(ctx), ctx.session_id, name, [])
        var = names.instructions(names.predictor_for(predictor))
        if not instructions.strip():
            raise InvalidArgumentError("instructions must not be empty; nothing was changed")
        return (await self._store(ctx).write({var: instructions}))[var]

    @tool(name="dspy.set_demos", required_variables=KNOBS)
    async def set_demos(
        self,
        ctx: SessionContext,
        name: str,
        demos: list[dict[str, Any]],
        predictor: str | None = None,
    ) -> int:
        """Replace a predictor's demos (dicts keyed by signature fields); returns the version."""
        setup = await self._prepare(ctx, name)
        pname = setup.names.predictor_for(predictor)
        checked = validate_demos(setup.program, pname, demos)
        var = setup.names.demos(pname)
        return (await self._store(ctx).write({var: checked}))[var]

    # -- running -------------------------------------------------------------------------
    @tool(name="dspy.run", required_variables=KNOBS)
    async def run(
        self,
        ctx: SessionContext,
        name: str,
        inputs: dict[str, Any],
        config: dict[str, Any] | None = None,
        api_key: str | None = None,
    ) -> dict[str, Any]:
        """Run the program on ``inputs``; ``config`` may override ``temperature``/``max_tokens``.

        Returns ``{"prediction": {...}, "temperature", "model", "worker_id", ...}``, writes
        ``<name>.last_output`` and adds the run's LM calls to ``<name>.calls`` (the history).
        ``api_key`` is the model's key for this call (never stored).
        """
        setup = await self._prepare(ctx, name, config, api_key)
        check_inputs(setup, inputs)
        prediction = await asyncio.to_thread(run_prediction, setup, inputs)
        return await self._finish_run(ctx, setup, inputs, prediction)

    @tool(name="dspy.stream", required_variables=KNOBS)
    async def stream(
        self,
        ctx: SessionContext,
        name: str,
        inputs: dict[str, Any],
        config: dict[str, Any] | None = None,
        api_key: str | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """Run the program and stream its output fields as they are generated.

        Chunks: ``{"type": "token", "field", "predictor", "text", "last"}`` and
        ``{"type": "status", "message"}``; the final value is what ``dspy.run`` returns.
        """
        setup = await self._prepare(ctx, name, config, api_key)
        check_inputs(setup, inputs)
        run = self._start(
            BackgroundRun(lambda r: stream_prediction(r, setup, inputs), name="stream")
        )
        try:
            async for event in run:
                yield event
        finally:
            self._stop(run)
        ctx.set_result(await self._finish_run(ctx, setup, inputs, run.result))

    @tool(name="dspy.batch", required_variables=KNOBS)
    async def batch(
        self,
        ctx: SessionContext,
        *,
        name: str,
        inputs: list[dict[str, Any]],
        config: dict[str, Any] | None = None,
        num_threads: int = 4,
        api_key: str | None = None,
    ) -> dict[str, Any]:
        """Run the program on every inputs dict in this worker, ``num_threads`` at a time
        (DSPy's own ``dspy.Parallel``: for a model behind an API, many calls in flight from
        one worker). Returns ``{"predictions": [...]}`` in input order.

        To spread inputs over the pool instead, call ``dspy.run`` once per input
        (``session.map("dspy.run", [{"name": ..., "inputs": ...}, ...])``, which is what
        ``Program.batch`` does).
        """
        threads = check_threads(num_threads)
        if not isinstance(inputs, list) or not inputs:
            raise InvalidArgumentError("inputs must be a non-empty list of inputs dicts")
        setup = await self._prepare(ctx, name, config, api_key)
        for item in inputs:
            check_inputs(setup, item if isinstance(item, dict) else {})
        predictions = await asyncio.to_thread(parallel_predictions, setup, inputs, threads)
        await self._finish_run(ctx, setup, {"batch": len(inputs)}, {"batch": len(predictions)})
        return {"predictions": predictions, "worker_id": ctx.worker_id, "pid": os.getpid()}

    async def _finish_run(
        self, ctx: SessionContext, setup: CallSetup, inputs: dict[str, Any], prediction: Any
    ) -> dict[str, Any]:
        calls = lm_calls([setup.lm], temperature=setup.temperature, worker_id=ctx.worker_id)
        result = {
            "prediction": prediction,
            "temperature": setup.temperature,
            "model": setup.settings.model,
            "worker_id": ctx.worker_id,
            "pid": os.getpid(),
            "cached_program": setup.cached,
        }
        last = {**result, "inputs": inputs, "messages": calls[-1]["messages"] if calls else []}
        record = run_record(calls, inputs=inputs, prediction=prediction, worker_id=ctx.worker_id)
        await self._store(ctx).write(
            {setup.names.last_output: last, setup.names.calls: record},
            {setup.names.calls: _CALLS_DEF},
        )
        return result

    @tool(name="dspy.inspect_history", idempotent=True)
    async def inspect_history(self, ctx: SessionContext, name: str, n: int = 1) -> dict[str, Any]:
        """The last ``n`` LM calls the program's runs made (from ``<name>.calls``).

        Each has ``messages`` (role, content), ``outputs``, ``usage``, ``model``,
        ``temperature``, ``worker_id`` and ``at``; kept by the orchestrator, so they
        outlive any worker.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise InvalidArgumentError(f"n must be a positive integer, got {n!r}")
        names = ProgramVariables(validate_program_name(name))
        try:
            versions = await ctx.vars.ahistory(names.calls, limit=n)
        except NotFoundError:
            versions = []
        calls = flatten_runs([value for _, value, _ in versions], n)
        return {"calls": calls, "worker_id": ctx.worker_id, "pid": os.getpid()}

    # -- the worker ----------------------------------------------------------------------
    @tool(name="dspy.status", idempotent=True)
    def status(self, ctx: SessionContext) -> dict[str, Any]:
        """This worker: pid, DSPy import time, cache counters, running optimizations."""
        import sys

        dspy = sys.modules.get("dspy")
        return {
            "worker_id": ctx.worker_id,
            "pid": os.getpid(),
            "dspy_imported": dspy is not None,
            "dspy_version": getattr(dspy, "__version__", None),
            "dspy_import_seconds": environment.dspy_import_seconds(),
            "network_guard": environment.network_guard_installed(),
            "cache_dir": default_cache_dir(),
            "offline_env": {
                k: os.environ.get(k)
                for k in ("LITELLM_LOCAL_MODEL_COST_MAP", "DSPY_CACHEDIR", "LITELLM_MODE")
            },
            "program_builds": self.runtime.programs.builds,
            "program_cache_hits": self.runtime.programs.hits,
            "active_runs": sorted(r.name for r in self._runs if r.alive),
        }


def _ping(lm: Any) -> str:
    outputs = lm("Reply with the word ok.")
    return str(outputs[0]) if outputs else ""
