"""Fan-out of worker telemetry events to whoever listens (widgets, logs, tests).

The pool feeds events in with ``publish`` on the loop thread. Each subscriber has a bounded
buffer: a slow subscriber loses its oldest events (and can see how many), it never slows the
pool or grows memory.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["TelemetryEvent", "TelemetryHub", "TelemetrySubscription"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TelemetryEvent:
    """One event from a worker: ``("tool", "start")`` with measurements and metadata."""

    event: tuple[str, ...]
    measurements: dict[str, int | float | str] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    timestamp_ns: int = 0
    correlation_id: str = ""
    worker_id: str = ""

    @property
    def name(self) -> str:
        return ".".join(self.event)

    @classmethod
    def from_pb(cls, message: Any, *, worker_id: str = "") -> TelemetryEvent:
        """From a ``pb.TelemetryEvent``."""
        measurements: dict[str, int | float | str] = {}
        for key, value in message.measurements.items():
            kind = value.WhichOneof("value")
            if kind is not None:
                measurements[key] = getattr(value, kind)
        metadata = dict(message.metadata)
        return cls(
            event=tuple(message.event_parts),
            measurements=measurements,
            metadata=metadata,
            timestamp_ns=message.timestamp_ns,
            correlation_id=message.correlation_id,
            worker_id=worker_id or metadata.get("worker_id", ""),
        )


class TelemetrySubscription:
    """An async iterator over events; ``dropped`` counts the events it lost by lagging."""

    def __init__(self, hub: TelemetryHub, maxsize: int, prefix: tuple[str, ...]) -> None:
        self._hub = hub
        self._buffer: collections.deque[TelemetryEvent] = collections.deque(maxlen=maxsize)
        self._prefix = prefix
        self._wakeup = asyncio.Event()
        self._closed = False
        self.dropped = 0

    def _offer(self, event: TelemetryEvent) -> None:
        if self._prefix and event.event[: len(self._prefix)] != self._prefix:
            return
        if len(self._buffer) == self._buffer.maxlen:
            self.dropped += 1
        self._buffer.append(event)
        self._wakeup.set()

    def __aiter__(self) -> AsyncIterator[TelemetryEvent]:
        return self

    async def __anext__(self) -> TelemetryEvent:
        while not self._buffer:
            if self._closed:
                raise StopAsyncIteration
            self._wakeup.clear()
            await self._wakeup.wait()
        return self._buffer.popleft()

    def drain(self) -> list[TelemetryEvent]:
        """Everything buffered now, without waiting."""
        events = list(self._buffer)
        self._buffer.clear()
        return events

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._hub._unsubscribe(self)
            self._wakeup.set()


Source = Callable[[Callable[[TelemetryEvent], None]], Callable[[], None]]


class TelemetryHub:
    """Receives events (``publish``) and hands them to subscribers and listeners.

    ``attach(source)`` names where events come from: ``source(publish)`` starts the flow and
    returns the function that stops it. The hub starts it at the first subscriber or listener
    and stops it after the last, so workers send telemetry only while somebody listens.
    """

    def __init__(self) -> None:
        self._subscriptions: list[TelemetrySubscription] = []
        self._listeners: list[Callable[[TelemetryEvent], None]] = []
        self._source: Source | None = None
        self._stop_source: Callable[[], None] | None = None
        self.published = 0

    def attach(self, source: Source) -> None:
        self._source = source
        self._update_source()

    def _update_source(self) -> None:
        wanted = bool(self._subscriptions or self._listeners)
        if wanted and self._stop_source is None and self._source is not None:
            self._stop_source = self._source(self.publish)
        elif not wanted and self._stop_source is not None:
            stop, self._stop_source = self._stop_source, None
            stop()

    def publish(self, event: TelemetryEvent) -> None:
        self.published += 1
        for sub in self._subscriptions:
            sub._offer(event)
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:  # one bad listener must not starve the others
                log.exception("telemetry listener failed")

    def subscribe(
        self, *, maxsize: int = 1000, prefix: tuple[str, ...] = ()
    ) -> TelemetrySubscription:
        """A new subscription (call on the loop thread); ``prefix`` filters event names."""
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        sub = TelemetrySubscription(self, maxsize, prefix)
        self._subscriptions.append(sub)
        self._update_source()
        return sub

    def add_listener(self, callback: Callable[[TelemetryEvent], None]) -> Callable[[], None]:
        """Call ``callback(event)`` on the loop thread for each event; returns the remover."""
        self._listeners.append(callback)
        self._update_source()

        def remove() -> None:
            if callback in self._listeners:
                self._listeners.remove(callback)
                self._update_source()

        return remove

    def close(self) -> None:
        for sub in list(self._subscriptions):
            sub.close()
        self._listeners.clear()
        self._update_source()
        self._source = None

    def _unsubscribe(self, sub: TelemetrySubscription) -> None:
        if sub in self._subscriptions:
            self._subscriptions.remove(sub)
            self._update_source()
