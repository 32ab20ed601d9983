"""The DSPy adapter on real workers with the shipped fake model, over real gRPC.

Every worker runs with the offline guard armed (``SNAKEPIT_NB_NO_NETWORK=1``): any attempt to
reach a non-loopback host raises in the worker and is logged; the log must stay empty.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from dspy_support import start_dspy_pool, wait_for

import snakepit_nb as sp
from snakepit_nb.adapters.dspy import DSPy, Program
from snakepit_nb.adapters.dspy.devset import devset

pytestmark = pytest.mark.integration


def start_pool(log: Path, workers: int, **extra_env: str) -> Any:
    return start_dspy_pool(log, workers, **extra_env)


def answers(program: Program, rows: list[dict[str, str]]) -> list[str]:
    return [program(question=row["question"])["answer"] for row in rows]


def test_define_run_inspect(d: DSPy) -> None:
    qa = d.program("qa", "question -> answer", module="ChainOfThought")
    s = d.session
    assert s.vars["qa.spec"]["predictors"] == ["predict"]
    assert s.vars["qa.instructions"].startswith("Given the fields `question`")
    assert s.vars["qa.demos"] == []
    assert s.vars["qa.best_score"] is None  # defined up front so a watch can follow it
    assert s.vars["qa.optimizer_status"] == {"phase": "idle"}
    result = qa.run({"question": "What is 12 + 30?"})
    assert "42" in result["prediction"]["answer"]
    assert "I saw 0 demos and ran at temperature 0" in result["prediction"]["reasoning"]
    assert result["model"] == "fake/rules"
    # The last run is also a variable (for watch widgets), with the prompt that was sent.
    last = s.vars["qa.last_output"]
    assert last["inputs"] == {"question": "What is 12 + 30?"}
    assert "What is 12 + 30?" in last["messages"][-1]["content"]
    assert d.programs() == [
        {"name": "qa", "module": "ChainOfThought", "signature": "question -> answer"}
    ]
    info = qa.inspect()
    assert info["predictors"][0]["signature"] == "question -> reasoning, answer"
    assert info["versions"]["qa.spec"] == 1
    calls = qa.history(1)
    assert calls
    assert "What is 12 + 30?" in calls[-1]["messages"][-1]["content"]


def test_temperature_variable_changes_the_next_run(d: DSPy) -> None:
    qa = d.program("qa", "question -> answer")
    rows = devset()
    cold = answers(qa, rows)
    d.temperature = 1.6  # what a slider in the notebook does
    result = qa.run({"question": rows[0]["question"]})
    assert result["temperature"] == 1.6
    hot = answers(qa, rows)
    assert sum(a != b for a, b in zip(cold, hot, strict=True)) >= 3
    assert answers(qa, rows) == hot  # deterministic at a given temperature
    one_off = qa.run({"question": rows[0]["question"]}, config={"temperature": 0.0})
    assert one_off["prediction"]["answer"] == cold[0]


def test_editing_instructions_changes_the_next_run(d: DSPy) -> None:
    qa = d.program("qa", "question -> answer", module="ChainOfThought")
    before = qa(question="What is the capital of Peru?")["answer"]
    assert before in ("Lima", "The answer is Lima.")
    # A widget writes the variable directly; the next run (on any worker) follows it.
    d.session.vars["qa.instructions"] = "Answer in UPPERCASE with only the answer."
    after = qa.run({"question": "What is the capital of Peru?"})
    assert after["prediction"]["answer"] == "LIMA"
    assert after["cached_program"] is False  # rebuilt: the variable's version changed
    prompt = qa.history(1)[-1]["messages"][0]["content"]
    assert "Answer in UPPERCASE with only the answer." in prompt
    qa.instructions = "Always answer in a full sentence."
    assert qa(question="What is the capital of Peru?")["answer"] == "The answer is Lima."


def test_demos_are_validated_and_used(d: DSPy) -> None:
    qa = d.program("qa", "question -> answer")
    with pytest.raises(sp.RemoteToolError, match="not fields"):
        qa.demos = [{"question": "q", "colour": "red"}]
    assert qa.demos == []  # nothing was changed
    qa.demos = [{"question": "What is 1 + 1?", "answer": "2"}]
    assert qa(question="What is the capital of Norway?")["answer"] == "Oslo"
    with pytest.raises(sp.RemoteToolError, match="no DSPy program 'nope'"):
        d.session.call("dspy.run", name="nope", inputs={"question": "x"})
    with pytest.raises(sp.RemoteToolError, match="missing question"):
        d.session.call("dspy.run", name="qa", inputs={"q": "x"})


def test_stream_delivers_field_tokens_then_the_result(d: DSPy) -> None:
    d.configure_lm("fake/rules", temperature=0.0, chunk_delay=0.002)
    qa = d.program("qa", "question -> answer", module="ChainOfThought")
    stream = qa.stream(question="What is 7 * 6?")
    chunks = list(stream)
    tokens = [c for c in chunks if c["type"] == "token"]
    prediction = stream.result["prediction"]
    assert {c["field"] for c in tokens} == {"reasoning", "answer"}
    assert len([c for c in tokens if c["field"] == "reasoning"]) > 5  # really streamed
    for field in ("reasoning", "answer"):
        text = "".join(c["text"] for c in tokens if c["field"] == field)
        assert text.strip() == prediction[field]
    assert any(c["type"] == "status" for c in chunks)


def test_optimize_streams_progress_and_the_best_score_rises(d: DSPy) -> None:
    qa = d.program("qa", "question -> answer")
    baseline_answers = answers(qa, devset())
    run = qa.optimize(
        "BootstrapFewShot", params={"max_bootstrapped_demos": 2, "max_labeled_demos": 2}
    )
    events = list(run)
    summary = run.result
    kinds = {e["type"] for e in events}
    assert {"status", "example", "candidate"} <= kinds
    assert summary["baseline"] < summary["score"] == 100.0
    assert summary["demos"] == {"self": 2}
    history = [v.value for v in d.session.vars.history("qa.best_score") if v.value is not None]
    assert history == sorted(set(history))  # written each time it improved, never lower
    assert history[-1] == 100.0
    assert len(history) >= 2
    assert d.session.vars["qa.optimizer_status"]["phase"] == "done"
    assert len(qa.demos) == 2
    tuned = answers(qa, devset())
    assert tuned == [row["answer"] for row in devset()]
    assert tuned != baseline_answers
    evaluation = qa.evaluate(metric="exact_match")
    assert len([e for e in evaluation if e["type"] == "example"]) == len(devset())
    assert evaluation.result["score"] == 100.0


def test_optimize_into_a_new_program_keeps_the_original(d: DSPy) -> None:
    qa = d.program("qa", "question -> answer")
    run = qa.optimize("LabeledFewShot", params={"k": 3}, target="qa_tuned")
    list(run)
    assert run.result["program"] == "qa_tuned"
    assert d.session.vars["qa.demos"] == []
    tuned = d.get("qa_tuned")
    assert len(tuned.demos) == 3
    assert tuned(question="What is 8 * 8?")["answer"] == "64"


def test_save_and_load_as_json(d: DSPy, tmp_path: Path) -> None:
    qa = d.program("qa", "question -> answer", module="ChainOfThought")
    qa.demos = [{"question": "What is 1 + 1?", "reasoning": "add", "answer": "2"}]
    qa.instructions = "Answer with only the answer."
    path = qa.save(tmp_path / "qa.json")
    copy = d.load("qa_copy", path)
    assert copy.instructions == "Answer with only the answer."
    assert copy.demos == qa.demos
    assert copy(question="What is 9 + 10?") == qa(question="What is 9 + 10?")
    # The file is DSPy's own format: plain DSPy loads it.
    from snakepit_nb.adapters.dspy.models.environment import import_dspy

    dspy = import_dspy()
    plain = dspy.ChainOfThought("question -> answer")
    plain.load(str(path))
    assert plain.predict.signature.instructions == "Answer with only the answer."
    assert plain.predict.demos[0]["answer"] == "2"


def test_dspy_is_imported_lazily_and_the_offline_env_is_set(pool: Any) -> None:
    status = DSPy(pool.session("fresh-status")).status()
    assert status["network_guard"] is True
    assert status["offline_env"]["LITELLM_LOCAL_MODEL_COST_MAP"] == "True"
    assert status["offline_env"]["DSPY_CACHEDIR"]
    assert status["offline_env"]["LITELLM_MODE"] == "PRODUCTION"


# -- cancellation and worker loss (own pools) -----------------------------------------------


def test_cancelling_an_optimization_stops_it_promptly(tmp_path: Path) -> None:
    log = tmp_path / "network.log"
    client = start_pool(log, workers=1)
    try:
        d = DSPy(client.session("cancel"))
        d.configure_lm("fake/rules", temperature=0.0, latency=0.05)
        qa = d.program("qa", "question -> answer")
        before = {n: v.version for n, v in _records(d, qa).items()}
        run = qa.optimize("BootstrapFewShot")
        first = next(iter(run))
        assert first["type"] == "status"
        wait_for(lambda: d.session.vars["qa.optimizer_status"]["phase"] == "running")
        started = time.monotonic()
        run.close()
        wait_for(
            lambda: d.session.vars["qa.optimizer_status"]["phase"] == "cancelled",
            what="the optimizer to report cancelled",
        )
        wait_for(lambda: d.status()["active_runs"] == [], timeout=5.0, what="the run to stop")
        stopped_after = time.monotonic() - started
        print(f"optimization stopped {stopped_after:.3f} s after the stream was closed")
        assert stopped_after < 3.0
        # The program was not touched: same versions, no demos.
        assert {n: v.version for n, v in _records(d, qa).items()} == before
        assert qa.demos == []
        assert qa(question="What is 2 + 3?")["answer"] in ("5", "The answer is 5.")
    finally:
        client.close()
    assert not log.exists()


def _records(d: DSPy, program: Program) -> dict[str, Any]:
    return {n: d.session.vars.info(n) for n in program.variables.definition()}


def test_killed_worker_loses_nothing(tmp_path: Path) -> None:
    log = tmp_path / "network.log"
    client = start_pool(log, workers=2)
    try:
        d = DSPy(client.session("kill"))
        d.configure_lm("fake/rules", temperature=0.0)
        qa = d.program("qa", "question -> answer", module="ChainOfThought")
        list(qa.optimize("BootstrapFewShot", params={"max_labeled_demos": 2}))
        demos = qa.demos
        first = qa.run({"question": "What is the capital of Kenya?"})
        os.kill(first["pid"], signal.SIGKILL)

        def served_elsewhere() -> dict[str, Any] | None:
            try:
                result = qa.run({"question": "What is the capital of Kenya?"})
            except (sp.WorkerUnavailableError, sp.RemoteToolError):
                return None
            return result if result["pid"] != first["pid"] else None

        second = wait_for(served_elsewhere, what="a call served by another worker")
        assert second["prediction"] == first["prediction"]  # same demos, same answer
        assert qa.demos == demos

        # Kill the worker in the middle of an optimization: the program stays as it was.
        d.configure_lm("fake/rules", temperature=0.0, latency=0.05)
        qa2 = d.program("qa2", "question -> answer")
        versions = {n: v.version for n, v in _records(d, qa2).items()}
        run = qa2.optimize("BootstrapFewShot")
        iterator = iter(run)
        next(iterator)
        status = wait_for(lambda: d.session.vars.get("qa2.optimizer_status", None))
        os.kill(status["pid"], signal.SIGKILL)
        with pytest.raises(sp.SnakepitError):
            for _ in iterator:
                pass
        assert {n: v.version for n, v in _records(d, qa2).items()} == versions
        d.configure_lm("fake/rules", temperature=0.0)
        again = wait_for(
            lambda: _try(lambda: qa2.run({"question": "What is 2 + 3?"})),
            what="a call after the crash",
        )
        assert again["prediction"]["answer"] in ("5", "The answer is 5.")
    finally:
        client.close()
    assert not log.exists()


def _try(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except (sp.WorkerUnavailableError, sp.RemoteToolError):
        return None


def test_the_offline_guard_is_real_in_workers(tmp_path: Path) -> None:
    log = tmp_path / "network.log"
    client = start_pool(log, workers=1, OPENAI_API_KEY="sk-test-not-a-key")
    try:
        d = DSPy(client.session("guard"))
        with pytest.raises(sp.RemoteToolError) as caught:
            d.configure_lm(
                "openai/gpt-4o-mini", api_key_env="OPENAI_API_KEY", num_retries=0, smoke_test=True
            )
        assert "offline guard" in str(caught.value) or "offline guard" in (
            caught.value.remote_traceback
        )
        lines = log.read_text().splitlines()
        assert lines == [lines[0]]  # one attempt (num_retries=0), refused and logged
        assert "getaddrinfo lookup api.openai.com" in lines[0]
        # A refused configuration changed nothing.
        assert d.session.vars.get("dspy.lm", None) is None
    finally:
        client.close()
