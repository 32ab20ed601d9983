"""What magics return: plain lists with a table as their rich repr."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from snakepit_nb.display import formatting as fmt
from snakepit_nb.display.reprs import (
    history_html,
    session_table_html,
    tool_table_html,
    variable_table_html,
)


class ToolTable(list[Any]):
    """The list ``%snakepit tools`` returns: a plain list of ToolSpec with a table repr."""

    def _repr_html_(self) -> str:
        return tool_table_html(self)

    def __repr__(self) -> str:
        return "\n".join(str(spec) for spec in self) or "(no tools)"

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(repr(self))


class SessionTable(list[Any]):
    """The sessions ``%snakepit session list`` returns (SessionInfo records) as a table."""

    def __init__(self, infos: Iterable[Any], current: str | None) -> None:
        super().__init__(infos)
        self.current = current

    def _repr_html_(self) -> str:
        rows = [
            {
                "id": getattr(i, "session_id", "?"),
                "calls": getattr(i, "call_count", 0),
                "errors": getattr(i, "error_count", 0),
                "variables": getattr(i, "variable_count", 0),
                "last worker": getattr(i, "last_worker", None) or "–",
                "idle": fmt.duration(getattr(i, "idle_seconds", None)),
            }
            for i in self
        ]
        return session_table_html(rows, self.current)

    def __repr__(self) -> str:
        lines = []
        for info in self:
            mark = "*" if getattr(info, "session_id", None) == self.current else " "
            lines.append(f"{mark} {info}")
        return "\n".join(lines) or "(no sessions)"

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(repr(self))


class RecordList(list[Any]):
    """A list of variable records (``%snakepit var list``) with a table repr."""

    def _repr_html_(self) -> str:
        return variable_table_html(self)

    def __repr__(self) -> str:
        return "\n".join(repr(record) for record in self) or "(no variables)"

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(repr(self))


class WatchSnapshot(RecordList):
    """What ``%snakepit var watch`` returns where no live table shows: the records as they are.

    ``--follow`` prints the changes as they come instead. ``stop()`` is there for code that
    also runs where the watch is live (a notebook): a snapshot follows nothing, so it does
    nothing.
    """

    def stop(self, timeout: float = 5.0) -> None:
        """Nothing to stop (see the class docstring)."""


def change_line(change: Any) -> str:
    """One line for one change of a watched variable (``var watch --follow``)."""
    at = time.strftime("%H:%M:%S", time.localtime(getattr(change, "at", None) or time.time()))
    kind = getattr(change, "kind", "value_change")
    source = getattr(change, "source", "") or "?"
    name = change.name
    if kind == "deleted":
        return f"{at}  {name} deleted (by {source})"
    if kind.startswith("optimization_"):
        who = dict(getattr(change, "metadata", {}) or {}).get("optimizer_id", source)
        return f"{at}  {name}: optimization {kind.removeprefix('optimization_')} ({who})"
    what = {
        "initial_value": "current",
        "constraint_change": "constraints changed",
        "registered": "defined",
    }.get(kind, "")
    skipped = getattr(change, "skipped", 0)
    notes = [f"v{change.version}", f"by {source}"]
    if what:
        notes.append(what)
    if skipped:
        notes.append(f"{skipped} earlier change{'s' if skipped != 1 else ''} skipped")
    return f"{at}  {name} = {fmt.short_repr(change.value)}  ({', '.join(notes)})"


class History(list[Any]):
    """A variable's versions, oldest first (``%snakepit var history``), with a table repr."""

    def __init__(self, name: str, versions: Iterable[Any]) -> None:
        super().__init__(versions)
        self.name = name

    def _repr_html_(self) -> str:
        return history_html(self.name, self)

    def __repr__(self) -> str:
        versions = f"{len(self)} version{'s' if len(self) != 1 else ''}"
        lines = [f"history of {self.name!r} ({versions}, oldest first):"]
        lines.extend(f"  {version!r}" for version in self)
        return "\n".join(lines)

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(repr(self))


class ReloadResult(list[str]):
    """The workers ``%snakepit reload`` replaced (a plain list of ids)."""

    def __repr__(self) -> str:
        return f"reloaded: {', '.join(self) or 'no worker'}"

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(repr(self))
