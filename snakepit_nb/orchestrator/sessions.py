"""Sessions: named scopes for variables, worker affinity and call statistics.

The ``SessionStore`` lives on the loop thread; a kernel thread calling over a worker's lane
touches two things from its own thread, under a small lock: ``touch_live`` (is the session
alive? it counts as use) and ``record_call``. Time comes
from an injectable monotonic clock, so tests advance a fake clock instead of sleeping.
Sessions expire after ``ttl`` seconds without use; a periodic sweep removes them, and a lookup
of an expired id says so ("expired after N s idle") instead of a bare "not found".
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from snakepit_nb._errors import (
    InvalidArgumentError,
    ResourceExhaustedError,
    SessionNotFoundError,
)

__all__ = ["CleanupCallback", "SessionInfo", "SessionRecord", "SessionStats", "SessionStore"]

log = logging.getLogger(__name__)

# Called with (session_id, reason) when a session goes ("closed" or "expired"). May return an
# awaitable (it is awaited, or scheduled when the removal happened in a synchronous lookup).
CleanupCallback = Callable[[str, str], Awaitable[None] | None]

_MAX_ID_LEN = 256
# How many expired ids are remembered for the "expired after N s idle" message.
_EXPIRED_MEMORY = 10_000


@dataclass
class SessionRecord:
    """One session as the orchestrator keeps it (mutable; owned by the loop thread)."""

    session_id: str
    created_at: float  # wall clock (time.time()), for display
    created_mono: float  # store clock, for ages
    last_access: float  # store clock
    metadata: dict[str, str] = field(default_factory=dict)
    strict_affinity: bool = False
    last_worker: str | None = None
    call_count: int = 0
    error_count: int = 0


@dataclass(frozen=True)
class SessionInfo:
    """A snapshot of one session."""

    session_id: str
    created_at: float  # time.time() when it was created
    idle_seconds: float
    call_count: int
    error_count: int
    last_worker: str | None
    strict_affinity: bool
    variable_count: int = 0
    metadata: Mapping[str, str] = field(default_factory=dict)

    def _repr_html_(self) -> str:
        from snakepit_nb.display.reprs import session_info_html

        return session_info_html(self)

    def __repr__(self) -> str:
        return f"<SessionInfo {self}>"

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(str(self))

    def __str__(self) -> str:
        worker = self.last_worker or "-"
        return (
            f"session {self.session_id!r}: {self.call_count} calls ({self.error_count} failed), "
            f"{self.variable_count} variables, last worker {worker}, idle "
            f"{self.idle_seconds:.0f} s"
        )


@dataclass(frozen=True)
class SessionStats:
    """Counters of a ``SessionStore`` since it was made."""

    active: int
    created: int
    expired: int
    closed: int
    calls: int
    ttl: float
    max_sessions: int


class SessionStore:
    """All sessions of one runtime.

    >>> store = SessionStore(ttl=60.0)
    >>> store.create("exp1").session_id
    'exp1'
    >>> store.create("exp1") is store.get("exp1")   # idempotent
    True
    """

    def __init__(
        self,
        *,
        ttl: float = 3600.0,
        max_sessions: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.ttl = float(ttl)
        self.max_sessions = max_sessions
        self._clock = clock
        self._wall = wall_clock
        self._sessions: dict[str, SessionRecord] = {}
        # session_id -> idle seconds at expiry; bounded, oldest forgotten first.
        self._expired: OrderedDict[str, float] = OrderedDict()
        self.on_cleanup: list[CleanupCallback] = []
        self._created = 0
        self._expired_count = 0
        self._closed_count = 0
        self._calls = 0
        self._pending: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ lookups

    def __len__(self) -> int:
        return len(self._sessions)

    def __contains__(self, session_id: object) -> bool:
        return isinstance(session_id, str) and self.is_valid(session_id)

    def create(
        self,
        session_id: str | None = None,
        *,
        metadata: Mapping[str, str] | None = None,
        strict_affinity: bool | None = None,
    ) -> SessionRecord:
        """Get the session, creating it if needed (idempotent). ``None`` makes a fresh id.

        ``strict_affinity`` set explicitly updates an existing session; ``None`` keeps it.
        """
        if session_id is None:
            session_id = f"session-{uuid.uuid4().hex[:12]}"
        _check_id(session_id)
        now = self._clock()
        record = self._sessions.get(session_id)
        if record is not None and self._is_stale(record, now):
            self._remove(session_id, "expired", now)
            record = None
        if record is not None:
            record.last_access = now
            if metadata:
                record.metadata.update(metadata)
            if strict_affinity is not None:
                record.strict_affinity = strict_affinity
            return record
        if len(self._sessions) >= self.max_sessions:
            self.sweep_expired()
            if len(self._sessions) >= self.max_sessions:
                raise ResourceExhaustedError(
                    f"too many sessions ({len(self._sessions)} of max_sessions="
                    f"{self.max_sessions}); close sessions you no longer need with "
                    "session.close(), or pass a larger max_sessions to sp.start()"
                )
        record = SessionRecord(
            session_id=session_id,
            created_at=self._wall(),
            created_mono=now,
            last_access=now,
            metadata=dict(metadata or {}),
            strict_affinity=bool(strict_affinity),
        )
        self._sessions[session_id] = record
        self._expired.pop(session_id, None)
        self._created += 1
        return record

    def get(self, session_id: str) -> SessionRecord:
        """The live session (its idle timer restarts), or ``SessionNotFoundError``."""
        record = self._lookup(session_id)
        record.last_access = self._clock()
        return record

    def peek(self, session_id: str) -> SessionRecord:
        """Like ``get`` but does not count as use (the idle timer keeps running)."""
        return self._lookup(session_id)

    def is_valid(self, session_id: str) -> bool:
        """True when the session exists and has not expired (does not refresh it)."""
        record = self._sessions.get(session_id)
        return record is not None and not self._is_stale(record, self._clock())

    def touch(self, session_id: str) -> bool:
        """Refresh the idle timer; False (and nothing else) when there is no such session."""
        try:
            self.get(session_id)
        except SessionNotFoundError:
            return False
        return True

    def records(self) -> list[SessionRecord]:
        """Live sessions, oldest first (expired ones are swept first)."""
        self.sweep_expired()
        return list(self._sessions.values())

    def idle_seconds(self, record: SessionRecord) -> float:
        return max(0.0, self._clock() - record.last_access)

    # ------------------------------------------------------------------ calls and affinity

    def record_call(
        self,
        session_id: str,
        worker_id: str | None = None,
        *,
        failed: bool = False,
        calls: int = 1,
        failures: int | None = None,
    ) -> None:
        """Count ``calls`` calls (``failures`` of them failed; one call failed if ``failed``)
        and remember which worker ran them (the affinity hint). Any thread."""
        with self._lock:
            self._calls += calls
            record = self._sessions.get(session_id)
            if record is None:
                return
            record.call_count += calls
            record.error_count += failures if failures is not None else int(failed)
            if worker_id:
                record.last_worker = worker_id

    def touch_live(self, session_id: str) -> bool:
        """Whether ``session_id`` is a live session, marking it used (any thread).

        False for an unknown or expired one: ask on the loop (``get``) for the error that
        says which.
        """
        with self._lock:
            record = self._sessions.get(session_id)
            now = self._clock()
            if record is None or self._is_stale(record, now):
                return False
            record.last_access = now
            return True

    def affinity(self, session_id: str) -> tuple[str | None, bool]:
        """``(last_worker, strict)`` of the session; ``(None, False)`` when unknown."""
        record = self._sessions.get(session_id)
        if record is None:
            return None, False
        return record.last_worker, record.strict_affinity

    # ------------------------------------------------------------------ removal

    async def cleanup(self, session_id: str) -> bool:
        """Close a session; its variables go with it. False when it did not exist."""
        record = self._sessions.get(session_id)
        if record is None:
            return False
        await self._await_all(self._remove(session_id, "closed", self._clock()))
        return True

    def sweep_expired(self) -> list[str]:
        """Remove every expired session now; returns their ids.

        Cleanup callbacks that return awaitables are scheduled (see ``asweep``).
        """
        now = self._clock()
        horizon = now - self.ttl
        stale = [sid for sid, rec in self._sessions.items() if rec.last_access < horizon]
        for sid in stale:
            self._schedule(self._remove(sid, "expired", now))
        return stale

    async def asweep(self) -> list[str]:
        """Remove expired sessions and wait for their cleanup callbacks."""
        now = self._clock()
        horizon = now - self.ttl
        stale = [sid for sid, rec in self._sessions.items() if rec.last_access < horizon]
        pending: list[Awaitable[None]] = []
        for sid in stale:
            pending.extend(self._remove(sid, "expired", now))
        await self._await_all(pending)
        return stale

    async def clear(self) -> None:
        """Close every session (on shutdown)."""
        now = self._clock()
        pending: list[Awaitable[None]] = []
        for sid in list(self._sessions):
            pending.extend(self._remove(sid, "closed", now))
        await self._await_all(pending)
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)

    # ------------------------------------------------------------------ sweeping task

    def start_sweeper(self, interval: float | None = None) -> None:
        """Sweep expired sessions periodically on the running loop."""
        if self._sweeper is not None and not self._sweeper.done():
            return
        every = interval if interval is not None else min(60.0, max(0.05, self.ttl / 4))
        self._sweeper = asyncio.get_running_loop().create_task(
            self._sweep_forever(every), name="snakepit-session-sweeper"
        )

    async def stop_sweeper(self) -> None:
        task, self._sweeper = self._sweeper, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _sweep_forever(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.asweep()
            except Exception:  # a failing callback must not stop the sweeper
                log.exception("session sweep failed")

    # ------------------------------------------------------------------ stats

    def stats(self) -> SessionStats:
        return SessionStats(
            active=len(self._sessions),
            created=self._created,
            expired=self._expired_count,
            closed=self._closed_count,
            calls=self._calls,
            ttl=self.ttl,
            max_sessions=self.max_sessions,
        )

    # ------------------------------------------------------------------ internals

    def _is_stale(self, record: SessionRecord, now: float) -> bool:
        return now - record.last_access > self.ttl

    def _lookup(self, session_id: str) -> SessionRecord:
        record = self._sessions.get(session_id)
        now = self._clock()
        if record is not None and self._is_stale(record, now):
            self._schedule(self._remove(session_id, "expired", now))
            record = None
        if record is None:
            raise self._not_found(session_id)
        return record

    def _not_found(self, session_id: str) -> SessionNotFoundError:
        idle = self._expired.get(session_id)
        if idle is not None:
            return SessionNotFoundError(
                f"session {session_id!r} expired after {idle:.0f} s idle "
                f"(session_ttl={self.ttl:g} s); create it again with "
                f"client.session({session_id!r})"
            )
        return SessionNotFoundError(
            f"session {session_id!r} does not exist (never created, or closed); create it "
            f"with client.session({session_id!r})"
        )

    def _remove(self, session_id: str, reason: str, now: float) -> list[Awaitable[None]]:
        record = self._sessions.pop(session_id, None)
        if record is None:
            return []
        if reason == "expired":
            self._expired_count += 1
            self._expired[session_id] = now - record.last_access
            if len(self._expired) > _EXPIRED_MEMORY:
                self._expired.popitem(last=False)
        else:
            self._closed_count += 1
        pending: list[Awaitable[None]] = []
        for callback in list(self.on_cleanup):
            try:
                result = callback(session_id, reason)
            except Exception:
                log.exception("session cleanup callback failed for %r", session_id)
                continue
            if result is not None and inspect.isawaitable(result):
                pending.append(result)
        return pending

    def _schedule(self, pending: list[Awaitable[None]]) -> None:
        if not pending:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            # Used outside a loop (a script, a unit test): nothing can await these.
            for awaitable in pending:
                if inspect.iscoroutine(awaitable):
                    awaitable.close()
            log.warning("session cleanup callbacks skipped: no running event loop")
            return
        task = loop.create_task(self._await_all(pending))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    @staticmethod
    async def _await_all(pending: list[Awaitable[None]]) -> None:
        for awaitable in pending:
            try:
                await awaitable
            except Exception:
                log.exception("session cleanup callback failed")


def _check_id(session_id: object) -> None:
    if not isinstance(session_id, str) or not session_id:
        raise InvalidArgumentError(
            f"a session id must be a non-empty string, not {session_id!r}; pass e.g. "
            "client.session('exp1'), or client.session() for a fresh id"
        )
    if len(session_id) > _MAX_ID_LEN or not session_id.isprintable():
        raise InvalidArgumentError(
            f"session id {session_id[:40]!r}... is not usable; use at most {_MAX_ID_LEN} "
            "printable characters"
        )
