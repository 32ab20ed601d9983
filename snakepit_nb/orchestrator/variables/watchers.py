"""Watchers of session variables: bounded, conflating, never in a writer's way.

A writer hands each change to every interested watcher with ``Watcher.push``, a synchronous
call that never waits. Each watcher buffers up to ``capacity`` changes in order, so a watcher
that keeps up sees every version. When its buffer is full, a new change of a variable that
already has a change waiting *replaces* that change and the skipped versions are counted
(``VariableChange.skipped``): a lagging watcher gets the latest value of every variable, never
an unbounded queue. The buffer is therefore bounded by ``capacity`` plus the number of
variables watched.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from snakepit_nb._errors import ResourceExhaustedError
from snakepit_nb.orchestrator.variables.policy import readable
from snakepit_nb.orchestrator.variables.records import KERNEL_SOURCE, VariableRecord

__all__ = ["ChangeKind", "VariableChange", "Watcher", "WatcherSet"]


class ChangeKind:
    """The ``update_type`` strings of ``VariableUpdate`` (published names first)."""

    INITIAL = "initial_value"
    VALUE = "value_change"
    DEPENDENCY = "dependency_change"
    CONSTRAINTS = "constraint_change"
    REGISTERED = "registered"
    DELETED = "deleted"
    OPTIMIZATION_STARTED = "optimization_started"
    OPTIMIZATION_STOPPED = "optimization_stopped"


@dataclass(frozen=True)
class VariableChange:
    """One change of a watched variable.

    ``kind`` is one of ``ChangeKind``; ``skipped`` counts the changes of this variable this
    watcher did not see because it fell behind (it always gets the latest one).

    >>> for change in session.vars.watch("temperature"):
    ...     print(change.name, change.value, change.version, change.kind)
    """

    kind: str
    variable: VariableRecord
    source: str
    at: float
    metadata: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    skipped: int = 0

    @property
    def name(self) -> str:
        return self.variable.name

    @property
    def value(self) -> Any:
        return self.variable.value

    @property
    def version(self) -> int:
        return self.variable.version


class _Slot:
    __slots__ = ("change", "skipped")

    def __init__(self, change: VariableChange) -> None:
        self.change = change
        self.skipped = change.skipped


class Watcher:
    """An async iterator of ``VariableChange`` for some (or all) variables of a session.

    Lives on the store's loop; ``close()`` ends the iteration at once (pending changes are
    dropped). ``names=None`` watches every variable, including ones registered later.
    """

    def __init__(
        self,
        names: Iterable[str] | None,
        *,
        capacity: int = 256,
        on_close: Callable[[Watcher], None] | None = None,
        source: str = "kernel",
    ) -> None:
        if capacity < 1:
            raise ValueError("a watcher needs a capacity of at least 1")
        self.names: frozenset[str] | None = None if names is None else frozenset(names)
        self.capacity = capacity
        # Who watches: "kernel" or a worker id (variables hidden from workers are skipped).
        self.source = source
        self._queue: deque[_Slot] = deque()
        self._latest: dict[str, _Slot] = {}
        self._event: asyncio.Event | None = None
        self._closed = False
        self._close_reason = ""
        self._on_close = on_close
        self.delivered = 0
        self.conflated = 0

    # ---------------------------------------------------------------- producer side

    def wants(self, name: str) -> bool:
        return not self._closed and (self.names is None or name in self.names)

    def push(self, change: VariableChange) -> None:
        """Buffer ``change``; never waits. Conflates per variable once the buffer is full."""
        if self._closed:
            return
        name = change.variable.name
        slot = self._latest.get(name)
        if slot is not None and len(self._queue) >= self.capacity:
            slot.skipped += 1 + change.skipped
            slot.change = change
            self.conflated += 1
        else:
            slot = _Slot(change)
            self._queue.append(slot)
            self._latest[name] = slot
        if self._event is not None:
            self._event.set()

    def close(self, reason: str = "") -> None:
        """Stop the watch; a waiting ``next()`` returns at once with ``StopAsyncIteration``."""
        if self._closed:
            return
        self._closed = True
        self._close_reason = reason
        self._queue.clear()
        self._latest.clear()
        if self._event is not None:
            self._event.set()
        if self._on_close is not None:
            callback, self._on_close = self._on_close, None
            callback(self)

    # ---------------------------------------------------------------- consumer side

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def close_reason(self) -> str:
        return self._close_reason

    def pending(self) -> int:
        return len(self._queue)

    def poll(self) -> VariableChange | None:
        """The next buffered change, or None when nothing is waiting."""
        if not self._queue:
            return None
        slot = self._queue.popleft()
        name = slot.change.variable.name
        if self._latest.get(name) is slot:
            del self._latest[name]
        self.delivered += 1
        change = slot.change
        if slot.skipped != change.skipped:
            change = dataclasses.replace(change, skipped=slot.skipped)
        return change

    async def next(self) -> VariableChange:
        """Wait for the next change; ``StopAsyncIteration`` once closed."""
        while True:
            if self._closed:
                raise StopAsyncIteration
            change = self.poll()
            if change is not None:
                return change
            if self._event is None:
                self._event = asyncio.Event()
            self._event.clear()
            await self._event.wait()

    def __aiter__(self) -> Watcher:
        return self

    async def __anext__(self) -> VariableChange:
        return await self.next()


class WatcherSet:
    """The open watchers of one session, and the fan-out of each change to them."""

    def __init__(self, session_id: str, max_watchers: int) -> None:
        self.session_id = session_id
        self.max_watchers = max_watchers
        self._watchers: set[Watcher] = set()

    def __len__(self) -> int:
        return len(self._watchers)

    def __bool__(self) -> bool:
        return bool(self._watchers)

    def open(
        self,
        names: list[str] | None,
        initial: Iterable[VariableRecord],
        *,
        capacity: int,
        source: str,
        at: float,
    ) -> Watcher:
        """A new watcher of ``names`` (None: all), primed with the ``initial`` records that
        ``source`` may see."""
        if len(self._watchers) >= self.max_watchers:
            raise ResourceExhaustedError(
                f"session {self.session_id!r} has {len(self._watchers)} watchers, the maximum; "
                "close watches you no longer read"
            )
        watcher = Watcher(names, capacity=capacity, on_close=self._watchers.discard, source=source)
        for record in initial:
            if readable(record, source):
                watcher.push(VariableChange(ChangeKind.INITIAL, record, record.source, at))
        self._watchers.add(watcher)
        return watcher

    def notify(
        self, kind: str, record: VariableRecord, source: str, at: float, meta: Mapping[str, str]
    ) -> None:
        """Hand one change to every watcher that wants it (one change object for all)."""
        if not self._watchers:
            return
        change: VariableChange | None = None
        hidden = record.access.get("workers") == "none"
        for watcher in list(self._watchers):
            if not watcher.wants(record.name) or (hidden and watcher.source != KERNEL_SOURCE):
                continue
            if change is None:
                change = VariableChange(kind, record, source, at, meta)
            watcher.push(change)

    def close(self, reason: str) -> None:
        for watcher in list(self._watchers):
            watcher.close(reason)
        self._watchers.clear()
