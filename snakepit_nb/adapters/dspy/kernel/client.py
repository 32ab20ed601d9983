"""The notebook side of the DSPy adapter: ``DSPy(session)`` and ``Program`` handles.

They only call the ``dspy.*`` tools and read or write session variables, so the kernel never
imports DSPy, and a program handle stays valid whichever worker serves the next call.

>>> d = DSPy(session)
>>> qa = d.program("qa", "question -> answer", module="ChainOfThought")
>>> qa(question="What is 2 + 3?")["answer"]
'5'
>>> qa.instructions = "Answer in uppercase."       # a session variable; a widget may edit it
>>> run = qa.optimize("BootstrapFewShot")          # a live stream of progress events
>>> [e["best"] for e in run if e["type"] == "candidate"]
[50.0, 100.0]
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from snakepit_nb.adapters.dspy.models.environment import prepare_environment
from snakepit_nb.adapters.dspy.models.lm import TEMPERATURE_VARIABLE, LMSettings
from snakepit_nb.adapters.dspy.programs import ProgramVariables, validate_program_name

from .credentials import Credentials
from .history import History, read_history
from .runs import DSPyRun, Evaluation, metric_argument

__all__ = ["DSPy", "Program"]


class DSPy:
    """DSPy on a session whose workers run ``DSPyAdapter``."""

    def __init__(self, session: Any) -> None:
        # A user's own `import dspy` in the kernel must not reach for the network either.
        prepare_environment()
        self.session = session
        self.credentials = Credentials(session)

    def configure_lm(
        self,
        model: str = "fake/rules",
        api_key: str | None = None,
        api_base: str | None = None,
        **dspy_lm_kwargs: Any,
    ) -> dict[str, Any]:
        """Set the session's model: ``"fake/rules"`` offline, or any ``dspy.LM`` model.

        ``api_base`` points at an OpenAI-compatible server (``model="openai/<name>"``); one
        without authentication needs no key. ``api_key`` stays in this kernel's memory and
        goes with each call; without it the kernel's environment variable ``api_key_env``
        (default ``<PROVIDER>_API_KEY``) is read at each call. Neither is ever stored in a
        session variable. Our settings: ``temperature``, ``max_tokens``, ``api_key_env``,
        ``cache`` (default on for real models: DSPy's disk cache, shared by all workers),
        ``engine``, ``num_retries``, ``smoke_test``; for the fake model ``latency``,
        ``chunk_delay``, ``chunk_size``. Any other keyword is a ``dspy.LM`` option
        (``timeout=30``, ``model_type="chat"``, ``top_p=0.9``, ...).
        """
        ours = set(LMSettings.__dataclass_fields__) | {"temperature", "smoke_test"}
        settings = {k: v for k, v in dspy_lm_kwargs.items() if k in ours and k != "options"}
        options = dict(dspy_lm_kwargs.get("options") or {})
        options.update({k: v for k, v in dspy_lm_kwargs.items() if k not in ours})
        candidate = Credentials(self.session)
        candidate.configured(model, api_key, settings.get("api_key_env"))
        result: dict[str, Any] = self.session.call(
            "dspy.configure_lm",
            model=model,
            api_base=api_base,
            options=options,
            **settings,
            **candidate.arguments(),
        )
        # Only once the workers accepted it: a refused configuration changes nothing here.
        self.credentials.configured(model, api_key, settings.get("api_key_env"))
        return result

    def cache_info(self) -> dict[str, Any]:
        """DSPy's response cache shared by the workers: folder, entries, bytes."""
        result: dict[str, Any] = self.session.call("dspy.cache_info")
        return result

    def clear_cache(self) -> dict[str, Any]:
        """Remove every cached model response (for every worker, and later pools too)."""
        result: dict[str, Any] = self.session.call("dspy.clear_cache")
        return result

    @property
    def temperature(self) -> float | None:
        """The session's temperature variable (None until set)."""
        try:
            value = self.session.vars[TEMPERATURE_VARIABLE]
        except KeyError:
            return None
        return None if value is None else float(value)

    @temperature.setter
    def temperature(self, value: float) -> None:
        self.session.vars[TEMPERATURE_VARIABLE] = float(value)

    def program(
        self,
        name: str,
        signature: Any,
        *,
        module: str = "Predict",
        instructions: str | None = None,
        demos: list[dict[str, Any]] | None = None,
        init: dict[str, Any] | None = None,
    ) -> Program:
        """Define (or redefine) a program and return its handle.

        ``signature`` is a signature string (``"question -> answer"``, with ``module``
        ``Predict`` or ``ChainOfThought``) or a ``dspy.Module`` class or instance of any
        shape (several predictors, your own ``forward``). The workers import the class by
        its name, so it must live in a file they can import (``init``: its constructor's
        keyword arguments); an instance's instructions and demos come along.
        """
        if not isinstance(signature, str):
            return self._program_from_module(name, signature, init, instructions)
        described = self.session.call(
            "dspy.define_program",
            name=name,
            signature=signature,
            module=module,
            instructions=instructions,
            demos=demos,
        )
        return Program(self.session, described, self.credentials)

    def _program_from_module(
        self, name: str, module: Any, init: dict[str, Any] | None, instructions: str | None
    ) -> Program:
        cls = module if isinstance(module, type) else type(module)
        if not callable(getattr(cls, "named_predictors", None)):
            raise TypeError(
                f"a program is a signature string or a dspy.Module class or instance, got "
                f"{cls.__name__}"
            )
        state = None
        if not isinstance(module, type):
            state = json.loads(json.dumps(module.dump_state(), default=str))
        where: dict[str, Any] = {"module_class": f"{cls.__module__}:{cls.__qualname__}"}
        if cls.__module__ == "__main__" or "<locals>" in cls.__qualname__:
            # Defined in the notebook: the workers cannot import it, so it travels by value,
            # pickled into a variable that only the kernel writes and its own workers read.
            import cloudpickle

            variable = ProgramVariables(validate_program_name(name)).module_class
            self.session.vars[variable] = cloudpickle.dumps(cls)
            where = {"class_variable": variable}
        described = self.session.call(
            "dspy.define_program",
            name=name,
            init=init,
            state=state,
            instructions=instructions,
            **where,
        )
        return Program(self.session, described, self.credentials)

    def get(self, name: str) -> Program:
        """A handle on a program that already exists in the session."""
        return Program(
            self.session, self.session.call("dspy.inspect_program", name=name), self.credentials
        )

    def programs(self) -> list[dict[str, Any]]:
        """The programs defined in the session (name, module, signature)."""
        result: list[dict[str, Any]] = self.session.call("dspy.list_programs")
        return result

    def load(
        self,
        name: str,
        path: str | Path,
        *,
        module: str | None = None,
        signature: str | None = None,
    ) -> Program:
        """Define program ``name`` from a JSON file saved by ``Program.save`` (or by DSPy)."""
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        described = self.session.call(
            "dspy.load_program", name=name, data=data, module=module, signature=signature
        )
        return Program(self.session, described, self.credentials)

    def history(self, program: str, n: int = 1) -> History:
        """The last ``n`` model calls of ``program`` (read from the orchestrator, no worker)."""
        return read_history(self.session, validate_program_name(program), n)

    def status(self) -> dict[str, Any]:
        """The serving worker's DSPy status (pid, import time, caches)."""
        result: dict[str, Any] = self.session.call("dspy.status")
        return result


class Program:
    """A handle on one DSPy program kept in session variables."""

    def __init__(
        self, session: Any, described: dict[str, Any], credentials: Credentials | None = None
    ) -> None:
        self.session = session
        self.credentials = credentials if credentials is not None else Credentials(session)
        self.name = validate_program_name(described["name"])
        self.spec: dict[str, Any] = dict(described["spec"])
        self.variables = ProgramVariables(self.name, tuple(self.spec["predictors"]))

    def __repr__(self) -> str:
        return (
            f"<DSPy program {self.name!r}: {self.spec['module']}({self.spec['signature']!r}), "
            f"session {getattr(self.session, 'session_id', '?')!r}>"
        )

    # -- running -------------------------------------------------------------------------
    def __call__(self, _config: dict[str, Any] | None = None, **inputs: Any) -> dict[str, Any]:
        """Run the program; returns the prediction's fields."""
        prediction: dict[str, Any] = self.run(inputs, config=_config)["prediction"]
        return prediction

    def run(self, inputs: dict[str, Any], *, config: dict[str, Any] | None = None) -> Any:
        """Run the program; returns the prediction plus temperature, model and worker id."""
        return self.session.call(
            "dspy.run", name=self.name, inputs=inputs, config=config, **self.credentials.arguments()
        )

    def stream(self, _config: dict[str, Any] | None = None, **inputs: Any) -> DSPyRun:
        """Stream the output fields as they are generated (token and status chunks)."""
        return DSPyRun(
            self.session.stream(
                "dspy.stream",
                name=self.name,
                inputs=inputs,
                config=_config,
                **self.credentials.arguments(),
            )
        )

    def batch(
        self,
        inputs: list[dict[str, Any]],
        *,
        config: dict[str, Any] | None = None,
        num_threads: int | None = None,
        progress: Callable[[int, int], None] | None = None,
        return_exceptions: bool = False,
    ) -> list[Any]:
        """Run the program on each inputs dict; predictions in input order.

        By default the inputs are spread over the pool, one ``dspy.run`` call each (in a few
        ``session.map`` slices, one after the other); ``progress(done, total)`` is called as
        each slice finishes, and a failing input raises (or, with ``return_exceptions``,
        stands in the list as its error). With ``num_threads`` they run in one worker
        instead, that many at a time with DSPy's ``dspy.Parallel`` (for a model behind an
        API).
        """
        if not isinstance(inputs, list) or not all(isinstance(i, dict) for i in inputs):
            raise ValueError("batch takes a list of inputs dicts, e.g. [{'question': ...}, ...]")
        key = self.credentials.arguments()
        if num_threads is not None:
            done: dict[str, Any] = self.session.call(
                "dspy.batch",
                name=self.name,
                inputs=inputs,
                config=config,
                num_threads=num_threads,
                **key,
            )
            if progress is not None:
                progress(len(inputs), len(inputs))
            return list(done["predictions"])
        total = len(inputs)
        # A few slices, each one session.map that spreads over the pool; progress between.
        size = max(4, math.ceil(total / 8))
        results: list[Any] = []
        for start in range(0, total, size):
            part = inputs[start : start + size]
            calls = [{"name": self.name, "inputs": item, "config": config, **key} for item in part]
            results += self.session.map("dspy.run", calls, return_exceptions=return_exceptions)
            if progress is not None:
                progress(len(results), total)
        return [r if isinstance(r, BaseException) else r["prediction"] for r in results]

    async def acall(self, _config: dict[str, Any] | None = None, **inputs: Any) -> dict[str, Any]:
        """``await program.acall(question=...)``: the prediction, without blocking the loop."""
        result = await self.session._async.call(
            "dspy.run",
            name=self.name,
            inputs=inputs,
            config=_config,
            **self.credentials.arguments(),
        )
        prediction: dict[str, Any] = result["prediction"]
        return prediction

    # -- what people edit ----------------------------------------------------------------
    @property
    def predictors(self) -> list[str]:
        """The program's named predictors (``["rewrite", "answer.predict"]``)."""
        return list(self.spec["predictors"])

    def predictor(self, name: str) -> Predictor:
        """One predictor: its ``instructions`` and ``demos``, each a session variable."""
        return Predictor(self, self._predictor(name))

    def _predictor(self, predictor: str | None) -> str:
        return self.variables.predictor_for(predictor)

    @property
    def instructions(self) -> str:
        """The (only) predictor's instructions; assigning writes the session variable."""
        return str(self.session.vars[self.variables.instructions(self._predictor(None))])

    @instructions.setter
    def instructions(self, text: str) -> None:
        self.session.call("dspy.set_instructions", name=self.name, instructions=text)

    @property
    def demos(self) -> list[dict[str, Any]]:
        """The (only) predictor's demos; assigning validates them against the signature."""
        return list(self.session.vars[self.variables.demos(self._predictor(None))])

    @demos.setter
    def demos(self, demos: list[dict[str, Any]]) -> None:
        self.session.call("dspy.set_demos", name=self.name, demos=demos)

    @property
    def best_score(self) -> float | None:
        """The best score of the last optimization (a percentage), if any."""
        try:
            value = self.session.vars[self.variables.best_score]
        except KeyError:
            return None
        return None if value is None else float(value)

    # -- looking inside ------------------------------------------------------------------
    def inspect(self) -> dict[str, Any]:
        """Predictors, signatures, instructions, demos and variable versions."""
        result: dict[str, Any] = self.session.call("dspy.inspect_program", name=self.name)
        return result

    def inspect_history(self, n: int = 1) -> History:
        """The last ``n`` LM calls of this program's runs, as DSPy's ``inspect_history`` shows.

        Read from the orchestrator (``<name>.calls``), so they survive worker restarts; in a
        notebook the result renders as HTML, ``print()`` gives text.
        """
        return read_history(self.session, self.name, n)

    def history(self, n: int = 1) -> list[dict[str, Any]]:
        """The last ``n`` LM calls as plain dicts (``inspect_history(n)`` without the view)."""
        return list(self.inspect_history(n))

    # -- scoring and optimizing ----------------------------------------------------------
    def evaluate(
        self,
        devset: list[dict[str, Any]] | None = None,
        *,
        metric: Any = "exact_match",
        **options: Any,
    ) -> Evaluation:
        """Score on ``devset`` (default: the shipped one): an ``Evaluation`` whose events
        stream as examples are scored, with ``score`` and ``rows`` (inputs, gold, prediction,
        score per example) at the end. ``metric``: a built-in name (``exact_match``,
        ``contains``, ...), a ``"module:function"`` path, or a function defined in the
        notebook ``(example, prediction, trace=None) -> float | bool`` (sent as its source;
        imports it needs go inside it). Options: ``field``, ``num_threads``.
        """
        return Evaluation(
            self.session.stream(
                "dspy.evaluate",
                name=self.name,
                devset=devset,
                metric=metric_argument(metric),
                **options,
                **self.credentials.arguments(),
            )
        )

    def optimize(
        self,
        optimizer: str = "BootstrapFewShot",
        *,
        teacher_model: dict[str, Any] | str | None = None,
        prompt_model: dict[str, Any] | str | None = None,
        reflection_model: dict[str, Any] | str | None = None,
        **options: Any,
    ) -> DSPyRun:
        """Run an optimizer; a stream of progress events (trials) whose result sums it up.

        ``optimizer``: LabeledFewShot, BootstrapFewShot, BootstrapFewShotWithRandomSearch,
        COPRO, MIPROv2, GEPA or SIMBA. Options: ``trainset``, ``valset``, ``metric``,
        ``params`` (the optimizer's settings), ``target`` (write the result to another
        program), ``num_threads``. ``teacher_model``, ``prompt_model``,
        ``reflection_model``: a model name or settings (``{"model": ..., "api_base": ...,
        "temperature": ..., "api_key": ...}``) for those roles; a key given there, or found
        in the kernel's environment, goes with the call and is never stored. Closing the
        stream cancels the optimization.
        """
        roles: dict[str, Any] = {}
        keys: dict[str, str] = {}
        for role, spec in (
            ("teacher", teacher_model),
            ("prompt", prompt_model),
            ("reflection", reflection_model),
        ):
            if spec is None:
                continue
            settings = {"model": spec} if isinstance(spec, str) else dict(spec)
            key = settings.pop("api_key", None)
            found = Credentials(self.session)
            found.configured(str(settings.get("model", "")), key, settings.get("api_key_env"))
            if resolved := found.key():
                keys[role] = resolved
            roles[f"{role}_model"] = settings
        if "metric" in options:
            options["metric"] = metric_argument(options["metric"])
        return DSPyRun(
            self.session.stream(
                "dspy.optimize",
                name=self.name,
                optimizer=optimizer,
                **roles,
                **options,
                **({"model_keys": keys} if keys else {}),
                **self.credentials.arguments(),
            )
        )

    # -- files -----------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the program as DSPy JSON (with its module and signature) to ``path``."""
        data = self.session.call("dspy.save_program", name=self.name)
        target = Path(path)
        target.write_text(json.dumps(data, indent=2), encoding="utf-8")
        return target


class Predictor:
    """One predictor of a program; ``instructions`` and ``demos`` are session variables.

    >>> qa.predictor("answer.predict").instructions = "Answer in uppercase."
    >>> qa.predictor("answer.predict").instructions_variable      # to watch or roll back
    'qa.answer.predict.instructions'
    """

    def __init__(self, program: Program, name: str) -> None:
        self.program = program
        self.name = name
        self.instructions_variable = program.variables.instructions(name)
        self.demos_variable = program.variables.demos(name)

    def __repr__(self) -> str:
        return f"<Predictor {self.name!r} of program {self.program.name!r}>"

    @property
    def instructions(self) -> str:
        return str(self.program.session.vars[self.instructions_variable])

    @instructions.setter
    def instructions(self, text: str) -> None:
        self.program.session.call(
            "dspy.set_instructions", name=self.program.name, instructions=text, predictor=self.name
        )

    @property
    def demos(self) -> list[dict[str, Any]]:
        return list(self.program.session.vars[self.demos_variable])

    @demos.setter
    def demos(self, demos: list[dict[str, Any]]) -> None:
        self.program.session.call(
            "dspy.set_demos", name=self.program.name, demos=demos, predictor=self.name
        )
