"""Session variables shared by the notebook side (``session.vars``) and real workers
(``ctx.vars``), over real gRPC: reads, writes, conflicts, batches, watches, concurrency."""

from __future__ import annotations

import asyncio
import os
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import paths
import pytest

import snakepit_nb as sp
from snakepit_nb.client.async_variables import AsyncVariables
from snakepit_nb.client.variables import UpdateResult, Variables

pytestmark = pytest.mark.integration

WORKER_TOOLS = """
def vars_roundtrip(ctx, name):
    first = ctx.vars.get(name, with_version=True)
    version = ctx.vars.set(name, first[0] + 1, expected_version=first[1])
    mine = ctx.vars.get(name, with_version=True)
    try:
        ctx.vars.set(name, -1, expected_version=first[1])
        stale = None
    except Exception as exc:
        stale = [type(exc).__name__, exc.current_version]
    return {"first": list(first), "version": version, "mine": list(mine), "stale": stale,
            "worker": ctx.worker_id}
"""

BATCH_TOOL = """
def vars_batch(ctx, good, bad):
    out = {"many": ctx.vars.get_many([good, bad])}
    try:
        ctx.vars.set_many({good: 100, bad: "not a number"}, atomic=True)
    except Exception as exc:
        out["atomic_error"] = type(exc).__name__
    out["after"] = ctx.vars.get_many([good, bad])
    partial = ctx.vars.set_many({good: 7, bad: "nope"}, atomic=False)
    out["partial"] = {k: v if isinstance(v, int) else type(v).__name__ for k, v in partial.items()}
    rec = ctx.vars.define("made_by_worker", 1, "integer")
    try:
        ctx.vars.define("made_by_worker", 2, "integer")
    except Exception as exc:
        out["define_twice"] = type(exc).__name__
    out["made"] = [rec.value, rec.version, rec.updated_by]
    return out
"""

WATCH_TOOL = """
async def vars_watch(ctx, name, count):
    seen = []
    async for change in ctx.vars.awatch(name, include_initial=True):
        seen.append([change.kind, change.value, change.version])
        if len(seen) == count:
            break
    return seen
"""

INCR_TOOL = """
def incr_many(ctx, name, n):
    conflicts = 0
    for _ in range(n):
        while True:
            record = ctx.vars.get_record(name)
            try:
                ctx.vars.set(name, record.value + 1, expected_version=record.version)
                break
            except Exception as exc:
                if type(exc).__name__ != "VersionConflictError":
                    raise
                conflicts += 1
    return {"worker": ctx.worker_id, "conflicts": conflicts}
"""


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    c = sp.start(workers=2, startup_timeout=60.0)
    try:
        for source in (WORKER_TOOLS, BATCH_TOOL, WATCH_TOOL, INCR_TOOL):
            c.define_tool(source)
        yield c
    finally:
        c.close()


def test_sync_and_async_facades_expose_the_same_names() -> None:
    def public(cls: type) -> set[str]:
        return {n for n in dir(cls) if not n.startswith("_")}

    assert public(Variables) - {"session_id"} == public(AsyncVariables) - {"session_id"}


def test_notebook_mapping_access_define_history_rollback(client: Any) -> None:
    s = client.session("nb")
    s.vars["temperature"] = 0.7
    assert s.vars["temperature"] == 0.7
    assert "temperature" in s.vars
    assert "nope" not in s.vars
    s.vars["temperature"] = 0.9
    info = s.vars.info("temperature")
    assert (info.type, info.version, info.source) == ("float", 2, "kernel")
    rec = s.vars.define("lr", 0.01, "float", min=0, max=1, description="learning rate")
    assert rec.constraints == {"min": 0, "max": 1, "description": "learning rate"}
    with pytest.raises(sp.ConstraintViolationError, match="constraint max"):
        s.vars["lr"] = 2.0
    assert s.vars.get("lr", with_version=True) == (0.01, 1)
    assert s.vars.get("missing", None) is None
    s.vars.set("lr", 0.02, expected_version=1)
    with pytest.raises(sp.VersionConflictError) as info_err:
        s.vars.set("lr", 0.03, expected_version=1)
    assert info_err.value.current_version == 2
    assert [h.value for h in s.vars.history("lr")] == [0.01, 0.02]
    assert s.vars.rollback("lr", 1).value == 0.01
    assert set(s.vars) >= {"temperature", "lr"}
    assert len(s.vars) >= 2
    items = s.vars.get("temperature")
    del s.vars["temperature"]
    assert "temperature" not in s.vars
    assert items == 0.9
    values = [1, 2]
    s.vars["xs"] = values
    values.append(3)  # the caller's list is not the stored one
    got = s.vars["xs"]
    got.append(4)
    assert s.vars["xs"] == [1, 2]


