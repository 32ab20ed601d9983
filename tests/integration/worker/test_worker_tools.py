"""Tools a worker describes, tools defined from source text at run time, and telemetry events."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import grpc
import pytest
from test_worker_harness import (
    WorkerProcess,
    harness_fixture,
    worker_fixture,
)

from snakepit_nb.protocol import pb
from snakepit_nb.protocol.codec import decode_any

pytestmark = pytest.mark.integration

_harness = pytest.fixture(scope="module", name="harness")(harness_fixture)
_worker = pytest.fixture(scope="module", name="worker")(worker_fixture)


def describe(w: WorkerProcess) -> pb.DescribeToolsResponse:
    return w.run(
        lambda: w.stub.DescribeTools(pb.DescribeToolsRequest(), metadata=w.metadata, timeout=10)
    )


def test_describe_tools_reports_signatures_and_docstrings(worker: WorkerProcess) -> None:
    described = describe(worker)
    assert described.worker_id == "w1"
    assert described.pid == worker.pid
    assert described.adapter == "snakepit_nb.adapters.showcase:ShowcaseAdapter"
    tools = {t.name: t for t in described.tools}
    showcase = {"echo", "add", "slow", "count", "fail", "crash", "incr_var", "ask_kernel",
                "whoami", "sleep_sync", "spin", "spawn_child", "nbytes", "noop"}  # fmt: skip
    assert showcase <= tools.keys()
    add = tools["add"]
    assert add.description == "Add two numbers (integers stay integers)."
    assert [(p.name, p.type, p.required) for p in add.parameters] == [
        ("a", "float", True),
        ("b", "float", True),
    ]
    assert add.parameters[0].description == "the first number."
    assert add.metadata["idempotent"] == "true"
    assert add.metadata["source"] == "adapter"
    assert tools["slow"].metadata["async"] == "true"  # coroutine function
    assert tools["sleep_sync"].metadata["async"] == "false"
    count = tools["count"]
    assert count.supports_streaming
    # ctx is injected by the worker: not a parameter callers see.
    assert [p.name for p in count.parameters] == ["n", "delay"]
    assert decode_any(count.parameters[0].default_value) == 5
    assert not count.parameters[0].required


SQUARE = '''
import math

def square(x: int) -> int:
    """Square an integer."""
    return int(math.pow(x, 2))
'''


def test_define_tool_from_source_then_redefine_replaces_it(worker: WorkerProcess) -> None:
    defined = worker.define(SQUARE, "square")
    assert defined.success, defined.error_message
    assert defined.tool.name == "square"
    assert defined.tool.description == "Square an integer."
    assert [(p.name, p.type, p.required) for p in defined.tool.parameters] == [
        ("x", "integer", True)
    ]
    assert defined.tool.metadata["source"] == "cell"
    assert worker.call("square", x=7) == 49
    assert "square" in {t.name for t in describe(worker).tools}

    redefined = worker.define("def square(x: int) -> int:\n    return x ** 3\n", "square")
    assert redefined.success
    assert worker.call("square", x=3) == 27


@pytest.mark.parametrize(
    ("source", "error_type", "fragment"),
    [
        ("def broken(x:\n    return x\n", "SyntaxError", "broken"),
        ("import no_such_module_for_snakepit\n\ndef broken(x):\n    return x\n",
         "ModuleNotFoundError", "import no_such_module_for_snakepit"),
        ("def other(x):\n    return x\n", "InvalidArgumentError", "does not define 'broken'"),
        ("raise RuntimeError('at import')\n", "RuntimeError", "raise RuntimeError('at import')"),
    ],
)  # fmt: skip
def test_a_broken_definition_is_reported_with_its_traceback_and_changes_nothing(
    worker: WorkerProcess, source: str, error_type: str, fragment: str
) -> None:
    assert worker.define("def broken(x):\n    return 'old'\n", "broken").success
    before = [t.name for t in describe(worker).tools]
    failed = worker.define(source, "broken")
    assert not failed.success
    payload = json.loads(failed.error_message)
    assert payload["type"] == error_type
    assert fragment in payload["traceback"] or fragment in payload["message"]
    assert [t.name for t in describe(worker).tools] == before
    assert worker.call("broken", x=1) == "old"


def test_a_cell_tool_cannot_replace_an_adapter_tool(worker: WorkerProcess) -> None:
    failed = worker.define("def add(a, b):\n    return 0\n", "add")
    assert not failed.success
    assert "defined by the worker's adapter" in json.loads(failed.error_message)["message"]
    assert worker.call("add", a=1, b=2) == 3


def test_an_empty_source_removes_a_cell_tool(worker: WorkerProcess) -> None:
    assert worker.define("def temp():\n    return 1\n", "temp").success
    assert worker.call("temp") == 1
    assert worker.define("", name="temp").success
    err = worker.rpc_error(
        lambda: worker.stub.ExecuteTool(worker.request("temp"), metadata=worker.metadata)
    )
    assert err.code() is grpc.StatusCode.NOT_FOUND


def test_a_cell_tools_traceback_shows_the_cells_lines(worker: WorkerProcess) -> None:
    source = "def oops(n: int):\n    values = [1, 2]\n    return values[n]\n"
    assert worker.define(source, "oops").success
    response = worker.execute("oops", n=5)
    payload = json.loads(response.error_message)
    assert payload["type"] == "IndexError"
    assert "return values[n]" in payload["traceback"]
    assert "<snakepit-cell oops#" in payload["traceback"]


def test_the_worker_never_imports_ipython(worker: WorkerProcess) -> None:
    source = "import sys\n\ndef loaded() -> list:\n    return sorted(sys.modules)\n"
    assert worker.define(source, "loaded").success
    modules = worker.call("loaded")
    assert isinstance(modules, list)
    assert not [m for m in modules if m.split(".")[0] in ("IPython", "ipykernel", "ipywidgets")]


PROBE_SESSION = "telemetry-probe"


async def _collect_events(
    w: WorkerProcess, controls: list[pb.TelemetryControl], action: Any, until: Any
) -> list[pb.TelemetryEvent]:
    call = w.stub.StreamTelemetry(metadata=w.metadata)
    # Off first, the test's controls, then on: the worker applies a stream's controls in order,
    # so once a probe's event arrives, every control is in force.
    await call.write(pb.TelemetryControl(toggle=pb.TelemetryToggle(enabled=False)))
    for control in controls:
        await call.write(control)
    await call.write(pb.TelemetryControl(toggle=pb.TelemetryToggle(enabled=True)))
    probe = w.request("slow", seconds=0.0)  # a tool stop and a showcase.* event: passes all
    probe.session_id = PROBE_SESSION
    arrived: asyncio.Queue[pb.TelemetryEvent] = asyncio.Queue()

    async def read() -> None:  # one reader for the stream; the test waits on the queue
        while True:
            arrived.put_nowait(await call.read())

    reader = asyncio.ensure_future(read())
    events: list[pb.TelemetryEvent] = []
    try:
        async with asyncio.timeout(10):
            while arrived.empty():
                await w.stub.ExecuteTool(probe, metadata=w.metadata)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(_peek(arrived), 0.2)  # else: not yet subscribed
            await action()
            while not until(events):
                event = await arrived.get()
                if event.metadata.get("session_id") != PROBE_SESSION:
                    events.append(event)
    finally:
        reader.cancel()
        call.cancel()
    return events


async def _peek(queue: asyncio.Queue[pb.TelemetryEvent]) -> None:
    event = await queue.get()
    queue.put_nowait(event)  # only to know one came; probe events are skipped later


def _names(events: list[pb.TelemetryEvent]) -> list[str]:
    return [".".join(e.event_parts) for e in events]


def test_telemetry_reports_tool_start_stop_and_exception(worker: WorkerProcess) -> None:
    async def action() -> None:
        await worker.stub.ExecuteTool(worker.request("add", a=1, b=2), metadata=worker.metadata)
        await worker.stub.ExecuteTool(worker.request("fail"), metadata=worker.metadata)

    events = worker.run(
        _collect_events(worker, [], action, lambda ev: "snakepit.tool.exception" in _names(ev))
    )
    by_tool = [(".".join(e.event_parts), e.metadata["tool"]) for e in events]
    assert ("snakepit.tool.start", "add") in by_tool
    assert ("snakepit.tool.stop", "add") in by_tool
    assert ("snakepit.tool.exception", "fail") in by_tool
    stop = next(e for e in events if e.event_parts[-1] == "stop")
    assert stop.measurements["duration_ns"].int_value > 0
    assert stop.metadata["worker_id"] == "w1"
    failure = next(e for e in events if e.event_parts[-1] == "exception")
    assert failure.metadata["error_type"] == "ValueError"


def test_telemetry_filters_apply(worker: WorkerProcess) -> None:
    deny_start = pb.TelemetryControl(
        filter=pb.TelemetryEventFilter(allow=["snakepit.tool.*"], deny=["*.start"])
    )

    async def action() -> None:
        await worker.stub.ExecuteTool(worker.request("noop"), metadata=worker.metadata)
        await worker.stub.ExecuteTool(worker.request("echo", value=1), metadata=worker.metadata)

    events = worker.run(
        _collect_events(
            worker, [deny_start], action,
            lambda ev: [e.metadata.get("tool") for e in ev] == ["noop", "echo"],
        )
    )  # fmt: skip
    assert _names(events) == ["snakepit.tool.stop", "snakepit.tool.stop"]


def test_custom_telemetry_from_a_tool(worker: WorkerProcess) -> None:
    async def action() -> None:
        await worker.stub.ExecuteTool(worker.request("slow", seconds=0.2), metadata=worker.metadata)

    events = worker.run(
        _collect_events(
            worker,
            [pb.TelemetryControl(filter=pb.TelemetryEventFilter(allow=["showcase.*"]))],
            action,
            lambda ev: len(ev) >= 2,
        )
    )
    assert _names(events)[:2] == ["showcase.slow.progress", "showcase.slow.progress"]
    assert events[0].metadata["tool"] == "slow"
    assert events[1].measurements["fraction"].float_value == pytest.approx(1.0)
