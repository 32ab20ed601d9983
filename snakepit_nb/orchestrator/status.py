"""What ``client.status()`` reports: a snapshot of one runtime."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from snakepit_nb.orchestrator.sessions import SessionStats

__all__ = ["ClientStatus"]


@dataclass(frozen=True)
class ClientStatus:
    """What ``client.status()`` reports: the pool's workers, the queue, sessions and tools."""

    run_id: str
    address: str
    workers: tuple[Any, ...]  # WorkerStatus snapshots from the pool
    queue_length: int
    sessions: SessionStats
    tools: int
    kernel_tools: int
    pool: Any  # the pool's own PoolStatus, with everything it reports

    def _repr_html_(self) -> str:
        from snakepit_nb.display.reprs import pool_status_html

        return pool_status_html(self, live=False)

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(str(self))

    def __repr__(self) -> str:
        return (
            f"<ClientStatus {self.run_id}: {len(self.workers)} workers, "
            f"queue {self.queue_length}, {self.tools} tools>"
        )

    def __str__(self) -> str:
        lines = [
            f"snakepit_nb runtime {self.run_id} on {self.address}: {len(self.workers)} workers, "
            f"queue {self.queue_length}, {self.sessions.active} sessions, {self.tools} tools "
            f"({self.kernel_tools} in the kernel)",
            f"{'worker':<8} {'pid':>8} {'state':<11} {'in-flight':>9} {'calls':>8} "
            f"{'errors':>6} {'restarts':>8} {'rss MiB':>8}",
        ]
        for w in self.workers:
            rss = getattr(w, "rss", None)
            lines.append(
                f"{getattr(w, 'worker_id', '?'):<8} {getattr(w, 'pid', None) or '-':>8} "
                f"{getattr(w, 'state', '?')!s:<11} {getattr(w, 'in_flight', 0):>9} "
                f"{getattr(w, 'calls', 0):>8} {getattr(w, 'errors', 0):>6} "
                f"{getattr(w, 'restarts', 0):>8} "
                f"{(f'{rss / 2**20:.0f}' if rss else '-'):>8}"
            )
        return "\n".join(lines)