def test_batch_commits_atomically_or_not_at_all(client: Any) -> None:
    s = client.session("batch")
    s.vars["a"] = 1
    s.vars.define("b", 1, "integer", max=10)
    with s.vars.batch():
        s.vars["a"] = 2
        s.vars["b"] = 3
        s.vars["c"] = "new"
        assert s.vars["a"] == 2  # reads inside the block see the pending write
        assert s.vars.info("a").version == 1  # nothing committed yet
    assert (s.vars["a"], s.vars["b"], s.vars["c"]) == (2, 3, "new")

    def failing_block() -> None:
        with s.vars.batch():
            s.vars["a"] = 99
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        failing_block()
    assert s.vars["a"] == 2

    def refused_batch() -> None:
        with s.vars.batch():
            s.vars["a"] = 50
            s.vars["b"] = 50  # above max: the whole batch is refused

    with pytest.raises(sp.ConstraintViolationError):
        refused_batch()
    assert (s.vars["a"], s.vars.info("a").version) == (2, 2)


def test_update_retries_and_counts_conflicts(client: Any) -> None:
    s = client.session("upd")
    s.vars["n"] = 0
    calls = []

    def bump(value: int) -> int:
        calls.append(value)
        if len(calls) == 1:
            s.vars["n"] = 10  # another writer gets in between: one conflict
        return value + 1

    result = s.vars.update("n", bump)
    assert isinstance(result, UpdateResult)
    assert (result.value, result.version, result.conflicts) == (11, 3, 1)
    assert calls == [0, 10]


def test_watch_sync_iterator_dependency_and_close(client: Any) -> None:
    s = client.session("watch")
    s.vars["src"] = 0
    s.vars["dst"] = 0
    s.vars.depend("src", "dst")
    with s.vars.watch("src", "dst") as watch:
        assert [(c.kind, c.name) for c in (watch.next(5), watch.next(5))] == [
            ("initial_value", "src"),
            ("initial_value", "dst"),
        ]
        s.vars["src"] = 1
        first, second = watch.next(5), watch.next(5)
        assert (first.kind, first.name, first.value, first.version) == ("value_change", "src", 1, 2)
        assert (second.kind, second.name, second.metadata["dependency"]) == (
            "dependency_change", "dst", "src",
        )  # fmt: skip
        with pytest.raises(TimeoutError):
            watch.next(0.2)
        closer = threading.Timer(0.2, watch.close)
        closer.start()
        assert list(watch) == []  # close() from another thread ends the iteration
        closer.join()


def test_optimizing_context_locks_out_other_writers(client: Any) -> None:
    s = client.session("opt")
    s.vars["lr"] = 0.1
    with s.vars.optimizing("lr", "optuna-1") as opt:
        opt.set(0.2)
        with pytest.raises(sp.FailedPreconditionError, match="optuna-1"):
            s.vars["lr"] = 0.5
        result = s.call("incr_var", name="counter_opt", by=1)
        assert result == 1
    assert opt.final is not None
    assert opt.final.value == 0.2
    s.vars["lr"] = 0.3
    assert s.vars["lr"] == 0.3


def test_async_api_from_another_event_loop(client: Any) -> None:
    s = client.session("async")
    avars = s._async.vars

    async def body() -> list[Any]:
        await avars.define("t", 0.5, "float", min=0, max=1)
        await avars.set("t", 0.6, expected_version=1)
        watch = avars.watch("t")
        first = await watch.next(5)
        await avars.assign("t", 0.7)
        second = await watch.next(5)
        await watch.aclose()
        async with avars.batch() as batch:
            batch.set("t", 0.8)
            batch.set("u", 1)
        result = await avars.update("u", lambda v: v + 1)
        return [first.value, second.value, await avars.get("t"), result.value,
                await avars.keys()]  # fmt: skip

    assert asyncio.run(body()) == [0.6, 0.7, 0.8, 2, ["t", "u"]]


