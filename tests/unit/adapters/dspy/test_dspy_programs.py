"""DSPy programs as variables, the background runner, metrics and optimizers (in process).

These use the real DSPy and the shipped fake model; the worker-side tools are tested through
real workers in tests/integration/test_dspy_adapter.py.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from snakepit_nb._errors import InvalidArgumentError
from snakepit_nb.adapters.dspy.background import BackgroundRun, Cancelled
from snakepit_nb.adapters.dspy.catalog import check_params
from snakepit_nb.adapters.dspy.devset import devset, trainset
from snakepit_nb.adapters.dspy.metrics import normalize, resolve_metric
from snakepit_nb.adapters.dspy.models.environment import _is_loopback_host, import_dspy
from snakepit_nb.adapters.dspy.models.lm import LMFactory, LMSettings, validate_temperature
from snakepit_nb.adapters.dspy.optimizer import optimize, to_examples
from snakepit_nb.adapters.dspy.programs import (
    ProgramCache,
    ProgramVariables,
    build_program,
    compose_program,
    decompose_program,
    validate_demos,
    validate_program_name,
)

dspy = import_dspy()
SPEC = {"module": "ChainOfThought", "signature": "question -> answer"}


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Refuse (and record) any non-loopback connection or lookup these tests make."""
    attempts: list[str] = []
    real_getaddrinfo = socket.getaddrinfo
    real_connect = socket.socket.connect

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if not _is_loopback_host(host):
            attempts.append(f"lookup {host}")
            raise OSError(f"test guard: no network ({host})")
        return real_getaddrinfo(host, *args, **kwargs)

    def connect(self: socket.socket, address: Any) -> Any:
        if isinstance(address, tuple) and not _is_loopback_host(address[0]):
            attempts.append(f"connect {address[0]}")
            raise OSError(f"test guard: no network ({address[0]})")
        return real_connect(self, address)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", connect)
    yield attempts
    assert attempts == [], f"a test tried to reach the network: {attempts}"


def test_the_network_guard_of_these_tests_is_armed(no_network: list[str]) -> None:
    with pytest.raises(OSError, match="test guard"):
        socket.getaddrinfo("api.openai.com", 443)
    assert no_network == ["lookup api.openai.com"]
    no_network.clear()  # expected here; any other attempt fails the test at teardown


def test_variable_names_for_one_and_several_predictors() -> None:
    one = ProgramVariables("qa", ("predict",))
    assert one.definition() == ["qa.spec", "qa.state", "qa.instructions", "qa.demos"]
    two = ProgramVariables("rag", ("retrieve", "answer"))
    assert two.instructions("answer") == "rag.answer.instructions"
    with pytest.raises(InvalidArgumentError, match="name one"):
        two.predictor_for(None)
    with pytest.raises(InvalidArgumentError, match="has no predictor 'x'"):
        one.predictor_for("x")


@pytest.mark.parametrize("bad", ["", "1qa", "qa.b", "a b", "x" * 49, 3])
def test_bad_program_names_are_refused(bad: object) -> None:
    with pytest.raises(InvalidArgumentError, match="program name"):
        validate_program_name(bad)


def test_decompose_then_compose_round_trips_and_flattened_values_win() -> None:
    program = build_program("ChainOfThought", "question -> answer")
    program.predict.demos = [dspy.Example(question="What is 1 + 1?", reasoning="r", answer="2")]
    state, instructions, demos = decompose_program(program)
    assert "instructions" not in state["predict"]["signature"]  # lives in its own variable
    assert state["predict"]["demos"] == []
    assert demos == {"predict": [{"question": "What is 1 + 1?", "reasoning": "r", "answer": "2"}]}
    rebuilt = compose_program(SPEC, state, {"predict": "Answer in uppercase."}, demos)
    assert rebuilt.predict.signature.instructions == "Answer in uppercase."
    assert [dict(d) for d in rebuilt.predict.demos] == demos["predict"]
    default = compose_program(SPEC, None, {}, {})
    assert default.predict.signature.instructions == instructions["predict"]


