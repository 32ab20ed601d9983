"""Settings of one snakepit_nb runtime: everything ``sp.start(...)`` accepts.

``Config`` is frozen and validated once, in ``__post_init__``; a bad value raises
``ConfigurationError`` saying what to pass instead, and nothing is started.

>>> Config(workers=4, call_timeout=30.0).workers
4
>>> Config.from_kwargs(worker=2)
Traceback (most recent call last):
ConfigurationError: sp.start() got an unknown setting 'worker'; did you mean 'workers'?
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import sys
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from snakepit_nb._errors import ConfigurationError

__all__ = ["DEFAULT_ADAPTER", "MIB", "Config"]

MIB = 1024 * 1024
DEFAULT_ADAPTER = "snakepit_nb.adapters.showcase:ShowcaseAdapter"

# "pkg.mod:Class" (ours) or "pkg.mod.Class" (the published worker's spelling).
_ADAPTER_RE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*([:.][A-Za-z_][\w]*)$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TRANSPORTS = ("tcp", "unix")


def _empty_env() -> Mapping[str, str]:
    return types.MappingProxyType({})


@dataclass(frozen=True)
class Config:
    """Validated settings of a runtime (an orchestrator and its pool of workers).

    Pass these as keyword arguments to ``sp.start()``; every one has a sensible default.

    Workers and what they run:
        workers: number of worker processes (1..256).
        adapter: the adapter class the workers serve, ``"pkg.mod:Class"``.
        python: interpreter the workers run under (default: the kernel's).
        worker_command: run another worker program instead of ours (e.g. the published
            Snakepit ``grpc_server.py``); the launch-contract flags are appended.
        env: extra environment variables for the workers.
        cwd: working directory of the workers (default: the kernel's).
        capacity: concurrent calls of sync tools per worker (they run in worker threads;
            the default 1 means a worker never runs two of them at once).
        async_capacity: concurrent calls of async tools per worker (coroutine functions and
            async generators), on the worker's event loop; sync tools are limited by
            ``capacity``.

    Time limits (seconds):
        startup_timeout: how long a worker may take to become ready.
        call_timeout: default deadline of a call (None: no deadline).
        session_ttl: idle time after which a session expires.
        heartbeat_interval, heartbeat_misses: a worker missing this many heartbeats in a
            row is considered hung and replaced.
        cancel_grace: after a call is cancelled (its timeout passed, the cell was
            interrupted), how long its worker may take to confirm that the tool stopped; a
            worker still running it then is killed and replaced. Until then that worker
            takes no new calls, which go to the other workers.
        max_restarts, restart_window: a worker slot restarting more than ``max_restarts``
            times within ``restart_window`` seconds is given up (``WorkerFailedError``).
        recycle_after_calls, recycle_after_seconds, recycle_above_rss: replace a worker after
            this many calls, this age, or above this resident memory (bytes).

    Limits:
        max_queue: calls waiting for a free worker before ``PoolSaturatedError``.
        max_sessions: sessions alive at once before ``ResourceExhaustedError``.
        max_message_bytes: largest gRPC message between the pool and its workers.
        max_callback_bytes: largest message a worker may send to the orchestrator (variable
            writes, kernel-tool calls); kept smaller so an oversize write is refused before
            it costs the kernel much memory.
        max_variable_bytes: largest encoded value of one session variable.
        max_variables: variables per session.
        max_variable_history: versions kept per variable (oldest dropped first).
        kernel_tool_threads: threads that run synchronous kernel tools.

    Worker output and reloading:
        worker_output: where what tools print (stdout, stderr, ``logging`` at WARNING and
            above) goes: ``"cell"`` (the calling cell, or ``sys.stdout``/``sys.stderr`` with a
            ``[w1]`` prefix in plain Python; also kept for ``client.logs()``), ``"log"`` (only
            kept for ``client.logs()``) or ``"off"`` (not captured).
        output_lines: lines of output one call shows in its cell; the rest are kept for
            ``client.logs()`` and a notice says how many were not shown.
        log_lines: lines of output kept per worker slot for ``client.logs()`` (across the
            slot's restarts).
        autoreload: replace the workers one at a time (``client.reload()``) when the source
            file of the adapter's module changes.

    Transport and security:
        transport: ``"tcp"`` (127.0.0.1, a free port) or ``"unix"`` (sockets in a private
            0700 directory).
        auth: check the per-runtime token on every RPC. ``False`` is needed only for a
            foreign worker that cannot send the token; anything on this machine can then
            call the orchestrator.
        state: path of a sqlite file where session variables persist (None: in memory).
    """

    workers: int = 2
    adapter: str = DEFAULT_ADAPTER
    python: str = field(default_factory=lambda: sys.executable)
    worker_command: Sequence[str] | None = None
    env: Mapping[str, str] = field(default_factory=_empty_env)
    cwd: str | None = None
    startup_timeout: float = 30.0
    call_timeout: float | None = None
    max_queue: int = 1024
    capacity: int = 1
    async_capacity: int = 64
    session_ttl: float = 3600.0
    max_sessions: int = 10_000
    state: str | None = None
    transport: str = "tcp"
    heartbeat_interval: float = 1.0
    heartbeat_misses: int = 3
    cancel_grace: float = 3.0
    max_restarts: int = 3
    restart_window: float = 5.0
    max_message_bytes: int = 100 * MIB
    max_callback_bytes: int = 16 * MIB
    max_variable_bytes: int = 10 * MIB
    max_variables: int = 10_000
    max_variable_history: int = 1_000
    recycle_after_calls: int | None = None
    recycle_after_seconds: float | None = None
    recycle_above_rss: int | None = None
    kernel_tool_threads: int = 4
    auth: bool = True
    worker_output: str = "cell"
    output_lines: int = 1000
    log_lines: int = 2000
    autoreload: bool = False

    def __post_init__(self) -> None:
        self._check_int("workers", self.workers, 1, 256)
        self._check_int("capacity", self.capacity, 1, 10_000)
        self._check_int("async_capacity", self.async_capacity, 1, 10_000)
        self._check_int("max_queue", self.max_queue, 0, 10_000_000)
        self._check_int("max_sessions", self.max_sessions, 1, 10_000_000)
        self._check_int("heartbeat_misses", self.heartbeat_misses, 1, 1000)
        self._check_int("max_restarts", self.max_restarts, 0, 1000)
        self._check_int("kernel_tool_threads", self.kernel_tool_threads, 1, 256)
        self._check_int("max_message_bytes", self.max_message_bytes, 1024, 2**31 - 1)
        self._check_int("max_callback_bytes", self.max_callback_bytes, 1024, 2**31 - 1)
        self._check_int("max_variable_bytes", self.max_variable_bytes, 1, 2**31 - 1)
        self._check_int("max_variables", self.max_variables, 1, 10_000_000)
        self._check_int("max_variable_history", self.max_variable_history, 1, 10_000_000)
        self._check_int("output_lines", self.output_lines, 0, 10_000_000)
        self._check_int("log_lines", self.log_lines, 1, 1_000_000)
        if self.worker_output not in ("cell", "log", "off"):
            raise ConfigurationError(
                f"worker_output must be 'cell', 'log' or 'off', not {self.worker_output!r}"
            )
        if not isinstance(self.autoreload, bool):
            raise ConfigurationError(f"autoreload must be True or False, not {self.autoreload!r}")
        if self.max_variable_bytes + 64 * 1024 > self.max_callback_bytes:
            raise ConfigurationError(
                f"max_variable_bytes={self.max_variable_bytes} does not fit in "
                f"max_callback_bytes={self.max_callback_bytes}; raise max_callback_bytes to at "
                "least max_variable_bytes + 64 KiB so workers can write such values"
            )
        self._check_seconds("startup_timeout", self.startup_timeout)
        self._check_seconds("session_ttl", self.session_ttl)
        self._check_seconds("heartbeat_interval", self.heartbeat_interval)
        self._check_seconds("cancel_grace", self.cancel_grace)
        self._check_seconds("restart_window", self.restart_window)
        self._check_seconds("call_timeout", self.call_timeout, optional=True)
        self._check_seconds("recycle_after_seconds", self.recycle_after_seconds, optional=True)
        if self.recycle_after_calls is not None:
            self._check_int("recycle_after_calls", self.recycle_after_calls, 1, 2**62)
        if self.recycle_above_rss is not None:
            self._check_int("recycle_above_rss", self.recycle_above_rss, 1 * MIB, 2**62)
        self._check_adapter()
        self._check_str("python", self.python)
        if self.cwd is not None:
            self._check_str("cwd", self.cwd)
        if self.state is not None:
            self._check_str("state", self.state)
        if self.transport not in _TRANSPORTS:
            raise ConfigurationError(
                f"transport={self.transport!r} is not supported; pass transport='tcp' "
                "(loopback) or transport='unix' (sockets in a private directory)"
            )
        if not isinstance(self.auth, bool):
            raise ConfigurationError(f"auth must be True or False, not {self.auth!r}")
        object.__setattr__(self, "worker_command", self._clean_command())
        object.__setattr__(self, "env", self._clean_env())

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> Config:
        """Build from ``sp.start(**kwargs)``; unknown names get a did-you-mean."""
        known = {f.name for f in dataclasses.fields(cls)}
        for key in kwargs:
            if key not in known:
                close = difflib.get_close_matches(key, sorted(known), n=1)
                hint = (
                    f"; did you mean {close[0]!r}?"
                    if close
                    else (f"; known settings: {', '.join(sorted(known))}")
                )
                raise ConfigurationError(f"sp.start() got an unknown setting {key!r}{hint}")
        return cls(**kwargs)

    def replace(self, **changes: Any) -> Config:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ checks

    @staticmethod
    def _check_int(name: str, value: object, low: int, high: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigurationError(
                f"{name} must be an integer, not {type(value).__name__} {value!r}; "
                f"pass a whole number between {low} and {high}"
            )
        if not low <= value <= high:
            raise ConfigurationError(
                f"{name}={value} is out of range; pass a whole number between {low} and {high}"
            )

    @staticmethod
    def _check_seconds(name: str, value: object, *, optional: bool = False) -> None:
        if value is None and optional:
            return
        if isinstance(value, bool) or not isinstance(value, int | float):
            none = " or None" if optional else ""
            raise ConfigurationError(
                f"{name} must be a number of seconds{none}, not {type(value).__name__} {value!r}"
            )
        if not math.isfinite(value) or value <= 0:
            none = " (or None for no limit)" if optional else ""
            raise ConfigurationError(
                f"{name}={value!r} is not usable; pass a positive, finite number of seconds{none}"
            )

    @staticmethod
    def _check_str(name: str, value: object) -> None:
        if not isinstance(value, str) or not value:
            raise ConfigurationError(f"{name} must be a non-empty string, not {value!r}")

    def _check_adapter(self) -> None:
        if not isinstance(self.adapter, str) or not _ADAPTER_RE.match(self.adapter):
            raise ConfigurationError(
                f"adapter={self.adapter!r} is not an importable class path; pass "
                f"'package.module:ClassName', e.g. adapter={DEFAULT_ADAPTER!r}"
            )

    def _clean_command(self) -> tuple[str, ...] | None:
        command = self.worker_command
        if command is None:
            return None
        if isinstance(command, str | bytes) or not isinstance(command, Sequence):
            raise ConfigurationError(
                f"worker_command must be a list of strings (argv), not {command!r}; e.g. "
                "worker_command=['python', 'grpc_server.py']"
            )
        if not command or not all(isinstance(part, str) and part for part in command):
            raise ConfigurationError(
                "worker_command must be a non-empty list of non-empty strings, e.g. "
                "worker_command=['python', 'grpc_server.py']"
            )
        return tuple(command)

    def _clean_env(self) -> Mapping[str, str]:
        env = self.env
        if not isinstance(env, Mapping):
            raise ConfigurationError(
                f"env must be a mapping of names to strings, not {type(env).__name__}; "
                "e.g. env={'OMP_NUM_THREADS': '1'}"
            )
        clean: dict[str, str] = {}
        for key, value in env.items():
            if not isinstance(key, str) or not _ENV_NAME_RE.match(key):
                raise ConfigurationError(
                    f"env key {key!r} is not a valid environment variable name; use letters, "
                    "digits and underscores"
                )
            if not isinstance(value, str):
                raise ConfigurationError(
                    f"env[{key!r}] must be a string, not {type(value).__name__}; "
                    f"pass env={{{key!r}: {str(value)!r}}}"
                )
            if "\0" in value:
                raise ConfigurationError(f"env[{key!r}] contains a NUL character")
            if key == "SNAKEPIT_NB_TOKEN":
                raise ConfigurationError(
                    "env may not set SNAKEPIT_NB_TOKEN: the runtime makes a fresh token itself; "
                    "pass auth=False to run a worker that cannot send it"
                )
            clean[key] = value
        return types.MappingProxyType(clean)
