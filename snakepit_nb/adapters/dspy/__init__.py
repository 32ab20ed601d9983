"""Exploratory DSPy workflows on the worker pool (extra: ``pip install snakepit_nb[dspy]``).

* ``DSPyAdapter`` (worker side): ``sp.start(adapter="snakepit_nb.adapters.dspy:DSPyAdapter")``
  gives the pool tools to configure the language model, define, run, stream, batch, inspect,
  evaluate, optimize, save and load DSPy programs, all kept in session variables.
* ``DSPy`` (notebook side): a small helper over a session that calls those tools::

      from snakepit_nb.adapters.dspy import DSPy
      d = DSPy(client.session("exp"))
      d.configure_lm("fake/rules", temperature=0.0)   # offline; or "openai/...", api_base=
      qa = d.program("qa", "question -> answer", module="ChainOfThought")
      qa(question="What is 2 + 3?")                   # {'reasoning': ..., 'answer': '5'}
      qa.instructions = "Answer with only the answer."  # the next run follows it
      qa.inspect_history(1)                           # the prompt and the response
      run = qa.optimize("MIPROv2")                    # live trials; qa.best_score rises
      two = d.program("two", MyModule)                # any dspy.Module, even the notebook's
      two.predictor("answer.predict").instructions    # each predictor's own variables

Nothing here imports DSPy: the kernel never needs it, and workers import it on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .adapter import DSPyAdapter
    from .kernel.client import DSPy, Program

__all__ = ["DSPy", "DSPyAdapter", "Program"]


def __getattr__(name: str) -> Any:
    # Lazy: the kernel side imports the helper without the worker package, and vice versa.
    if name == "DSPyAdapter":
        from .adapter import DSPyAdapter

        return DSPyAdapter
    if name in ("DSPy", "Program"):
        from .kernel import client

        return getattr(client, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
