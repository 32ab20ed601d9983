"""SessionStore with a fake clock: idempotent creation, TTL expiry, sweeps, stats, quotas."""

from __future__ import annotations

import asyncio
import time

import pytest

from snakepit_nb._errors import (
    InvalidArgumentError,
    ResourceExhaustedError,
    SessionNotFoundError,
)
from snakepit_nb.orchestrator.sessions import SessionStore


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make(clock: FakeClock, **kwargs: float | int) -> SessionStore:
    return SessionStore(clock=clock, **kwargs)  # type: ignore[arg-type]


def test_create_is_idempotent_and_keeps_the_record(clock: FakeClock) -> None:
    store = make(clock, ttl=60)
    first = store.create("exp1", metadata={"owner": "me"})
    again = store.create("exp1", metadata={"k": "v"})
    assert again is first
    assert first.metadata == {"owner": "me", "k": "v"}
    assert store.stats().created == 1
    assert len(store) == 1


def test_fresh_ids_are_unique(clock: FakeClock) -> None:
    store = make(clock)
    ids = {store.create().session_id for _ in range(100)}
    assert len(ids) == 100


def test_get_refreshes_and_unknown_says_how_to_create(clock: FakeClock) -> None:
    store = make(clock, ttl=10)
    store.create("a")
    clock.advance(9)
    store.get("a")  # refresh
    clock.advance(9)
    assert store.get("a").session_id == "a"
    with pytest.raises(SessionNotFoundError, match=r"client.session\('nope'\)"):
        store.get("nope")


def test_peek_does_not_refresh(clock: FakeClock) -> None:
    store = make(clock, ttl=10)
    store.create("a")
    clock.advance(6)
    store.peek("a")
    clock.advance(6)
    assert not store.is_valid("a")


def test_expired_session_says_expired_after_idle(clock: FakeClock) -> None:
    store = make(clock, ttl=30)
    store.create("x")
    clock.advance(31)
    with pytest.raises(SessionNotFoundError) as info:
        store.get("x")
    message = str(info.value)
    assert "session 'x' expired after 31 s idle" in message
    assert "client.session('x')" in message
    assert store.stats().expired == 1
    # Creating it again works and forgets the expiry.
    store.create("x")
    assert store.get("x").session_id == "x"


def test_sweep_removes_only_expired_and_runs_callbacks(clock: FakeClock) -> None:
    store = make(clock, ttl=10)
    gone: list[tuple[str, str]] = []
    store.on_cleanup.append(lambda sid, reason: gone.append((sid, reason)))
    store.create("old")
    clock.advance(8)
    store.create("young")
    clock.advance(5)
    assert store.sweep_expired() == ["old"]
    assert gone == [("old", "expired")]
    assert store.is_valid("young")
    assert "young" in store
    assert "old" not in store


def test_async_cleanup_callbacks_are_awaited(clock: FakeClock) -> None:
    store = make(clock, ttl=10)
    dropped: list[str] = []

    async def drop(sid: str, reason: str) -> None:
        await asyncio.sleep(0)
        dropped.append(f"{sid}:{reason}")

    store.on_cleanup.append(drop)

    async def scenario() -> None:
        store.create("a")
        store.create("b")
        assert await store.cleanup("a") is True
        assert await store.cleanup("a") is False
        clock.advance(11)
        assert await store.asweep() == ["b"]

    asyncio.run(scenario())
    assert dropped == ["a:closed", "b:expired"]
    stats = store.stats()
    assert (stats.closed, stats.expired, stats.active) == (1, 1, 0)


def test_a_failing_callback_does_not_stop_cleanup(clock: FakeClock) -> None:
    store = make(clock, ttl=10)
    seen: list[str] = []

    def bad(sid: str, reason: str) -> None:
        raise RuntimeError("boom")

    store.on_cleanup.extend([bad, lambda sid, reason: seen.append(sid)])
    store.create("a")
    asyncio.run(store.cleanup("a"))
    assert seen == ["a"]
    assert "a" not in store


def test_periodic_sweeper_expires_sessions() -> None:
    # Real time here: the sweeper task is the thing under test (ttl 50 ms, sweep every 20 ms).
    async def scenario() -> list[str]:
        store = SessionStore(ttl=0.05)
        gone: list[str] = []
        store.on_cleanup.append(lambda sid, reason: gone.append(sid))
        store.create("a")
        store.start_sweeper(interval=0.02)
        deadline = time.monotonic() + 5
        while not gone and time.monotonic() < deadline:  # noqa: ASYNC110 - polling a list
            await asyncio.sleep(0.01)
        await store.stop_sweeper()
        return gone

    assert asyncio.run(scenario()) == ["a"]


def test_sweeping_ten_thousand_expired_sessions_is_fast(clock: FakeClock) -> None:
    store = make(clock, ttl=1, max_sessions=20_000)
    calls = 0

    def count(sid: str, reason: str) -> None:
        nonlocal calls
        calls += 1

    store.on_cleanup.append(count)
    for i in range(10_000):
        store.create(f"s{i}")
    clock.advance(2)
    started = time.perf_counter()
    removed = store.sweep_expired()
    elapsed = time.perf_counter() - started
    assert len(removed) == 10_000
    assert calls == 10_000
    assert len(store) == 0
    assert elapsed < 1.0, f"sweeping 10k sessions took {elapsed:.3f} s"


def test_quota_refuses_with_resource_exhausted_and_changes_nothing(clock: FakeClock) -> None:
    store = make(clock, ttl=10, max_sessions=2)
    store.create("a")
    store.create("b")
    with pytest.raises(ResourceExhaustedError, match="max_sessions=2"):
        store.create("c")
    assert sorted(r.session_id for r in store.records()) == ["a", "b"]
    # An existing id is still fine, and expired sessions free their slots.
    assert store.create("a").session_id == "a"
    clock.advance(11)
    assert store.create("c").session_id == "c"


def test_affinity_and_call_counts(clock: FakeClock) -> None:
    store = make(clock)
    store.create("s", strict_affinity=True)
    assert store.affinity("s") == (None, True)
    store.record_call("s", "w2")
    store.record_call("s", "w1", failed=True)
    record = store.get("s")
    assert (record.call_count, record.error_count, record.last_worker) == (2, 1, "w1")
    assert store.affinity("s") == ("w1", True)
    assert store.affinity("unknown") == (None, False)
    assert store.stats().calls == 2
    # An explicit flag updates; None keeps it.
    store.create("s")
    assert store.affinity("s")[1] is True
    store.create("s", strict_affinity=False)
    assert store.affinity("s")[1] is False


@pytest.mark.parametrize("bad", ["", "x" * 300, "tab\there", 42, None])
def test_bad_ids_are_refused(clock: FakeClock, bad: object) -> None:
    store = make(clock)
    if bad is None:
        assert store.create(None).session_id.startswith("session-")
        return
    with pytest.raises(InvalidArgumentError, match="session id"):
        store.create(bad)  # type: ignore[arg-type]
    assert len(store) == 0


def test_touch_and_clear(clock: FakeClock) -> None:
    store = make(clock, ttl=5)
    assert store.touch("nope") is False
    store.create("a")
    clock.advance(4)
    assert store.touch("a") is True
    clock.advance(4)
    assert store.is_valid("a")
    asyncio.run(store.clear())
    assert len(store) == 0
    assert store.stats().closed == 1
