"""Who may talk to the servers (reliability.md T13, T14), over real gRPC against ``sp.start``.

T14: every method of both servers -- the orchestrator's and a worker's, unary and streaming --
refuses a call without the runtime token or with a wrong one (UNAUTHENTICATED), and the refused
call changes nothing. The method list comes from the generated descriptor, so a new RPC is
covered without editing this file.

T13: with ``transport="unix"`` both servers listen on sockets in private 0700 directories,
sockets 0600; a process of another user cannot even connect -- not even with the token.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import paths
import pytest
from google.protobuf import descriptor, message_factory

import snakepit_nb as sp
from snakepit_nb.protocol import pb
from snakepit_nb.protocol.auth import (
    TOKEN_KEY,
    UNAUTHENTICATED_MESSAGE,
    channel_options,
    new_token,
)
from snakepit_nb.protocol.codec import encode_any

pytestmark = pytest.mark.integration

SERVICE = pb.DESCRIPTOR.services_by_name["BridgeService"]
METHODS = [m.name for m in SERVICE.methods]
PREFIX = f"/{SERVICE.full_name}/"
NOBODY = 65534


def _rpc(channel: Any, kind: str, path: str) -> Any:
    """A raw-bytes callable of ``kind`` ("unary_unary", ...): bytes in, bytes out."""
    return getattr(channel, kind)(path, request_serializer=None, response_deserializer=None)


@dataclass
class Server:
    name: str
    address: str
    token: str
    channel: grpc.Channel

    def call(self, method: str, payload: bytes, metadata: tuple[tuple[str, str], ...]) -> Any:
        """The status code of one call of ``method`` carrying ``payload`` (raw bytes)."""
        m = SERVICE.methods_by_name[method]
        path = PREFIX + method
        try:
            if m.client_streaming and m.server_streaming:
                list(
                    _rpc(self.channel, "stream_stream", path)(
                        iter([payload]), metadata=metadata, timeout=5
                    )
                )
            elif m.client_streaming:
                _rpc(self.channel, "stream_unary", path)(
                    iter([payload]), metadata=metadata, timeout=5
                )
            elif m.server_streaming:
                # Open-ended streams (watch, telemetry) are refused at once or not at all.
                for _ in _rpc(self.channel, "unary_stream", path)(
                    payload, metadata=metadata, timeout=1
                ):
                    break
            else:
                _rpc(self.channel, "unary_unary", path)(payload, metadata=metadata, timeout=5)
        except grpc.RpcError as err:
            failed: Any = err  # a grpc.Call as well as an RpcError
            return failed.code(), failed.details()
        return grpc.StatusCode.OK, ""


@dataclass
class Runtime:
    client: Any
    servers: dict[str, Server]


@pytest.fixture(scope="module")
def runtime() -> Iterator[Runtime]:
    client = sp.start(workers=1, startup_timeout=60.0)
    channels: list[grpc.Channel] = []
    try:
        (worker,) = client.status().workers
        token = client.orchestrator.token
        servers = {}
        for name, address in (("orchestrator", client.address), ("worker", worker.address)):
            channel = grpc.insecure_channel(address, options=channel_options())
            channels.append(channel)
            servers[name] = Server(name, address, token, channel)
        yield Runtime(client, servers)
    finally:
        for channel in channels:
            channel.close()
        client.close()


def _request(method: str, marker: str) -> bytes:
    """A request for ``method`` that would leave a trace named ``marker`` if it were served."""
    input_type: descriptor.Descriptor = SERVICE.methods_by_name[method].input_type
    cls = message_factory.GetMessageClass(input_type)
    fields = input_type.fields_by_name
    strings = {
        "session_id": marker,
        "tool_name": "add",
        "name": marker,
        "variable_identifier": marker,
        "function": marker,
        "source": f"def {marker}():\n    return 1\n",
        "type": "integer",
        "worker_id": marker,
    }
    values: dict[str, Any] = {k: v for k, v in strings.items() if k in fields}
    if "initial_value" in fields:
        values["initial_value"] = encode_any(1)
    if "parameters" in fields:
        values["parameters"] = {"a": encode_any(1), "b": encode_any(2)}
    if input_type.name == "ChannelFrame":
        values["messages"] = [
            pb.ChannelMessage(
                call_id=1, request=pb.ExecuteToolRequest(session_id=marker, tool_name="noop")
            )
        ]
    if input_type.name == "RegisterToolsRequest":
        values["tools"] = [pb.ToolRegistration(name=marker)]
    return bytes(cls(**values).SerializeToString())


def _traces(runtime: Runtime, marker: str) -> list[str]:
    """Every place a served call with ``marker`` would have changed something."""
    client = runtime.client
    found = []
    if any(info.session_id == marker for info in client.sessions()):
        found.append("session")
    if any(spec.name == marker for spec in client.tools()):
        found.append("tool")
    worker = runtime.servers["worker"]
    described = pb.DescribeToolsResponse.FromString(
        _rpc(worker.channel, "unary_unary", PREFIX + "DescribeTools")(
            b"", metadata=((TOKEN_KEY, worker.token),), timeout=10
        )
    )
    if any(spec.name == marker for spec in described.tools):
        found.append("worker tool")
    return found


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("side", ["orchestrator", "worker"])
def test_t14_every_method_refuses_a_missing_or_wrong_token(
    runtime: Runtime, side: str, method: str
) -> None:
    server = runtime.servers[side]
    marker = f"t14{side[0]}{method.lower()}"
    payload = _request(method, marker)
    refused = {
        "no token": (),
        "wrong token": ((TOKEN_KEY, new_token()),),
        "empty token": ((TOKEN_KEY, ""),),
        "token under another key": (("x-snakepit-token-x", server.token),),
        "token with a byte changed": ((TOKEN_KEY, server.token[:-1] + "!"),),
    }
    for why, metadata in refused.items():
        code, details = server.call(method, payload, metadata)
        assert code is grpc.StatusCode.UNAUTHENTICATED, (why, code, details)
        assert details == UNAUTHENTICATED_MESSAGE, (why, details)
    # Undecodable bytes without the token are refused for the token, not parsed first.
    code, _ = server.call(method, b"\xff\xff\xff", ())
    assert code is grpc.StatusCode.UNAUTHENTICATED
    assert _traces(runtime, marker) == []
    # The same request with the token reaches the method: the refusals above were the token's.
    code, details = server.call(method, payload, ((TOKEN_KEY, server.token),))
    assert code is not grpc.StatusCode.UNAUTHENTICATED, details


def test_t14_covers_every_rpc_of_the_proto() -> None:
    # The parametrization above is the generated descriptor's method list: check that it is
    # the proto's whole service (stale stubs would leave a new RPC untested).
    proto = paths.ROOT / "protos" / "snakepit_bridge.proto"
    declared = re.findall(r"^\s*rpc\s+(\w+)\s*\(", proto.read_text(), flags=re.MULTILINE)
    assert declared
    assert sorted(METHODS) == sorted(declared)


# ---------------------------------------------------------------------------------- T13

_CLIENT = textwrap.dedent(
    """
    import errno, json, os, socket, sys
    result = {"uid": os.getuid()}
    path = sys.argv[1][len("unix:"):]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
        result["connect"] = "ok"
    except OSError as exc:
        result["connect"] = errno.errorcode.get(exc.errno, str(exc.errno))
    finally:
        sock.close()
    import grpc
    from snakepit_nb.protocol import pb, pb_grpc
    channel = grpc.insecure_channel(sys.argv[1])
    stub = pb_grpc.BridgeServiceStub(channel)
    try:
        stub.Ping(pb.PingRequest(message="intruder"), timeout=5,
                  metadata=(("x-snakepit-token", os.environ["T13_TOKEN"]),))
        result["ping"] = "OK"
    except grpc.RpcError as err:
        result["ping"] = err.code().name
        result["details"] = err.details()
    print(json.dumps(result))
    """
)


def _connect_as(uid: int | None, address: str, token: str) -> dict[str, Any]:
    """Connect to ``address`` (a unix socket) from a new process, as ``uid`` if given."""
    argv = [sys.executable, "-c", _CLIENT, address]
    if uid is not None:
        setpriv = shutil.which("setpriv")
        assert setpriv, "T13 needs util-linux's setpriv to run a client as another user"
        argv = [setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *argv]
    done = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "T13_TOKEN": token},
        cwd="/",
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _private(address: str) -> str:
    assert address.startswith("unix:"), address
    path = address[len("unix:") :]
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, oct(os.stat(path).st_mode)
    directory = os.path.dirname(path)
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700, oct(os.stat(directory).st_mode)
    assert os.stat(directory).st_uid == os.getuid()
    return path


def test_t13_unix_sockets_are_private_and_refuse_other_users(
    client_factory: Callable[..., Any],
) -> None:
    if os.geteuid() != 0:
        pytest.skip("T13 runs a client as another user (uid 65534), which needs root; CI is root")
    client = client_factory(workers=1, transport="unix")
    (worker,) = client.status().workers
    token = client.orchestrator.token
    addresses = {"orchestrator": client.address, "worker": worker.address}
    for name, address in addresses.items():
        _private(address)
        # The owner connects and is served (the client itself works) ...
        own = _connect_as(None, address, token)
        assert (own["connect"], own["ping"]) == ("ok", "OK"), (name, own)
        # ... another user is stopped by the file system, token or not.
        other = _connect_as(NOBODY, address, token)
        assert other["uid"] == NOBODY
        assert other["connect"] == "EACCES", (name, other)
        assert other["ping"] == "UNAVAILABLE", (name, other)
    s = client.session("t13")
    assert s.call("add", a=1, b=2) == 3
    assert [w.state for w in client.status().workers] == ["ready"]
