# mypy: disable-error-code="untyped-decorator,no-untyped-call"
"""The ``magic_arguments`` parsers of every ``%snakepit`` subcommand.

magic_arguments has no subcommands, so each subcommand has its own decorated stub here and the
magic dispatches on the first word. :func:`parse` raises ``UsageError`` with the usage line on
bad input. ``magic_arguments`` replaces each stub's docstring with its usage, so the one-line
descriptions are read from the parser (:func:`describe`), never from ``__doc__``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic_arguments import argument, magic_arguments

Stub = Callable[..., None]


def _named(prog: str) -> Callable[[Stub], Stub]:
    def set_prog(func: Stub) -> Stub:
        func.parser.prog = prog  # type: ignore[attr-defined]
        return func

    return set_prog


@_named("%snakepit start")
@magic_arguments()
@argument("-n", "--workers", type=int, help="number of worker processes (default 2)")
@argument("--adapter", help="adapter class, pkg.module:ClassName (default: the showcase tools)")
@argument("--python", help="interpreter for the workers (default: the kernel's)")
@argument("--call-timeout", type=float, help="default deadline of every call, in seconds")
@argument("--startup-timeout", type=float, help="seconds a worker may take to become ready")
@argument("--max-queue", type=int, help="calls that may wait for a free worker")
@argument("--restart", action="store_true", help="stop a running pool first")
@argument(
    "--worker-output",
    choices=["cell", "log", "off"],
    help="where tools' prints go: the calling cell (default), only %%snakepit logs, or nowhere",
)
@argument("--autoreload", action="store_true", help="reload the workers when the adapter changes")
@argument(
    "--ray",
    nargs="?",
    const="",
    default=None,
    metavar="ADDRESS",
    help="run the workers as Ray actors on the cluster at ADDRESS (default: RAY_ADDRESS, "
    "else a local Ray); needs snakepit_nb[ray]",
)
def start(**_: Any) -> None:
    """Start the worker pool; returns the client (``c = %snakepit start -n 4``)."""


@_named("%snakepit stop")
@magic_arguments()
def stop(**_: Any) -> None:
    """Stop the pool, its live views and streams."""


@_named("%snakepit status")
@magic_arguments()
@argument("--once", action="store_true", help="a snapshot instead of a live widget")
def status(**_: Any) -> None:
    """Show the workers (pid, state, in-flight, calls, restarts, memory), refreshed live."""


@_named("%snakepit reload")
@magic_arguments()
def reload(**_: Any) -> None:
    """Replace the workers one at a time so edited adapter modules are picked up."""


@_named("%snakepit logs")
@magic_arguments()
@argument("worker", nargs="?", help="a worker id such as w1 (default: every worker)")
@argument("-n", "--lines", type=int, default=200, help="lines to show (default 200)")
def logs(**_: Any) -> None:
    """Show the last lines the workers' tools printed (stdout, stderr, logging)."""


@_named("%snakepit tools")
@magic_arguments()
@argument("name", nargs="?", help="show one tool in detail")
def tools(**_: Any) -> None:
    """List the tools (workers', cell-defined and kernel tools)."""


@_named("%snakepit config")
@magic_arguments()
@argument("-n", "--workers", type=int, help="workers of a pool started by default")
@argument("--adapter", help="adapter of a pool started by default")
@argument("--python", help="interpreter of a pool started by default")
@argument("--ui-hz", type=float, help="live widget refreshes per second (0.5-30, default 10)")
@argument("--ui-budget", type=float, help="widget messages per second, all views (default 50)")
@argument("--tail-lines", type=int, help="lines a stream view shows (default 12)")
@argument("--interactive", choices=["on", "off"], help="live widgets on or off")
def config(**_: Any) -> None:
    """Show or change the notebook settings; returns them as a dict."""


@_named("%snakepit session")
@magic_arguments()
@argument("action", choices=["new", "use", "list", "info", "close"])
@argument("name", nargs="?", help="session id (new: optional, a fresh id if left out)")
def session(**_: Any) -> None:
    """Create, switch to, list, describe or close sessions."""


@_named("%snakepit call")
@magic_arguments()
@argument("tool", help="tool name; arguments follow as name=value")
@argument("-s", "--session", help="session id (default: the current session)")
@argument("--timeout", type=float, help="deadline in seconds")
def call(**_: Any) -> None:
    """Call a tool and return its value: ``x = %snakepit call add a=1 b={y}``."""


@_named("%snakepit stream")
@magic_arguments()
@argument("tool", help="streaming tool name; arguments follow as name=value")
@argument("-s", "--session", help="session id (default: the current session)")
@argument("--timeout", type=float, help="deadline in seconds")
@argument("--bg", action="store_true", help="return at once; %%snakepit wait waits for it")
@argument("--tail", type=int, help="lines of output to show (default 12)")
@argument("--keep", type=int, help="keep only the last N chunks in h.chunks (default: all)")
def stream(**_: Any) -> None:
    """Run a streaming tool with a live view; returns the handle (``h.value``, ``h.chunks``)."""


