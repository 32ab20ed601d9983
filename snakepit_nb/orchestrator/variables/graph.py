"""Dependencies between one session's variables: a change of one reaches watchers of the
variables that depend on it (``dependency_change``). The graph never loops."""

from __future__ import annotations

from collections import deque

__all__ = ["DependencyGraph"]


class DependencyGraph:
    """Edges ``from -> to`` between variable ids, each with a dependency type."""

    def __init__(self) -> None:
        # from-id -> {to-id: dependency type}
        self._edges: dict[str, dict[str, str]] = {}

    def __contains__(self, var_id: object) -> bool:
        return var_id in self._edges

    def has_edge(self, from_id: str, to_id: str) -> bool:
        return to_id in self._edges.get(from_id, {})

    def add(self, from_id: str, to_id: str, dependency_type: str = "") -> None:
        self._edges.setdefault(from_id, {})[to_id] = dependency_type

    def remove_node(self, var_id: str) -> None:
        """Forget a deleted variable and every edge that touches it."""
        self._edges.pop(var_id, None)
        for targets in self._edges.values():
            targets.pop(var_id, None)

    def direct(self, var_id: str) -> list[str]:
        """Ids that depend on ``var_id`` directly."""
        return list(self._edges.get(var_id, {}))

    def downstream(self, var_id: str) -> list[str]:
        """Every id that depends on ``var_id``, directly or not, nearest first, once each."""
        seen: set[str] = set()
        order: list[str] = []
        queue = deque(self._edges.get(var_id, {}))
        while queue:
            dep = queue.popleft()
            if dep in seen:
                continue
            seen.add(dep)
            order.append(dep)
            queue.extend(self._edges.get(dep, {}))
        return order

    def path(self, start: str, goal: str) -> list[str] | None:
        """Ids from ``start`` to ``goal`` following the edges, or None."""
        parents: dict[str, str | None] = {start: None}
        queue = deque([start])
        while queue:
            node = queue.popleft()
            if node == goal:
                path: list[str] = []
                cur: str | None = node
                while cur is not None:
                    path.append(cur)
                    cur = parents[cur]
                return path[::-1]
            for nxt in self._edges.get(node, {}):
                if nxt not in parents:
                    parents[nxt] = node
                    queue.append(nxt)
        return None
