"""The one exception hierarchy of snakepit_nb.

Every error a user can see is one of these. Messages are one sentence of fact and one of
remedy. Each class also subclasses the builtin a plain ``except`` would reach for (lookups are
``LookupError``, timeouts ``TimeoutError``, bad arguments ``ValueError``).

    SnakepitError
    ├── RemoteToolError ............ your tool raised; carries the remote type, message, traceback
    ├── ConfigurationError (ValueError) ... bad settings passed to start() or a magic
    ├── InvalidArgumentError (ValueError) . bad arguments, types or values   [INVALID_ARGUMENT]
    │   └── ConstraintViolationError ...... a variable's type or constraints refused the value
    ├── NotFoundError (LookupError) ....... unknown tool, session or variable [NOT_FOUND]
    │   ├── ToolNotFoundError
    │   ├── SessionNotFoundError
    │   └── VariableNotFoundError
    ├── VersionConflictError .............. stale expected_version; has .current_version [ABORTED]
    ├── FailedPreconditionError ........... a lock, read-only, type change  [FAILED_PRECONDITION]
    │   └── WorkerFailedError ............. a worker slot is crash-looping and was given up
    ├── ResourceExhaustedError ............ too large, too many, pool saturated [RESOURCE_EXHAUSTED]
    │   └── PoolSaturatedError
    ├── CallTimeoutError (TimeoutError) ... the call's deadline passed        [DEADLINE_EXCEEDED]
    ├── CancelledError .................... the call was cancelled            [CANCELLED]
    ├── WorkerUnavailableError ............ no worker can take the call now   [UNAVAILABLE]
    │   ├── WorkerCrashedError ............ the worker died during the call
    │   └── SessionWorkerGoneError ........ a strict-affinity session's worker is gone
    ├── AuthenticationError ............... missing or wrong runtime token    [UNAUTHENTICATED]
    ├── ProtocolError ..................... the peer broke the wire contract  [INTERNAL]
    ├── StartupError ...................... a worker or the orchestrator could not start
    └── ClosedError ....................... you closed the client, session or pool

The mapping to and from gRPC status codes lives in ``snakepit_nb.protocol.status``.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AuthenticationError",
    "CallTimeoutError",
    "CancelledError",
    "ClosedError",
    "ConfigurationError",
    "ConstraintViolationError",
    "FailedPreconditionError",
    "InvalidArgumentError",
    "NotFoundError",
    "PoolSaturatedError",
    "ProtocolError",
    "RemoteToolError",
    "ResourceExhaustedError",
    "SessionNotFoundError",
    "SessionWorkerGoneError",
    "SnakepitError",
    "StartupError",
    "ToolNotFoundError",
    "VariableNotFoundError",
    "VersionConflictError",
    "WorkerCrashedError",
    "WorkerFailedError",
    "WorkerUnavailableError",
]


#: Frames of a worker's traceback that ``str(RemoteToolError)`` shows.
TRACEBACK_FRAMES = 5


class SnakepitError(Exception):
    """Base class of every snakepit_nb error."""


class RemoteToolError(SnakepitError):
    """A tool raised an exception in a worker (or a kernel tool raised).

    The worker stays up. ``remote_type``, ``remote_message`` and ``remote_traceback`` describe
    the original exception; IPython shows the remote traceback like a local one.

    >>> try:
    ...     session.call("fail", message="boom")
    ... except RemoteToolError as err:
    ...     err.remote_type
    'ValueError'
    """

    def __init__(
        self,
        remote_type: str,
        remote_message: str,
        remote_traceback: str = "",
        *,
        tool_name: str = "",
        session_id: str = "",
        worker_id: str = "",
        context: dict[str, Any] | None = None,
    ) -> None:
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.remote_traceback = remote_traceback
        self.tool_name = tool_name
        self.session_id = session_id
        self.worker_id = worker_id
        self.context = dict(context or {})
        where = f" in tool {tool_name!r}" if tool_name else ""
        super().__init__(f"{remote_type}{where}: {remote_message}")

    def __str__(self) -> str:
        """The one-line summary, then the last frames of the worker's traceback (like Ray's)."""
        summary = str(self.args[0]) if self.args else self.remote_type
        tail = last_frames(self.remote_traceback)
        if not tail:
            return summary
        where = f" {self.worker_id}" if self.worker_id else ""
        return f"{summary}\n\nworker{where} traceback (most recent call last):\n{tail}"

    def _render_traceback_(self) -> list[str]:
        """IPython calls this to show the worker's traceback instead of ours."""
        header = f"RemoteToolError: {self.remote_type} raised in tool {self.tool_name!r}"
        if self.worker_id:
            header += f" on worker {self.worker_id}"
        lines = [header]
        if self.remote_traceback:
            lines.extend(self.remote_traceback.rstrip("\n").splitlines())
        else:
            lines.append(f"{self.remote_type}: {self.remote_message}")
        return lines


