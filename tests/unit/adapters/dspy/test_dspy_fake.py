"""The fake language model: prompt parsing, knowledge, style, temperature, demos, streaming."""

from __future__ import annotations

from typing import Any

import pytest

from snakepit_nb.adapters.dspy.devset import devset, trainset
from snakepit_nb.adapters.dspy.models.fake import FakeModel, parse_prompt

SYSTEM = """Your input fields are:
1. `question` (str):
Your output fields are:
1. `reasoning` (str):
2. `answer` (str):
All interactions will be structured in the following way, with the appropriate values filled in.

[[ ## question ## ]]
{question}

[[ ## completed ## ]]
In adhering to this structure, your objective is:
        Given the fields `question`, produce the fields `answer`."""


def user(question: str) -> tuple[str, str]:
    return (
        "user",
        f"[[ ## question ## ]]\n{question}\n\nRespond with the corresponding output fields, "
        "starting with the field `[[ ## reasoning ## ]]`, then `[[ ## answer ## ]]`.",
    )


def assistant(answer: str) -> tuple[str, str]:
    return ("assistant", f"[[ ## reasoning ## ]]\nr\n\n[[ ## answer ## ]]\n{answer}\n\n")


def test_parse_prompt_reads_fields_instructions_demos_and_inputs() -> None:
    messages = [user("What is 1 + 1?"), assistant("2"), user("What is 2 + 3?")]
    parsed = parse_prompt(SYSTEM, messages)
    assert parsed.input_fields == ["question"]
    assert [name for name, _ in parsed.output_fields] == ["reasoning", "answer"]
    assert parsed.instructions == "Given the fields `question`, produce the fields `answer`."
    assert parsed.demos == [{"question": "What is 1 + 1?", "reasoning": "r", "answer": "2"}]
    assert parsed.inputs == {"question": "What is 2 + 3?"}


@pytest.mark.parametrize(
    ("question", "expected"),
    [
        ("What is 12 + 30?", "42"),
        ("What is 7 * 6?", "42"),
        ("What is 100 - 58?", "42"),
        ("What is 81 / 9?", "9"),
        ("What is the capital of France?", "Paris"),
    ],
)
def test_knowledge(question: str, expected: str) -> None:
    assert FakeModel().answer_text(question, terse=True) == expected
    assert FakeModel().answer_text(question, terse=False) == f"The answer is {expected}."


def test_every_shipped_example_is_answerable() -> None:
    model = FakeModel()
    for row in trainset() + devset():
        assert model.answer_text(row["question"], terse=True) == row["answer"]


def test_temperature_changes_answers_deterministically() -> None:
    model = FakeModel()
    questions = [row["question"] for row in trainset() + devset()]
    cold = [model.answer_text(q, terse=True, temperature=0.0) for q in questions]
    hot = [model.answer_text(q, terse=True, temperature=1.6) for q in questions]
    assert cold == [model.answer_text(q, terse=True) for q in questions]
    changed = sum(a != b for a, b in zip(cold, hot, strict=True))
    assert changed >= 5  # about 80 % wander at t = 1.6
    assert hot == [model.answer_text(q, terse=True, temperature=1.6) for q in questions]


def completion(messages: list[tuple[str, str]], system: str = SYSTEM, t: float = 0.0) -> str:
    return FakeModel().complete(system, messages, t)


def test_demos_are_imitated_and_reported() -> None:
    question = "What is the capital of Germany?"
    zero_shot = completion([user(question)])
    assert "I saw 0 demos" in zero_shot
    with_demos = completion(
        [
            user("What is 1 + 1?"),
            assistant("2"),
            user("What is 3 + 3?"),
            assistant("6"),
            user(question),
        ]
    )
    assert "I saw 2 demos" in with_demos
    assert "[[ ## answer ## ]]\nBerlin\n" in with_demos
    verbose_demos = completion(
        [user("What is 1 + 1?"), assistant("The answer is 2."), user(question)]
    )
    assert "[[ ## answer ## ]]\nThe answer is Berlin.\n" in verbose_demos


def test_instructions_change_the_answer() -> None:
    question = "What is the capital of Peru?"
    shout = SYSTEM.replace("Given the fields", "Answer in UPPERCASE. Given the fields")
    assert "[[ ## answer ## ]]\nLIMA" in completion(
        [user(question)], shout.replace("Answer", "Only answer")
    )
    terse = SYSTEM.replace("Given the fields", "Reply with only the answer. Given the fields")
    assert "[[ ## answer ## ]]\nLima\n" in completion([user(question)], terse)
    verbose = SYSTEM.replace("Given the fields", "Always answer in a full sentence. Given")
    assert "[[ ## answer ## ]]\nThe answer is Lima.\n" in completion([user(question)], verbose)


def test_typed_and_json_outputs() -> None:
    system = SYSTEM.replace("2. `answer` (str):", "2. `answer` (int):")
    assert "[[ ## answer ## ]]\n42\n" in completion([user("What is 40 + 2?")], system)
    json_turn = (
        "user",
        "[[ ## question ## ]]\nWhat is 2 + 2?\n\nRespond with a JSON object in "
        "the following order of fields: `reasoning`, then `answer`.",
    )
    text = completion([json_turn])
    import json

    decoded: dict[str, Any] = json.loads(text)
    assert set(decoded) == {"reasoning", "answer"}


def test_chunks_reassemble() -> None:
    model = FakeModel(chunk_size=4)
    text = completion([user("What is 2 + 3?")])
    pieces = list(model.chunks(text))
    assert len(pieces) > 5
    assert "".join(pieces) == text


# -- the proposer and critic roles optimizers ask for ---------------------------------------
def test_the_fake_proposer_reads_the_style_the_examples_want() -> None:
    from snakepit_nb.adapters.dspy.models.fake_roles import infer_style, meta_outputs

    short = "[Example({'question': 'What is 2 + 3?', 'answer': '5'}), Example({'answer': 'Oslo'})]"
    long = "Question: What is 2 + 3?\nAnswer: The answer is 5.\nAnswer: It is Oslo, I think."
    assert infer_style(short)[0] is True
    assert infer_style(long)[0] is False
    feedback = (
        '[{"Generated Outputs": {"answer": "The answer is 9."}, "Feedback": "a score of 0.0."},'
        ' {"Generated Outputs": {"answer": "Oslo"}, "Feedback": "a score of True."}]'
    )
    terse, evidence = infer_style("", feedback)
    assert terse is True
    assert "'Oslo' scored well" in evidence
    assert "'The answer is 9.' scored badly" in evidence
    # An ordinary task prompt is not the proposer's business.
    assert meta_outputs([("answer", "str")], {"question": "What is 2 + 3?"}, 0) is None
    tips = {
        meta_outputs([("proposed_instruction", "str")], {"task_demos": short, "tip": tip}, 0)[
            "proposed_instruction"
        ]
        for tip in ("", "Be creative!", "Keep it concise.", "Include a persona.")
    }
    assert len(tips) == 4  # a different, readable candidate per tip
    assert all("only" in t or "just" in t for t in tips)
    advice = meta_outputs(
        [("discussion", "str"), ("module_advice", "dict[str, str]")],
        {"module_names": '["generate", "answer"]'},
        0,
    )
    import json

    assert set(json.loads(advice["module_advice"])) == {"generate", "answer"}
