"""snakepit_nb: supervised Python worker pools, typed session variables and live tool streaming,
driven from a Jupyter notebook.

>>> import snakepit_nb as sp
>>> client = sp.start(workers=2)
>>> s = client.session("exp1")
>>> s.call("add", a=1, b=2)
3
>>> for chunk in s.stream("count", n=3): ...
>>> s.vars["temperature"] = 0.7
>>> client.close()

In a notebook: ``%load_ext snakepit_nb``, then ``%snakepit start``.

``import snakepit_nb`` is light: gRPC, the orchestrator and the notebook layer load on first
use of the names that need them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from snakepit_nb._errors import (
    AuthenticationError,
    CallTimeoutError,
    CancelledError,
    ClosedError,
    ConfigurationError,
    ConstraintViolationError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PoolSaturatedError,
    ProtocolError,
    RemoteToolError,
    ResourceExhaustedError,
    SessionNotFoundError,
    SessionWorkerGoneError,
    SnakepitError,
    StartupError,
    ToolNotFoundError,
    VariableNotFoundError,
    VersionConflictError,
    WorkerCrashedError,
    WorkerFailedError,
    WorkerUnavailableError,
)

if TYPE_CHECKING:
    from snakepit_nb.client.async_variables import AsyncVariables
    from snakepit_nb.client.clients import AsyncClient, Client, astart, start
    from snakepit_nb.client.futures import (
        SessionFuture,
        as_completed,
        wait,
    )
    from snakepit_nb.client.sessions import AsyncSession, Session
    from snakepit_nb.client.streams import AsyncStream, Stream
    from snakepit_nb.client.variables import Variables
    from snakepit_nb.notebook.progress import progress
    from snakepit_nb.orchestrator.config import Config
    from snakepit_nb.orchestrator.launch.ray_launcher import RayLauncher
    from snakepit_nb.orchestrator.registry import ParameterInfo, ToolSpec
    from snakepit_nb.orchestrator.sessions import SessionInfo
    from snakepit_nb.orchestrator.status import ClientStatus
    from snakepit_nb.tools.adapter import Adapter, tool
    from snakepit_nb.worker.context import SessionContext

from snakepit_nb._version import __version__

__all__ = [
    "Adapter",
    "AsyncClient",
    "AsyncSession",
    "AsyncStream",
    "AsyncVariables",
    "AuthenticationError",
    "CallTimeoutError",
    "CancelledError",
    "Client",
    "ClientStatus",
    "ClosedError",
    "Config",
    "ConfigurationError",
    "ConstraintViolationError",
    "FailedPreconditionError",
    "InvalidArgumentError",
    "NotFoundError",
    "ParameterInfo",
    "PoolSaturatedError",
    "ProtocolError",
    "RayLauncher",
    "RemoteToolError",
    "ResourceExhaustedError",
    "Session",
    "SessionContext",
    "SessionFuture",
    "SessionInfo",
    "SessionNotFoundError",
    "SessionWorkerGoneError",
    "SnakepitError",
    "StartupError",
    "Stream",
    "ToolNotFoundError",
    "ToolSpec",
    "VariableNotFoundError",
    "Variables",
    "VersionConflictError",
    "WorkerCrashedError",
    "WorkerFailedError",
    "WorkerUnavailableError",
    "__version__",
    "as_completed",
    "astart",
    "load_ipython_extension",
    "progress",
    "start",
    "tool",
    "unload_ipython_extension",
    "wait",
]

# Public name -> the module that defines it, imported on first access.
_LAZY = {
    "start": "snakepit_nb.client.clients",
    "astart": "snakepit_nb.client.clients",
    "Client": "snakepit_nb.client.clients",
    "AsyncClient": "snakepit_nb.client.clients",
    "ClientStatus": "snakepit_nb.orchestrator.status",
    "Session": "snakepit_nb.client.sessions",
    "AsyncSession": "snakepit_nb.client.sessions",
    "SessionInfo": "snakepit_nb.orchestrator.sessions",
    "Stream": "snakepit_nb.client.streams",
    "AsyncStream": "snakepit_nb.client.streams",
    "Variables": "snakepit_nb.client.variables",
    "AsyncVariables": "snakepit_nb.client.async_variables",
    "Config": "snakepit_nb.orchestrator.config",
    "RayLauncher": "snakepit_nb.orchestrator.launch.ray_launcher",
    "ToolSpec": "snakepit_nb.orchestrator.registry",
    "ParameterInfo": "snakepit_nb.orchestrator.registry",
    "Adapter": "snakepit_nb.tools.adapter",
    "tool": "snakepit_nb.tools.adapter",
    "SessionContext": "snakepit_nb.worker.context",
    "SessionFuture": "snakepit_nb.client.futures",
    "as_completed": "snakepit_nb.client.futures",
    "wait": "snakepit_nb.client.futures",
    "progress": "snakepit_nb.notebook.progress",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'snakepit_nb' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext snakepit_nb``: register the ``%snakepit`` magics (cheap, idempotent)."""
    from snakepit_nb.notebook.extension import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext snakepit_nb``: stop what the extension started and remove the magics."""
    from snakepit_nb.notebook.extension import unload_ipython_extension as unload

    unload(ipython)
