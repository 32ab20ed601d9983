"""A small OpenAI-compatible HTTP server on 127.0.0.1 that answers with the fake model.

It lets a notebook (and the tests) take the path a real model takes, offline: DSPy's own LM
client, HTTP, server-sent events, keys, DSPy's disk cache. It speaks the parts of the
protocol DSPy's LM clients use (``POST /v1/chat/completions``,
plain JSON or server-sent events when ``"stream": true``, and ``GET /v1/models``) and answers
with the package's fake model, so the answers mean something. Every request is
recorded (path, headers, body): ``chat_requests()`` shows what reached "the provider" and the
credentials it carried. ``require_key`` makes it refuse requests without that key (HTTP 401).
It listens on loopback only.

>>> with OpenAIStub() as server:
...     url = server.base_url        # "http://127.0.0.1:<port>/v1"
...     # d.configure_lm("openai/stub", api_base=url) now talks to it
...     server.chat_requests()       # what it received
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .fake import FakeModel

__all__ = ["OpenAIStub", "Recorded"]


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


class OpenAIStub:
    """Start on ``__enter__`` (or ``start()``), stop on ``__exit__`` (or ``stop()``)."""

    def __init__(self, *, require_key: str | None = None, model_name: str = "stub") -> None:
        self.require_key = require_key
        self.model_name = model_name
        self.model = FakeModel(chunk_size=5)
        self._lock = threading.Lock()
        self.requests: list[Recorded] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> OpenAIStub:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return  # keep the test output clean

            def do_GET(self) -> None:
                stub._record(self, {})
                if self.path.rstrip("/").endswith("/models"):
                    self._json(200, {"object": "list", "data": [{"id": stub.model_name}]})
                else:
                    self._json(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    body = json.loads(self.rfile.read(length) or b"{}")
                except ValueError:
                    self._json(400, {"error": {"message": "the body is not JSON"}})
                    return
                stub._record(self, body)
                if stub.require_key is not None:
                    sent = self.headers.get("Authorization", "")
                    if sent != f"Bearer {stub.require_key}":
                        self._json(401, {"error": {"message": "invalid api key", "type": "auth"}})
                        return
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._json(404, {"error": {"message": f"no route {self.path}"}})
                    return
                text = stub._answer(body)
                if body.get("stream"):
                    self._sse(body, text)
                else:
                    self._json(200, stub._completion(body, text))

            def _json(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _sse(self, body: dict[str, Any], text: str) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.send_header("Connection", "close")
                self.end_headers()
                base = {
                    "id": "chatcmpl-stub",
                    "object": "chat.completion.chunk",
                    "created": int(time.time()),
                    "model": body.get("model", stub.model_name),
                }
                pieces = [{"role": "assistant", "content": ""}] + [
                    {"content": p} for p in stub.model.chunks(text)
                ]
                for delta in pieces:
                    chunk = {**base, "choices": [{"index": 0, "delta": delta}]}
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    self.wfile.flush()
                end = {
                    **base,
                    "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                    "usage": stub._usage(body, text),
                }
                self.wfile.write(f"data: {json.dumps(end)}\n\ndata: [DONE]\n\n".encode())
                self.wfile.flush()
                self.close_connection = True

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="openai-stub", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> OpenAIStub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("the server is not running; use `with OpenAIStub() as server:`")
        port = self._server.server_address[1]
        return f"http://127.0.0.1:{port}/v1"

    # -- what it received ------------------------------------------------------------------
    def _record(self, handler: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        with self._lock:
            self.requests.append(
                Recorded(handler.path, {k.lower(): v for k, v in handler.headers.items()}, body)
            )

    def chat_requests(self) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.path.rstrip("/").endswith("/chat/completions")]

    # -- answering -------------------------------------------------------------------------
    def _answer(self, body: dict[str, Any]) -> str:
        messages = list(body.get("messages") or [])
        system = ""
        if messages and messages[0].get("role") in ("system", "developer"):
            system = _text(messages.pop(0).get("content"))
        turns = [(str(m.get("role")), _text(m.get("content"))) for m in messages]
        temperature = float(body.get("temperature") or 0.0)
        return self.model.complete(system, turns, temperature)

    def _usage(self, body: dict[str, Any], text: str) -> dict[str, int]:
        prompt = sum(len(_text(m.get("content")).split()) for m in body.get("messages") or [])
        out = len(text.split())
        return {"prompt_tokens": prompt, "completion_tokens": out, "total_tokens": prompt + out}

    def _completion(self, body: dict[str, Any], text: str) -> dict[str, Any]:
        return {
            "id": "chatcmpl-stub",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", self.model_name),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
            "usage": self._usage(body, text),
        }
