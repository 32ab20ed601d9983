"""The kernel's output router: sinks by tag, the per-worker tails, and the wait for the end."""

from __future__ import annotations

import asyncio

import pytest

from snakepit_nb._errors import ConfigurationError
from snakepit_nb.orchestrator.output import OUTPUT_KEY, OutputRouter
from snakepit_nb.protocol import pb

OUT, ERR, LOG = pb.OutputRecord.STDOUT, pb.OutputRecord.STDERR, pb.OutputRecord.LOG


class Sink:
    def __init__(self) -> None:
        self.writes: list[tuple[str, str, str]] = []
        self.flushes = 0

    def write(self, worker_id: str, stream: str, text: str) -> None:
        self.writes.append((worker_id, stream, text))

    def flush(self) -> None:
        self.flushes += 1


def batch(worker: str, *records: pb.OutputRecord) -> pb.OutputBatch:
    return pb.OutputBatch(worker_id=worker, records=list(records))


def test_records_go_to_their_scope_and_every_line_to_the_tail() -> None:
    router = OutputRouter("cell", tail_lines=3)
    sink = Sink()
    scope = router.open(sink)
    assert scope.metadata == {OUTPUT_KEY: scope.tag}
    router.feed(
        batch(
            "w1",
            pb.OutputRecord(tag=scope.tag, stream=OUT, text="a\nb\n", shown=True, call=1),
            pb.OutputRecord(tag=scope.tag, stream=LOG, text="WARNING:x:y\n", shown=True, call=1),
            pb.OutputRecord(tag=scope.tag, stream=OUT, text="hidden\n", shown=False, call=1),
            pb.OutputRecord(tag="", stream=ERR, text="outside\n"),
            pb.OutputRecord(tag="other-tag", stream=OUT, text="not ours\n", shown=True),
        )
    )
    assert sink.writes == [("w1", "stdout", "a\nb\n"), ("w1", "stderr", "WARNING:x:y\n")]
    # The tail holds the last 3 lines of everything (stderr and logs marked "! ").
    assert router.logs("w1").splitlines() == ["hidden", "! outside", "not ours"]
    assert router.logs().splitlines()[0] == "[w1] hidden"
    assert router.logs("w9") == ""  # no output from that worker (yet)
    with pytest.raises(ValueError, match="positive whole number"):
        router.logs("w1", lines=0)


def test_partial_lines_wait_for_their_end_and_floods_stay_bounded() -> None:
    router = OutputRouter("log", tail_lines=5)
    router.feed(batch("w2", pb.OutputRecord(stream=OUT, text="par")))
    router.feed(batch("w2", pb.OutputRecord(stream=OUT, text="tial\n")))
    assert router.logs("w2") == "partial"
    flood = "".join(f"{i}\n" for i in range(200_000))
    router.feed(batch("w2", pb.OutputRecord(stream=OUT, text=flood)))
    assert router.logs("w2").splitlines() == [str(i) for i in range(199_995, 200_000)]
    router.feed(batch("w2", pb.OutputRecord(stream=LOG, dropped_lines=7)))
    assert "7 lines were dropped" in router.logs("w2", lines=1)


def test_log_mode_shows_nothing_in_the_cell() -> None:
    router = OutputRouter("log")
    sink = Sink()
    scope = router.open(sink)
    router.feed(batch("w1", pb.OutputRecord(tag=scope.tag, stream=OUT, text="x\n", shown=True)))
    assert sink.writes == []
    assert router.logs("w1") == "x"


def test_close_waits_for_the_end_of_calls_that_wrote() -> None:
    router = OutputRouter("cell")

    async def run() -> tuple[list[str], float]:
        sink = Sink()
        scope = router.open(sink)
        router.feed(batch("w1", pb.OutputRecord(tag=scope.tag, text="1\n", shown=True, call=4)))
        loop = asyncio.get_running_loop()
        started = loop.time()
        end = pb.OutputRecord(tag=scope.tag, text="2\n", shown=True, call=4)
        loop.call_later(
            0.05, router.feed, batch("w1", end, pb.OutputRecord(tag=scope.tag, end=True, call=4))
        )
        await router.close(scope)
        return [w[2] for w in sink.writes], loop.time() - started

    texts, waited = asyncio.run(run())
    assert texts == ["1\n", "2\n"]  # the late record arrived before close returned
    assert waited < 0.9  # the end marker, not the timeout, ended the wait


def test_close_of_a_quiet_scope_does_not_wait() -> None:
    router = OutputRouter("cell")

    async def run() -> float:
        scope = router.open(Sink())
        loop = asyncio.get_running_loop()
        started = loop.time()
        await router.close(scope, timeout=5)
        return loop.time() - started

    assert asyncio.run(run()) < 0.5


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="'cell', 'log', 'off'"):
        OutputRouter("loud")


def test_close_blocking_waits_on_a_caller_thread_for_records_fed_elsewhere() -> None:
    import threading

    router = OutputRouter("cell")
    sink = Sink()
    scope = router.open(sink)
    router.feed(batch("w1", pb.OutputRecord(tag=scope.tag, text="a\n", shown=True, call=1)))
    late = batch(
        "w1",
        pb.OutputRecord(tag=scope.tag, text="b\n", shown=True, call=1),
        pb.OutputRecord(tag=scope.tag, end=True, call=1),
    )
    feeder = threading.Timer(0.05, router.feed, (late,))
    feeder.start()
    router.close_blocking(scope, timeout=5)
    feeder.join()
    assert [w[2] for w in sink.writes] == ["a\n", "b\n"]
    assert sink.flushes == 1
