"""A small question-answering data set shipped with the package, for demos and tests.

The fake model (``fake.py``) knows every answer but, without guidance, writes some of them as
a sentence, so exact match starts low and rises when an optimizer adds demos:

>>> from snakepit_nb.adapters.dspy.devset import trainset, devset
>>> trainset()[0]
{'question': 'What is 2 + 3?', 'answer': '5'}
"""

from __future__ import annotations

__all__ = ["devset", "trainset"]

_TRAIN: tuple[tuple[str, str], ...] = (
    ("What is 2 + 3?", "5"),
    ("What is the capital of France?", "Paris"),
    ("What is 7 * 6?", "42"),
    ("What is the capital of Japan?", "Tokyo"),
    ("What is 15 - 4?", "11"),
    ("What is the capital of Kenya?", "Nairobi"),
    ("What is 9 + 10?", "19"),
    ("What is the capital of Peru?", "Lima"),
    ("What is 81 / 9?", "9"),
    ("What is the capital of Norway?", "Oslo"),
)

_DEV: tuple[tuple[str, str], ...] = (
    ("What is 12 + 30?", "42"),
    ("What is the capital of Germany?", "Berlin"),
    ("What is 8 * 8?", "64"),
    ("What is the capital of Canada?", "Ottawa"),
    ("What is 100 - 58?", "42"),
    ("What is the capital of Egypt?", "Cairo"),
    ("What is 3 + 4?", "7"),
    ("What is the capital of Greece?", "Athens"),
    ("What is 56 / 7?", "8"),
    ("What is the capital of Poland?", "Warsaw"),
)


def trainset() -> list[dict[str, str]]:
    """Ten question/answer pairs to optimize on (a fresh list each call)."""
    return [{"question": q, "answer": a} for q, a in _TRAIN]


def devset() -> list[dict[str, str]]:
    """Ten held-out question/answer pairs to evaluate on (a fresh list each call)."""
    return [{"question": q, "answer": a} for q, a in _DEV]
