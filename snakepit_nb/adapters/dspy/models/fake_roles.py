"""The fake model's other roles: the proposer and the critic that optimizers ask for.

Instruction-writing optimizers send the model prompts of their own: MIPROv2 asks it to
describe the data set, the program and a module, then to propose an instruction (with a "tip"
for variety); COPRO asks for an instruction and an output prefix; GEPA shows it the current
instruction with examples of responses and their scores and asks for a new instruction; SIMBA
shows a better and a worse trajectory and asks for advice per module. ``meta_outputs``
recognizes these prompts by their output fields and answers them the way a capable model
would, by looking at the examples in the prompt:

* the *style* the data wants: gold answers of one or two words (or responses that scored
  well being short and the ones that scored badly being sentences) mean "only the answer";
  sentences mean "a full sentence";
* a readable instruction in that style, worded differently per tip, so candidates differ (the
  "informative and descriptive" tip writes a wordy one that asks for a sentence, as a model
  chasing that tip might, so that an optimizer has a worse candidate to reject).

The task side of the fake model (``fake.py``) follows instructions that ask for "only" the
answer, so an optimizer that adopts these instructions measurably raises exact match.
"""

from __future__ import annotations

import json
import re

__all__ = ["META_FIELDS", "meta_outputs"]

# Output fields that mark a prompt as an optimizer's question to the model.
META_FIELDS = frozenset(
    {
        "observations",
        "summary",
        "program_description",
        "module_description",
        "proposed_instruction",
        "proposed_prefix_for_output_field",
        "new_instruction",
        "improved_instruction",
        "discussion",
        "module_advice",
    }
)

_GOLD = re.compile(
    r"""['"]answer['"]\s*:\s*['"]([^'"]*)['"]"""  # Example reprs and JSON
    r"""|^Answer:\s*(.+)$"""  # MIPROv2's task demos ("Answer: 5")
    r"""|\[\[ ## answer ## \]\]\n(.+)""",  # ChatAdapter turns
    re.M,
)
_SCORED = re.compile(r"score of (-?\d+(?:\.\d+)?|True|False)")

TERSE_INSTRUCTIONS = {
    "none": "Answer the question with only the final answer, a number or a name, and no "
    "sentence around it.",
    "simple": "Give only the answer, one number or one name.",
    "creative": "Imagine you are the answer card of a quiz and show only the answer itself, "
    "a single number or name.",
    "high_stakes": "A strict grader checks every reply, so write only the exact answer, a "
    "number or a name, and nothing else.",
    "persona": "You are a precise quiz champion. Reply with just the answer, a number or a name.",
    "description": "You will be given a short factual question, such as a sum or the capital "
    "of a country. Work the answer out and state it in a full sentence that explains it.",
}
SENTENCE_INSTRUCTIONS = {
    "none": "Answer the question in a full sentence, for example 'The answer is 42.'",
    "simple": "Reply with a full sentence that states the answer.",
    "creative": "Answer like a friendly teacher, in a full sentence that states the answer.",
    "high_stakes": "A reviewer reads every reply, so state the answer in a complete, correct "
    "sentence.",
    "persona": "You are a patient tutor. State the answer in a full sentence.",
    "description": "You will be given a short factual question, such as a sum or the capital "
    "of a country. State the answer in a full sentence.",
}
_TIP_WORDS = (
    ("creative", "creative"),
    ("concise", "simple"),
    ("descriptive", "description"),
    ("high stakes", "high_stakes"),
    ("persona", "persona"),
)


def _short(text: str) -> bool:
    return len(text.split()) <= 2


def _scored_outputs(text: str) -> tuple[list[str], list[str]]:
    """From GEPA's examples with feedback: (outputs that scored well, that scored badly)."""
    good: list[str] = []
    bad: list[str] = []
    try:
        items = json.loads(text)
    except ValueError:
        return good, bad
    if not isinstance(items, list):
        return good, bad
    for item in items:
        if not isinstance(item, dict):
            continue
        outputs = item.get("Generated Outputs")
        answer = outputs.get("answer") if isinstance(outputs, dict) else outputs
        found = _SCORED.search(str(item.get("Feedback", "")))
        if answer is None or found is None:
            continue
        text = found.group(1)
        value = 1.0 if text == "True" else 0.0 if text == "False" else float(text)
        (good if value >= 0.5 else bad).append(str(answer))
    return good, bad


