"""Calls and answers as gRPC messages: a pickle for our own workers, JSON for anyone else.

Between the kernel and its own workers (the runtime token on every RPC: ``pickles=True``) a
call's arguments travel as one pickle in ``ExecuteToolRequest.pickled`` and the answer comes back
the same way, so every value keeps its exact type (tuples stay tuples, a notebook's objects,
functions, sets, datetimes, DataFrames, numpy arrays) and large buffers travel raw, never
base64 or JSON lists. Any other worker (the published bridge, or ``auth=False``) gets the
published JSON wire form; a value JSON cannot carry is then refused before anything is sent,
naming the parameter and its type.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from snakepit_nb._errors import InvalidArgumentError, ProtocolError
from snakepit_nb.protocol import pb, pickling
from snakepit_nb.protocol.codec import (
    binary_parameter_metadata,
    decode_any,
    decode_any_with_binary,
    encode_params,
)
from snakepit_nb.protocol.lane import pack_inline, unpack_inline
from snakepit_nb.protocol.pickling import FUNCTION_TOOL

__all__ = [
    "build_request",
    "decode_result",
    "dumps_call",
    "raise_unpicklable",
    "raise_unpicklable_item",
]

_FOREIGN = "this pool's workers are not the kernel's own (a foreign worker, or auth=False)"


def build_request(  # noqa: PLR0917
    session_id: str,
    target: str | Callable[..., Any],
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    metadata: Mapping[str, str] | None,
    variables: Sequence[pb.Variable],
    *,
    pickles: bool,
    packed: bytes | None = None,
) -> pb.ExecuteToolRequest:
    """The request for one call; ``pickles``: the worker is ours and the channel checked.

    ``packed``: the call's :func:`dumps_call`, packed already (by a thread, when large)."""
    tool = target if isinstance(target, str) else FUNCTION_TOOL
    if not isinstance(kwargs, Mapping):
        raise InvalidArgumentError(
            f"arguments of {tool!r} must be a mapping of names to values, not "
            f"{type(kwargs).__name__}"
        )
    request = pb.ExecuteToolRequest(session_id=session_id, tool_name=tool)
    if metadata:
        request.metadata.update(metadata)
    if variables:
        request.variables.extend(variables)
    if pickles:
        request.pickled = (
            packed if packed is not None else pack_inline(dumps_call(target, args, kwargs))
        )
        return request
    if not isinstance(target, str) or args:
        what = "a Python function" if not isinstance(target, str) else "positional arguments"
        raise InvalidArgumentError(
            f"{what} can be sent only to the kernel's own authenticated workers; {_FOREIGN}: "
            "call a tool by name with JSON-friendly keyword arguments"
        )
    try:
        params, binary = encode_params(kwargs)
    except InvalidArgumentError:
        _refuse(kwargs)
        raise
    for name, value in params.items():
        request.parameters[name].CopyFrom(value)
    if binary:
        request.binary_parameters.update(binary)
        request.metadata.update(binary_parameter_metadata(binary))
    return request


def dumps_call(
    target: str | Callable[..., Any], args: Sequence[Any], kwargs: Mapping[str, Any]
) -> pickling.Pickled:
    """``(function_ref_or_None, args, kwargs)`` pickled, large buffers out of band.

    A value that cannot be pickled gets an error naming its parameter (or position) and type.
    """
    name = target if isinstance(target, str) else getattr(target, "__name__", repr(target))
    ref = None if isinstance(target, str) else pickling.dumps_function(target)
    call = (ref, *pickling.wrap_call(args, kwargs))
    try:
        return pickling.dumps(call, what=f"an argument of {name!r}")
    except InvalidArgumentError:
        raise_unpicklable(name, args, kwargs)
        raise


def raise_unpicklable(name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
    """Raise the error naming the argument of a call to ``name`` that cannot be pickled."""
    for index, value in enumerate(args):
        pickling.dumps(value, what=f"argument {index} of {name!r}", oob=False)
    for key, value in kwargs.items():
        pickling.dumps(value, what=f"parameter {key!r} of {name!r}", oob=False)


def _refuse(kwargs: Mapping[str, Any]) -> None:
    for name, value in kwargs.items():
        try:
            encode_params({name: value})
        except InvalidArgumentError:
            raise pickling.pickle_refused(f"parameter {name!r}", value, why=_FOREIGN) from None


def decode_result(response: pb.ExecuteToolResponse, *, pickles: bool, tool: str) -> Any:
    """The value of a successful answer (pickled only from our own workers)."""
    if response.pickled_result_blob:
        raise ProtocolError(
            f"a worker answered {tool!r} with a blob, which only the kernel's own workers may "
            "send; nothing was taken"
        )
    if response.pickled_result:
        if not pickles:
            raise ProtocolError(
                f"a worker answered {tool!r} with a pickled value, which this pool does not "
                "accept from it (a foreign worker, or auth=False); nothing was unpickled"
            )
        return unpack_inline(response.pickled_result, what=f"the result of {tool!r}")
    if response.binary_result:
        return decode_any_with_binary(response.result, response.binary_result)
    return decode_any(response.result)


def raise_unpicklable_item(name: str, items: Sequence[Any], start: int = 0) -> None:
    """Raise the error naming the item of a map of ``name`` that cannot be pickled
    (``items`` begin at item ``start`` of the map)."""
    for index, value in enumerate(items, start):
        pickling.dumps(value, what=f"item {index} of map({name!r})", oob=False)