def last_frames(traceback_text: str, frames: int = TRACEBACK_FRAMES) -> str:
    """The last ``frames`` frames of a formatted traceback and its final exception lines."""
    lines = traceback_text.rstrip("\n").splitlines()
    if lines and lines[0].startswith("Traceback"):
        lines = lines[1:]
    starts = [i for i, line in enumerate(lines) if line.startswith("  File ")]
    if len(starts) > frames:
        cut = starts[-frames]
        lines = [f"  ... {len(starts) - frames} earlier frames ...", *lines[cut:]]
    return "\n".join(lines)


class ConfigurationError(SnakepitError, ValueError):
    """Settings passed to ``start()``, a magic or a launcher are not usable."""


class InvalidArgumentError(SnakepitError, ValueError):
    """The request's arguments, types or values are not acceptable. Nothing was changed."""


class ConstraintViolationError(InvalidArgumentError):
    """A variable's type or constraints refused a value. Nothing was changed."""


class NotFoundError(SnakepitError, LookupError):
    """Something named in the request does not exist."""


class ToolNotFoundError(NotFoundError):
    """No tool of that name is registered."""


class SessionNotFoundError(NotFoundError):
    """No session of that id exists (never created, closed, or expired)."""


class VariableNotFoundError(NotFoundError):
    """No variable of that name or id exists in the session."""


class VersionConflictError(SnakepitError):
    """A write named an ``expected_version`` that is no longer current. Nothing was changed.

    ``current_version`` is the version that is current now; re-read and retry, or use
    ``session.vars.update(name, fn)`` which retries for you.
    """

    def __init__(self, message: str, *, current_version: int | None = None) -> None:
        super().__init__(message)
        self.current_version = current_version


class FailedPreconditionError(SnakepitError):
    """The current state refuses the operation (a lock, read-only access, a type change)."""


class WorkerFailedError(FailedPreconditionError):
    """A worker slot crashed at start-up too often and was given up; see the stderr tail."""


class ResourceExhaustedError(SnakepitError):
    """A size or count limit was reached (message size, variables per session, queue length)."""


class PoolSaturatedError(ResourceExhaustedError):
    """Every worker is busy and the pool's queue is full."""


class CallTimeoutError(SnakepitError, TimeoutError):
    """The call's deadline passed before it finished."""


class CancelledError(SnakepitError):
    """The call was cancelled (by you, an interrupt, or the closing pool)."""


class WorkerUnavailableError(SnakepitError):
    """No worker can take the call right now (starting, restarting, or gone)."""


class WorkerCrashedError(WorkerUnavailableError):
    """The worker died while running the call; the call may or may not have had its effects.

    ``exit_code`` (or a negative signal number) says how it died. The pool replaces the worker;
    the session's variables are untouched.
    """

    def __init__(self, message: str, *, worker_id: str = "", exit_code: int | None = None) -> None:
        super().__init__(message)
        self.worker_id = worker_id
        self.exit_code = exit_code


class SessionWorkerGoneError(WorkerUnavailableError):
    """A session with strict affinity lost the worker that holds its objects."""


class AuthenticationError(SnakepitError):
    """A request came without the runtime token, or with a wrong one."""


class ProtocolError(SnakepitError):
    """A peer sent something that breaks the wire contract."""


class StartupError(SnakepitError):
    """A worker or the orchestrator could not start; the message has the worker's stderr tail."""


class ClosedError(SnakepitError):
    """The client, session or pool was closed; start a new one with ``sp.start()``."""
