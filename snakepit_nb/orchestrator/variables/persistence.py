"""Opt-in durability of sessions, variables and history in SQLite (``sp.start(state=...)``).

In-memory is the default: a kernel restart means a fresh interpreter, like Python variables.
With a state file, every acknowledged variable write has been committed to SQLite in WAL mode
(a process crash, even SIGKILL, loses nothing that was acknowledged; ``synchronous="FULL"``
also survives power loss). On reopen every session, variable and kept history entry is back,
and versions continue from the highest one.

SQLite runs on one dedicated writer thread, never on the event loop: the loop hands it groups
of statements and awaits a future. The writer commits everything that queued up meanwhile in
one transaction (group commit), so many concurrent writers cost few commits.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeVar

from snakepit_nb._errors import ConfigurationError, FailedPreconditionError, ResourceExhaustedError
from snakepit_nb.orchestrator.variables.records import (
    OptimizationLock,
    VariableRecord,
    VariableVersion,
)
from snakepit_nb.protocol.codec import encode_json

__all__ = [
    "PersistedSession",
    "PersistedState",
    "StateDatabase",
    "Statement",
    "dependency_insert",
    "history_insert",
    "history_trim",
    "session_delete",
    "session_upsert",
    "variable_delete",
    "variable_upsert",
]

log = logging.getLogger(__name__)

T = TypeVar("T")
Statement = tuple[str, tuple[Any, ...]]

_SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (
    session_id TEXT PRIMARY KEY,
    metadata TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS variables (
    session_id TEXT NOT NULL,
    var_id TEXT NOT NULL,
    name TEXT NOT NULL,
    type TEXT NOT NULL,
    value BLOB NOT NULL,
    version INTEGER NOT NULL,
    constraints TEXT NOT NULL,
    metadata TEXT NOT NULL,
    source TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    access TEXT NOT NULL,
    optimization TEXT,
    PRIMARY KEY (session_id, var_id)
);
CREATE TABLE IF NOT EXISTS history (
    session_id TEXT NOT NULL,
    var_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    value BLOB NOT NULL,
    source TEXT NOT NULL,
    at REAL NOT NULL,
    metadata TEXT NOT NULL,
    PRIMARY KEY (var_id, version)
);
CREATE INDEX IF NOT EXISTS history_session ON history (session_id);
CREATE TABLE IF NOT EXISTS dependencies (
    session_id TEXT NOT NULL,
    from_id TEXT NOT NULL,
    to_id TEXT NOT NULL,
    type TEXT NOT NULL,
    PRIMARY KEY (session_id, from_id, to_id)
);
"""

# Statement groups waiting for the writer thread. Each write awaits its commit, so this only
# fills when the disk cannot keep up with thousands of concurrent writers.
_QUEUE_SIZE = 65_536
_MAX_GROUP = 512


# ---------------------------------------------------------------------------- statements


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def session_upsert(session_id: str, metadata: Mapping[str, str], created_at: float) -> Statement:
    return (
        "INSERT INTO sessions (session_id, metadata, created_at) VALUES (?, ?, ?) "
        "ON CONFLICT (session_id) DO NOTHING",
        (session_id, _dumps(dict(metadata)), created_at),
    )


def session_delete(session_id: str) -> list[Statement]:
    return [
        ("DELETE FROM history WHERE session_id = ?", (session_id,)),
        ("DELETE FROM dependencies WHERE session_id = ?", (session_id,)),
        ("DELETE FROM variables WHERE session_id = ?", (session_id,)),
        ("DELETE FROM sessions WHERE session_id = ?", (session_id,)),
    ]


def variable_upsert(session_id: str, record: VariableRecord, value_json: bytes | None) -> Statement:
    """Insert or update a variable's row; ``value_json=None`` keeps the stored value."""
    lock = record.optimization
    optimization = None
    if lock is not None:
        optimization = _dumps(
            {
                "optimizer_id": lock.optimizer_id,
                "optimization_id": lock.optimization_id,
                "started_at": lock.started_at,
                "config": dict(lock.config),
            }
        )
    if value_json is None:
        return (
            "UPDATE variables SET optimization = ? WHERE session_id = ? AND var_id = ?",
            (optimization, session_id, record.id),
        )
    return (
        "INSERT INTO variables (session_id, var_id, name, type, value, version, constraints, "
        "metadata, source, created_at, updated_at, access, optimization) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (session_id, var_id) DO UPDATE SET type = excluded.type, "
        "value = excluded.value, version = excluded.version, "
        "constraints = excluded.constraints, metadata = excluded.metadata, "
        "source = excluded.source, updated_at = excluded.updated_at, "
        "access = excluded.access, optimization = excluded.optimization",
        (
            session_id,
            record.id,
            record.name,
            record.type,
            value_json,
            record.version,
            _dumps(dict(record.constraints)),
            _dumps(dict(record.metadata)),
            record.source,
            record.created_at,
            record.updated_at,
            _dumps(dict(record.access)),
            optimization,
        ),
    )


