"""The VariableStore in process: versions, batches, history, dependencies, locks, access,
limits and watchers (no sockets; the gRPC path is in tests/integration/test_variables_rpc.py)."""

from __future__ import annotations

import asyncio
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from snakepit_nb._errors import (
    ConstraintViolationError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    SessionNotFoundError,
    VariableNotFoundError,
    VersionConflictError,
)
from snakepit_nb.orchestrator.variables.stores import (
    ChangeKind,
    VariableChange,
    VariableLimits,
    VariableStore,
    VariableStores,
    Watcher,
)

T = TypeVar("T")
WORKER = "w1"


def run(fn: Callable[[VariableStore], Awaitable[T]], **limits: Any) -> T:
    store = VariableStore("s1", VariableLimits(**limits))
    return asyncio.run(asyncio.wait_for(fn(store), 30))


def drain(watcher: Watcher) -> list[VariableChange]:
    out = []
    while (change := watcher.poll()) is not None:
        out.append(change)
    return out


def test_register_get_by_name_and_id_and_versions() -> None:
    async def body(store: VariableStore) -> None:
        rec = await store.register("t", "float", 0.7, constraints={"min": 0, "max": 2})
        assert (rec.version, rec.value, rec.type, rec.source) == (1, 0.7, "float", "kernel")
        assert (await store.get(rec.id)).name == "t"
        rec2 = await store.set("t", 1, source=WORKER)
        assert (rec2.version, rec2.value, rec2.source) == (2, 1.0, WORKER)
        assert rec2.id == rec.id
        assert (await store.get("t")).version == 2

    run(body)


def test_stale_expected_version_is_aborted_with_current_version_and_changes_nothing() -> None:
    async def body(store: VariableStore) -> None:
        await store.register("n", "integer", 0)
        await store.set("n", 1, expected_version=1)
        watcher = store.watch(["n"], include_initial=False)
        with pytest.raises(VersionConflictError) as info:
            await store.set("n", 99, expected_version=1)
        assert info.value.current_version == 2
        assert "current_version=2" in str(info.value)
        rec = await store.get("n")
        assert (rec.value, rec.version) == (1, 2)
        assert [e.version for e in await store.history("n")] == [1, 2]
        assert watcher.pending() == 0

    run(body)


def test_type_change_needs_allow_type_change_and_same_definition_is_a_no_op() -> None:
    async def body(store: VariableStore) -> None:
        await store.register("x", "float", 0.5)
        same = await store.register("x", "float", 0.5)
        assert same.version == 1
        with pytest.raises(FailedPreconditionError, match="allow_type_change"):
            await store.register("x", "string", "hello")
        assert (await store.get("x")).type == "float"
        changed = await store.register("x", "string", "hello", allow_type_change=True)
        assert (changed.type, changed.value, changed.version) == ("string", "hello", 2)
        with pytest.raises(ConstraintViolationError, match="needs a string"):
            await store.set("x", 3)
        with pytest.raises(VersionConflictError) as info:
            await store.register("x", "string", "y", expected_version=0)
        assert info.value.current_version == 2

    run(body)


def test_atomic_batch_leaves_nothing_half_written() -> None:
    async def body(store: VariableStore) -> None:
        await store.register("a", "integer", 1)
        await store.register("b", "float", 0.5, constraints={"max": 1})
        watcher = store.watch(include_initial=False)
        outcome = await store.set_many({"a": 2, "b": 5.0}, atomic=True)
        assert not outcome.ok
        assert set(outcome.errors) == {"b"}
        assert isinstance(outcome.errors["b"], ConstraintViolationError)
        assert outcome.records == {}
        assert (await store.get("a")).version == 1
        assert (await store.get("a")).value == 1
        assert watcher.pending() == 0
        stale = await store.set_many({"a": 3, "b": 0.1}, expected_versions={"a": 7})
        assert isinstance(stale.errors["a"], VersionConflictError)
        assert (await store.get("b")).value == 0.5
        ok = await store.set_many({"a": 3, "b": 0.9})
        assert ok.ok
        assert {k: r.version for k, r in ok.records.items()} == {"a": 2, "b": 2}
        partial = await store.set_many({"a": 4, "b": "no", "zz": 1}, atomic=False)
        assert set(partial.errors) == {"b", "zz"}
        assert isinstance(partial.errors["zz"], VariableNotFoundError)
        assert (await store.get("a")).value == 4

    run(body)