def infer_style(text: str, feedback: str = "") -> tuple[bool, str]:
    """Whether the examples in ``text`` (or the scored ``feedback``) call for short answers,
    and the evidence for it."""
    good, bad = _scored_outputs(feedback) if feedback else ([], [])
    if good or bad:
        good_short = sum(map(_short, good)) / len(good) if good else 0.0
        bad_short = sum(map(_short, bad)) / len(bad) if bad else 1.0
        terse = good_short >= bad_short
        example_good = next((g for g in good if _short(g) == terse), good[0] if good else "")
        example_bad = next((b for b in bad if _short(b) != terse), bad[0] if bad else "")
        evidence = (
            f"responses such as {example_good!r} scored well"
            + (f", while {example_bad!r} scored badly" if example_bad else "")
            if example_good
            else f"responses such as {example_bad!r} scored badly"
        )
        return terse, evidence
    golds = [next(g for g in m.groups() if g is not None).strip() for m in _GOLD.finditer(text)]
    golds = [g for g in golds if g and g != "{answer}"]
    if not golds:
        return True, "no examples were shown, and short answers are easiest to check"
    short = sum(map(_short, golds))
    terse = short * 2 >= len(golds)
    style = "a single number or a name" if terse else "a full sentence"
    return terse, f"{short} of the {len(golds)} example answers I saw are {style}"


def _tip(text: str) -> str:
    lowered = text.lower()
    for word, tip in _TIP_WORDS:
        if word in lowered:
            return tip
    return "none"


def _kinds(text: str) -> str:
    arithmetic = len(re.findall(r"\d+\s*[-+*/x]\s*\d+", text))
    capitals = len(re.findall(r"capital of", text, re.I))
    parts = []
    if arithmetic:
        parts.append("arithmetic")
    if capitals:
        parts.append("the capitals of countries")
    return " and ".join(parts) or "short factual questions"


def meta_outputs(
    output_fields: list[tuple[str, str]], inputs: dict[str, str], demos_seen: int
) -> dict[str, str] | None:
    """The answer to an optimizer's prompt, or None if this is an ordinary task prompt."""
    names = {name for name, _ in output_fields}
    if not names & META_FIELDS:
        return None
    text = "\n".join(inputs.values())
    terse, evidence = infer_style(text, inputs.get("examples_with_feedback", ""))
    tip = _tip(inputs.get("tip", ""))
    instructions = TERSE_INSTRUCTIONS if terse else SENTENCE_INSTRUCTIONS
    instruction = instructions[tip]
    if "examples_with_feedback" in inputs:  # GEPA: say what the feedback taught
        instruction = f"{instructions['none']} ({evidence[0].upper()}{evidence[1:]}.)"
    style = "a single number or a name" if terse else "a full sentence"
    kinds = _kinds(text)
    out: dict[str, str] = {}
    for name, _ in output_fields:
        if name == "reasoning":
            value = f"I read {demos_seen} demos and the examples in the prompt; {evidence}."
        elif name == "observations":
            value = (
                f"The examples are questions about {kinds}. Most answers are {style}, with "
                "nothing else around them."
            )
        elif name == "summary":
            value = f"Questions about {kinds}, answered with {style}."
        elif name == "program_description":
            value = (
                "The program answers a question with a language model, turning its input "
                "fields into its output fields in one step."
            )
        elif name == "module_description":
            value = f"This module reads the question and writes the answer as {style}."
        elif name == "proposed_prefix_for_output_field":
            value = "Answer:"
        elif name == "discussion":
            value = (
                f"The better trajectory answered with {style} and earned the higher reward; "
                "the worse one did not, so the module should keep to that form."
            )
        elif name == "module_advice":
            modules = _module_names(inputs.get("module_names", ""))
            value = json.dumps({m: instructions["none"] for m in modules or ["self"]})
        else:  # proposed_instruction, new_instruction, improved_instruction
            value = instruction
        out[name] = value
    return out


def _module_names(text: str) -> list[str]:
    try:
        names = json.loads(text)
    except ValueError:
        names = re.findall(r"[A-Za-z_][\w.]*", text)
    return [str(n) for n in names] if isinstance(names, list) else []
