"""The seam between the pool and its helpers: what calls, maps, streams and definitions need.

The pool's helpers (:mod:`calls`, :mod:`batches`, :mod:`streams`, :mod:`definitions`) are
written against :class:`PoolHost`, never against :class:`~snakepit_nb.orchestrator.pool.pool.Pool`
itself (httpx's ``_transports/base.py`` is the model). The pool is the one implementation; tests
drive each helper through a small fake host with fake workers.

A helper that takes a worker slot from :attr:`PoolHost.dispatcher` gives it back through
:meth:`PoolHost.settle`, which also counts the calls and errors on the slot and tells the
supervisor (recycling after N calls, draining).
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from snakepit_nb.orchestrator.config import Config
    from snakepit_nb.orchestrator.pool.dispatch import Dispatcher
    from snakepit_nb.orchestrator.pool.handle import WorkerGone, WorkerHandle
    from snakepit_nb.orchestrator.registry import ToolRegistry

__all__ = ["PoolHost"]


class PoolHost(Protocol):
    """What the pool offers its helpers. All of it runs on the loop thread."""

    @property
    def config(self) -> Config: ...

    @property
    def handles(self) -> Sequence[WorkerHandle]:
        """Every worker slot, in id order (``w1``, ``w2``...)."""

    @property
    def dispatcher(self) -> Dispatcher:
        """Hands out worker slots: ``await dispatcher.acquire(session, affinity)``."""

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The gRPC metadata of every RPC to a worker (the runtime token)."""

    @property
    def registry(self) -> ToolRegistry: ...

    @property
    def lane_executor(self) -> concurrent.futures.Executor:
        """Threads for lane calls that start on the loop."""

    @property
    def pickles(self) -> bool:
        """Whether values may travel pickled (our own workers, the token-checked channel)."""

    def settle(
        self, handle: WorkerHandle, *, calls: int = 1, errors: int = 0, is_async: bool = False
    ) -> None:
        """A call (or ``calls`` items of a batch) on ``handle`` is over: free its slot."""

    async def gone_reason(self, handle: WorkerHandle, wait: float = 2.0) -> WorkerGone | None:
        """Why ``handle``'s current process went away, waiting up to ``wait`` s to learn it;
        None while it is still alive."""

    def is_idempotent(self, tool: str) -> bool:
        """Whether ``tool`` may run again after its worker died mid-call."""

    def is_async_tool(self, tool: str) -> bool:
        """Whether calls of ``tool`` take an async slot (the tool runs on the worker's loop)."""

    async def call(
        self,
        session_id: str,
        tool: str,
        kwargs: Mapping[str, object],
        *,
        timeout: float | None,  # noqa: ASYNC109 - the pool's contract
    ) -> object:
        """One plain call of ``tool`` (the fallback of helpers for foreign workers)."""