def test_history_limit_max_history_and_rollback() -> None:
    async def body(store: VariableStore) -> None:
        await store.register("lr", "float", 0.1)
        for i in range(2, 8):
            await store.set("lr", i / 10, source=f"w{i}", metadata={"step": str(i)})
        hist = await store.history("lr")
        assert [e.version for e in hist] == [3, 4, 5, 6, 7]  # max_history=5 keeps the newest
        assert hist[-1].source == "w7"
        assert hist[-1].metadata == {"step": "7"}
        assert [e.version for e in await store.history("lr", 2)] == [6, 7]
        back = await store.rollback("lr", 4)
        assert (back.version, back.value) == (8, 0.4)
        assert (await store.history("lr", 1))[0].metadata == {"rollback_to": "4"}
        with pytest.raises(NotFoundError, match="no longer kept"):
            await store.rollback("lr", 1)
        with pytest.raises(NotFoundError, match="no version 99"):
            await store.rollback("lr", 99)

    run(body, max_history=5)


def test_dependencies_refuse_cycles_and_notify_dependents_transitively() -> None:
    async def body(store: VariableStore) -> None:
        for name in ("a", "b", "c"):
            await store.register(name, "integer", 0)
        await store.add_dependency("a", "b")
        await store.add_dependency("b", "c")
        with pytest.raises(InvalidArgumentError, match=r"cycle \(c -> a -> b -> c\)"):
            await store.add_dependency("c", "a")
        with pytest.raises(InvalidArgumentError, match="itself"):
            await store.add_dependency("a", "a")
        watcher = store.watch(["c"], include_initial=False)
        await store.set("a", 5)
        changes = drain(watcher)
        assert [(c.kind, c.name, c.metadata["dependency"]) for c in changes] == [
            (ChangeKind.DEPENDENCY, "c", "a")
        ]
        assert store.dependencies("a") == ["b"]

    run(body)


def test_optimization_lock_blocks_other_writers_until_stopped() -> None:
    async def body(store: VariableStore) -> None:
        await store.register("lr", "float", 0.1)
        rec = await store.start_optimization("lr", "opt-1", {"algo": "tpe"})
        assert rec.optimization is not None
        assert rec.optimization.optimizer_id == "opt-1"
        with pytest.raises(FailedPreconditionError, match="being optimized by 'opt-1'"):
            await store.set("lr", 0.2)
        with pytest.raises(FailedPreconditionError):
            await store.start_optimization("lr", "opt-2")
        await store.set("lr", 0.3, optimizer_id="opt-1")
        await store.set("lr", 0.4, source="opt-1")
        with pytest.raises(FailedPreconditionError, match="force=True"):
            await store.stop_optimization("lr", "opt-2")
        final = await store.stop_optimization("lr", "opt-1")
        assert final.value == 0.4
        assert final.optimization is None
        await store.set("lr", 0.5)
        with pytest.raises(FailedPreconditionError, match="not being optimized"):
            await store.stop_optimization("lr")

    run(body)


def test_access_control_read_only_and_hidden_for_workers() -> None:
    async def body(store: VariableStore) -> None:
        await store.register("ro", "integer", 1, access={"workers": "read"})
        await store.register("secret", "string", "k", access={"workers": "none"})
        assert (await store.get("ro", source=WORKER)).value == 1
        with pytest.raises(FailedPreconditionError, match="read-only for workers"):
            await store.set("ro", 2, source=WORKER)
        with pytest.raises(FailedPreconditionError):
            await store.delete("ro", source=WORKER)
        await store.set("ro", 2)
        with pytest.raises(FailedPreconditionError, match="hidden from workers"):
            await store.get("secret", source=WORKER)
        assert [r.name for r in await store.list(source=WORKER)] == ["ro"]
        found, missing = await store.get_many(["ro", "secret"], source=WORKER)
        assert list(found) == ["ro"]
        assert missing == ["secret"]
        with pytest.raises(InvalidArgumentError, match="'read'"):
            await store.register("bad", "integer", 1, access={"workers": "sometimes"})

    run(body)


