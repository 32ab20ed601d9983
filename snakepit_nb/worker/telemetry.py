"""Worker telemetry: tool start/stop/exception events for StreamTelemetry subscribers.

The orchestrator opens ``StreamTelemetry`` and steers it with ``TelemetryControl`` messages
(toggle, sampling rate for event patterns, allow/deny filters). Each subscriber has a bounded
buffer; when it lags, the oldest events are dropped and counted, and a
``snakepit.telemetry.dropped`` event reports how many. With no subscriber, ``emit`` costs one
attribute check, so tools pay nothing for telemetry nobody reads.
"""

from __future__ import annotations

import asyncio
import collections
import fnmatch
import random
import threading
import time
from collections.abc import AsyncIterator, Mapping, Sequence

from snakepit_nb._loop import set_event
from snakepit_nb.protocol import pb

__all__ = ["TelemetryEmitter", "TelemetrySubscription"]

DEFAULT_BUFFER = 2048
_MAX_BATCH = 512


def _value(v: int | float | str) -> pb.TelemetryValue:
    if isinstance(v, bool):
        return pb.TelemetryValue(int_value=int(v))
    if isinstance(v, int):
        return pb.TelemetryValue(int_value=v)
    if isinstance(v, float):
        return pb.TelemetryValue(float_value=v)
    return pb.TelemetryValue(string_value=str(v))


class TelemetrySubscription:
    """One StreamTelemetry stream: its settings and its bounded buffer."""

    def __init__(self, loop: asyncio.AbstractEventLoop, buffer_size: int) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._buffer: collections.deque[pb.TelemetryEvent] = collections.deque()
        self._size = buffer_size
        self._wake = asyncio.Event()
        self._waiting = False
        self.dropped = 0
        self._reported_drops = 0
        self.enabled = True
        self.sampling_rate = 1.0
        self.sampling_patterns: list[str] = []
        self.allow: list[str] = []
        self.deny: list[str] = []

    # ------------------------------------------------------------------ control

    def apply(self, control: pb.TelemetryControl) -> None:
        which = control.WhichOneof("control")
        if which == "toggle":
            self.enabled = control.toggle.enabled
        elif which == "sampling":
            rate = control.sampling.sampling_rate
            self.sampling_rate = min(1.0, max(0.0, rate))
            self.sampling_patterns = list(control.sampling.event_patterns)
        elif which == "filter":
            self.allow = list(control.filter.allow)
            self.deny = list(control.filter.deny)

    def wants(self, name: str) -> bool:
        if not self.enabled:
            return False
        if self.allow and not any(fnmatch.fnmatchcase(name, p) for p in self.allow):
            return False
        if self.deny and any(fnmatch.fnmatchcase(name, p) for p in self.deny):
            return False
        if self.sampling_rate < 1.0 and (
            not self.sampling_patterns
            or any(fnmatch.fnmatchcase(name, p) for p in self.sampling_patterns)
        ):
            return random.random() < self.sampling_rate
        return True

    # ------------------------------------------------------------------ buffer

    def offer(self, name: str, event: pb.TelemetryEvent) -> None:
        """Queue ``event`` if the filters want it (any thread)."""
        if not self.wants(name):
            return
        with self._lock:
            if len(self._buffer) >= self._size:
                self._buffer.popleft()
                self.dropped += 1
            self._buffer.append(event)
            wake = self._waiting
            self._waiting = False
        if wake:
            set_event(self._loop, self._wake)

    async def batches(self) -> AsyncIterator[list[pb.TelemetryEvent]]:
        """Buffered events, in order, as they arrive (a drop report first when some were lost)."""
        while True:
            with self._lock:
                events = [self._buffer.popleft() for _ in range(min(len(self._buffer), _MAX_BATCH))]
                dropped = self.dropped - self._reported_drops
                self._reported_drops = self.dropped
                if not events and not dropped:
                    self._waiting = True
                    self._wake.clear()
            if dropped:
                events.insert(0, _dropped_event(dropped, self.dropped))
            if events:
                yield events
                continue
            await self._wake.wait()


def _dropped_event(count: int, total: int) -> pb.TelemetryEvent:
    return pb.TelemetryEvent(
        event_parts=["snakepit", "telemetry", "dropped"],
        measurements={
            "count": pb.TelemetryValue(int_value=count),
            "total": pb.TelemetryValue(int_value=total),
        },
        timestamp_ns=time.time_ns(),
    )


class TelemetryEmitter:
    """Emits the worker's telemetry events to its StreamTelemetry subscribers (the orchestrator's
    ``TelemetryHub`` fans them out on the kernel side)."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, *, worker_id: str, buffer_size: int = DEFAULT_BUFFER
    ) -> None:
        self._loop = loop
        self.worker_id = worker_id
        self._buffer_size = buffer_size
        self._subscribers: tuple[TelemetrySubscription, ...] = ()
        self._lock = threading.Lock()

    @property
    def active(self) -> bool:
        return bool(self._subscribers)

    def subscribe(self) -> TelemetrySubscription:
        sub = TelemetrySubscription(self._loop, self._buffer_size)
        with self._lock:
            self._subscribers = (*self._subscribers, sub)
        return sub

    def unsubscribe(self, sub: TelemetrySubscription) -> None:
        with self._lock:
            self._subscribers = tuple(s for s in self._subscribers if s is not sub)

    def emit(
        self,
        parts: Sequence[str],
        measurements: Mapping[str, int | float | str],
        metadata: Mapping[str, str],
        *,
        correlation_id: str = "",
    ) -> None:
        """Send one event to every subscriber whose settings want it (safe from any thread)."""
        subscribers = self._subscribers
        if not subscribers:
            return
        name = ".".join(parts)
        event = pb.TelemetryEvent(
            event_parts=list(parts),
            measurements={k: _value(v) for k, v in measurements.items()},
            metadata={k: str(v) for k, v in metadata.items()},
            timestamp_ns=time.time_ns(),
            correlation_id=correlation_id,
        )
        for sub in subscribers:
            sub.offer(name, event)

    def tool_event(
        self,
        phase: str,
        *,
        tool: str,
        session_id: str,
        correlation_id: str = "",
        duration_ns: int | None = None,
        extra: Mapping[str, str] | None = None,
        count: int | None = None,
    ) -> None:
        """``snakepit.tool.<phase>`` (start, stop, exception) with the standard fields."""
        if not self._subscribers:
            return
        measurements: dict[str, int | float | str] = {"system_time": time.time_ns()}
        if duration_ns is not None:
            measurements["duration_ns"] = duration_ns
        if count is not None:
            measurements["count"] = count
        metadata = {"tool": tool, "session_id": session_id, "worker_id": self.worker_id}
        if extra:
            metadata.update(extra)
        self.emit(
            ("snakepit", "tool", phase), measurements, metadata, correlation_id=correlation_id
        )
