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
from pathlib import Path
from typing import Any

from snakepit_nb.adapters.dspy.models.lm import TEMPERATURE_VARIABLE
from snakepit_nb.adapters.dspy.programs import ProgramVariables, validate_program_name

__all__ = ["DSPy", "Program"]


class DSPy:
    """DSPy on a session whose workers run ``DSPyAdapter``."""

    def __init__(self, session: Any) -> None:
        self.session = session

    def configure_lm(self, model: str = "fake/rules", **settings: Any) -> dict[str, Any]:
        """Set the session's model (``"fake/rules"`` offline, or e.g. ``"openai/gpt-4o-mini"``).

        Settings: ``temperature``, ``max_tokens``, ``api_base``, ``api_key_env``, ``cache``,
        ``engine``; for the fake model ``latency`` and ``chunk_delay`` (seconds).
        """
        result: dict[str, Any] = self.session.call("dspy.configure_lm", model=model, **settings)
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
        signature: str,
        *,
        module: str = "Predict",
        instructions: str | None = None,
        demos: list[dict[str, Any]] | None = None,
    ) -> Program:
        """Define (or redefine) a program and return its handle."""
        described = self.session.call(
            "dspy.define_program",
            name=name,
            signature=signature,
            module=module,
            instructions=instructions,
            demos=demos,
        )
        return Program(self.session, described)

    def get(self, name: str) -> Program:
        """A handle on a program that already exists in the session."""
        return Program(self.session, self.session.call("dspy.inspect_program", name=name))

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
        return Program(self.session, described)

    def status(self) -> dict[str, Any]:
        """The serving worker's DSPy status (pid, import time, caches)."""
        result: dict[str, Any] = self.session.call("dspy.status")
        return result


class Program:
    """A handle on one DSPy program kept in session variables."""

    def __init__(self, session: Any, described: dict[str, Any]) -> None:
        self.session = session
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
        return self.session.call("dspy.run", name=self.name, inputs=inputs, config=config)

    def stream(self, _config: dict[str, Any] | None = None, **inputs: Any) -> Any:
        """Stream the output fields as they are generated (token and status chunks)."""
        return self.session.stream("dspy.stream", name=self.name, inputs=inputs, config=_config)

    # -- what people edit ----------------------------------------------------------------
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

    def history(self, n: int = 1) -> list[dict[str, Any]]:
        """The last ``n`` prompts sent for this program (messages and model outputs)."""
        calls: list[dict[str, Any]] = self.session.call(
            "dspy.inspect_history", name=self.name, n=n
        )["calls"]
        return calls

    # -- scoring and optimizing ----------------------------------------------------------
    def evaluate(self, devset: list[dict[str, Any]] | None = None, **options: Any) -> Any:
        """Score on ``devset`` (default: the shipped one); a stream whose result has ``score``."""
        return self.session.stream("dspy.evaluate", name=self.name, devset=devset, **options)

    def optimize(self, optimizer: str = "BootstrapFewShot", **options: Any) -> Any:
        """Run an optimizer; a stream of progress events whose result summarizes the run.

        Options: ``trainset``, ``valset``, ``metric``, ``params``, ``target``,
        ``num_threads``. Closing the stream cancels the optimization.
        """
        return self.session.stream("dspy.optimize", name=self.name, optimizer=optimizer, **options)

    # -- files -----------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the program as DSPy JSON (with its module and signature) to ``path``."""
        data = self.session.call("dspy.save_program", name=self.name)
        target = Path(path)
        target.write_text(json.dumps(data, indent=2), encoding="utf-8")
        return target
