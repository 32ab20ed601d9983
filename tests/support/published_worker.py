"""A stand-alone worker that speaks ONLY the published Snakepit bridge's conventions.

Written from docs/PROTOCOL.md and the research notes on the published ``snakepit_bridge``
worker (v0.6.11 - v0.13), to check that our orchestrator runs an unmodified published worker:

- argv: ``--adapter pkg.module.Class --port 0 --elixir-address HOST:PORT --snakepit-run-id X``;
  unknown flags are accepted and ignored;
- it pings the orchestrator first and exits 1 if it never answers;
- the ready file gets a *bare port*, written atomically (``.tmp``, fsync, rename);
- no runtime token is sent or checked;
- every ExecuteTool/ExecuteStreamingTool first calls InitializeSession on the orchestrator, and
  RegisterTools once per session (worker id ``python-<id>``); Heartbeat every 2 s;
- values in ``Any`` are JSON labelled ``snakepit.<type>``, ints go out as floats (``42.0``),
  ``None`` as the string ``"None"``, anything else as ``str()``;
- tool errors are ``success=false`` with a JSON payload; a streaming error aborts INTERNAL with
  that payload; chunks are one per message (JSON / UTF-8), then an empty final chunk;
- CallChannel, DefineTool and DescribeTools (our additions) answer UNIMPLEMENTED.

It binds 127.0.0.1 (the published one binds every interface; tests must stay on loopback).
This file imports only grpc and the generated stubs, never snakepit_nb's own worker code.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
import traceback
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import grpc
import grpc.aio
from google.protobuf.any_pb2 import Any as PbAny

from snakepit_nb.protocol._generated import snakepit_bridge_pb2 as pb
from snakepit_nb.protocol._generated import snakepit_bridge_pb2_grpc as pb_grpc

LABEL = "type.googleapis.com/snakepit."


# ------------------------------------------------------------------ the published encoding


def decode_any(value: PbAny) -> Any:
    """TypeSerializer.decode_any: the label's last segment is a hint; the value is JSON."""
    hint = value.type_url.rsplit("/", 1)[-1].rsplit(".", 1)[-1]
    if not value.value:
        return None
    data = json.loads(value.value.decode("utf-8"))
    if hint == "float" and isinstance(data, str):
        return float(data.replace("Infinity", "inf"))
    return data


def encode_any(result: Any) -> PbAny:
    """grpc_server.py's result inference: ints become floats, None becomes "None"."""
    if isinstance(result, bool):
        label, data = "boolean", result
    elif isinstance(result, dict):
        label, data = "map", result
    elif isinstance(result, str):
        label, data = "string", result
    elif isinstance(result, int | float):
        label, data = "float", float(result)
    elif isinstance(result, list):
        label, data = "list", result
    else:
        label, data = "string", str(result)
    return PbAny(type_url=LABEL + label, value=json.dumps(data).encode("utf-8"))


def error_json(exc: BaseException, tool: str, session_id: str) -> str:
    return json.dumps(
        {
            "type": type(exc).__name__,
            "message": str(exc),
            "stacktrace": traceback.format_tb(exc.__traceback__),
            "traceback": "".join(traceback.format_exception(exc)),
            "context": {"tool_name": tool, "session_id": session_id},
        }
    )


def chunk_bytes(value: Any) -> bytes:
    if value is None:
        return b""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    return json.dumps(value).encode("utf-8")


# ------------------------------------------------------------------ the adapter


class PublishedShowcase:
    """Tools in the published adapter style (a dispatcher over plain methods)."""

    tools: ClassVar[dict[str, tuple[str, bool]]] = {
        "echo": ("Echo the arguments back", False),
        "add": ("Add two numbers", False),
        "fail": ("Raise an error", False),
        "whoami": ("The worker's pid", False),
        "wait": ("Sleep for seconds, without blocking the server", False),
        "stream_data": ("Stream count items", True),
        "stream_fail": ("Stream then raise", True),
    }

    def execute_tool(self, tool_name: str, arguments: dict[str, Any]) -> Any:
        if tool_name == "echo":
            return arguments.get("value", arguments)
        if tool_name == "add":
            return arguments["a"] + arguments["b"]
        if tool_name == "fail":
            raise ValueError(arguments.get("message", "boom"))
        if tool_name == "whoami":
            return {"pid": os.getpid()}
        if tool_name == "wait":
            return arguments.get("seconds", 1.0)
        raise KeyError(f"unknown tool {tool_name}")

    def stream(self, tool_name: str, arguments: dict[str, Any]) -> list[Any]:
        count = int(arguments.get("count", 5))
        items: list[Any] = [{"index": i, "squared": i * i} for i in range(count)]
        if tool_name == "stream_fail":
            items.append(RuntimeError("stream broke"))
        return items


# ------------------------------------------------------------------ the server