def test_list_pattern_and_delete() -> None:
    async def body(store: VariableStore) -> None:
        for name in ("lr_a", "lr_b", "lrx", "temp"):
            await store.register(name, "integer", 1)
        assert [r.name for r in await store.list("lr_*")] == ["lr_a", "lr_b"]
        assert [r.name for r in await store.list("lr?")] == ["lrx"]
        assert len(await store.list()) == 4
        watcher = store.watch(["temp"], include_initial=False)
        await store.delete("temp")
        assert [c.kind for c in drain(watcher)] == [ChangeKind.DELETED]
        with pytest.raises(VariableNotFoundError) as info:
            await store.get("temp")
        assert str(info.value).startswith("variable 'temp'")

    run(body)


def test_fifty_megabyte_string_is_refused_fast_without_copies() -> None:
    big = "x" * (50 * 1024 * 1024)

    async def body(store: VariableStore) -> None:
        await store.register("doc", "string", "small")
        tracemalloc.start()
        started = time.perf_counter()
        with pytest.raises(ResourceExhaustedError, match="max_value_bytes"):
            await store.set("doc", big)
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert elapsed < 1.0
        assert peak < 1024 * 1024  # no copy, no encoding of the 50 MB
        assert (await store.get("doc")).value == "small"
        await store.register("items", "list", [])
        with pytest.raises(ResourceExhaustedError):
            await store.set("items", ["y" * 1024] * 20_000)  # found by its encoded size
        assert (await store.get("items")).version == 1

    run(body, max_value_bytes=10 * 1024 * 1024)


def test_max_variables_per_session() -> None:
    async def body(store: VariableStore) -> None:
        for i in range(3):
            await store.register(f"v{i}", "integer", i)
        with pytest.raises(ResourceExhaustedError, match="max_variables=3"):
            await store.register("v3", "integer", 3)
        outcome = await store.set_many({"v4": 1}, define_missing=True)
        assert isinstance(outcome.errors["v4"], ResourceExhaustedError)

    run(body, max_variables=3)


def test_fast_watcher_sees_every_change_in_order() -> None:
    async def body(store: VariableStore) -> None:
        await store.register("n", "integer", 0)
        watcher = store.watch(["n"])
        seen: list[int] = []

        async def consume() -> None:
            async for change in watcher:
                seen.append(change.version)
                if change.version == 201:
                    return

        task = asyncio.create_task(consume())
        for i in range(1, 201):
            await store.set("n", i)
            await asyncio.sleep(0)
        await asyncio.wait_for(task, 10)
        assert seen == list(range(1, 202))

    run(body)


def test_slow_watcher_gets_latest_value_with_skipped_count_and_never_blocks_writers() -> None:
    async def body(store: VariableStore) -> None:
        await store.register("a", "integer", 0)
        await store.register("b", "integer", 0)
        slow = store.watch(["a", "b"], include_initial=False, capacity=4)
        fast = store.watch(["a"], include_initial=False, capacity=10_000)
        started = time.perf_counter()
        for i in range(1, 5001):
            await store.set("a", i)  # nobody reads meanwhile: writers never wait
        await store.set("b", 1)
        assert time.perf_counter() - started < 5
        assert slow.pending() <= 4 + 2
        changes = drain(slow)
        latest_a = [c for c in changes if c.name == "a"][-1]
        assert latest_a.value == 5000
        assert latest_a.version == 5001
        assert (
            sum(c.skipped for c in changes if c.name == "a")
            + sum(1 for c in changes if c.name == "a")
            == 5000
        )
        assert [c.value for c in changes if c.name == "b"] == [1]
        assert len(drain(fast)) == 5000

    run(body)


def test_closing_the_store_ends_watches_and_refuses_writes() -> None:
    async def body(store: VariableStore) -> None:
        await store.register("n", "integer", 0)
        watcher = store.watch(["n"], include_initial=False)
        waiter = asyncio.create_task(watcher.next())
        await asyncio.sleep(0)
        store.close()
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(waiter, 5)
        with pytest.raises(VariableNotFoundError, match="gone"):
            await store.set("n", 1)

    run(body)


def test_unknown_session_is_not_found_when_sessions_are_attached() -> None:
    stores = VariableStores(session_exists=lambda sid: sid == "known")
    assert stores.for_session("known").session_id == "known"
    with pytest.raises(SessionNotFoundError, match=r"client\.session"):
        stores.for_session("other")
    with pytest.raises(InvalidArgumentError):
        stores.for_session("")
