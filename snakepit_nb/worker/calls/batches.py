"""One chunk of a map, run in one thread: a tool over argument dicts, or a shipped function.

Both the lane and the gRPC batch paths run chunks here. A chunk's answer is
``("ok", values, {index: error_info})``: every item's value in order (None where it failed),
and the error of each item that failed; a tool's error in one item never stops the others.
The common case is one tight loop with no per-item bookkeeping beyond the call itself.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

from snakepit_nb._errors import InvalidArgumentError
from snakepit_nb.protocol import pickling
from snakepit_nb.protocol.codec import error_info
from snakepit_nb.protocol.status import (
    ERROR_CLASS_KEY,
    status_code_for,
    status_message,
    trailing_metadata_for,
)
from snakepit_nb.tools.definition import StreamKind, ToolDefinition
from snakepit_nb.worker.context import CallControl, SessionContext

__all__ = [
    "Answer",
    "argument_info",
    "error_answer",
    "function_items",
    "pickle_answer",
    "results_answer",
    "tool_items",
    "trim_traceback",
]

Answer = tuple[Any, ...]


def tool_items(
    definition: ToolDefinition,
    items: Sequence[Any],
    ctx: SessionContext | None,
    session_id: str,
    control: CallControl,
) -> Answer:
    """Run a sync tool (or a sync generator, collected) once per dict of arguments."""
    func = definition.func
    ctx_param = definition.ctx_param
    # The items' dicts are the worker's own copies, but one dict may stand for several items
    # (pickle keeps identity): given away only when nothing is added to it.
    bind = definition.bind
    owned = ctx_param is None
    collect = definition.stream is StreamKind.SYNC
    values: list[Any] = []
    errors: dict[int, Any] = {}
    append = values.append
    cancelled = control.cancelled.is_set
    for index, kwargs in enumerate(items):
        if not index & 63 and cancelled():  # checked every 64 items: cheap, and soon enough
            break
        try:
            if type(kwargs) is not dict and not isinstance(kwargs, dict):
                raise InvalidArgumentError(
                    f"tool {definition.name!r}: each item of a map must be a dict of "
                    f"arguments, got {type(kwargs).__name__}"
                )
            bound = bind(kwargs, owned=owned)
            if ctx_param is not None:
                bound[ctx_param] = ctx
        except InvalidArgumentError as exc:
            append(None)
            errors[index] = argument_info(exc)
            continue
        try:
            append(list(func(**bound)) if collect else func(**bound))
        except BaseException as exc:  # the tool's error, this item only (sys.exit included)
            trim_traceback(exc)
            append(None)
            errors[index] = error_info(exc, tool_name=definition.name, session_id=session_id)
    return ("ok", values, errors)


def function_items(
    func: Callable[..., Any], items: Sequence[Any], style: str, control: CallControl
) -> Answer:
    """Run a shipped function once per item: ``f(item)`` (``style="value"``), ``f(*item)``
    (``"args"``) or ``f(**item)`` (``"kwargs"``)."""
    values: list[Any] = []
    errors: dict[int, Any] = {}
    append = values.append
    if style == "value":
        call_one: Callable[[Any], Any] = func
    elif style == "args":

        def call_one(item: Any) -> Any:
            return func(*item)
    else:

        def call_one(item: Any) -> Any:
            return func(**item)

    name = getattr(func, "__name__", "")
    index = 0
    count = len(items)
    while index < count:
        try:
            # The common case: one tight loop; an error restarts it after the failed item.
            for item in itertools.islice(items, index, None):
                append(call_one(item))
            break
        except BaseException as exc:
            failed = len(values)
            trim_traceback(exc)
            append(None)
            errors[failed] = error_info(exc, tool_name=name, session_id="")
            index = failed + 1
            if control.cancelled.is_set():
                break
    return ("ok", values, errors)


def error_answer(exc: BaseException) -> Answer:
    """The answer for an infrastructure error: status name, message, exact error class."""
    error_class = dict(trailing_metadata_for(exc)).get(ERROR_CLASS_KEY, "")
    return ("error", status_code_for(exc).name, status_message(exc), error_class)


def pickle_answer(answer: Answer, *, what: str) -> pickling.Pickled:
    """``answer`` pickled for the kernel. A chunk's item whose value cannot be pickled fails
    alone (its error says why); any other unpicklable answer becomes an error answer."""
    try:
        return pickling.dumps(pickling.wrap_large(answer), what=what)
    except InvalidArgumentError as exc:
        failure: InvalidArgumentError = exc
    if answer[0] == "ok" and len(answer) == 3:
        values = list(answer[1])
        errors = dict(answer[2])
        for index, value in enumerate(values):
            try:
                pickling.dumps(value, what=f"{what}, item {index}", oob=False)
            except InvalidArgumentError as exc:
                values[index] = None
                errors[index] = argument_info(exc)
        try:
            return pickling.dumps(("ok", values, errors), what=what)
        except InvalidArgumentError as exc:
            failure = exc
    return pickling.dumps(error_answer(failure))


def results_answer(results: Sequence[Sequence[Any]]) -> Answer:
    """An answer from ``[[ok, value_or_error_info], ...]`` (the JSON batch layout)."""
    values: list[Any] = []
    errors: dict[int, Any] = {}
    for index, (ok, value) in enumerate(results):
        if ok:
            values.append(value)
        else:
            values.append(None)
            errors[index] = value
    return ("ok", values, errors)


def argument_info(exc: BaseException, tool_name: str = "", session_id: str = "") -> dict[str, Any]:
    """The error info of an item whose arguments do not fit the tool (no traceback: the
    binding code says nothing to the user; the message says it all)."""
    info = error_info(exc, tool_name=tool_name, session_id=session_id)
    info["traceback"] = ""
    info["context"]["code"] = "INVALID_ARGUMENT"
    return info


def trim_traceback(exc: BaseException) -> None:
    """Drop the worker's own dispatch frame, so the traceback starts in the tool's code."""
    tb = exc.__traceback__
    if (
        tb is not None
        and tb.tb_next is not None
        and tb.tb_frame.f_globals.get("__name__", "").startswith("snakepit_nb.worker.")
    ):
        exc.__traceback__ = tb.tb_next