@_named("%snakepit var")
@magic_arguments()
@argument("action", choices=["set", "get", "list", "del", "history", "rollback", "watch"])
@argument("names", nargs="*", help="variable name(s); set: NAME VALUE; rollback: NAME VERSION")
@argument("-s", "--session", help="session id (default: the current session)")
@argument("--type", dest="vtype", help="set: the variable's type (float, integer, string...)")
@argument("--min", dest="vmin", help="set: lower bound (a number)")
@argument("--max", dest="vmax", help="set: upper bound (a number)")
@argument("--choices", help="set: allowed values, comma-separated (type choice)")
@argument("--description", help="set: what the variable is for")
@argument("--expected-version", type=int, help="set: write only if still at this version")
@argument("-n", "--last", type=int, help="history: only the last N versions")
@argument(
    "--follow",
    action="store_true",
    help="watch: print each change as a line, until Ctrl-C, --count or --timeout (the way to "
    "watch where no live table shows: a terminal, a script)",
)
@argument("--count", type=int, help="watch --follow: stop after N changes")
@argument("--timeout", type=float, help="watch --follow: stop after S seconds")
def var(**_: Any) -> None:
    """Session variables: set, get, list, del, history, rollback, watch (a live table)."""


@_named("%snakepit dspy")
@magic_arguments()
@argument("action", choices=["history", "programs", "cache"])
@argument("program", nargs="?", help="history: the DSPy program's name")
@argument("-n", "--last", type=int, default=1, help="history: the last N model calls (default 1)")
@argument("-s", "--session", help="session id (default: the current session)")
def dspy(**_: Any) -> None:
    """DSPy programs: a program's model calls (history), the programs, the shared cache."""


@_named("%snakepit wait")
@magic_arguments()
@argument("--timeout", type=float, default=600.0, help="give up after this many seconds")
def wait(**_: Any) -> None:
    """Wait until running streams end and every live widget shows its final state."""


@_named("%snakepit help")
@magic_arguments()
@argument("subcommand", nargs="?", help="a subcommand (default: list them all)")
def help_(**_: Any) -> None:
    """List the subcommands, or show one subcommand's options."""


@_named("%%snakepit_tool")
@magic_arguments()
@argument("name", nargs="?", help="tool name (default: the name of the cell's last function)")
@argument("--stream", action="store_true", help="a streaming tool (a generator function)")
@argument("--kernel", action="store_true", help="run in the kernel; workers call it")
@argument("--function", help="which function of the cell is the tool (default: the last)")
@argument("--description", help="the tool's description (default: the function's docstring)")
def snakepit_tool(**_: Any) -> None:
    """Define a tool from the cell: a function, with any imports it needs."""


SUBCOMMANDS: dict[str, Stub] = {
    "start": start,
    "stop": stop,
    "status": status,
    "reload": reload,
    "logs": logs,
    "tools": tools,
    "config": config,
    "session": session,
    "call": call,
    "stream": stream,
    "var": var,
    "dspy": dspy,
    "wait": wait,
    "help": help_,
}


def parse(stub: Stub, words: list[str]) -> Any:
    """Parse ``words`` with ``stub``'s parser; UsageError (with the usage line) on bad input."""
    parser = stub.parser  # type: ignore[attr-defined]
    try:
        return parser.parse_args(words)
    except UsageError as exc:
        raise UsageError(f"{exc}\n{usage(stub)}") from None


def _wide_formatter(prog: str) -> argparse.HelpFormatter:
    # Usage lines of 100 columns, whatever the terminal (a kernel has none).
    return argparse.HelpFormatter(prog, width=100)


def usage(stub: Stub) -> str:
    """``usage: %snakepit call [-s SESSION] ... tool`` (plain text, not IPython's reST)."""
    parser = stub.parser  # type: ignore[attr-defined]
    parser.formatter_class = _wide_formatter
    return str(parser.format_usage()).strip()


def help_text(stub: Stub) -> str:
    """The subcommand's help: usage, description and options, as plain text."""
    parser = stub.parser  # type: ignore[attr-defined]
    saved = parser.formatter_class
    parser.formatter_class = argparse.HelpFormatter
    try:
        return str(parser.format_help())
    finally:
        parser.formatter_class = saved


def describe(stub: Stub) -> str:
    """The stub's one-line description (its original docstring's first line)."""
    parser = stub.parser  # type: ignore[attr-defined]
    text = str(parser.description or "").strip()
    return text.splitlines()[0].replace("``", "") if text else ""


def overview() -> str:
    """Every subcommand with its usage and a one-line description (``%snakepit help``)."""
    lines = [
        "%snakepit SUBCOMMAND ...   (one subcommand's options: %snakepit help SUBCOMMAND "
        "or %snakepit SUBCOMMAND --help)",
        "",
    ]
    for name, stub in SUBCOMMANDS.items():
        lines.append(f"  {name:<16} {describe(stub)}")
    lines.append(f"  {'%%snakepit_tool':<16} {describe(snakepit_tool)}")
    lines.append("")
    lines.append("usage:")
    for stub in (*SUBCOMMANDS.values(), snakepit_tool):
        lines.append(f"  {usage(stub).removeprefix('usage: ')}")
    return "\n".join(lines)
