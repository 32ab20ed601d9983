"""One session's variables in memory: found by name or id, with their kept history.

The table only holds and finds; the checks (types, access, versions, limits), notifications
and persistence are the store's (:mod:`.store`).
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterator

from snakepit_nb._errors import InvalidArgumentError, VariableNotFoundError
from snakepit_nb.orchestrator.variables.records import VariableRecord, VariableVersion
from snakepit_nb.orchestrator.variables.types import TypeSpec

__all__ = ["Entry", "VariableTable"]


class Entry:
    """The mutable state of one variable (owned by the loop thread)."""

    __slots__ = ("history", "record", "spec")

    def __init__(self, record: VariableRecord, spec: TypeSpec, max_history: int) -> None:
        self.record = record
        self.spec = spec
        self.history: deque[VariableVersion] = deque(maxlen=max_history)


class VariableTable:
    """Entries by name and by id."""

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        self._by_name: dict[str, Entry] = {}
        self._by_id: dict[str, Entry] = {}

    def __len__(self) -> int:
        return len(self._by_name)

    def __contains__(self, ident: object) -> bool:
        return isinstance(ident, str) and (ident in self._by_name or ident in self._by_id)

    def __iter__(self) -> Iterator[Entry]:
        return iter(list(self._by_name.values()))

    def names(self) -> list[str]:
        return list(self._by_name)

    def find(self, ident: object) -> Entry | None:
        """The entry named (or with the id) ``ident``, or None."""
        if not isinstance(ident, str):
            return None
        return self._by_name.get(ident) or self._by_id.get(ident)

    def by_name(self, name: str) -> Entry | None:
        return self._by_name.get(name)

    def by_id(self, var_id: str) -> Entry | None:
        return self._by_id.get(var_id)

    def resolve(self, ident: str) -> Entry:
        """The entry for ``ident``, or VariableNotFoundError naming what is defined."""
        if not isinstance(ident, str) or not ident:
            raise InvalidArgumentError(
                f"a variable is named by its name or id (a non-empty string), not {ident!r}"
            )
        entry = self.find(ident)
        if entry is None:
            shown = ident if len(ident) <= 60 else ident[:57] + "..."
            known = ", ".join(sorted(self._by_name)[:10])
            more = ", ..." if len(self._by_name) > 10 else ""
            hint = f" (defined: {known}{more})" if known else ""
            raise VariableNotFoundError(
                f"variable {shown!r} is not defined in session {self.session_id!r}{hint}; "
                f"define it first, e.g. session.vars.define({shown!r}, value)"
            )
        return entry

    def add(self, entry: Entry) -> None:
        self._by_name[entry.record.name] = entry
        self._by_id[entry.record.id] = entry

    def remove(self, record: VariableRecord) -> None:
        del self._by_name[record.name]
        del self._by_id[record.id]

    def matching(self, pattern: str) -> list[Entry]:
        """Entries whose name matches the wildcard ``pattern`` (``*``, ``?``), by name."""
        if not isinstance(pattern, str):
            raise InvalidArgumentError("a variable pattern must be a string such as 'lr_*'")
        # Only * and ? are wildcards; [ and ] match themselves.
        regex = re.compile(
            "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern or "*")
            + r"\Z",
            re.DOTALL,
        )
        return [entry for name, entry in sorted(self._by_name.items()) if regex.match(name)]
