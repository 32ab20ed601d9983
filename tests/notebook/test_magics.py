"""Every ``%snakepit`` subcommand and ``%%snakepit_tool`` in an in-process IPython shell,
against real worker processes (the showcase adapter), and every way to get them wrong."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

import snakepit_nb as sp
from snakepit_nb.notebook.reprs import WatchSnapshot
from snakepit_nb.notebook.runtime import runtime_for

pytestmark = pytest.mark.notebook


@pytest.fixture(scope="module")
def ip() -> Iterator[InteractiveShell]:
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "snakepit_nb")
    yield shell
    shell.run_line_magic("unload_ext", "snakepit_nb")


@pytest.fixture(scope="module")
def running(ip: InteractiveShell) -> Iterator[InteractiveShell]:
    ip.run_line_magic("snakepit", "start -n 1 --startup-timeout 60")
    yield ip
    runtime_for(ip).stop()


def magic(ip: InteractiveShell, line: str) -> Any:
    return ip.run_line_magic("snakepit", line)


def worker_pids(ip: InteractiveShell) -> list[int]:
    client = runtime_for(ip).client
    return [w.pid for w in client.status().workers if w.pid]


# -- loading ------------------------------------------------------------------------------
def test_load_is_cheap_idempotent_and_starts_no_pool():
    shell = InteractiveShell.instance()
    started = time.monotonic()
    shell.run_line_magic("load_ext", "snakepit_nb")
    shell.run_line_magic("load_ext", "snakepit_nb")  # "already loaded": a no-op
    assert time.monotonic() - started < 2.0
    assert "snakepit" in shell.magics_manager.magics["line"]
    assert "snakepit_tool" in shell.magics_manager.magics["cell"]
    assert runtime_for(shell).client is None


def test_unload_stops_the_pool_and_reload_gives_a_fresh_runtime():
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "snakepit_nb")
    shell.run_line_magic("snakepit", "start -n 1")
    pids = worker_pids(shell)
    assert pids
    assert all(psutil.pid_exists(p) for p in pids)
    shell.run_line_magic("reload_ext", "snakepit_nb")
    _wait_gone(pids)
    assert runtime_for(shell).client is None
    shell.run_line_magic("snakepit", "start -n 1")
    pids = worker_pids(shell)
    shell.run_line_magic("unload_ext", "snakepit_nb")
    _wait_gone(pids)
    with pytest.raises(UsageError, match="unloaded"):
        shell.run_line_magic("snakepit", "status")
    shell.run_line_magic("load_ext", "snakepit_nb")


def _wait_gone(pids: list[int], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in pids):
        assert time.monotonic() < deadline, f"workers {pids} still alive"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# -- pool -----------------------------------------------------------------------------------
def test_start_status_tools_and_config(running: InteractiveShell):
    ip = running
    with pytest.raises(UsageError, match="already running"):
        magic(ip, "start")
    status = magic(ip, "status --once")
    assert repr(status).startswith("<ClientStatus ")
    assert "1 workers" in repr(status)
    assert len(status.workers) == 1
    assert status.workers[0].state in ("ready", "busy")
    tools = magic(ip, "tools")
    assert {"add", "count", "echo"} <= {t.name for t in tools}
    assert "<table" in tools._repr_html_()
    spec = magic(ip, "tools add")
    assert spec.name == "add"
    settings = magic(ip, "config --ui-hz 5 --tail-lines 30")
    assert settings["ui_hz"] == 5
    assert settings["tail_lines"] == 30
    with pytest.raises(UsageError, match=r"between 0\.5 and 30"):
        magic(ip, "config --ui-hz 100")
    assert magic(ip, "config")["ui_hz"] == 5  # a refused change changed nothing
    magic(ip, "config --ui-hz 10 --tail-lines 12")


def test_usage_errors_carry_the_usage_line(running: InteractiveShell):
    ip = running
    with pytest.raises(UsageError, match="unknown subcommand 'strat'"):
        magic(ip, "strat")
    with pytest.raises(UsageError, match="usage: %snakepit call"):
        magic(ip, "call")
    with pytest.raises(UsageError, match="unrecognized arguments: 1 2"):
        magic(ip, "call add 1 2")
    with pytest.raises(UsageError, match="usage: %snakepit start"):
        magic(ip, "start -n zero")
    with pytest.raises(UsageError, match="name=value arguments are for call and stream"):
        magic(ip, "status a=1")
    with pytest.raises(UsageError, match="unclosed bracket"):
        magic(ip, "call echo value=[1,")
    with pytest.raises(UsageError, match="names no notebook variable"):
        magic(ip, "call echo value={not_defined_anywhere}")
    with pytest.raises(UsageError, match="given twice"):
        magic(ip, "call add a=1 a=2 b=3")
    with pytest.raises(UsageError, match="dspy history takes PROGRAM"):
        magic(ip, "dspy history")
    with pytest.raises(UsageError, match="at least 1"):
        magic(ip, "dspy history qa -n 0")
    # No DSPy program has run in this session: an empty history that says so.
    assert str(magic(ip, "dspy history qa")) == "no calls recorded for program 'qa' yet"
    with pytest.raises(
        UsageError, match=r"unknown subcommand 'stauts' \(did you mean 'status'\?\)"
    ):
        magic(ip, "stauts")


SUBCOMMANDS = ("start", "stop", "status", "tools", "config", "session", "call", "stream", "var")


def test_help_lists_every_subcommand_with_a_real_description(
    ip: InteractiveShell, capsys: pytest.CaptureFixture[str]
):
    for line in ("", "--help", "-h", "help"):
        assert magic(ip, line) is None
        out = capsys.readouterr().out
        assert "::" not in out, line
        for name in SUBCOMMANDS:
            described = [row for row in out.splitlines() if row.startswith(f"  {name} ")]
            assert described, (line, name)
            assert len(described[0].split(None, 1)[1]) > 15, described  # a sentence, not "::"
        assert "Call a tool and return its value" in out
        assert "%%snakepit_tool" in out
    magic(ip, "help call")
    out = capsys.readouterr().out
    assert out.startswith("usage: %snakepit call")
    assert "--timeout" in out
    magic(ip, "call --help")
    assert capsys.readouterr().out.startswith("usage: %snakepit call")
    magic(ip, "help %%snakepit_tool")
    assert "--stream" in capsys.readouterr().out
    with pytest.raises(UsageError, match=r"no subcommand 'cal' \(did you mean 'call'\?\)"):
        magic(ip, "help cal")


# -- calls -----------------------------------------------------------------------------------
def test_call_parses_literals_and_expands_notebook_variables(running: InteractiveShell):
    ip = running
    assert magic(ip, "call add a=1 b=2") == 3
    assert magic(ip, "call echo value=hello") == "hello"
    assert magic(ip, 'call echo value="5"') == "5"
    assert magic(ip, "call echo value=5") == 5
    assert magic(ip, "call echo value=None") is None
    assert magic(ip, "call echo value={'a': [1, 2.5, None], 'b': True}") == {
        "a": [1, 2.5, None],
        "b": True,
    }
    ip.user_ns["data"] = {"k": [1, 2, 3]}
    ip.user_ns["who"] = "world"
    assert magic(ip, "call echo value={data}") == {"k": [1, 2, 3]}
    assert magic(ip, "call echo value={data['k']}") == [1, 2, 3]
    with pytest.raises(UsageError, match="subscripts are literals"):
        magic(ip, "call echo value={data[k]}")
    assert magic(ip, "call echo value=hello-{who}") == "hello-world"
    ip.user_ns["tool_name"] = "add"
    assert magic(ip, "call {tool_name} a=2 b=2") == 4


def test_a_hash_that_starts_a_word_is_a_comment(running: InteractiveShell):
    ip = running
    assert magic(ip, "call add a=1 b=2   # three") == 3
    assert magic(ip, "call echo value='a # b'  # the quoted one stays") == "a # b"
    assert magic(ip, "call echo value=x#y") == "x#y"  # inside a word: not a comment


def test_assignment_from_a_magic(running: InteractiveShell):
    ip = running
    result = ip.run_cell("x = %snakepit call add a=2 b=3")
    assert result.success
    assert ip.user_ns["x"] == 5


def test_errors_keep_their_type_and_show_the_remote_traceback(running: InteractiveShell):
    ip = running
    with pytest.raises(sp.RemoteToolError) as info:
        magic(ip, "call fail message=boom kind=KeyError")
    lines = info.value._render_traceback_()
    assert lines[0].startswith("RemoteToolError: KeyError raised in tool 'fail'")
    assert any("boom" in line for line in lines)
    with pytest.raises(sp.ToolNotFoundError) as missing:
        magic(ip, "call no_such_tool")
    assert missing.value._render_traceback_() == [f"ToolNotFoundError: {missing.value}"]
    # The worker survived both.
    assert magic(ip, "call add a=1 b=1") == 2


def test_a_timeout_option_is_a_deadline(running: InteractiveShell):
    with pytest.raises(sp.CallTimeoutError):
        magic(running, "call slow seconds=5 --timeout 0.3")
    assert magic(running, "call add a=1 b=1") == 2


def test_interrupt_cancels_the_remote_call_and_the_next_call_works(running: InteractiveShell):
    ip = running
    # A real SIGINT to this process (not the group), as ipykernel delivers an interrupt.
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt) as info:
        magic(ip, "call slow seconds=10")
    assert time.monotonic() - started < 5
    assert str(info.value) == "call 'slow' cancelled"
    assert info.value._render_traceback_() == [  # type: ignore[attr-defined]
        "call 'slow' cancelled (KeyboardInterrupt)"
    ]
    pids = worker_pids(ip)
    assert magic(ip, "call add a=1 b=2") == 3
    assert worker_pids(ip) == pids  # the same worker, not a replacement
    status = magic(ip, "status --once")
    assert status.workers[0].in_flight == 0


def test_interrupt_cancels_a_blocking_stream(running: InteractiveShell):
    ip = running
    timer = threading.Timer(0.7, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        magic(ip, "stream count n=1000 delay=0.05")
    assert time.monotonic() - started < 5
    handle = runtime_for(ip).streams[-1]
    assert handle.status == "cancelled"
    assert 0 < len(handle.chunks) < 1000
    assert magic(ip, "status --once").workers[0].in_flight == 0
    assert magic(ip, "call add a=1 b=2") == 3


# -- streams ---------------------------------------------------------------------------------
def test_stream_returns_a_handle_with_every_chunk_and_the_value(running: InteractiveShell):
    ip = running
    h = magic(ip, "stream count n=5")
    assert h.status == "done"
    assert h.result == 5
    assert h.value == 5
    assert [c["i"] for c in h.chunks] == [0, 1, 2, 3, 4]
    assert "count: done, 5 chunks" in repr(h)
    bg = magic(ip, "stream count n=300 delay=0.001 --bg")
    magic(ip, "wait --timeout 30")
    assert bg.done()
    assert len(bg.chunks) == 300
    assert bg.value == 300
    with pytest.raises(sp.RemoteToolError):
        magic(ip, "stream fail")
    # --keep N: the handle (and the stream under it) hold the last N chunks only.
    kept = magic(ip, "stream count n=500 --keep 5")
    assert [c["i"] for c in kept.chunks] == [495, 496, 497, 498, 499]
    assert kept.received == 500
    assert kept.value == 500
    assert "count: done, 500 chunks" in repr(kept)
    with pytest.raises(UsageError, match="--keep must be a number of chunks >= 0"):
        magic(ip, "stream count n=3 --keep -1")


# -- sessions --------------------------------------------------------------------------------
def test_sessions_new_use_list_info_close(running: InteractiveShell):
    ip = running
    s = magic(ip, "session new exp-a")
    assert s.id == "exp-a"
    assert runtime_for(ip).current_session == "exp-a"
    magic(ip, "call add a=1 b=1")
    info = magic(ip, "session info")
    assert info.session_id == "exp-a"
    assert repr(info).startswith("<SessionInfo session 'exp-a': 1 calls (0 failed)")
    magic(ip, "session new exp-b")
    magic(ip, "session use exp-a")
    assert runtime_for(ip).current_session == "exp-a"
    listed = magic(ip, "session list")
    assert {"exp-a", "exp-b"} <= {i.session_id for i in listed}
    assert "current" in listed._repr_html_()
    with pytest.raises(UsageError, match="no session 'nope'"):
        magic(ip, "session use nope")
    magic(ip, "session close exp-a")
    assert runtime_for(ip).current_session == "notebook"
    assert "exp-a" not in {i.session_id for i in magic(ip, "session list")}
    with pytest.raises(UsageError):
        magic(ip, "session frobnicate")


# -- variables -------------------------------------------------------------------------------
def test_variables_set_get_list_history_rollback_del(running: InteractiveShell):
    ip = running
    magic(ip, "session new vars-test")
    rec = magic(ip, "var set temperature 0.7 --type float --min 0 --max 2")
    assert rec.value == 0.7
    assert rec.constraints["max"] == 2
    magic(ip, "var set temperature 0.9")
    ip.user_ns["t"] = 1.1
    magic(ip, "var set temperature {t}")
    assert magic(ip, "var get temperature") == 1.1
    with pytest.raises(sp.ConstraintViolationError):
        magic(ip, "var set temperature 5")
    assert magic(ip, "var get temperature") == 1.1  # refused: nothing changed
    with pytest.raises(sp.VersionConflictError):
        magic(ip, "var set temperature 0.1 --expected-version 1")
    history = magic(ip, "var history temperature")
    assert [v.value for v in history] == [0.7, 0.9, 1.1]
    assert repr(history).splitlines()[0] == "history of 'temperature' (3 versions, oldest first):"
    assert "<svg" in history._repr_html_()
    assert [v.value for v in magic(ip, "var history temperature -n 2")] == [0.9, 1.1]
    back = magic(ip, "var rollback temperature 1")
    assert back.value == 0.7
    assert back.version == 4
    magic(ip, "var set tags ['a', 'b']")
    listed = magic(ip, "var list")
    assert "<Variable tags: " in repr(listed)
    names = {r.name for r in listed}
    assert names == {"temperature", "tags"}
    # Without a kernel the watch is a snapshot table.
    assert {r.name for r in magic(ip, "var watch temperature")} == {"temperature"}
    magic(ip, "var del tags")
    with pytest.raises(sp.VariableNotFoundError):
        magic(ip, "var get tags")
    with pytest.raises(UsageError, match="var set takes NAME VALUE"):
        magic(ip, "var set lonely")
    with pytest.raises(UsageError, match="whole number"):
        magic(ip, "var rollback temperature latest")
    magic(ip, "session use notebook")


# -- %%snakepit_tool ---------------------------------------------------------------------------
def cell(ip: InteractiveShell, line: str, body: str) -> Any:
    return ip.run_cell_magic("snakepit_tool", line, body)


def test_var_watch_follow_prints_each_change_until_its_count(
    running: InteractiveShell, capsys: pytest.CaptureFixture[str]
):
    ip = running
    magic(ip, "session new follow")
    magic(ip, "var set level 0 --type integer")
    s = runtime_for(ip).session()
    stop = threading.Event()

    def write() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            s.vars["level"] = i

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        final = magic(ip, "var watch level --follow --count 3")
    finally:
        stop.set()
        writer.join(10)
    out = capsys.readouterr().out
    assert "following level of session 'follow' until Ctrl-C or 3 changes" in out
    lines = [line for line in out.splitlines() if " level = " in line]
    # The current value first (not counted), then the three changes, in order.
    assert len(lines) == 4, out
    assert "current)" in lines[0]
    assert not any("current" in line for line in lines[1:])
    values = [int(re.search(r"level = (\d+)  \(v\d+, by kernel", line)[1]) for line in lines]
    assert values == sorted(values)
    assert values[1] > values[0]
    assert isinstance(final, WatchSnapshot)
    (record,) = final
    assert record.value >= values[-1]
    assert final.stop() is None  # the same code runs where the watch is live

    # Nothing changes: the timeout ends it, after the current value.
    magic(ip, "var watch level --follow --timeout 0.2")
    out = capsys.readouterr().out
    assert "until Ctrl-C or 0.2 s" in out
    assert [line for line in out.splitlines() if " level = " in line] == [
        next(line for line in out.splitlines() if "current)" in line)
    ]
    with pytest.raises(UsageError, match="go with var watch --follow"):
        magic(ip, "var watch level --count 2")
    with pytest.raises(UsageError, match="--count must be at least 1"):
        magic(ip, "var watch level --follow --count 0")
    with pytest.raises(sp.VariableNotFoundError, match="nope"):
        magic(ip, "var watch nope --follow")
    magic(ip, "session use notebook")


def test_cell_defined_tools_are_defined_replaced_and_streamed(running: InteractiveShell):
    ip = running
    spec = cell(
        ip,
        "",
        "import math\n\ndef hyp(a: float, b: float) -> float:\n"
        '    """Length of the hypotenuse."""\n    return math.hypot(a, b)\n',
    )
    assert spec.name == "hyp"
    assert spec.kind == "cell"
    assert repr(spec) == "<ToolSpec cell tool hyp(a: float, b: float) — Length of the hypotenuse.>"
    assert ip.display_formatter.format(spec)[0]["text/plain"].startswith(
        "cell tool hyp(a: float, b: float)\n  Length of the hypotenuse.\n    a: float (required)"
    )
    assert magic(ip, "call hyp a=3 b=4") == 5.0
    cell(ip, "hyp", "def other(a, b):\n    return a * b\n")
    assert magic(ip, "call hyp a=3 b=4") == 12  # replaced everywhere
    cell(ip, "--stream", "def letters(word: str):\n    for ch in word:\n        yield ch\n")
    h = magic(ip, "stream letters word=abc")
    assert h.chunks == ["a", "b", "c"]
    assert h.value == "abc"


def test_cell_tool_errors_change_nothing(running: InteractiveShell):
    ip = running
    cell(ip, "", "def keep():\n    return 'v1'\n")
    with pytest.raises(SyntaxError):
        cell(ip, "keep", "def keep(:\n    return 'v2'\n")
    with pytest.raises(sp.RemoteToolError) as info:
        cell(ip, "keep", "import not_a_module_anywhere\n\ndef keep():\n    return 'v3'\n")
    assert "not_a_module_anywhere" in "\n".join(info.value._render_traceback_())
    assert magic(ip, "call keep") == "v1"
    with pytest.raises(UsageError, match="needs a generator"):
        cell(ip, "--stream", "def plain():\n    return 1\n")
    with pytest.raises(UsageError, match="defines no function"):
        cell(ip, "", "x = 1\n")


def test_kernel_tools_run_in_the_kernel_and_workers_call_them(running: InteractiveShell):
    ip = running
    ip.user_ns["scale"] = 10
    spec = cell(ip, "--kernel", "def scaled(x: int) -> int:\n    return x * scale\n")
    assert spec.kind == "kernel"
    assert ip.user_ns["scaled"](2) == 20  # defined in the notebook too
    assert magic(ip, "call ask_kernel tool=scaled x=4") == 40
    ip.user_ns["scale"] = 3
    assert magic(ip, "call ask_kernel tool=scaled x=4") == 12


def test_reload_replaces_the_workers_and_keeps_cell_tools_and_variables(
    running: InteractiveShell, capsys: pytest.CaptureFixture[str]
):
    ip = running
    cell(ip, "", "def tripled(x: int) -> int:\n    return 3 * x\n")
    magic(ip, "var set kept_across 7")
    before = worker_pids(ip)
    replaced = magic(ip, "reload")
    assert replaced == ["w1"]
    assert repr(replaced) == "reloaded: w1"
    assert "snakepit: reloaded w1" in capsys.readouterr().out
    assert set(worker_pids(ip)).isdisjoint(before)
    assert magic(ip, "call tripled x=5") == 15
    assert magic(ip, "var get kept_across") == 7


# -- last: this one stops the module's pool ---------------------------------------------------
def test_an_implicit_start_says_so_and_a_second_start_offers_restart(
    running: InteractiveShell, capsys: pytest.CaptureFixture[str]
):
    ip = running
    rt = runtime_for(ip)
    rt.stop()
    capsys.readouterr()
    rt.settings.workers = 1
    tools = magic(ip, "tools")
    assert "add" in {t.name for t in tools}
    said = capsys.readouterr().out
    assert "no pool was running, so this starts one: 1 workers" in said
    assert "%snakepit start --restart" in said
    with pytest.raises(UsageError) as info:
        magic(ip, "start -n 1")
    text = str(info.value)
    assert "a pool is already running" in text
    assert "started with the defaults by an earlier %snakepit command" in text
    assert "add --restart" in text
    client = magic(ip, "start -n 1 --restart")
    assert client is rt.client
    assert not rt.implicit
    with pytest.raises(UsageError, match=r"started with %snakepit start\); add --restart"):
        magic(ip, "start")
    rt.settings.workers = 2
