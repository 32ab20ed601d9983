"""DSPy modules of several predictors, importable by the workers (tests put this folder on
their ``PYTHONPATH``): what people write instead of a single signature."""

from __future__ import annotations

from typing import Any

import dspy


class RewriteThenAnswer(dspy.Module):  # type: ignore[misc]
    """Two steps: restate the question, then answer the restated question."""

    def __init__(self, style: str = "plain") -> None:
        super().__init__()
        self.style = style
        self.rewrite = dspy.Predict("question -> rewritten_question")
        self.answer = dspy.ChainOfThought("rewritten_question -> answer")

    def forward(self, question: str) -> Any:
        rewritten = self.rewrite(question=question).rewritten_question
        return self.answer(rewritten_question=rewritten)
