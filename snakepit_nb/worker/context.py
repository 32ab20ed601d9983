"""SessionContext: what a running tool knows about its call, and its way back to the kernel.

A tool receives it by declaring a parameter named ``ctx`` or annotated ``SessionContext``::

    @tool
    def scale(self, ctx: SessionContext, x: float) -> float:
        \"\"\"Multiply x by the session's temperature.\"\"\"
        return x * ctx.vars.get("temperature")

Sync tools run in worker threads and use the blocking methods (``ctx.vars.get``,
``ctx.call_kernel_tool``); async tools use the awaitable ones (``await ctx.vars.aget(...)``,
``await ctx.acall_kernel_tool(...)``).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from snakepit_nb._errors import CancelledError, WorkerUnavailableError
from snakepit_nb._loop import running_on

if TYPE_CHECKING:
    from snakepit_nb.protocol import pb
    from snakepit_nb.worker.link import OrchestratorLink
    from snakepit_nb.worker.telemetry import TelemetryEmitter

__all__ = ["CallControl", "SessionContext"]

_NO_RESULT: Any = object()


class CallControl:
    """The worker's side of one call: cancel it, and collect a streaming tool's final value.

    The invoker keeps it; the tool sees it only through its :class:`SessionContext`
    (``ctx.cancelled``, ``ctx.set_result``).
    """

    __slots__ = ("_result", "cancelled")

    def __init__(self) -> None:
        self.cancelled = threading.Event()
        self._result: Any = _NO_RESULT

    def cancel(self) -> None:
        """Tell the tool its caller gave up (``ctx.cancelled`` turns true)."""
        self.cancelled.set()

    def set_result(self, value: object) -> None:
        self._result = value

    def take_result(self) -> tuple[bool, object]:
        """``(True, value)`` if the tool set a final value, else ``(False, None)``."""
        if self._result is _NO_RESULT:
            return False, None
        return True, self._result


class SessionContext:
    """The context of one tool call (or one batch of calls) in a worker.

    Attributes:
        session_id: the session the call belongs to ("" when the caller named none).
        worker_id: this worker's id (``w1``...).
        tool_name: the tool being run.
        correlation_id: the caller's correlation id, for logs and telemetry.
        metadata: the request's metadata (string keys and values).
    """

    __slots__ = (
        "_control",
        "_link",
        "_loop",
        "_prefetched",
        "_telemetry",
        "_vars",
        "correlation_id",
        "metadata",
        "session_id",
        "started_at",
        "tool_name",
        "worker_id",
    )

    def __init__(
        self,
        *,
        session_id: str,
        worker_id: str,
        tool_name: str,
        correlation_id: str = "",
        metadata: Mapping[str, str] | None = None,
        loop: asyncio.AbstractEventLoop,
        link: OrchestratorLink | None = None,
        telemetry: TelemetryEmitter | None = None,
        prefetched: Sequence[pb.Variable] = (),
        control: CallControl | None = None,
    ) -> None:
        self.session_id = session_id
        self.worker_id = worker_id
        self.tool_name = tool_name
        self.correlation_id = correlation_id
        self.metadata: dict[str, str] = dict(metadata or {})
        self.started_at = time.monotonic()
        self._loop = loop
        self._link = link
        self._telemetry = telemetry
        self._prefetched = list(prefetched)
        self._control = control if control is not None else CallControl()
        self._vars: Any = None
        if link is not None:
            # Bound to the worker's loop: sync tools use it from their thread through it.
            self._vars = link.make_variables(session_id, self._prefetched, loop)

    # ------------------------------------------------------------------ cancellation

    @property
    def cancelled(self) -> bool:
        """True once the caller cancelled the call or its deadline passed.

        Sync tools that run for long should check it now and then and return early; async tools
        are cancelled for them (``asyncio.CancelledError`` at their next ``await``).
        """
        return self._control.cancelled.is_set()

    def raise_if_cancelled(self) -> None:
        """Raise CancelledError if the call was cancelled (a convenient check in loops)."""
        if self._control.cancelled.is_set():
            raise CancelledError(f"tool {self.tool_name!r} was cancelled by its caller")

    def wait_cancelled(self, timeout: float | None = None) -> bool:
        """Block up to ``timeout`` seconds until the call is cancelled; True if it was.

        A sync tool can use it as an interruptible ``time.sleep``.
        """
        return self._control.cancelled.wait(timeout)

    # ------------------------------------------------------------------ variables

    @property
    def vars(self) -> Any:
        """The session's variables (``get``/``set`` and ``aget``/``aset``...).

        Variables named in the tool's ``required_variables`` arrived with the call and are
        read without a round trip.
        """
        if self._vars is None:
            raise WorkerUnavailableError(
                "session variables need the orchestrator, and this worker was started without "
                "--orchestrator-address; start workers through sp.start()"
            )
        return self._vars

    # ------------------------------------------------------------------ kernel tools

    async def acall_kernel_tool(self, name: str, /, **kwargs: object) -> object:
        """Call a tool defined in the notebook kernel (``%%snakepit_tool --kernel``) and await it.

        Raises RemoteToolError if the kernel tool raised, NotFoundError if there is none.
        """
        link = self._require_link()
        return await link.execute_kernel_tool(
            name, kwargs, session_id=self.session_id, correlation_id=self.correlation_id
        )

    def call_kernel_tool(self, name: str, /, **kwargs: object) -> object:
        """Blocking twin of :meth:`acall_kernel_tool`, for sync tools (worker threads)."""
        self._require_link()
        if running_on(self._loop):
            raise RuntimeError(
                "ctx.call_kernel_tool() blocks, and this async tool runs on the worker's event "
                "loop; use `await ctx.acall_kernel_tool(...)` instead"
            )
        future = asyncio.run_coroutine_threadsafe(
            self.acall_kernel_tool(name, **kwargs), self._loop
        )
        return future.result()

    def _require_link(self) -> OrchestratorLink:
        if self._link is None:
            raise WorkerUnavailableError(
                "kernel tools need the orchestrator, and this worker was started without "
                "--orchestrator-address; start workers through sp.start()"
            )
        return self._link

    # ------------------------------------------------------------------ telemetry, results

    def emit_telemetry(
        self,
        event: str | Sequence[str],
        measurements: Mapping[str, int | float | str] | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        """Send a telemetry event (``"myapp.batch.done"`` or its parts) to subscribers.

        Cheap when nobody subscribed; safe from any thread. The tool's name and session are
        added to the metadata.
        """
        if self._telemetry is None:
            return
        parts = event.split(".") if isinstance(event, str) else list(event)
        meta = {"tool": self.tool_name, "session_id": self.session_id, "worker_id": self.worker_id}
        if metadata:
            meta.update(metadata)
        self._telemetry.emit(parts, measurements or {}, meta, correlation_id=self.correlation_id)

    def set_result(self, value: object) -> None:
        """Set a streaming tool's final value (async generators cannot ``return`` one)."""
        self._control.set_result(value)

    def __repr__(self) -> str:
        return (
            f"SessionContext(tool={self.tool_name!r}, session_id={self.session_id!r}, "
            f"worker_id={self.worker_id!r}, cancelled={self.cancelled})"
        )