def test_a_bare_predict_round_trips_too() -> None:
    program = build_program("Predict", "question -> answer")
    program.demos = [dspy.Example(question="q", answer="a")]
    state, instructions, demos = decompose_program(program)
    assert instructions["self"].startswith("Given the fields")
    assert demos == {"self": [{"question": "q", "answer": "a"}]}
    assert state["demos"] == []
    spec = {"module": "Predict", "signature": "question -> answer"}
    rebuilt = compose_program(spec, state, {"self": "Be brief."}, demos)
    assert rebuilt.signature.instructions == "Be brief."
    assert [dict(d) for d in rebuilt.demos] == demos["self"]
    assert compose_program(spec, None, {}, {}).demos == []


def test_bad_module_signature_and_demos_are_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="module must be one of"):
        build_program("ReAct", "question -> answer")
    with pytest.raises(InvalidArgumentError, match="signature must be a string"):
        build_program("Predict", "question")
    program = build_program("Predict", "question -> answer")
    with pytest.raises(InvalidArgumentError, match="not fields"):
        validate_demos(program, "self", [{"question": "q", "colour": "red"}])
    with pytest.raises(InvalidArgumentError, match="list of dicts"):
        validate_demos(program, "self", "q")


def test_program_cache_is_keyed_by_versions() -> None:
    cache = ProgramCache(capacity=2)
    cache.put("s", "qa", (1, 1), "program-v1")
    assert cache.get("s", "qa", (1, 1)) == "program-v1"
    assert cache.get("s", "qa", (1, 2)) is None  # an edit made it stale
    cache.put("s", "b", (1,), "b")
    cache.put("s", "c", (1,), "c")
    assert cache.get("s", "qa", (1, 1)) is None  # evicted (capacity 2)


def test_lm_settings_validation() -> None:
    assert LMSettings.from_mapping(None).is_fake
    with pytest.raises(InvalidArgumentError, match="provider/name"):
        LMSettings(model="gpt4")
    with pytest.raises(InvalidArgumentError, match="unknown language-model setting"):
        LMSettings.from_mapping({"model": "fake/rules", "api_key": "sk-secret"})
    with pytest.raises(InvalidArgumentError, match="temperature"):
        validate_temperature(2.5)
    with pytest.raises(InvalidArgumentError, match="temperature"):
        validate_temperature(True)


def test_per_call_lm_copies_carry_their_own_temperature() -> None:
    factory = LMFactory()
    program = build_program("ChainOfThought", "question -> answer")
    hot = factory.lm(LMSettings(), temperature=1.5)
    cold = factory.lm(LMSettings(), temperature=0.0)
    assert factory.base(LMSettings()) is factory.base(LMSettings())  # one base per settings
    with dspy.context(lm=hot):
        hot_reasoning = program(question="What is 2 + 3?").reasoning
    with dspy.context(lm=cold):
        cold_reasoning = program(question="What is 2 + 3?").reasoning
    assert "temperature 1.5" in hot_reasoning
    assert "temperature 0" in cold_reasoning
    assert len(hot.history) == 1
    assert len(cold.history) == 1


def test_metrics() -> None:
    assert normalize("  The  Answer. ") == "the answer"
    gold = dspy.Example(question="q", answer="Paris")
    exact = resolve_metric("exact_match")
    contains = resolve_metric("contains")
    assert exact(gold, dspy.Prediction(answer="paris."))
    assert not exact(gold, dspy.Prediction(answer="The answer is Paris."))
    assert contains(gold, dspy.Prediction(answer="The answer is Paris."))
    assert resolve_metric("answer_exact_match")(gold, dspy.Prediction(answer="Paris"))
    assert resolve_metric("snakepit_nb.adapters.dspy.metrics:normalize") is normalize
    with pytest.raises(InvalidArgumentError, match="unknown metric"):
        resolve_metric("f1")
    with pytest.raises(InvalidArgumentError, match="cannot be imported"):
        resolve_metric("nosuchmodule_xyz:metric")