class PublishedServicer(pb_grpc.BridgeServiceServicer):
    def __init__(self, stub: pb_grpc.BridgeServiceStub, adapter: PublishedShowcase) -> None:
        self.stub = stub
        self.adapter = adapter
        self.registered: set[str] = set()
        self.worker_id = f"python-{id(self)}"
        self.sessions: set[str] = set()

    async def Ping(self, request: pb.PingRequest, context: Any) -> pb.PingResponse:
        return pb.PingResponse(message=f"Pong from Python: {request.message}")

    async def _prepare(self, session_id: str) -> None:
        # The published worker's hidden round trip: InitializeSession on every call.
        await self.stub.InitializeSession(pb.InitializeSessionRequest(session_id=session_id))
        self.sessions.add(session_id)
        if session_id not in self.registered:
            registrations = [
                pb.ToolRegistration(
                    name=name,
                    description=description,
                    supports_streaming=streaming,
                    metadata={"adapter_class": "PublishedShowcase", "module": __name__},
                )
                for name, (description, streaming) in self.adapter.tools.items()
            ]
            await self.stub.RegisterTools(
                pb.RegisterToolsRequest(
                    session_id=session_id, tools=registrations, worker_id=self.worker_id
                )
            )
            self.registered.add(session_id)

    async def ExecuteTool(
        self, request: pb.ExecuteToolRequest, context: Any
    ) -> pb.ExecuteToolResponse:
        started = time.perf_counter()
        await self._prepare(request.session_id)
        arguments = {k: decode_any(v) for k, v in request.parameters.items()}
        if request.tool_name == "wait":
            await asyncio.sleep(float(arguments.get("seconds", 1.0)))
        try:
            result = self.adapter.execute_tool(request.tool_name, arguments)
        except Exception as exc:
            return pb.ExecuteToolResponse(
                success=False,
                error_message=error_json(exc, request.tool_name, request.session_id),
            )
        return pb.ExecuteToolResponse(
            success=True,
            result=encode_any(result),
            execution_time_ms=int((time.perf_counter() - started) * 1000),
        )

    async def ExecuteStreamingTool(
        self, request: pb.ExecuteToolRequest, context: Any
    ) -> AsyncIterator[pb.ToolChunk]:
        await self._prepare(request.session_id)
        arguments = {k: decode_any(v) for k, v in request.parameters.items()}
        n = 0
        for item in self.adapter.stream(request.tool_name, arguments):
            if isinstance(item, BaseException):
                await context.abort(
                    grpc.StatusCode.INTERNAL,
                    error_json(item, request.tool_name, request.session_id),
                )
            n += 1
            yield pb.ToolChunk(chunk_id=f"{request.tool_name}-{n}", data=chunk_bytes(item))
        yield pb.ToolChunk(chunk_id=f"{request.tool_name}-{n + 1}", is_final=True)


async def heartbeat(stub: pb_grpc.BridgeServiceStub, servicer: PublishedServicer) -> None:
    while True:
        await asyncio.sleep(2.0)
        for session_id in list(servicer.sessions) or [""]:
            with contextlib.suppress(grpc.aio.AioRpcError):
                await stub.Heartbeat(pb.HeartbeatRequest(session_id=session_id), timeout=2.0)


async def wait_for_orchestrator(stub: pb_grpc.BridgeServiceStub) -> bool:
    delay = 0.05
    for _ in range(60):
        try:
            await stub.Ping(pb.PingRequest(message="connection_test"), timeout=1.0)
            return True
        except grpc.aio.AioRpcError:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
    return False


def write_ready_file(port: int) -> None:
    path = os.environ.get("SNAKEPIT_READY_FILE")
    if not path:
        return
    tmp = f"{path}.tmp"
    with open(tmp, "w") as fh:
        fh.write(str(port))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


async def serve(args: argparse.Namespace) -> int:
    orchestrator = grpc.aio.insecure_channel(
        args.elixir_address, options=[("grpc.enable_http_proxy", 0)]
    )
    stub = pb_grpc.BridgeServiceStub(orchestrator)
    if not await wait_for_orchestrator(stub):
        print(f"cannot reach the orchestrator at {args.elixir_address}", file=sys.stderr)
        return 1
    servicer = PublishedServicer(stub, PublishedShowcase())
    server = grpc.aio.server(
        options=[
            ("grpc.max_send_message_length", 100 * 1024 * 1024),
            ("grpc.max_receive_message_length", 100 * 1024 * 1024),
        ]
    )
    pb_grpc.add_BridgeServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port(f"127.0.0.1:{args.port}")
    await server.start()
    write_ready_file(port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    beat = asyncio.create_task(heartbeat(stub, servicer))
    await stop.wait()
    beat.cancel()
    await server.stop(2.0)
    await orchestrator.close()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description="published-convention Snakepit worker")
    parser.add_argument("--adapter", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--elixir-address", default=os.environ.get("SNAKEPIT_GRPC_ADDRESS", ""))
    parser.add_argument("--snakepit-run-id", default="")
    args, _unknown = parser.parse_known_args()
    if not args.elixir_address:
        print("--elixir-address is required", file=sys.stderr)
        return 2
    return asyncio.run(serve(args))


if __name__ == "__main__":
    sys.exit(main())
