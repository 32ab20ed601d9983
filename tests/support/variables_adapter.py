"""A tool that declares ``required_variables`` (imported by workers via PYTHONPATH)."""

from __future__ import annotations

from typing import Any

from snakepit_nb.worker import Adapter, SessionContext, tool


class VariablesTestAdapter(Adapter):
    @tool(required_variables=["temperature"])
    def scaled(self, ctx: SessionContext, x: float) -> dict[str, Any]:
        """Reads ``temperature`` twice: from the call's snapshot, then from the orchestrator."""
        snapshot_before = len(ctx.vars._snapshot)
        first = ctx.vars.get("temperature")
        snapshot_after = len(ctx.vars._snapshot)
        ctx.vars.set("temperature", first + 1)
        second = ctx.vars.get("temperature")
        return {
            "value": x * first,
            "snapshot": [snapshot_before, snapshot_after],
            "second": second,
        }