def history_insert(
    session_id: str, var_id: str, entry: VariableVersion, value_json: bytes
) -> Statement:
    return (
        "INSERT OR REPLACE INTO history (session_id, var_id, version, value, source, at, "
        "metadata) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            session_id,
            var_id,
            entry.version,
            value_json,
            entry.source,
            entry.at,
            _dumps(dict(entry.metadata)),
        ),
    )


def history_trim(var_id: str, up_to_version: int) -> Statement:
    return ("DELETE FROM history WHERE var_id = ? AND version <= ?", (var_id, up_to_version))


def variable_delete(session_id: str, var_id: str) -> list[Statement]:
    return [
        ("DELETE FROM history WHERE var_id = ?", (var_id,)),
        (
            "DELETE FROM dependencies WHERE session_id = ? AND (from_id = ? OR to_id = ?)",
            (session_id, var_id, var_id),
        ),
        ("DELETE FROM variables WHERE session_id = ? AND var_id = ?", (session_id, var_id)),
    ]


def dependency_insert(session_id: str, from_id: str, to_id: str, dep_type: str) -> Statement:
    return (
        "INSERT OR IGNORE INTO dependencies (session_id, from_id, to_id, type) VALUES (?, ?, ?, ?)",
        (session_id, from_id, to_id, dep_type),
    )


# ---------------------------------------------------------------------------- loaded state


@dataclass
class PersistedSession:
    """A session as read back from the state file."""

    session_id: str
    metadata: dict[str, str]
    created_at: float
    variables: list[tuple[VariableRecord, list[VariableVersion]]] = field(default_factory=list)
    dependencies: list[tuple[str, str, str]] = field(default_factory=list)


@dataclass
class PersistedState:
    sessions: dict[str, PersistedSession] = field(default_factory=dict)


def _load(conn: sqlite3.Connection, decode: Callable[[bytes], object]) -> PersistedState:
    state = PersistedState()
    for sid, meta, created in conn.execute(
        "SELECT session_id, metadata, created_at FROM sessions ORDER BY created_at"
    ):
        state.sessions[sid] = PersistedSession(sid, json.loads(meta), created)
    histories: dict[str, list[VariableVersion]] = {}
    for var_id, version, value, source, at, meta in conn.execute(
        "SELECT var_id, version, value, source, at, metadata FROM history ORDER BY var_id, version"
    ):
        histories.setdefault(var_id, []).append(
            VariableVersion(version, decode(value), source, at, MappingProxyType(json.loads(meta)))
        )
    for row in conn.execute(
        "SELECT session_id, var_id, name, type, value, version, constraints, metadata, source, "
        "created_at, updated_at, access, optimization FROM variables ORDER BY created_at"
    ):
        sid, var_id, name, vtype, value, version, constraints, meta, source = row[:9]
        created, updated, access, optimization = row[9:]
        lock = None
        if optimization:
            o = json.loads(optimization)
            lock = OptimizationLock(
                o["optimizer_id"],
                o["optimization_id"],
                o["started_at"],
                MappingProxyType(o.get("config", {})),
            )
        record = VariableRecord(
            id=var_id,
            name=name,
            type=vtype,
            value=decode(value),
            version=version,
            constraints=MappingProxyType(json.loads(constraints)),
            metadata=MappingProxyType(json.loads(meta)),
            source=source,
            created_at=created,
            updated_at=updated,
            access=MappingProxyType(json.loads(access)),
            optimization=lock,
        )
        session = state.sessions.get(sid)
        if session is None:
            session = state.sessions[sid] = PersistedSession(sid, {}, created)
        session.variables.append((record, histories.get(var_id, [])))
    for sid, from_id, to_id, dep_type in conn.execute(
        "SELECT session_id, from_id, to_id, type FROM dependencies"
    ):
        if sid in state.sessions:
            state.sessions[sid].dependencies.append((from_id, to_id, dep_type))
    return state


# ---------------------------------------------------------------------------- the database


class _Job:
    __slots__ = ("fn", "future", "statements")

    def __init__(
        self,
        statements: Sequence[Statement] | None,
        fn: Callable[[sqlite3.Connection], Any] | None,
        future: concurrent.futures.Future[Any],
    ) -> None:
        self.statements = statements
        self.fn = fn
        self.future = future


