"""What tools print reaches the cell that called them: a real kernel through jupyter_client.

stdout as stdout, stderr and ``logging`` warnings as stderr, in the calling cell's messages
(also for a call made from a thread the cell started); a 200,000-line flood is capped and
coalesced, and the next cell runs at once; ``%snakepit logs`` reads a worker's tail.
"""

from __future__ import annotations

import json
import time

import pytest
from kernels import Kernel

pytestmark = [pytest.mark.notebook, pytest.mark.slow]

CHATTY = """%%snakepit_tool
import logging, sys

def chatty(n: int = 3, tag: str = "x"):
    for i in range(n):
        print(f"{tag} out {i}")
    print(f"{tag} to stderr", file=sys.stderr)
    logging.getLogger("user.lib").warning(f"{tag} careful")
    logging.getLogger("user.lib").info(f"{tag} not at INFO")
    return n
"""


CHATTY_STREAM = """%%snakepit_tool
import sys

def chatty_stream(n: int = 3):
    for i in range(n):
        print(f"stream out {i}")
        yield i
    print("stream done", file=sys.stderr)
"""


def streams(messages: list[dict], parent: str) -> list[tuple[str, str]]:
    return [
        (m["content"]["name"], m["content"]["text"])
        for m in messages
        if m["msg_type"] == "stream" and m["parent_header"].get("msg_id") == parent
    ]


def test_prints_stderr_and_logging_reach_the_calling_cell(kernel: Kernel) -> None:
    reply, _ = kernel.execute("%snakepit start -n 1")
    assert reply["status"] == "ok", reply
    reply, _ = kernel.execute(CHATTY)
    assert reply["status"] == "ok", reply

    msg_id = kernel.kc.execute("x = %snakepit call chatty n=3 tag=cell")
    reply, messages = kernel.collect(msg_id, 60)
    assert reply["status"] == "ok", reply
    shown = streams(messages, msg_id)
    stdout = "".join(t for n, t in shown if n == "stdout")
    stderr = "".join(t for n, t in shown if n == "stderr")
    assert stdout == "cell out 0\ncell out 1\ncell out 2\n"  # in order, no prefix (1 worker)
    assert "cell to stderr\n" in stderr
    assert "WARNING:user.lib:cell careful\n" in stderr
    assert "not at INFO" not in stdout + stderr
    assert kernel.value("x") == 3

    # From a thread the cell started: still this cell's output.
    code = (
        "import threading\n"
        "from snakepit_nb.notebook.runtime import runtime_for\n"
        "_s = runtime_for(get_ipython()).session()\n"
        "_t = threading.Thread(target=lambda: _s.call('chatty', n=2, tag='thread'))\n"
        "_t.start(); _t.join()\n"
    )
    msg_id = kernel.kc.execute(code)
    reply, messages = kernel.collect(msg_id, 60)
    assert reply["status"] == "ok", reply
    stdout = "".join(t for n, t in streams(messages, msg_id) if n == "stdout")
    assert stdout == "thread out 0\nthread out 1\n"

    # The worker's tail has all of it, stderr and logging marked.
    reply, messages = kernel.execute("%snakepit logs w1 -n 4")
    assert reply["status"] == "ok", reply
    data = [m["content"]["data"] for m in messages if m["msg_type"] == "execute_result"]
    assert data
    text = data[0]["text/plain"]
    assert "! thread to stderr" in text
    assert "! WARNING:user.lib:thread careful" in text


def test_a_streaming_tools_output_reaches_the_cell_that_reads_the_stream(kernel: Kernel) -> None:
    reply, _ = kernel.execute("%snakepit start -n 1")
    assert reply["status"] == "ok", reply
    reply, _ = kernel.execute(CHATTY_STREAM)
    assert reply["status"] == "ok", reply
    code = (
        "from snakepit_nb.notebook.runtime import runtime_for\n"
        "_chunks = list(runtime_for(get_ipython()).session().stream('chatty_stream', n=3))\n"
    )
    msg_id = kernel.kc.execute(code)
    reply, messages = kernel.collect(msg_id, 60)
    assert reply["status"] == "ok", reply
    shown = streams(messages, msg_id)
    stdout = "".join(t for n, t in shown if n == "stdout")
    stderr = "".join(t for n, t in shown if n == "stderr")
    # All of it, in order, in this cell, by the time the iteration ended.
    assert stdout == "stream out 0\nstream out 1\nstream out 2\n"
    assert stderr == "stream done\n"
    assert kernel.value("_chunks") == [0, 1, 2]


def test_a_maps_items_print_into_the_calling_cell(kernel: Kernel) -> None:
    reply, _ = kernel.execute("%snakepit start -n 1")
    assert reply["status"] == "ok", reply
    code = (
        "from snakepit_nb.notebook.runtime import runtime_for\n"
        "def shout(i):\n"
        "    print(f'item {i}')\n"
        "    return i * i\n"
        "_r = runtime_for(get_ipython()).session().map(shout, range(5))\n"
    )
    msg_id = kernel.kc.execute(code)
    reply, messages = kernel.collect(msg_id, 60)
    assert reply["status"] == "ok", reply
    stdout = "".join(t for n, t in streams(messages, msg_id) if n == "stdout")
    assert stdout == "".join(f"item {i}\n" for i in range(5))
    assert kernel.value("_r") == [0, 1, 4, 9, 16]


def test_a_200k_line_flood_is_capped_coalesced_and_the_next_cell_runs_at_once(
    kernel: Kernel,
) -> None:
    reply, _ = kernel.execute("%snakepit start -n 1")
    assert reply["status"] == "ok", reply
    reply, _ = kernel.execute(
        "%%snakepit_tool\n"
        "def flood(n: int = 200000):\n"
        "    for i in range(n):\n"
        "        print(f'line {i} of the flood')\n"
        "    return n\n"
    )
    assert reply["status"] == "ok", reply
    msg_id = kernel.kc.execute("%snakepit call flood n=200000")
    reply, messages = kernel.collect(msg_id, 120)
    assert reply["status"] == "ok", reply
    shown = streams(messages, msg_id)
    total_bytes = sum(len(json.dumps(m["content"])) for m in messages)
    text = "".join(t for _, t in shown)
    print(f"200k-line flood: {len(messages)} messages, {total_bytes} bytes, {len(shown)} streams")
    assert len(messages) < 300
    assert total_bytes < 2 * 2**20
    assert "line 0 of the flood\n" in text
    assert "line 999 of the flood\n" in text
    assert "line 1000 of the flood" not in text
    assert "199,000 more lines of output from 'flood' were not shown" in text
    assert "%snakepit logs w1" in text

    # The kernel is responsive at once, and the tail kept the end of the flood.
    started = time.monotonic()
    reply, _ = kernel.execute("1 + 1", timeout=30)
    assert reply["status"] == "ok"
    assert time.monotonic() - started < 2.0
    tail = kernel.value("str(get_ipython().run_line_magic('snakepit', 'logs w1 -n 2'))")
    assert tail.splitlines()[0] == "line 199999 of the flood"
    assert "199,000 more lines" in tail.splitlines()[1]  # the notice is in the tail too