def test_examples_and_params_are_validated() -> None:
    with pytest.raises(InvalidArgumentError, match="non-empty list of dicts"):
        to_examples([], ["question"], what="trainset")
    with pytest.raises(InvalidArgumentError, match=r"trainset\[1\] lacks the input key"):
        to_examples([{"question": "a"}, {"q": "b"}], ["question"], what="trainset")
    with pytest.raises(InvalidArgumentError, match="unknown optimizer"):
        check_params("MagicOptimizer", {})
    with pytest.raises(InvalidArgumentError, match="does not take teacher"):
        check_params("BootstrapFewShot", {"teacher": "x"})


# -- the background runner ----------------------------------------------------------------


def test_background_run_streams_events_and_result() -> None:
    def target(run: BackgroundRun) -> str:
        for i in range(300):  # more than the queue holds: the thread waits for the reader
            run.emit(i)
        return "done"

    async def main() -> tuple[list[Any], Any]:
        run = BackgroundRun(target, name="t", maxsize=8)
        return [e async for e in run], run.result

    events, result = asyncio.run(main())
    assert events == list(range(300))
    assert result == "done"


def test_background_run_reraises_the_target_error() -> None:
    def target(run: BackgroundRun) -> None:
        run.emit("before")
        raise ValueError("boom")

    async def main() -> list[Any]:
        seen: list[Any] = []

        async def consume() -> None:
            async for event in BackgroundRun(target, name="t"):
                seen.append(event)

        with pytest.raises(ValueError, match="boom"):
            await consume()
        return seen

    assert asyncio.run(main()) == ["before"]


def test_cancel_stops_a_blocked_producer_promptly() -> None:
    stopped = threading.Event()

    def target(run: BackgroundRun) -> None:
        try:
            while True:
                run.emit("tick")  # the reader stops reading: this blocks, then raises
        except Cancelled:
            stopped.set()
            raise

    async def main() -> float:
        run = BackgroundRun(target, name="t", maxsize=2)
        async for _ in run:
            break
        started = time.monotonic()
        run.cancel()
        assert await run.wait_stopped(5.0)
        return time.monotonic() - started

    assert asyncio.run(main()) < 1.0
    assert stopped.is_set()


def test_bootstrap_few_shot_improves_the_fake_model_and_cancels_promptly() -> None:
    factory = LMFactory()
    program = build_program("Predict", "question -> answer")
    train = to_examples(trainset(), ["question"], what="trainset")
    val = to_examples(devset(), ["question"], what="valset")
    metric = resolve_metric("exact_match")

    def start(latency: float) -> BackgroundRun:
        lm = factory.lm(LMSettings(latency=latency), temperature=0.0)
        return BackgroundRun(
            lambda r: optimize(
                r,
                program=program,
                lm=lm,
                optimizer="BootstrapFewShot",
                params={"max_bootstrapped_demos": 2, "max_labeled_demos": 2},
                trainset=train,
                valset=val,
                metric=metric,
            ),
            name="opt",
        )

    async def full() -> tuple[list[dict[str, Any]], Any]:
        run = start(0.0)
        return [e async for e in run], run.result

    events, outcome = asyncio.run(full())
    bests = [e["best"] for e in events if e["type"] == "candidate"]
    assert outcome.baseline < 100.0 <= outcome.score
    assert bests == sorted(bests)
    assert bests[-1] == 100.0
    assert len(outcome.program.demos) == 2
    assert not program.demos  # the student is left untouched

    async def cancelled() -> float:
        run = start(0.05)
        async for event in run:
            if event["type"] == "example":
                break
        started = time.monotonic()
        run.cancel()
        assert await run.wait_stopped(5.0)
        return time.monotonic() - started

    assert asyncio.run(cancelled()) < 1.0