class StateDatabase:
    """A SQLite state file written by one background thread (WAL, group commit).

    >>> db = await StateDatabase.open("exploration.db")
    >>> await db.execute([session_upsert("exp1", {}, time.time())])
    >>> await db.close()
    """

    def __init__(self, path: str, *, synchronous: str = "NORMAL") -> None:
        if synchronous not in ("NORMAL", "FULL"):
            raise ConfigurationError("synchronous must be 'NORMAL' or 'FULL'")
        self.path = path
        self.synchronous = synchronous
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=_QUEUE_SIZE)
        self._thread: threading.Thread | None = None
        self._failed: BaseException | None = None
        self._closed = False
        self.commits = 0

    @classmethod
    async def open(cls, path: str, *, synchronous: str = "NORMAL") -> StateDatabase:
        """Open (creating if needed) the state file and start its writer thread."""
        db = cls(path, synchronous=synchronous)
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        db._thread = threading.Thread(
            target=db._run, args=(ready,), name="snakepit-state-db", daemon=True
        )
        db._thread.start()
        await asyncio.wrap_future(ready)
        return db

    async def execute(self, statements: Sequence[Statement]) -> None:
        """Run ``statements`` in a transaction; returns once they are committed."""
        await self._submit(_Job(statements, None, concurrent.futures.Future()))

    async def call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(connection)`` on the writer thread (inside a transaction)."""
        result: T = await self._submit(_Job(None, fn, concurrent.futures.Future()))
        return result

    async def load(self, decode: Callable[[bytes], object]) -> PersistedState:
        """Every persisted session with its variables, history and dependencies."""
        return await self.call(lambda conn: _load(conn, decode))

    async def integrity_check(self) -> str:
        rows = await self.call(lambda conn: conn.execute("PRAGMA integrity_check").fetchall())
        return ", ".join(str(r[0]) for r in rows)

    async def close(self) -> None:
        """Commit what is queued, stop the writer thread and close the file."""
        if self._closed:
            return
        self._closed = True
        thread = self._thread
        if thread is None or not thread.is_alive():
            return
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._queue.put, None)
        await loop.run_in_executor(None, thread.join, 30.0)

    @property
    def failed(self) -> BaseException | None:
        return self._failed

    # ---------------------------------------------------------------- internals

    async def _submit(self, job: _Job) -> Any:
        if self._closed:
            raise FailedPreconditionError(
                f"the state database {self.path!r} is closed; start a new runtime to write"
            )
        if self._failed is not None:
            raise FailedPreconditionError(
                f"the state database {self.path!r} failed ({self._failed}); nothing more is "
                "persisted: fix the file or disk and start again"
            )
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            job.future.cancel()
            raise ResourceExhaustedError(
                f"the state database {self.path!r} is {_QUEUE_SIZE} writes behind; slow down "
                "writers or use a faster disk"
            ) from None
        return await asyncio.wrap_future(job.future)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=True)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        conn.execute("PRAGMA busy_timeout=5000")
        conn.executescript(_SCHEMA)
        conn.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
            (str(_SCHEMA_VERSION),),
        )
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None or int(row[0]) != _SCHEMA_VERSION:
            raise ConfigurationError(
                f"the state file {self.path!r} has schema version {row and row[0]}, this "
                f"snakepit_nb writes {_SCHEMA_VERSION}; use another file"
            )
        return conn

    def _run(self, ready: concurrent.futures.Future[None]) -> None:
        try:
            conn = self._connect()
        except BaseException as exc:
            ready.set_exception(
                ConfigurationError(f"cannot open the state file {self.path!r}: {exc}")
                if isinstance(exc, sqlite3.Error)
                else exc
            )
            return
        ready.set_result(None)
        try:
            while True:
                first = self._queue.get()
                if first is None:
                    break
                group = [first]
                stop = False
                while len(group) < _MAX_GROUP:
                    try:
                        job = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if job is None:
                        stop = True
                        break
                    group.append(job)
                self._commit(conn, group)
                if stop:
                    break
        finally:
            conn.close()

    def _commit(self, conn: sqlite3.Connection, group: list[_Job]) -> None:
        live = [job for job in group if job.future.set_running_or_notify_cancel()]
        if not live:
            return
        results: list[Any] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for job in live:
                if job.statements is not None:
                    for text, params in job.statements:
                        conn.execute(text, params)
                    results.append(None)
                else:
                    assert job.fn is not None
                    results.append(job.fn(conn))
            conn.execute("COMMIT")
            self.commits += 1
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                self._failed = exc
                log.error("state database %s failed: %s", self.path, exc)
                error: BaseException = FailedPreconditionError(
                    f"the state database {self.path!r} could not commit: {exc}"
                )
            else:
                error = exc
            for job in live:
                job.future.set_exception(error)
            return
        for job, result in zip(live, results, strict=True):
            job.future.set_result(result)


def write_statements(
    session_id: str,
    record: VariableRecord,
    entry: VariableVersion,
    encoded: bytes | None,
    *,
    new: bool,
    max_history: int,
    now: float,
) -> list[Statement]:
    """The statements that persist one write: the variable's row, its history entry, and (for
    a new variable) its session's row; every 64th write trims the history table."""
    if encoded is None:
        encoded = encode_json(entry.value)
    statements: list[Statement] = []
    if new:
        statements.append(session_upsert(session_id, {}, now))
    statements.append(variable_upsert(session_id, record, encoded))
    statements.append(history_insert(session_id, record.id, entry, encoded))
    oldest = entry.version - max_history
    if oldest >= 1 and entry.version % 64 == 0:
        # Trimming every 64th write keeps the table within max_history + 64 rows.
        statements.append(history_trim(record.id, oldest))
    return statements
