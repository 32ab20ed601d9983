"""Refusals: what the token interceptor refused, and a wait for the first refusal."""

from __future__ import annotations

import asyncio

from snakepit_nb.protocol.auth import Refusals


def test_refusals_count_name_methods_and_wake_a_waiter() -> None:
    async def body() -> tuple[bool, Refusals]:
        refusals = Refusals()
        waiter = asyncio.ensure_future(refusals.wait())
        await asyncio.sleep(0)
        assert not waiter.done()
        refusals.record("/snakepit.bridge.BridgeService/Ping")
        refusals.record("/snakepit.bridge.BridgeService/Ping")
        refusals.record("/snakepit.bridge.BridgeService/Heartbeat")
        await asyncio.wait_for(waiter, 1)
        await asyncio.wait_for(refusals.wait(), 1)  # already refused: returns at once
        return waiter.done(), refusals

    woke, refusals = asyncio.run(body())
    assert woke
    assert refusals.count == 3
    assert refusals.describe() == "3 calls (Ping x2, Heartbeat x1)"


def test_refusals_keep_a_bounded_list_of_methods() -> None:
    refusals = Refusals()
    for i in range(100):
        refusals.record(f"/svc/M{i}")
    assert refusals.count == 100
    assert 0 < len(refusals.methods) <= 32  # a stranger probing many methods costs nothing
