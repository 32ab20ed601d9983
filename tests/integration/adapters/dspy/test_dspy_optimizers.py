"""The optimizers people use, on real workers, offline: MIPROv2, GEPA, SIMBA and COPRO with the
shipped fake model playing the task, proposer and reflection roles; other models for the
teacher/prompt/reflection roles; trials streamed with what each candidate tried.
"""

from __future__ import annotations

from typing import Any

import pytest
from dspy_support import wait_for

import snakepit_nb as sp
from snakepit_nb.adapters.dspy import DSPy, Program
from snakepit_nb.adapters.dspy.devset import devset
from snakepit_nb.adapters.dspy.models.openai_server import OpenAIStub

pytestmark = pytest.mark.integration

ORIGINAL = "Given the fields `question`, produce the fields `answer`."


def readable(text: str) -> bool:
    """An instruction a person can read: a few words, a sentence, none of the old junk."""
    return (
        len(text.split()) >= 5
        and text.rstrip().endswith((".", ".)"))
        and "proposed_instruction of" not in text
        and "new_instruction of" not in text
    )


def trials(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == "candidate"]


def exact(program: Program) -> float:
    rows = devset()
    return sum(program(question=r["question"])["answer"] == r["answer"] for r in rows) / len(rows)


def test_miprov2_proposes_readable_instructions_and_improves(d: DSPy) -> None:
    qa = d.program("qa", "question -> answer")
    before = exact(qa)
    run = qa.optimize("MIPROv2", params={"num_candidates": 3, "num_trials": 5}, target="qa_mipro")
    events = list(run)
    summary = run.result
    tried = trials(events)
    assert len(tried) >= 5  # baseline, the trials, the final score
    proposed = {t["instructions"]["self"] for t in tried} - {ORIGINAL}
    assert proposed, "the trials should try proposed instructions"
    assert all(readable(text) for text in proposed), proposed
    assert any(t["demos"]["self"] > 0 for t in tried)  # and demo sets
    bests = [t["best"] for t in tried if t["best"] is not None]
    assert bests == sorted(bests)  # best so far never falls
    assert summary["score"] > summary["baseline"]
    tuned = d.get("qa_mipro")
    assert readable(tuned.instructions) or tuned.instructions == ORIGINAL
    assert exact(tuned) > before
    assert qa.instructions == ORIGINAL  # written to the copy only
    status = d.session.vars["qa_mipro.optimizer_status"]
    assert status["phase"] == "done"
    assert status["best_instructions"]["self"]
    print(
        f"MIPROv2: {summary['baseline']:.0f} % -> {summary['score']:.0f} %; {tuned.instructions!r}"
    )


def test_gepa_reflects_with_a_reflection_model_and_improves(d: DSPy) -> None:
    qa = d.program("qa", "question -> answer")
    run = qa.optimize(
        "GEPA",
        reflection_model={"model": "fake/rules", "temperature": 1.0},
        params={"max_full_evals": 3},
    )
    events = list(run)
    summary = run.result
    assert summary["score"] > summary["baseline"]
    assert qa.instructions != ORIGINAL
    assert readable(qa.instructions), qa.instructions
    assert "scored well" in qa.instructions  # what the reflection learned from the feedback
    assert any(t["instructions"]["self"] == qa.instructions for t in trials(events))
    assert exact(qa) == 1.0


def test_simba_streams_its_batches_and_improves(d: DSPy) -> None:
    qa = d.program("qa", "question -> answer")
    run = qa.optimize("SIMBA", params={"max_steps": 2, "num_candidates": 2, "bsize": 4})
    events = list(run)
    summary = run.result
    batches = [t for t in trials(events) if not t["full"]]
    assert len(batches) == 2  # one trial per SIMBA step, read from its log
    assert summary["score"] > summary["baseline"]


def test_copro_writes_readable_instructions(d: DSPy) -> None:
    qa = d.program("qa", "question -> answer")
    run = qa.optimize("COPRO", params={"breadth": 2, "depth": 1})
    list(run)
    assert readable(qa.instructions), qa.instructions
    assert run.result["score"] >= run.result["baseline"]


def test_models_for_roles_are_checked_and_a_teacher_over_http_is_used(d: DSPy) -> None:
    qa = d.program("qa", "question -> answer")
    with pytest.raises(sp.RemoteToolError, match="does not use a reflection model"):
        list(qa.optimize("MIPROv2", reflection_model="fake/rules"))
    with pytest.raises(sp.RemoteToolError, match="GEPA does not take bogus"):
        list(qa.optimize("GEPA", params={"bogus": 1}))
    assert d.session.vars["qa.optimizer_status"] == {"phase": "idle"}  # nothing started
    with OpenAIStub() as stub:
        run = qa.optimize(
            "BootstrapFewShot",
            teacher_model={"model": "openai/stub", "api_base": stub.base_url, "cache": False},
            params={"max_bootstrapped_demos": 2, "max_labeled_demos": 0},
        )
        list(run)
        # The teacher (over HTTP) wrote the bootstrapped demos; the task model (the fake,
        # in-process) scored them.
        assert len(stub.chat_requests()) >= 2
    assert len(qa.demos) == 2
    assert run.result["score"] > run.result["baseline"]


def test_cancelling_miprov2_leaves_the_program_as_it_was(pool: Any) -> None:
    d = DSPy(pool.session("o-cancel-mipro"))
    d.configure_lm("fake/rules", temperature=0.0, latency=0.03)
    qa = d.program("qa", "question -> answer")
    versions = {n: d.session.vars.info(n).version for n in qa.variables.definition()}
    run = qa.optimize("MIPROv2", params={"num_candidates": 3, "num_trials": 8})
    iterator = iter(run)
    wait_for(lambda: next(iterator)["type"] == "candidate", what="the first trial")
    run.close()
    wait_for(
        lambda: d.session.vars["qa.optimizer_status"]["phase"] == "cancelled",
        what="the optimizer to report cancelled",
    )
    wait_for(lambda: d.status()["active_runs"] == [], timeout=10.0, what="the run to stop")
    assert {n: d.session.vars.info(n).version for n in qa.variables.definition()} == versions
