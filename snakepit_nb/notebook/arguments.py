"""How a ``%snakepit`` line becomes options and tool arguments.

A line such as ``call add a=1 b={x} --timeout 5`` is split into words with a tokenizer that
respects quotes and brackets (``data={'a': [1, 2]}`` stays one word). Words of the form
``name=value`` are tool arguments; the rest go to the subcommand's ``magic_arguments`` parser.

Values are Python literals parsed with :func:`ast.literal_eval` (``n=5`` is an int,
``xs=[1, 2]`` a list, ``flag=True`` a bool, ``x=None`` None); a word that is not a literal
stays a string (``text=hello`` is ``"hello"``). ``{name}`` refers to a notebook variable: a
value that is exactly ``{name}`` (or ``{name.attr}``, ``{name[0]}``) passes the object
itself, and ``{name}`` inside a longer bare word is replaced by its ``str``. IPython's own
``{}`` expansion is switched off for ``%snakepit`` because it would mangle dict literals
(``{'a': 1}`` would become ``a``).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping
from typing import Any

from IPython.core.error import UsageError

_OPEN = {"(": ")", "[": "]", "{": "}"}
_CLOSE = {")", "]", "}"}
_KEY = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", re.DOTALL)
# A reference is a name followed by attribute accesses and literal subscripts.
_REF_BODY = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*|\[[^\[\]{}]*\])*"
_WHOLE_REF = re.compile(r"^\{(" + _REF_BODY + r")\}$")
_INNER_REF = re.compile(r"\{(" + _REF_BODY + r")\}")


def split_words(line: str) -> list[str]:
    """Split ``line`` on whitespace outside quotes and brackets.

    Quotes are kept (so ``n="5"`` stays the string ``"5"``); an unclosed quote or bracket is a
    UsageError that says which. A ``#`` that starts a word starts a comment, as in Python.
    """
    words: list[str] = []
    current: list[str] = []
    stack: list[str] = []
    quote: str | None = None
    escaped = False
    for ch in line:
        if quote is not None:
            current.append(ch)
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = None
            continue
        if ch == "#" and not stack and not current:
            break  # a comment, as in Python: `%snakepit start -n 2  # two workers`
        if ch in "'\"":
            quote = ch
            current.append(ch)
        elif ch in _OPEN:
            stack.append(_OPEN[ch])
            current.append(ch)
        elif ch in _CLOSE:
            if stack and stack[-1] == ch:
                stack.pop()
            current.append(ch)
        elif ch.isspace() and not stack:
            if current:
                words.append("".join(current))
                current = []
        else:
            current.append(ch)
    if quote is not None:
        raise UsageError(f"unclosed {quote} quote in: {line.strip()}")
    if stack:
        raise UsageError(f"unclosed bracket (expected {stack[-1]!r}) in: {line.strip()}")
    if current:
        words.append("".join(current))
    return words


def resolve_reference(expr: str, namespace: Mapping[str, Any]) -> Any:
    """The notebook object ``expr`` (``name``, ``name.attr``, ``name[0]``) refers to."""
    match = re.match(r"[A-Za-z_][A-Za-z0-9_]*", expr)
    assert match is not None
    name = match.group(0)
    if name not in namespace:
        raise UsageError(f"{{{name}}} names no notebook variable; define {name} first")
    value = namespace[name]
    rest = expr[match.end() :]
    for part in re.findall(r"\.[A-Za-z_][A-Za-z0-9_]*|\[[^\[\]]*\]", rest):
        if part.startswith("["):
            try:
                key = ast.literal_eval(part[1:-1])
            except (ValueError, SyntaxError):
                raise UsageError(
                    f"cannot resolve {{{expr}}}: subscripts are literals, e.g. "
                    f"{{{name}['key']}} or {{{name}[0]}}"
                ) from None
        try:
            value = getattr(value, part[1:]) if part.startswith(".") else value[key]
        except (AttributeError, LookupError, TypeError) as exc:
            raise UsageError(f"cannot resolve {{{expr}}}: {exc!r}") from exc
    return value


def parse_value(text: str, namespace: Mapping[str, Any]) -> Any:
    """One argument value: a ``{reference}``, a Python literal, or a bare string."""
    whole = _WHOLE_REF.match(text)
    if whole:
        return resolve_reference(whole.group(1), namespace)
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        pass
    if text and text[0] in "'\"[({":
        # It looks like a literal but is not one: say so rather than pass a mangled string.
        raise UsageError(
            f"cannot read {text!r} as a Python literal; quote strings, e.g. x='...', "
            "or pass a notebook variable as {name}"
        )
    return _INNER_REF.sub(lambda m: str(resolve_reference(m.group(1), namespace)), text)


def expand_word(word: str, namespace: Mapping[str, Any]) -> str:
    """Expand ``{name}`` references inside a plain word (a tool or variable name, an option)."""
    return _INNER_REF.sub(lambda m: str(resolve_reference(m.group(1), namespace)), word)


def split_arguments(
    words: list[str], namespace: Mapping[str, Any]
) -> tuple[list[str], dict[str, Any]]:
    """Separate ``name=value`` words (parsed into tool arguments) from the other words.

    The other words (subcommand, names, options) are returned as written; the caller expands
    ``{name}`` in the ones that are names with :func:`expand_word`. Options are written
    ``--opt value`` or ``--opt=value`` and are never taken for tool arguments.
    """
    rest: list[str] = []
    kwargs: dict[str, Any] = {}
    for word in words:
        match = _KEY.match(word)
        if match and not word.startswith("-"):
            key, raw = match.group(1), match.group(2)
            if key in kwargs:
                raise UsageError(f"argument {key!r} is given twice")
            kwargs[key] = parse_value(raw, namespace)
        else:
            rest.append(word)
    return rest, kwargs
