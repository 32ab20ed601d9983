"""The names the wire contract allows (the published bridge's limits)."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from typing import Final

from snakepit_nb._errors import InvalidArgumentError

__all__ = ["MAX_TOOL_NAME", "TOOL_NAME_PATTERN", "check_tool_name", "did_you_mean"]

#: Tool names: letters, digits, ``_``, ``.`` and ``-``, starting with a letter or digit.
TOOL_NAME_PATTERN: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
MAX_TOOL_NAME: Final = 64


def check_tool_name(name: object) -> str:
    """Return ``name`` if it is a valid tool name, else raise ``InvalidArgumentError``."""
    if not isinstance(name, str) or not TOOL_NAME_PATTERN.match(name) or len(name) > MAX_TOOL_NAME:
        raise InvalidArgumentError(
            f"tool name {name!r} is not valid; use letters, digits, '_', '.' or '-', starting "
            f"with a letter or digit, at most {MAX_TOOL_NAME} characters"
        )
    return name


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """``" (did you mean 'add'?)"`` for the closest of ``known``; ``""`` when none is close."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    if not close:
        return ""
    return f" (did you mean {close[0]!r}?)"
