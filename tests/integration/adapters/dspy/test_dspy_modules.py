"""Any ``dspy.Module``: a program of two predictors, written as people write DSPy programs
(``tests/support/dspy_modules.py``), run on real workers that import it by name. Each
predictor's instructions and demos are session variables; any worker serves any call.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dspy_modules
import paths
import pytest
from dspy_support import start_dspy_pool, wait_for

import snakepit_nb as sp
from snakepit_nb.adapters.dspy import DSPy

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pool(network_log: Path) -> Iterator[Any]:
    """Two workers that can import the test's module classes (on their PYTHONPATH)."""
    path = os.pathsep.join(p for p in (str(paths.SUPPORT), os.environ.get("PYTHONPATH")) if p)
    client = start_dspy_pool(network_log, workers=2, PYTHONPATH=path)
    try:
        yield client
    finally:
        client.close()


def test_a_two_predictor_module_runs_and_its_predictors_are_variables(d: DSPy) -> None:
    s = d.session
    two = d.program("two", dspy_modules.RewriteThenAnswer)
    assert two.predictors == ["rewrite", "answer.predict"]
    assert two.spec["inputs"] == ["question"]
    assert two.spec["outputs"] == ["reasoning", "answer"]
    first = two(question="What is the capital of Peru?")
    assert first["answer"] in ("Lima", "The answer is Lima.")
    calls = two.inspect_history(2)
    assert len(calls) == 2  # one model call per predictor, in order
    assert "rewritten_question" in calls[0]["messages"][0]["content"]

    answer = two.predictor("answer.predict")
    assert answer.instructions_variable == "two.answer.predict.instructions"
    assert s.vars["two.rewrite.instructions"].startswith("Given the fields `question`")
    # Editing one predictor's instructions (a variable) changes what that step does.
    answer.instructions = "Answer in UPPERCASE with only the answer."
    assert two(question="What is the capital of Peru?")["answer"] == "LIMA"
    two.predictor("rewrite").instructions = "Restate the question plainly."
    two(question="What is 2 + 3?")
    rewrite_prompt = two.inspect_history(2)[0]["messages"][0]["content"]
    assert "Restate the question plainly." in rewrite_prompt
    # With history and rollback, like any variable.
    versions = s.vars.history(answer.instructions_variable)
    s.vars.rollback(answer.instructions_variable, versions[0].version)
    assert two(question="What is the capital of Peru?")["answer"] in ("Lima", "The answer is Lima.")
    # Demos per predictor, validated against that predictor's fields.
    with pytest.raises(sp.RemoteToolError, match="not fields"):
        two.predictor("rewrite").demos = [{"question": "q", "answer": "a"}]
    two.predictor("rewrite").demos = [
        {"question": "What is 1 + 1?", "rewritten_question": "1 + 1 = ?"}
    ]
    assert len(two.predictor("rewrite").demos) == 1
    with pytest.raises(sp.SnakepitError, match="name one"):
        _ = two.instructions  # several predictors: say which
    with pytest.raises(sp.SnakepitError, match="no predictor 'nope'"):
        two.predictor("nope")


def test_constructor_arguments_an_instance_and_refusals(d: DSPy) -> None:
    instance = dspy_modules.RewriteThenAnswer(style="terse")
    instance.answer.predict.signature = instance.answer.predict.signature.with_instructions(
        "Give only the answer."
    )
    two = d.program("two", instance, init={"style": "terse"})
    assert two.spec["init"] == {"style": "terse"}
    assert two.predictor("answer.predict").instructions == "Give only the answer."
    assert two(question="What is 8 * 8?")["answer"] == "64"

    with pytest.raises(sp.RemoteToolError, match="cannot be imported in the worker"):
        d.session.call("dspy.define_program", name="x", module_class="no_such_pkg.mod:Thing")
    with pytest.raises(sp.RemoteToolError, match="failed"):
        d.session.call(
            "dspy.define_program",
            name="x",
            module_class="dspy_modules:RewriteThenAnswer",
            init={"unknown": 1},
        )
    assert "x.spec" not in d.session.vars


def test_a_module_class_defined_here_travels_pickled_and_any_worker_rebuilds_it(
    d: DSPy, pool: Any
) -> None:
    import dspy

    class AnswerTwice(dspy.Module):  # not importable by the workers: it lives in this test
        def __init__(self, hint: str = "") -> None:
            super().__init__()
            self.hint = hint
            self.first = dspy.Predict("question -> draft")
            self.second = dspy.Predict("question, draft -> answer")

        def forward(self, question: str) -> Any:
            draft = self.first(question=question).draft
            return self.second(question=question, draft=draft)

    local = d.program("local", AnswerTwice, init={"hint": "x"})
    assert local.predictors == ["first", "second"]
    record = d.session.vars.info("local.class")
    assert record.type == "bytes"
    assert local.spec["pickled"] is True
    local.predictor("second").instructions = "Give only the answer."
    assert local(question="What is 7 * 6?")["answer"] == "42"
    # Every worker is replaced: the new ones rebuild the class from the variable.
    pids = {w.pid for w in pool.status().workers}
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    unavailable = (sp.WorkerUnavailableError, sp.RemoteToolError, sp.WorkerCrashedError)
    again = wait_for(
        lambda: (r := local.run({"question": "What is 7 * 6?"}))["pid"] not in pids and r,
        30.0,
        "a run on a new worker",
        tolerate=unavailable,
    )
    assert again["prediction"]["answer"] == "42"
    assert again["cached_program"] is False
    # Only the notebook's own pickles are unpickled: a value it did not write is refused.
    d.session.vars["bad.class"] = "not a pickle"
    refused = "was not written by the notebook as a pickled class"
    with pytest.raises(sp.RemoteToolError, match=refused):
        d.session.call("dspy.define_program", name="bad", class_variable="bad.class")
    assert "bad.spec" not in d.session.vars


def test_any_worker_serves_a_module_and_optimizers_tune_every_predictor(d: DSPy, pool: Any) -> None:
    two = d.program("two", dspy_modules.RewriteThenAnswer)
    first = two.run({"question": "What is the capital of Kenya?"})
    os.kill(first["pid"], signal.SIGKILL)
    unavailable = (sp.WorkerUnavailableError, sp.RemoteToolError, sp.WorkerCrashedError)
    again = wait_for(
        lambda: (
            (r := two.run({"question": "What is the capital of Kenya?"}))["pid"] != first["pid"]
            and r
        ),
        30.0,
        "a run on another worker",
        tolerate=unavailable,
    )
    assert again["prediction"] == first["prediction"]
    run = two.optimize(
        "BootstrapFewShot", params={"max_bootstrapped_demos": 2, "max_labeled_demos": 0}
    )
    list(run)
    assert run.result["demos"] == {"rewrite": 2, "answer.predict": 2}
    assert run.result["score"] > run.result["baseline"]
    assert len(two.predictor("rewrite").demos) == 2
    evaluation = two.evaluate()
    assert evaluation.score == run.result["score"]
