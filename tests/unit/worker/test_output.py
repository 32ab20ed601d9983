"""The worker's output hub: per-call capture, the cell cap and its notice, bounded buffers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import threading

import pytest

from snakepit_nb.worker.output import (
    CELL_LINES_KEY,
    LOG,
    OUTPUT_KEY,
    STDERR,
    STDOUT,
    OutputHub,
    current_call,
)


@pytest.fixture
def hub():
    # Installed in the test itself: pytest swaps sys.stdout between setup and call.
    return OutputHub("w1", cell_lines=5)


@contextlib.contextmanager
def installed(hub: OutputHub):
    hub.install()
    try:
        yield hub
    finally:
        hub.uninstall()


def shown_text(records, stream=None):
    return "".join(r.text for r in records if r.shown and (stream is None or r.stream == stream))


def test_writes_in_a_call_carry_its_tag_and_keep_stderr_apart(hub: OutputHub) -> None:
    with installed(hub), hub.call({OUTPUT_KEY: "t1"}, "tool") as state:
        assert current_call() is state
        print("one")
        print("two")
        sys.stderr.write("oops\n")
        logging.getLogger("user.lib").warning("careful")
        logging.getLogger("user.lib").info("not at INFO")
    assert current_call() is None
    records = hub.drain()
    assert [(r.tag, r.stream, r.text, r.end) for r in records] == [
        ("t1", STDOUT, "one\ntwo\n", False),  # two prints, one record
        ("t1", STDERR, "oops\n", False),
        ("t1", LOG, "WARNING:user.lib:careful\n", False),
        ("t1", STDOUT, "", True),  # the call ended
    ]
    assert all(r.shown and r.tool == "tool" for r in records[:3])
    assert hub.drain() == []


def test_sync_tools_threads_inherit_the_call(hub: OutputHub) -> None:
    async def run() -> None:
        with installed(hub), hub.call({OUTPUT_KEY: "t2"}, "sync_tool"):
            await asyncio.to_thread(print, "from a thread")

    asyncio.run(run())
    record, end = hub.drain()
    assert (record.tag, record.text) == ("t2", "from a thread\n")
    assert (end.tag, end.end) == ("t2", True)


def test_output_outside_calls_is_for_the_log_only_and_reaches_the_original_stream(
    capfd: pytest.CaptureFixture[str],
) -> None:
    hub = OutputHub("w1")
    with installed(hub):
        print("import-time noise")
        thread = threading.Thread(target=print, args=("a thread of its own",))
        thread.start()
        thread.join()
    records = hub.drain()
    assert all(r.tag == "" and not r.shown for r in records)
    assert "import-time noise" in "".join(r.text for r in records)
    assert "import-time noise" in capfd.readouterr().out


def test_a_flood_shows_the_cap_in_the_cell_and_the_rest_for_the_tail(hub: OutputHub) -> None:
    with installed(hub), hub.call({OUTPUT_KEY: "t3"}, "chatty"):
        for i in range(100):
            print(f"line {i}")
    records = hub.drain()
    assert shown_text(records, STDOUT) == "".join(f"line {i}\n" for i in range(5))
    hidden = "".join(r.text for r in records if not r.shown)
    assert hidden.splitlines()[0] == "line 5"
    assert hidden.count("\n") == 95
    notice = [r for r in records if r.shown and r.stream == STDERR and not r.end]
    assert len(notice) == 1
    assert "95 more lines of output from 'chatty' were not shown" in notice[0].text
    assert "client.logs('w1')" in notice[0].text
    assert "%snakepit logs w1" in notice[0].text


def test_one_write_of_many_lines_is_split_at_the_cap(hub: OutputHub) -> None:
    with installed(hub), hub.call({OUTPUT_KEY: "t4", CELL_LINES_KEY: "3"}, "bulk"):
        sys.stdout.write("".join(f"{i}\n" for i in range(10)))
    records = hub.drain()
    assert shown_text(records, STDOUT) == "0\n1\n2\n"
    assert "7 more lines" in shown_text(records, STDERR)


def test_pending_text_is_bounded_and_drops_are_counted() -> None:
    hub = OutputHub("w1", max_pending=1000)
    for i in range(500):
        hub.write(STDOUT, f"log-only {i}\n")
    records = hub.drain()
    kept = "".join(r.text for r in records)
    assert len(kept) <= 1000
    assert kept.endswith("log-only 499\n")  # the newest stay
    (count,) = [r for r in records if r.dropped_lines]
    assert count.dropped_lines + kept.count("\n") == 500


def test_batches_are_coalesced_and_paced() -> None:
    hub = OutputHub("w1", interval=0.05)

    async def run() -> list[int]:
        sizes: list[int] = []
        batches = hub.batches()

        async def produce() -> None:
            for i in range(200):
                hub.write(STDOUT, f"{i}\n")
                if i % 20 == 0:
                    await asyncio.sleep(0.01)

        producer = asyncio.create_task(produce())
        seen = 0
        async for batch in batches:
            assert batch.worker_id == "w1"
            sizes.append(len(batch.records))
            seen += sum(r.text.count("\n") for r in batch.records)
            if seen == 200:
                break
        await producer
        await batches.aclose()  # type: ignore[attr-defined]
        return sizes

    sizes = asyncio.run(run())
    # 200 writes became a handful of batches of one coalesced record each.
    assert len(sizes) < 20
    assert set(sizes) == {1}


def test_a_call_without_output_sends_nothing_and_settles_at_once(hub: OutputHub) -> None:
    with installed(hub), hub.call({OUTPUT_KEY: "quiet"}, "noop") as state:
        pass
    assert hub.drain() == []
    asyncio.run(hub.settle(state))


def test_settle_waits_for_the_kernels_acknowledgement_of_the_calls_end() -> None:
    hub = OutputHub("w1", interval=0.01)

    async def run(acknowledge: bool) -> tuple[list[str], float]:
        taken: list[str] = []
        reader_started = asyncio.Event()

        async def read() -> None:
            async for batch in hub.batches():
                reader_started.set()
                taken.extend("end" if r.end else r.text for r in batch.records)
                if acknowledge and any(r.end for r in batch.records):
                    hub.acknowledged(batch.seq)

        reader = asyncio.create_task(read())
        hub.write(STDOUT, "before any call\n")
        await reader_started.wait()
        with hub.call({OUTPUT_KEY: "t"}, "tool") as state:
            hub.write(STDOUT, "in the call\n")
        loop = asyncio.get_running_loop()
        started = loop.time()
        await hub.settle(state, timeout=0.5)
        waited = loop.time() - started
        # What the call wrote and its end are with the kernel before the call answers.
        result = list(taken)
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        return result, waited

    taken, waited = asyncio.run(run(acknowledge=True))
    assert taken[-2:] == ["in the call\n", "end"]
    assert waited < 0.4  # the acknowledgement, not the timeout, ended the wait
    _, waited = asyncio.run(run(acknowledge=False))
    assert 0.4 <= waited < 2.0  # no acknowledgement: bounded by the timeout
