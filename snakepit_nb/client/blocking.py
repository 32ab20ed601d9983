"""How a blocking facade call reports what went wrong: the fact, not our frames.

A blocking call (``Session.call``, ``Session.map``, a ``Stream`` read) waits on the snakepit
loop thread, so an error it raises has travelled through the loop, ``concurrent.futures`` and
the pool: a dozen frames of ours that say nothing to the caller. :func:`blocking_runner` runs
the call and re-raises a snakepit error without those frames (its message already says what
happened and what to do; a ``RemoteToolError`` ends with the worker's traceback).

An interrupt (Ctrl-C, the kernel's interrupt button) cancels the remote call and then
propagates as the ``KeyboardInterrupt`` it is, named after the call it ended:
``KeyboardInterrupt: call 'slow' cancelled``; IPython shows the one line
``call 'slow' cancelled (KeyboardInterrupt)`` (``_render_traceback_``).
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, TypeVar

from snakepit_nb._errors import SnakepitError
from snakepit_nb._loop import LoopThread

__all__ = ["BlockingRunner", "blocking_runner", "call_label", "caller_errors", "name_interrupt"]

T = TypeVar("T")


def name_interrupt(exc: BaseException, label: str) -> BaseException:
    """Name the call an interrupt cancelled, in its message and in IPython's rendering."""
    if getattr(exc, "_snakepit_label", None) is None:
        exc._snakepit_label = label  # type: ignore[attr-defined]
        exc.args = (f"{label} cancelled",)
        line = f"{label} cancelled ({type(exc).__name__})"
        exc._render_traceback_ = lambda: [line]  # type: ignore[attr-defined]
    return exc.with_traceback(None)


class BlockingRunner:
    """``run(coro, label="call 'add'")``: :meth:`LoopThread.run` with caller-facing errors."""

    def __init__(self, loop_thread: LoopThread) -> None:
        self._run = loop_thread.run

    def __call__(self, coro: Coroutine[Any, Any, T], label: str | None = None) -> T:
        try:
            return self._run(coro)
        except SnakepitError as exc:
            raise exc.with_traceback(None) from exc.__cause__
        except KeyboardInterrupt as exc:
            if label is None:
                raise
            raise name_interrupt(exc, label) from None


def blocking_runner(loop_thread: LoopThread) -> BlockingRunner:
    """The runner a blocking facade calls the loop thread with."""
    return BlockingRunner(loop_thread)


def call_label(verb: str, target: object) -> str:
    """``"call 'add'"`` for a tool, ``"call 'scale'"`` for a function ``scale``."""
    if isinstance(target, str):
        return f"{verb} {target!r}"
    name = getattr(target, "__qualname__", None) or getattr(target, "__name__", "function")
    return f"{verb} {name!r}"


class caller_errors:
    """``with caller_errors("call", tool):`` around a blocking call made in the caller's thread.

    The same rules as :class:`BlockingRunner`: snakepit errors without our frames, an
    interrupt named after the call it cancelled.
    """

    def __init__(self, verb: str, target: object) -> None:
        self._verb = verb
        self._target = target

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        if isinstance(exc, SnakepitError):
            raise exc.with_traceback(None) from exc.__cause__
        if isinstance(exc, KeyboardInterrupt):
            raise name_interrupt(exc, call_label(self._verb, self._target)) from None
