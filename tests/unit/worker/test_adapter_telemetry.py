"""Worker telemetry subscriptions: filters, toggle, sampling, and the bounded buffer."""

from __future__ import annotations

import asyncio

from snakepit_nb.protocol import pb
from snakepit_nb.worker.telemetry import TelemetryEmitter


def _names(events: list[pb.TelemetryEvent]) -> list[str]:
    return [".".join(e.event_parts) for e in events]


async def _drain(batches: object) -> list[pb.TelemetryEvent]:
    iterator = batches.__aiter__()  # type: ignore[attr-defined]
    return list(await asyncio.wait_for(iterator.__anext__(), 1.0))


def test_no_subscriber_costs_nothing_and_events_reach_subscribers() -> None:
    async def go() -> None:
        hub = TelemetryEmitter(asyncio.get_running_loop(), worker_id="w1")
        assert not hub.active
        hub.tool_event("start", tool="t", session_id="s")  # nobody listens: dropped at once
        sub = hub.subscribe()
        hub.tool_event("stop", tool="t", session_id="s", duration_ns=5)
        events = await _drain(sub.batches())
        assert _names(events) == ["snakepit.tool.stop"]
        assert events[0].measurements["duration_ns"].int_value == 5
        assert events[0].metadata["worker_id"] == "w1"
        hub.unsubscribe(sub)
        assert not hub.active

    asyncio.run(go())


def test_toggle_filters_and_sampling() -> None:
    async def go() -> None:
        hub = TelemetryEmitter(asyncio.get_running_loop(), worker_id="w1")
        sub = hub.subscribe()
        sub.apply(pb.TelemetryControl(toggle=pb.TelemetryToggle(enabled=False)))
        hub.emit(["a", "b"], {}, {})
        sub.apply(pb.TelemetryControl(toggle=pb.TelemetryToggle(enabled=True)))
        sub.apply(pb.TelemetryControl(filter=pb.TelemetryEventFilter(allow=["a.*"], deny=["a.x"])))
        for name in (["a", "x"], ["b", "y"], ["a", "y"]):
            hub.emit(name, {"n": 1}, {})
        sub.apply(
            pb.TelemetryControl(
                sampling=pb.TelemetrySamplingUpdate(sampling_rate=0.0, event_patterns=["a.z"])
            )
        )
        hub.emit(["a", "z"], {}, {})  # sampled out
        hub.emit(["a", "w"], {}, {})  # not under the sampling pattern: kept
        assert _names(await _drain(sub.batches())) == ["a.y", "a.w"]

    asyncio.run(go())


def test_a_lagging_subscriber_drops_the_oldest_and_reports_the_count() -> None:
    async def go() -> None:
        hub = TelemetryEmitter(asyncio.get_running_loop(), worker_id="w1", buffer_size=3)
        sub = hub.subscribe()
        for i in range(5):
            hub.emit(["e", str(i)], {}, {})
        events = await _drain(sub.batches())
        assert _names(events) == ["snakepit.telemetry.dropped", "e.2", "e.3", "e.4"]
        assert events[0].measurements["count"].int_value == 2

    asyncio.run(go())


def test_events_from_other_threads_wake_the_subscriber() -> None:
    async def go() -> None:
        loop = asyncio.get_running_loop()
        hub = TelemetryEmitter(loop, worker_id="w1")
        sub = hub.subscribe()
        iterator = sub.batches().__aiter__()
        pending = asyncio.ensure_future(iterator.__anext__())
        await asyncio.sleep(0)
        await loop.run_in_executor(None, lambda: hub.emit(["from", "thread"], {}, {}))
        events = await asyncio.wait_for(pending, 1.0)
        assert _names(events) == ["from.thread"]

    asyncio.run(go())
