"""A deterministic, offline language model for DSPy: the default when no real model is set.

``FakeModel`` reads the prompt DSPy's ChatAdapter (or JSONAdapter) builds and answers it by
rules, so that everything a person explores with a real model has a visible, repeatable
effect here:

* **knowledge**: arithmetic ("What is 12 + 30?") and the capitals of a few countries; anything
  else is answered by echoing the input;
* **style**: without guidance it answers some questions tersely ("42") and others in a
  sentence ("The answer is 42."), decided by a hash of the question. Instructions that ask for
  brevity ("only", "concise", "short", "terse", "just") make every answer terse, "verbose" or
  "sentence" makes every answer a sentence, and demos in the prompt are imitated: the model
  answers in the style most demos use. So exact-match scores rise when an optimizer adds good
  demos or when a person edits the instructions;
* **temperature**: at temperature ``t`` an answer "wanders" (a number is off by one, a word
  gets a hedge) with probability ``t / 2``, decided by a hash of the question and ``t``; at
  ``t = 0`` nothing wanders;
* **evidence**: a ``reasoning`` field (ChainOfThought) states how many demos the model saw and
  the temperature it ran at; "uppercase" in the instructions shouts every output field;
* **optimizers' roles**: asked by MIPROv2, COPRO, GEPA or SIMBA to describe the data, propose
  an instruction, reflect on scored responses or advise a module, it answers as a capable
  model would, from the examples in the prompt (``fake_roles.py``);
* **timing**: ``latency`` seconds per call and ``chunk_delay`` seconds per streamed chunk make
  streaming and cancellation observable.

``FakeEngine`` wraps it as a DSPy 3.4 engine (``dspy.LM("fake/rules", engine=FakeEngine())``),
with ``stream()`` so DSPy's stream listeners produce field-level chunks.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .fake_roles import meta_outputs

__all__ = ["CAPITALS", "FAKE_MODEL_NAME", "FakeEngine", "FakeModel", "ParsedPrompt"]

FAKE_MODEL_NAME = "fake/rules"

CAPITALS: dict[str, str] = {
    "france": "Paris",
    "germany": "Berlin",
    "italy": "Rome",
    "spain": "Madrid",
    "portugal": "Lisbon",
    "japan": "Tokyo",
    "canada": "Ottawa",
    "australia": "Canberra",
    "egypt": "Cairo",
    "kenya": "Nairobi",
    "peru": "Lima",
    "norway": "Oslo",
    "poland": "Warsaw",
    "greece": "Athens",
    "chile": "Santiago",
    "india": "New Delhi",
}

_FIELD_HEADER = re.compile(r"\[\[ ## (\w+) ## \]\]\n?")
_OUTPUT_FIELDS_BLOCK = re.compile(r"Your output fields are:\n(.*?)(?:\n[A-Z]|\Z)", re.S)
_INPUT_FIELDS_BLOCK = re.compile(r"Your input fields are:\n(.*?)\nYour output fields are:", re.S)
_FIELD_LINE = re.compile(r"^\d+\. `(\w+)` \(([^)]*)\)", re.M)
_OBJECTIVE = re.compile(r"your objective is:\s*(.*)\Z", re.S)
_ARITHMETIC = re.compile(r"(-?\d+(?:\.\d+)?)\s*([-+*/x×])\s*(-?\d+(?:\.\d+)?)")
_CAPITAL = re.compile(r"capital (?:city )?of ([A-Za-z ]+?)\s*\??$", re.I)
_REMINDER = "\n\nRespond with"
_TERSE_WORDS = ("only", "concise", "short", "terse", "just", "brief", "single word")
_VERBOSE_WORDS = ("verbose", "full sentence", "sentence", "explain")


@dataclass
class ParsedPrompt:
    """What the fake model understood from one prompt."""

    instructions: str = ""
    input_fields: list[str] = field(default_factory=list)
    output_fields: list[tuple[str, str]] = field(default_factory=list)  # (name, type)
    inputs: dict[str, str] = field(default_factory=dict)
    demos: list[dict[str, str]] = field(default_factory=list)
    json_mode: bool = False


def _sections(text: str) -> dict[str, str]:
    """Split ``[[ ## name ## ]]`` sections of a ChatAdapter message into a dict."""
    out: dict[str, str] = {}
    matches = list(_FIELD_HEADER.finditer(text))
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        out[m.group(1)] = text[m.end() : end].strip()
    return out


def parse_prompt(system: str, messages: list[tuple[str, str]]) -> ParsedPrompt:
    """Parse a ChatAdapter/JSONAdapter prompt: fields, instructions, demos and inputs."""
    parsed = ParsedPrompt()
    if block := _INPUT_FIELDS_BLOCK.search(system):
        parsed.input_fields = [m.group(1) for m in _FIELD_LINE.finditer(block.group(1))]
    if block := _OUTPUT_FIELDS_BLOCK.search(system):
        parsed.output_fields = [
            (m.group(1), m.group(2)) for m in _FIELD_LINE.finditer(block.group(1))
        ]
    if m := _OBJECTIVE.search(system):
        parsed.instructions = " ".join(m.group(1).split())
    # Demos are user/assistant pairs before the final user turn.
    pending: dict[str, str] | None = None
    for role, content in messages[:-1]:
        if role == "user":
            pending = _sections(content.split(_REMINDER, 1)[0])
        elif role == "assistant" and pending is not None:
            answer = _sections(content)
            if not answer:
                try:
                    decoded = json.loads(content)
                except ValueError:
                    decoded = None
                if isinstance(decoded, dict):
                    answer = {str(k): str(v) for k, v in decoded.items()}
            parsed.demos.append({**pending, **answer})
            pending = None
    if messages:
        last = messages[-1][1]
        # The final user turn ends with the adapter's "Respond with ..." reminder; drop it.
        last = last.split(_REMINDER, 1)[0]
        parsed.json_mode = "Respond with a JSON object" in messages[-1][1]
        parsed.inputs = {k: v for k, v in _sections(last).items() if k in parsed.input_fields}
        if not parsed.inputs and parsed.input_fields:
            parsed.inputs = {parsed.input_fields[0]: last.strip()}
    return parsed


def _unit(*parts: object) -> float:
    """A deterministic number in [0, 1) from the parts (stable across processes)."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _number_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.4g}"


@dataclass
class FakeModel:
    """The rules behind the fake language model (pure Python; no DSPy needed).

    >>> FakeModel().answer_text("What is 2 + 3?", terse=True)
    '5'
    """

    latency: float = 0.0
    chunk_delay: float = 0.0
    chunk_size: int = 6

    # -- knowledge -------------------------------------------------------------------------
    def solve(self, question: str) -> tuple[str | None, str]:
        """Return ``(value, how)``: the bare answer (None if unknown) and a one-line reason."""
        if m := _ARITHMETIC.search(question):
            a, op, b = float(m.group(1)), m.group(2), float(m.group(3))
            if op == "+":
                value = a + b
            elif op == "-":
                value = a - b
            elif op in "*x×":
                value = a * b
            else:
                if b == 0:
                    return "undefined", "division by zero is undefined"
                value = a / b
            text = _number_text(value)
            return text, f"{m.group(1)} {op} {m.group(3)} = {text}"
        if m := _CAPITAL.search(question.strip()):
            country = m.group(1).strip().lower()
            if country in CAPITALS:
                return CAPITALS[
                    country
                ], f"the capital of {m.group(1).strip()} is {CAPITALS[country]}"
        return None, "I do not know this one, so I repeat the question"

    def answer_text(self, question: str, *, terse: bool, temperature: float = 0.0) -> str:
        """The answer to ``question`` in the chosen style, after temperature wandering."""
        value, _ = self.solve(question)
        if value is None:
            value = question.strip()
        if temperature > 0 and _unit("wander", question, f"{temperature:.3f}") < temperature / 2:
            value = self._wander(value, question, temperature)
        return value if terse else f"The answer is {value}."

    @staticmethod
    def _wander(value: str, question: str, temperature: float) -> str:
        try:
            number = float(value)
        except ValueError:
            hedges = ("probably", "maybe", "perhaps", "I think")
            pick = int(_unit("hedge", question, f"{temperature:.3f}") * len(hedges))
            return f"{hedges[pick]} {value}"
        step = 1 if _unit("sign", question, f"{temperature:.3f}") < 0.5 else -1
        return _number_text(number + step)

    # -- style -----------------------------------------------------------------------------
    @staticmethod
    def choose_terse(prompt: ParsedPrompt, question: str) -> tuple[bool, str]:
        """Decide the answer style and say why (the reason shows up in ``reasoning``)."""
        instructions = prompt.instructions.lower()
        if any(word in instructions for word in _TERSE_WORDS):
            return True, "the instructions ask for a short answer"
        if any(word in instructions for word in _VERBOSE_WORDS):
            return False, "the instructions ask for a sentence"
        answers = [d.get("answer", "") for d in prompt.demos if d.get("answer")]
        if answers:
            short = sum(1 for a in answers if len(a.split()) <= 2)
            terse = short * 2 >= len(answers)
            style = "short answers" if terse else "full sentences"
            return terse, f"the {len(answers)} examples I was shown use {style}"
        return _unit("style", question) < 0.4, "no examples were shown, so I answer my own way"

    # -- the whole completion --------------------------------------------------------------
    def outputs(self, prompt: ParsedPrompt, temperature: float) -> dict[str, str]:
        """Compute every output field of the prompt."""
        meta = meta_outputs(prompt.output_fields, prompt.inputs, len(prompt.demos))
        if meta is not None:  # an optimizer asking for an instruction or advice
            return meta
        question = next(iter(prompt.inputs.values()), "") if prompt.inputs else ""
        question = prompt.inputs.get("question", question)
        terse, why = self.choose_terse(prompt, question)
        value, how = self.solve(question)
        shout = "uppercase" in prompt.instructions.lower()
        result: dict[str, str] = {}
        for name, type_name in prompt.output_fields or [("answer", "str")]:
            if name == "reasoning":
                text = (
                    f"I saw {len(prompt.demos)} demos and ran at temperature "
                    f"{temperature:g}; {how}; {why}."
                )
            elif type_name in ("int", "float"):
                text = self.answer_text(question, terse=True, temperature=temperature)
                try:
                    number = float(text)
                except ValueError:
                    number = 0.0
                text = str(int(number)) if type_name == "int" else _number_text(number)
            elif type_name == "bool":
                text = "true" if value not in (None, "", "0") else "false"
            elif name in ("answer", "response", "output", "result"):
                text = self.answer_text(question, terse=terse, temperature=temperature)
            elif "sentiment" in name:
                text = self._sentiment(question)
            elif "summary" in name:
                text = " ".join(question.split()[:12])
            else:
                text = f"{name} of {question.strip()}"
            result[name] = text.upper() if shout else text
        return result

    @staticmethod
    def _sentiment(text: str) -> str:
        words = set(re.findall(r"[a-z']+", text.lower()))
        good = len(words & {"good", "great", "love", "excellent", "happy", "nice", "best"})
        bad = len(words & {"bad", "awful", "hate", "terrible", "sad", "worst", "poor"})
        return "positive" if good > bad else "negative" if bad > good else "neutral"

    def complete(self, system: str, messages: list[tuple[str, str]], temperature: float) -> str:
        """The full completion text for a prompt, in the adapter's format."""
        prompt = parse_prompt(system, messages)
        outputs = self.outputs(prompt, temperature)
        if prompt.json_mode:
            return json.dumps(outputs)
        body = "\n\n".join(f"[[ ## {k} ## ]]\n{v}" for k, v in outputs.items())
        return f"{body}\n\n[[ ## completed ## ]]"

    def chunks(self, text: str) -> Iterator[str]:
        """Split a completion into the pieces a stream delivers."""
        size = max(1, self.chunk_size)
        for start in range(0, len(text), size):
            yield text[start : start + size]


class FakeEngine:
    """A DSPy 3.4 engine around ``FakeModel``; safe to share between threads.

    >>> import dspy
    >>> lm = dspy.LM("fake/rules", engine=FakeEngine(), cache=False)
    """

    def __init__(self, latency: float = 0.0, chunk_delay: float = 0.0, chunk_size: int = 6):
        self.model = FakeModel(latency=latency, chunk_delay=chunk_delay, chunk_size=chunk_size)
        self._lock = threading.Lock()
        self.calls = 0

    # DSPy saves a custom engine as {"class": "module:Name", "state": dump_state()}.
    def dump_state(self) -> dict[str, Any]:
        m = self.model
        return {"latency": m.latency, "chunk_delay": m.chunk_delay, "chunk_size": m.chunk_size}

    @classmethod
    def load_state(cls, state: dict[str, Any]) -> FakeEngine:
        return cls(**{k: state[k] for k in ("latency", "chunk_delay", "chunk_size") if k in state})

    def _text(self, request: Any) -> str:
        system = request.system
        if system is not None and not isinstance(system, str):
            system = "".join(getattr(p, "text", "") or "" for p in system)
        messages = [(m.role, m.text or "") for m in request.messages]
        temperature = request.config.temperature or 0.0
        with self._lock:
            self.calls += 1
        if self.model.latency > 0:
            time.sleep(self.model.latency)
        return self.model.complete(system or "", messages, float(temperature))

    @staticmethod
    def _usage(text: str, request: Any) -> Any:
        from dspy.lm15 import Usage

        prompt_words = sum(len((m.text or "").split()) for m in request.messages)
        out = len(text.split())
        return Usage(input_tokens=prompt_words, output_tokens=out, total_tokens=prompt_words + out)

    def complete(self, request: Any) -> Any:
        from dspy.lm15 import Message, Response, TextPart

        text = self._text(request)
        return Response(
            id=None,
            model=FAKE_MODEL_NAME,
            message=Message.assistant([TextPart(text)]),
            finish_reason="stop",
            usage=self._usage(text, request),
        )

    def stream(self, request: Any) -> Iterator[Any]:
        from dspy.lm15 import StreamDeltaEvent, StreamEndEvent, StreamStartEvent, TextDelta

        text = self._text(request)
        yield StreamStartEvent(model=FAKE_MODEL_NAME)
        for piece in self.model.chunks(text):
            if self.model.chunk_delay > 0:
                time.sleep(self.model.chunk_delay)
            yield StreamDeltaEvent(TextDelta(piece))
        yield StreamEndEvent(finish_reason="stop", usage=self._usage(text, request))

    def close(self) -> None:
        """Nothing to release; DSPy calls this when the LM is closed."""
