"""What a person reads of DSPy work, on real workers: evaluation rows with a metric defined
here (sent as source), the views of streams, evaluations and optimizations, batches over the
pool and in one worker, ``acall``, and ``session.map("dspy.run", ...)``.
"""

from __future__ import annotations

import asyncio
import html
import re
from typing import Any

import pytest

import snakepit_nb as sp
from snakepit_nb.adapters.dspy import DSPy
from snakepit_nb.adapters.dspy.devset import devset

pytestmark = pytest.mark.integration


def starts_with_the_gold(example: Any, prediction: Any, trace: Any = None) -> float:
    """A metric of the notebook's own: half a point for a sentence that holds the answer."""
    import re  # the worker compiles this function on its own: imports go inside

    gold, said = str(example.answer).lower(), str(prediction.answer).lower()
    if said == gold:
        return 1.0
    return 0.5 if re.search(rf"\b{re.escape(gold)}\b", said) else 0.0


def text_of(page: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", " ", page))


def test_evaluate_rows_with_a_metric_defined_here(d: DSPy) -> None:
    qa = d.program("qa", "question -> answer")
    evaluation = qa.evaluate(metric=starts_with_the_gold)
    events = [e for e in evaluation if e["type"] == "example"]
    rows = evaluation.rows
    assert len(rows) == len(devset()) == len(events)
    assert {"inputs", "gold", "prediction", "score"} <= set(rows[0])
    assert [r["inputs"]["question"] for r in rows] == [r["question"] for r in devset()]
    # The notebook metric scored it: sentences that hold the answer got half a point.
    assert {r["score"] for r in rows} == {1.0, 0.5}
    for row in rows:
        expected = 1.0 if row["prediction"]["answer"] == row["gold"]["answer"] else 0.5
        assert row["score"] == expected
    assert evaluation.score == pytest.approx(100 * sum(r["score"] for r in rows) / len(rows))
    assert events[0]["total"] == len(devset())  # progress: n of total
    page = evaluation._repr_html_()
    assert "snakepit-dspy-rows" in page
    assert "What is 12 + 30?" in text_of(page)
    assert f"score {evaluation.score:.1f} %" in text_of(page)
    # The same metric drives an optimization.
    run = qa.optimize("LabeledFewShot", params={"k": 4}, metric=starts_with_the_gold)
    list(run)
    assert run.result["score"] >= run.result["baseline"]
    with pytest.raises(ValueError, match="lambda"):
        qa.evaluate(metric=lambda example, prediction, trace=None: 1.0)


def test_a_notebook_metric_that_does_not_run_alone_is_refused(d: DSPy) -> None:
    qa = d.program("qa", "question -> answer")
    bad = {"source": "import not_a_module_anywhere\ndef m(e, p, t=None): return 1", "name": "m"}
    with pytest.raises(sp.RemoteToolError, match="does not run on its own"):
        list(d.session.stream("dspy.evaluate", name="qa", metric=bad))
    assert qa.demos == []


def test_views_of_streams_and_optimizations_are_tables(d: DSPy) -> None:
    qa = d.program("qa", "question -> answer", module="ChainOfThought")
    stream = qa.stream(question="What is the capital of Kenya?")
    list(stream)
    page = stream._repr_html_()
    assert "snakepit-dspy-fields" in page
    shown = text_of(page)
    assert "predict.reasoning" in shown
    assert stream.result["prediction"]["answer"] in shown
    assert "'type'" not in shown  # not a dump of event dicts

    run = qa.optimize("MIPROv2", params={"num_candidates": 3, "num_trials": 4})
    list(run)
    page = run._repr_html_()
    shown = text_of(page)
    for part in ("snakepit-dspy-trials", "snakepit-dspy-plot", "snakepit-dspy-best"):
        assert part in page
    assert f"{run.result['score']:.1f} %" in shown
    best = d.session.vars["qa.optimizer_status"]["best_instructions"]["predict"]
    assert best in shown  # the current best instructions are on show


def test_batch_over_the_pool_in_one_worker_acall_and_map(d: DSPy) -> None:
    qa = d.program("qa", "question -> answer")
    qa.instructions = "Give only the answer."
    rows = devset()
    seen: list[tuple[int, int]] = []
    predictions = qa.batch(
        [{"question": r["question"]} for r in rows], progress=lambda n, t: seen.append((n, t))
    )
    assert [p["answer"] for p in predictions] == [r["answer"] for r in rows]  # in order
    assert seen[-1] == (len(rows), len(rows))
    assert len(seen) > 1  # progress as parts finished
    assert [n for n, _ in seen] == sorted(n for n, _ in seen)
    # The calls were spread: both workers served some (each run's worker is in the history).
    workers = {c["worker_id"] for c in qa.inspect_history(len(rows))}
    assert len(workers) == 2
    # In one worker, with DSPy's Parallel threads.
    threaded = qa.batch([{"question": r["question"]} for r in rows], num_threads=4)
    assert threaded == predictions
    # In async code.

    async def together() -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(qa.acall(question=r["question"]) for r in rows[:4])))

    assert asyncio.run(together()) == predictions[:4]
    # The plain session API does the same.
    mapped = d.session.map(
        "dspy.run", [{"name": "qa", "inputs": {"question": r["question"]}} for r in rows[:3]]
    )
    assert [m["prediction"] for m in mapped] == predictions[:3]
    with pytest.raises(ValueError, match="list of inputs dicts"):
        qa.batch({"question": "x"})  # type: ignore[arg-type]