def test_worker_reads_writes_and_sees_its_own_write(client: Any) -> None:
    s = client.session("wk")
    s.vars["n"] = 5
    out = s.call("vars_roundtrip", name="n")
    assert out["first"] == [5, 1]
    assert out["version"] == 2
    assert out["mine"] == [6, 2]
    assert out["stale"] == ["VersionConflictError", 2]
    info = s.vars.info("n")
    assert (info.value, info.source) == (6, out["worker"])
    s.vars.define("ro", 1, read_only_for_workers=True)
    with pytest.raises(sp.RemoteToolError, match="read-only for workers"):
        s.call("vars_roundtrip", name="ro")
    assert s.vars["ro"] == 1


def test_worker_batches_are_atomic_and_define_does_not_overwrite(client: Any) -> None:
    s = client.session("wb")
    s.vars["good"] = 1
    s.vars["bad"] = 2
    out = s.call("vars_batch", good="good", bad="bad")
    assert out["many"] == {"good": 1, "bad": 2}
    assert out["atomic_error"] == "ConstraintViolationError"
    assert out["after"] == {"good": 1, "bad": 2}
    assert out["partial"] == {"good": 2, "bad": "ConstraintViolationError"}
    assert out["define_twice"] == "VersionConflictError"
    assert out["made"][:2] == [1, 1]
    assert out["made"][2].startswith("w")
    assert s.vars["good"] == 7
    assert s.vars["made_by_worker"] == 1


def test_worker_watch_sees_notebook_changes_in_order(client: Any) -> None:
    s = client.session("ww")
    s.vars["flag"] = 0
    result: list[Any] = []
    caller = threading.Thread(
        target=lambda: result.append(s.call("vars_watch", name="flag", count=4, _timeout=30))
    )
    caller.start()
    # Wait (with a deadline) until the worker's watch is live: the orchestrator counts it.
    store = client.orchestrator.variables.for_session("ww")
    deadline = threading.Event()
    for _ in range(300):
        if store.watcher_count() >= 1:
            break
        deadline.wait(0.02)
    assert store.watcher_count() >= 1
    for i in (1, 2, 3):
        s.vars["flag"] = i
    caller.join(30)
    assert result == [[["initial_value", 0, 1], ["value_change", 1, 2], ["value_change", 2, 3],
                       ["value_change", 3, 4]]]  # fmt: skip


def test_four_writers_two_workers_two_kernel_threads_end_at_exactly_1000(client: Any) -> None:
    s = client.session("race")
    s.vars.define("counter", 0, "integer")
    store = client.orchestrator.variables.for_session("race")
    kernel_conflicts: list[int] = []
    worker_results: list[dict[str, Any]] = []
    errors: list[BaseException] = []

    def kernel_writer() -> None:
        try:
            total = 0
            for _ in range(250):
                total += s.vars.update("counter", lambda v: v + 1).conflicts
            kernel_conflicts.append(total)
        except BaseException as exc:
            errors.append(exc)

    def worker_writer() -> None:
        try:
            worker_results.append(s.call("incr_many", name="counter", n=250, _timeout=120))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=fn) for fn in (worker_writer, worker_writer)]
    threads += [threading.Thread(target=kernel_writer) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert not errors, errors
    info = s.vars.info("counter")
    assert (info.value, info.version) == (1000, 1001)
    assert len({r["worker"] for r in worker_results}) == 2  # two distinct worker processes
    # Every write is in the history, attributed to its writer: nothing silently overwritten.
    writers = Counter(h.source for h in s.vars.history("counter") if h.version > 1)
    assert sorted(writers.values()) == [250, 250, 500]
    assert writers["kernel"] == 500
    conflicts = sum(kernel_conflicts) + sum(r["conflicts"] for r in worker_results)
    print(f"4 writers x 250 increments: {conflicts} version conflicts surfaced and retried")
    # Every conflict the store refused reached a writer as VersionConflictError and was counted.
    assert conflicts == store.conflicts


def test_required_variables_arrive_with_the_call_and_later_reads_are_fresh(
    client_factory: Any,
) -> None:
    here = str(paths.SUPPORT)
    path = os.environ.get("PYTHONPATH", "")
    c = client_factory(
        workers=1,
        adapter="variables_adapter:VariablesTestAdapter",
        env={"PYTHONPATH": here + (os.pathsep + path if path else "")},
    )
    s = c.session("prefetch")
    s.vars["temperature"] = 0.5
    out = s.call("scaled", x=4.0)
    # One variable came with the request; the first read used it, the next one asked again
    # and saw the tool's own write.
    assert out == {"value": 2.0, "snapshot": [1, 0], "second": 1.5}
    assert s.vars.info("temperature").version == 2
