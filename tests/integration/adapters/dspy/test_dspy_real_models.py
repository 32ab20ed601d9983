"""A real model's path, end to end: DSPy's own LM client over HTTP to an OpenAI-compatible
server of ours on 127.0.0.1 (``snakepit_nb.adapters.dspy.models.openai_server``), from
real workers.

Nothing of DSPy or LiteLLM is replaced; the server stands in for the provider. The workers run
with the offline guard armed, so any attempt to reach another host (a model-price list, a
provider) would fail the call and be logged.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from dspy_support import start_dspy_pool
from dspy_support import wait_for as wait_until_true

import snakepit_nb as sp
from snakepit_nb.adapters.dspy import DSPy
from snakepit_nb.adapters.dspy.models.openai_server import OpenAIStub

pytestmark = pytest.mark.integration


def wait_for(condition: Callable[[], Any], what: str) -> Any:
    """Until ``condition`` holds, counting a call that finds no live worker as not yet."""
    unavailable = (sp.WorkerUnavailableError, sp.RemoteToolError, sp.WorkerCrashedError)
    return wait_until_true(condition, 30.0, what, tolerate=unavailable)


def start_pool(tmp: Path, workers: int = 2) -> Any:
    return start_dspy_pool(tmp / "network.log", workers, DSPY_CACHEDIR=str(tmp / "dspy-cache"))


@pytest.fixture
def stub() -> Iterator[OpenAIStub]:
    with OpenAIStub() as server:
        yield server


def all_variable_text(session: Any) -> str:
    """Every value and every kept version of every variable in the session, as text."""
    parts = []
    for name in session.vars.keys():  # noqa: SIM118
        parts += [json.dumps(v.value, default=str) for v in session.vars.history(name)]
    return "\n".join(parts)


def kill_every_worker(client: Any) -> set[int]:
    pids = {w.pid for w in client.status().workers if w.pid}
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    return pids


def test_a_local_server_without_a_key_and_the_shared_cache(
    stub: OpenAIStub, tmp_path: Path
) -> None:
    client = start_pool(tmp_path)
    try:
        d = DSPy(client.session("local"))
        configured = d.configure_lm("openai/stub", api_base=stub.base_url, temperature=0.0)
        assert configured["cache"] is True
        assert configured["cache_dir"] == str(tmp_path / "dspy-cache")
        qa = d.program("qa", "question -> answer")
        first = qa.run({"question": "What is the capital of Peru?"})
        assert first["prediction"]["answer"] in ("Lima", "The answer is Lima.")
        sent = stub.chat_requests()
        assert len(sent) == 1
        assert sent[0].body["model"] == "stub"
        assert sent[0].headers["authorization"] == "Bearer EMPTY"  # no key needed, none sent
        assert "What is the capital of Peru?" in sent[0].body["messages"][-1]["content"]

        # The same call again, from another worker (the first one is killed): the answer
        # comes from the shared disk cache and no request reaches the server.
        os.kill(first["pid"], signal.SIGKILL)
        again = wait_for(
            lambda: (
                (r := qa.run({"question": "What is the capital of Peru?"}))["pid"] != first["pid"]
                and r
            ),
            what="a run on another worker",
        )
        assert again["prediction"] == first["prediction"]
        assert len(stub.chat_requests()) == 1
        assert d.cache_info()["entries"] >= 1
        # A different question does go out.
        qa.run({"question": "What is 7 * 6?"})
        assert len(stub.chat_requests()) == 2
    finally:
        client.close()

    # The cache outlives the pool: a new pool answers from it too; clearing empties it.
    client = start_pool(tmp_path, workers=1)
    try:
        d = DSPy(client.session("local-again"))
        d.configure_lm("openai/stub", api_base=stub.base_url, temperature=0.0)
        qa = d.program("qa", "question -> answer")
        assert qa(question="What is the capital of Peru?") == first["prediction"]
        assert len(stub.chat_requests()) == 2
        cleared = d.clear_cache()
        assert cleared["removed"] >= 2
        assert d.cache_info()["entries"] == 0
        qa(question="What is the capital of Peru?")
        assert len(stub.chat_requests()) == 3
    finally:
        client.close()
    assert not (tmp_path / "network.log").exists()


def test_keys_go_with_the_calls_and_are_never_stored(tmp_path: Path) -> None:
    with OpenAIStub(require_key="sk-test-in-memory") as stub:
        client = start_pool(tmp_path, workers=1)
        try:
            s = client.session("keys")
            d = DSPy(s)
            # A key given to configure_lm stays in the kernel's memory and goes with each call.
            d.configure_lm(
                "openai/stub", api_key="sk-test-in-memory", api_base=stub.base_url, cache=False
            )
            qa = d.program("qa", "question -> answer")
            assert qa(question="What is 2 + 3?")["answer"] in ("5", "The answer is 5.")
            assert stub.chat_requests()[-1].headers["authorization"] == "Bearer sk-test-in-memory"
            # A wrong key is the provider's refusal, named as such.
            with pytest.raises(sp.RemoteToolError, match=r"(?i)auth|401|invalid api key"):
                DSPy(s).program("qa", "question -> answer").run({"question": "What is 1 + 1?"})
            # The key is nowhere in the session: not in dspy.lm, the history or the results.
            assert "sk-test-in-memory" not in all_variable_text(s)
            assert "sk-test-in-memory" not in str(qa.inspect_history(5))
            assert "sk-test-in-memory" not in repr(d.credentials)
        finally:
            client.close()

    with OpenAIStub(require_key="sk-test-env-1") as stub:
        client = start_pool(tmp_path, workers=1)
        try:
            s = client.session("env-keys")
            d = DSPy(s)
            # A key from the kernel's environment, set after the workers started, read at
            # each call (so changing it takes effect on the next call).
            os.environ["SNAKEPIT_TEST_STUB_KEY"] = "sk-test-env-1"
            d.configure_lm(
                "openai/stub",
                api_base=stub.base_url,
                api_key_env="SNAKEPIT_TEST_STUB_KEY",
                cache=False,
            )
            qa = d.program("qa", "question -> answer")
            qa(question="What is 2 + 3?")
            assert stub.chat_requests()[-1].headers["authorization"] == "Bearer sk-test-env-1"
            stub.require_key = "sk-test-env-2"
            os.environ["SNAKEPIT_TEST_STUB_KEY"] = "sk-test-env-2"
            qa(question="What is 2 + 3?")
            assert stub.chat_requests()[-1].headers["authorization"] == "Bearer sk-test-env-2"
            assert s.vars["dspy.lm"]["api_key_env"] == "SNAKEPIT_TEST_STUB_KEY"
            assert "sk-test-env" not in all_variable_text(s)
        finally:
            os.environ.pop("SNAKEPIT_TEST_STUB_KEY", None)
            client.close()
    assert not (tmp_path / "network.log").exists()


def test_dspy_lm_options_pass_through_and_bad_ones_change_nothing(
    stub: OpenAIStub, tmp_path: Path
) -> None:
    client = start_pool(tmp_path, workers=1)
    try:
        s = client.session("options")
        d = DSPy(s)
        d.configure_lm(
            "openai/stub", api_base=stub.base_url, cache=False, top_p=0.25, max_tokens=64
        )
        assert s.vars["dspy.lm"]["options"] == {"top_p": 0.25}
        qa = d.program("qa", "question -> answer")
        qa(question="What is 8 * 8?")
        body = stub.chat_requests()[-1].body
        assert body["top_p"] == 0.25
        assert body.get("max_tokens", body.get("max_completion_tokens")) == 64
        before = s.vars.info("dspy.lm").version
        with pytest.raises(sp.RemoteToolError, match="looks like a secret"):
            d.configure_lm("openai/stub", api_base=stub.base_url, auth_token="t0ps3cret")
        with pytest.raises(sp.RemoteToolError, match="api_base must be a URL"):
            d.configure_lm("openai/stub", api_base="127.0.0.1:8000")
        assert s.vars.info("dspy.lm").version == before
        assert "t0ps3cret" not in all_variable_text(s)
    finally:
        client.close()


def test_streaming_over_http_and_history_that_survives_every_worker(
    stub: OpenAIStub, tmp_path: Path
) -> None:
    client = start_pool(tmp_path)
    try:
        d = DSPy(client.session("history"))
        d.configure_lm("openai/stub", api_base=stub.base_url, cache=False, temperature=0.0)
        qa = d.program("qa", "question -> answer", module="ChainOfThought")
        stream = qa.stream(question="What is the capital of Kenya?")
        tokens = [c for c in stream if c["type"] == "token"]
        assert stub.chat_requests()[-1].body.get("stream") is True  # server-sent events
        assert "".join(t["text"] for t in tokens if t["field"] == "answer").strip() in (
            "Nairobi",
            "The answer is Nairobi.",
        )
        qa(question="What is 12 + 30?")
        history = qa.inspect_history(2)
        assert len(history) == 2
        roles = [m["role"] for m in history[-1]["messages"]]
        assert roles[0] == "system"
        assert roles[-1] == "user"
        assert "What is 12 + 30?" in history[-1]["messages"][-1]["content"]
        assert "42" in history[-1]["outputs"][0]
        assert history[-1]["model"] == "openai/stub"
        assert history[-1]["usage"]["total_tokens"] > 0
        assert history[-1]["worker_id"]
        text, page = str(history), history._repr_html_()
        assert "System message:" in text
        assert "Response:" in text
        assert "What is the capital of Kenya?" in text
        assert "snakepit-dspy-history" in page
        assert "What is 12 + 30?" in page

        pids = kill_every_worker(client)
        wait_for(
            lambda: (
                {w.pid for w in client.status().workers if w.state == "ready"}.isdisjoint(pids)
                and len([w for w in client.status().workers if w.state == "ready"]) == 2
            ),
            what="two new workers",
        )
        # Kept by the orchestrator: the notebook reads it, and so does any new worker.
        assert qa.inspect_history(2) == history
        served = d.session.call("dspy.inspect_history", name="qa", n=2)
        assert served["pid"] not in pids
        assert served["calls"] == list(history)
    finally:
        client.close()
    assert not (tmp_path / "network.log").exists()
