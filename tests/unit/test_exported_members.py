"""The public surface of ``snakepit_nb`` is pinned (like httpx's test_exported_members)."""

from __future__ import annotations

import subprocess
import sys

import pytest

import snakepit_nb

EXPECTED = {
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
}


def test_all_is_pinned() -> None:
    assert set(snakepit_nb.__all__) == EXPECTED
    assert len(snakepit_nb.__all__) == len(EXPECTED)


def test_every_exported_name_resolves() -> None:
    for name in snakepit_nb.__all__:
        member = getattr(snakepit_nb, name)
        assert member is not None, name
        if name.startswith("__"):
            continue
        module = getattr(member, "__module__", "")
        assert module.startswith("snakepit_nb"), (name, module)


def test_unknown_attribute_raises_attribute_error() -> None:
    with pytest.raises(AttributeError, match="does_not_exist"):
        getattr(snakepit_nb, "does_not_exist")  # noqa: B009


def test_import_is_light() -> None:
    # A fresh interpreter: importing the package must not pull gRPC, IPython or numpy, and must
    # start no thread (the loop thread starts at the first start()).
    code = (
        "import sys, threading, snakepit_nb;"
        "names = ('grpc', 'IPython', 'numpy', 'snakepit_nb.client.clients');"
        "heavy = [m for m in names if m in sys.modules];"
        "print(heavy, threading.active_count())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout.strip()
    assert out == "[] 1"
