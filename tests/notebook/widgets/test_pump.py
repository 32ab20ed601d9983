"""The UI pump and the live views, fed by small real producers (no worker processes).

Widget comms are replaced by recording comms (ipywidgets' own test trick) so every message a
widget would send to the browser is counted.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import comm
import pytest

from snakepit_nb._errors import VersionConflictError
from snakepit_nb._loop import get_loop_thread
from snakepit_nb.notebook.widgets.pump import UIPump
from snakepit_nb.notebook.widgets.stream import StreamHandle, StreamView, Tail
from snakepit_nb.notebook.widgets.watch import WatchView

pytestmark = pytest.mark.notebook


class RecordingComm:
    kernel = "present"

    def __init__(self, **kwargs: Any) -> None:
        self.comm_id = f"c{id(self)}"
        self.sent: list[tuple[float, dict[str, Any]]] = []
        self.lock = threading.Lock()
        ALL.append(self)

    def open(self, *args: Any, **kwargs: Any) -> None:
        pass

    def on_msg(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self, *args: Any, **kwargs: Any) -> None:
        pass

    def send(self, data: Any = None, buffers: Any = None, **kwargs: Any) -> None:
        with self.lock:
            self.sent.append((time.monotonic(), data))


ALL: list[RecordingComm] = []


@pytest.fixture
def comms(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[RecordingComm]]:
    ALL.clear()
    monkeypatch.setattr(comm, "create_comm", RecordingComm)
    yield ALL
    ALL.clear()


def sent_times(comms: list[RecordingComm]) -> list[float]:
    return sorted(t for c in comms for t, _ in c.sent)


def max_per_second(times: list[float]) -> int:
    best = 0
    j = 0
    for i, t in enumerate(times):
        while times[j] < t - 1.0:
            j += 1
        best = max(best, i - j + 1)
    return best


class FakeStream:
    """A real async producer: ``n`` chunks in batches, with a return value."""

    def __init__(self, n: int, *, per_batch: int = 100, delay: float = 0.001, result: Any = None):
        self.n, self.per_batch, self.delay = n, per_batch, delay
        self.result = None
        self._final = result
        self.chunks: list[object] = []
        self.closed = False

    async def _gen(self) -> AsyncIterator[object]:
        for start in range(0, self.n, self.per_batch):
            batch = [
                {"i": i, "progress": (i + 1) / self.n}
                for i in range(start, min(self.n, start + self.per_batch))
            ]
            self.chunks.extend(batch)
            for chunk in batch:
                yield chunk
            await asyncio.sleep(self.delay)
        self.result = self._final

    def __aiter__(self) -> AsyncIterator[object]:
        return self._gen()

    async def aclose(self) -> None:
        self.closed = True


def start_stream(pump: UIPump, source: Any) -> tuple[StreamHandle, StreamView]:
    loop_thread = get_loop_thread()
    handle = StreamHandle("count", {"n": 1}, session_id="s", loop_thread=loop_thread)
    view = StreamView(handle, pump)

    async def open_stream() -> Any:
        return source

    handle.start(open_stream)
    pump.add(view)
    return handle, view


def test_a_10k_chunk_stream_is_coalesced_and_ends_with_the_full_value(comms):
    pump = UIPump(hz=10, budget=50)
    source = FakeStream(10_000, per_batch=50, delay=0.002, result="all done")
    handle, view = start_stream(pump, source)
    handle.wait(30)
    pump.wait_idle(10)
    times = sent_times(comms)
    assert handle.chunks == source.chunks
    assert len(handle.chunks) == 10_000
    assert handle.value == "all done"
    # At most ~one render per tick, a few widgets each: never one message per chunk.
    assert max_per_second(times) <= 50
    assert 3 <= len(times) < 300
    assert "all done" in view.result.value
    assert "snakepit-stream-value" in view.result.value
    assert "10,000 chunks" in view.header.value
    assert "done" in view.header.value
    assert "width:100.0%" in view.header.value  # the progress bar reached the end


def test_many_live_views_share_the_message_budget(comms):
    pump = UIPump(hz=10, budget=50)
    handles = [
        start_stream(pump, FakeStream(4000, per_batch=10, delay=0.005))[0] for _ in range(12)
    ]
    for h in handles:
        h.wait(60)
    pump.wait_idle(20)
    times = sent_times(comms)
    assert all(len(h.chunks) == 4000 for h in handles)
    # Widget creation (comm_open) is not counted here: only updates are recorded.
    assert max_per_second(times) <= 55, max_per_second(times)


def test_the_tail_is_bounded_and_text_chunks_flow_together():
    tail = Tail(lines=3)
    for word in ["he", "llo\nwor", "ld\n", "a\nb\nc\nd"]:
        tail.add(word)
    assert tail.text() == "b\nc\nd"
    assert tail.hidden() == 3  # hello, world, a
    tail.add({"k": 1})
    assert tail.text().splitlines()[-1] == "{'k': 1}"


def test_a_failing_stream_shows_the_error_and_wait_raises_it(comms):
    class Boom(FakeStream):
        async def _gen(self) -> AsyncIterator[object]:
            yield "first line\n"
            raise RuntimeError("generator broke")

    pump = UIPump(hz=10, budget=50)
    handle, view = start_stream(pump, Boom(1))
    with pytest.raises(RuntimeError, match="generator broke"):
        handle.wait(10)
    pump.wait_idle(10)
    assert handle.status == "failed"
    assert "generator broke" in view.result.value
    assert "first line" in view.tail.value


def test_cancel_stops_the_stream_and_closes_the_source(comms):
    pump = UIPump(hz=10, budget=50)
    source = FakeStream(10**9, per_batch=10, delay=0.01)
    handle, view = start_stream(pump, source)
    deadline = time.monotonic() + 10
    while len(handle.chunks) < 20 and time.monotonic() < deadline:
        time.sleep(0.01)
    handle.cancel()
    assert handle.status == "cancelled"
    assert source.closed
    pump.wait_idle(10)
    assert "cancelled" in view.result.value


# -- variable watch ---------------------------------------------------------------------------
@dataclass
class Record:
    name: str
    value: Any
    version: int
    type: str = "float"
    constraints: dict[str, Any] = field(default_factory=lambda: {"min": 0.0, "max": 2.0})
    source: str = "kernel"
    updated_at: float = field(default_factory=time.time)


@dataclass
class Change:
    variable: Record
    kind: str = "value_change"
    source: str = "w1"
    at: float = field(default_factory=time.time)


class FakeVars:
    """A tiny versioned store with a change feed, enough to drive a watch view."""

    def __init__(self) -> None:
        self.records = {"t": Record("t", 0.5, 1)}
        self.queue: asyncio.Queue[Change] | None = None
        self.writes: list[tuple[str, Any, int | None]] = []

    def watch(self, *names: str, **kw: Any) -> AsyncIterator[Any]:
        async def gen() -> AsyncIterator[Any]:
            self.queue = asyncio.Queue(maxsize=100)
            while True:
                yield await self.queue.get()

        return gen()

    async def set(self, name: str, value: Any, expected_version: int | None = None) -> Any:
        current = self.records[name]
        if expected_version is not None and expected_version != current.version:
            raise VersionConflictError("stale", current_version=current.version)
        self.writes.append((name, value, expected_version))
        return await self.write(name, value, "kernel")

    async def write(self, name: str, value: Any, source: str) -> Record:
        rec = self.records[name]
        new = Record(name, value, rec.version + 1, source=source)
        self.records[name] = new
        assert self.queue is not None
        await self.queue.put(Change(new, source=source))
        return new


def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def test_watch_updates_rows_slider_and_reports_a_lost_race(comms):
    loop_thread = get_loop_thread()
    pump = UIPump(hz=10, budget=50)
    fake = FakeVars()
    view = WatchView(
        fake,
        [fake.records["t"]],
        names=["t"],
        session_id="s",
        pump=pump,
        loop_thread=loop_thread,
    )
    view.start()
    pump.add(view)
    wait_for(lambda: fake.queue is not None)
    slider = view.sliders["t"]
    assert slider.value == 0.5

    # A worker writes: the row and the slider follow, the sparkline appears.
    loop_thread.run(fake.write("t", 1.25, "w1"))
    wait_for(lambda: "1.25" in view.table.value and slider.value == 1.25)
    assert "<svg" in view.table.value
    assert "v2" in view.table.value

    # A person moves the slider (from the main thread, as a browser edit arrives): written
    # with the version the slider showed.
    slider.value = 0.75
    wait_for(lambda: fake.records["t"].value == 0.75)
    assert fake.writes[-1] == ("t", 0.75, 2)
    wait_for(lambda: "you set t = 0.75" in view.status.value)

    # A worker writes between what the slider showed and the person's edit: the edit loses.
    loop_thread.run(fake.write("t", 1.9, "w2"))  # v4, not rendered yet for the slider
    view._slider_version["t"] = 3  # the slider still showed v3 when the person moved it
    slider.value = 0.1
    wait_for(lambda: "conflict" in view.status.value)
    assert fake.records["t"].value == 1.9  # nothing overwritten
    wait_for(lambda: slider.value == 1.9)  # the slider snapped back
    view.stop()
    pump.wait_idle(10)
    assert "watch ended" in view.table.value
