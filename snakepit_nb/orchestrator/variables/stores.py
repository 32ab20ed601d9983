"""Session variables on the orchestrator: one ``VariableStore`` per session, plus persistence.

This module is the public face of the variable system; the parts live next to it:
``variables_types`` (types, constraints, records), ``variables_store`` (``VariableStore``),
``watchers`` (conflating watch buffers), ``persistence`` (SQLite) and ``variables_rpc`` (the
13 variable RPCs).

The orchestrator keeps one ``VariableStores`` as ``orchestrator.variables``. It is tied to the
``SessionStore`` with ``attach_sessions``: a lookup for an unknown session raises
``SessionNotFoundError``, a closed or expired session takes its variables with it, and, with
a state file, persisted sessions come back into the session store at start.

Order at shutdown: ``await variables.close()`` *before* the sessions are cleared, so that a
runtime stopping does not delete the persisted state (closing a session does).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from snakepit_nb._errors import InvalidArgumentError, SessionNotFoundError
from snakepit_nb.orchestrator.variables import persistence as sql
from snakepit_nb.orchestrator.variables.persistence import StateDatabase
from snakepit_nb.orchestrator.variables.policy import MIB, VariableLimits
from snakepit_nb.orchestrator.variables.records import (
    KERNEL_SOURCE,
    BatchOutcome,
    OptimizationLock,
    VariableRecord,
    VariableVersion,
)
from snakepit_nb.orchestrator.variables.store import (
    VariableStore,
)
from snakepit_nb.orchestrator.variables.types import VARIABLE_TYPES, TypeSpec
from snakepit_nb.orchestrator.variables.watchers import ChangeKind, VariableChange, Watcher
from snakepit_nb.protocol import pb
from snakepit_nb.protocol.codec import decode_json

if TYPE_CHECKING:
    from snakepit_nb.orchestrator.config import Config
    from snakepit_nb.orchestrator.sessions import SessionStore

__all__ = [
    "KERNEL_SOURCE",
    "MIB",
    "VARIABLE_TYPES",
    "BatchOutcome",
    "ChangeKind",
    "OptimizationLock",
    "TypeSpec",
    "VariableChange",
    "VariableLimits",
    "VariableRecord",
    "VariableStore",
    "VariableStores",
    "VariableVersion",
    "Watcher",
]

log = logging.getLogger(__name__)


class VariableStores:
    """The ``VariableStore`` of every session, created on first use.

    >>> stores = VariableStores(VariableLimits(max_value_bytes=1 << 20))
    >>> await stores.open()            # loads the state file, if any
    >>> store = stores.for_session("exp1")
    """

    def __init__(
        self,
        config: Config | VariableLimits | None = None,
        *,
        limits: VariableLimits | None = None,
        state: str | None = None,
        synchronous: str = "NORMAL",
        session_exists: Callable[[str], bool] | None = None,
        wall_clock: Callable[[], float] = time.time,
        clock: Callable[[], float] | None = None,
    ) -> None:
        """``config`` is the runtime's ``Config`` (its ``state`` path and variable limits are
        read from it when present) or a ``VariableLimits``. ``clock`` is the session store's
        monotonic clock, accepted for symmetry; variable timestamps use ``wall_clock``.
        """
        del clock
        if isinstance(config, VariableLimits):
            limits, config = config, None
        if limits is None:
            limits = (
                VariableLimits()
                if config is None
                else VariableLimits(
                    max_value_bytes=config.max_variable_bytes,
                    max_variables=config.max_variables,
                    max_history=config.max_variable_history,
                )
            )
        self.limits = limits
        if state is None and config is not None:
            state = config.state
        self.state_path = state
        self._synchronous = synchronous
        self._session_exists = session_exists
        self._clock = wall_clock
        self._stores: dict[str, VariableStore] = {}
        self._db: StateDatabase | None = None
        self._persisted_sessions: dict[str, tuple[dict[str, str], float]] = {}
        self._closing = False

    # ---------------------------------------------------------------- lifecycle

    async def open(self, sessions: SessionStore | None = None) -> None:
        """Open the state file (if configured) and restore what it holds.

        With ``sessions``, unknown session ids are refused from now on and persisted sessions
        are created in it again (the caller wires session cleanup to ``drop_session``).
        """
        if sessions is not None:
            self._session_exists = sessions.is_valid
        if self.state_path is None or self._db is not None:
            return
        self._db = await StateDatabase.open(self.state_path, synchronous=self._synchronous)
        state = await self._db.load(decode_json)
        for sid, persisted in state.sessions.items():
            store = self._new_store(sid)
            for record, history in persisted.variables:
                store.restore(record, history)
            for from_id, to_id, dep_type in persisted.dependencies:
                store.restore_dependency(from_id, to_id, dep_type)
            self._persisted_sessions[sid] = (persisted.metadata, persisted.created_at)
        log.info("restored %d sessions from %s", len(state.sessions), self.state_path)
        if sessions is not None:
            self._restore_sessions(sessions)

    def attach_sessions(self, sessions: SessionStore) -> None:
        """Tie to the runtime's ``SessionStore`` (existence checks, cleanup, restore)."""
        self._session_exists = sessions.is_valid
        sessions.on_cleanup.append(self._on_session_gone)
        self._restore_sessions(sessions)

    def _restore_sessions(self, sessions: SessionStore) -> None:
        for sid, (metadata, _created) in self._persisted_sessions.items():
            try:
                sessions.create(sid, metadata=metadata)
            except Exception:  # a bad persisted id must not stop the runtime
                log.exception("could not restore session %r", sid)

    async def close(self) -> None:
        """Close every watcher and the state file. Persisted state stays on disk."""
        self._closing = True
        for store in self._stores.values():
            store.close("the runtime is shutting down")
        self._stores.clear()
        if self._db is not None:
            db, self._db = self._db, None
            await db.close()

    async def aclose(self) -> None:
        """Same as ``close`` (the orchestrator's spelling)."""
        await self.close()

    # ---------------------------------------------------------------- lookup

    def for_session(self, session_id: str, *, create: bool = True) -> VariableStore:
        """The store of ``session_id``; ``SessionNotFoundError`` for an unknown session."""
        store = self._stores.get(session_id)
        if store is not None and (self._session_exists is None or self._session_exists(session_id)):
            return store
        if not isinstance(session_id, str) or not session_id:
            raise InvalidArgumentError(
                f"a session id must be a non-empty string, not {session_id!r}"
            )
        if self._session_exists is not None and not self._session_exists(session_id):
            raise SessionNotFoundError(
                f"session {session_id!r} does not exist (never created, closed, or expired); "
                f"create it with client.session({session_id!r})"
            )
        if store is not None:
            return store
        if not create:
            raise SessionNotFoundError(f"session {session_id!r} has no variables")
        return self._new_store(session_id)

    def peek(self, session_id: str) -> VariableStore | None:
        return self._stores.get(session_id)

    def session_ids(self) -> list[str]:
        return list(self._stores)

    def prefetch(self, session_id: str, names: Iterable[str]) -> list[pb.Variable]:
        """Snapshots of ``names`` to send with a call (``ExecuteToolRequest.variables``), so a
        tool's ``required_variables`` cost it no round trip. Unknown names and variables
        hidden from workers are left out (the tool then asks and gets a clear error)."""
        store = self._stores.get(session_id)
        if store is None:
            return []
        from snakepit_nb.orchestrator.variables.wire import record_to_pb

        out: list[pb.Variable] = []
        for name in names:
            record = store.peek(name)
            if record is not None and record.access.get("workers") != "none":
                out.append(record_to_pb(record))
        return out

    def count(self, session_id: str) -> int:
        """Number of variables of a session (0 when it has none)."""
        store = self._stores.get(session_id)
        return 0 if store is None else len(store)

    @property
    def database(self) -> StateDatabase | None:
        return self._db

    # ---------------------------------------------------------------- removal

    async def drop(self, session_id: str, reason: str = "closed") -> None:
        """Forget a session's variables (and delete them from the state file)."""
        store = self._stores.pop(session_id, None)
        if store is not None:
            store.close(f"session {session_id!r} was {reason}")
        self._persisted_sessions.pop(session_id, None)
        if self._db is not None and not self._closing:
            await self._db.execute(sql.session_delete(session_id))

    async def drop_session(self, session_id: str, reason: str = "closed") -> None:
        """A session went away: drop its variables (kept on disk while shutting down)."""
        await self._on_session_gone(session_id, reason)

    async def _on_session_gone(self, session_id: str, reason: str) -> None:
        if self._closing:
            store = self._stores.pop(session_id, None)
            if store is not None:
                store.close("the runtime is shutting down")
            return
        await self.drop(session_id, reason)

    def _new_store(self, session_id: str) -> VariableStore:
        store = VariableStore(session_id, self.limits, db=self._db, clock=self._clock)
        self._stores[session_id] = store
        return store
