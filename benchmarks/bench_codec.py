"""Per-call cost of the codec and of the token interceptors; prints JSON.

    .venv/bin/python benchmarks/bench_codec.py [--quick]

Codec numbers are the best of several repeats (microseconds per operation), for both JSON
engines (orjson when installed, the stdlib otherwise), next to the plain ``json`` module as a
yardstick. The auth numbers are median loopback Ping latencies through one grpc.aio channel,
measured in interleaved rounds: token added per call as metadata vs by client interceptors, and
a server with vs without the TokenInterceptor.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import timeit
from collections.abc import Callable
from typing import Any

import grpc
import grpc.aio

from snakepit_nb.protocol import _values, pb, pb_grpc
from snakepit_nb.protocol.auth import (
    TokenInterceptor,
    channel_options,
    client_interceptors,
    new_token,
    server_options,
    token_metadata,
)
from snakepit_nb.protocol.codec import (
    decode_any,
    decode_chunk_batch,
    encode_any,
    encode_chunk_batch,
)

SMALL = {"a": 1, "b": "hello", "c": [1.5, 2.5], "d": True}
SMALL_WITH_NONE = {"a": 1, "b": "hello", "c": [1.5, 2.5], "d": None}
ITEMS = [{"i": i, "progress": i / 1000, "label": "x"} for i in range(1000)]


def _best_us(fn: Callable[[], object], number: int, repeat: int = 7) -> float:
    return round(min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6, 2)


def codec_numbers(scale: float) -> dict[str, Any]:
    n_small, n_batch = max(1, int(20_000 * scale)), max(1, int(200 * scale))
    out: dict[str, Any] = {
        "json.dumps(small)": _best_us(lambda: json.dumps(SMALL), n_small),
        "json.loads(small)": _best_us(lambda: json.loads(b'{"a":1,"b":"hello"}'), n_small),
        "json.dumps(1000 items)": _best_us(lambda: json.dumps(ITEMS), n_batch),
    }
    batch_bytes = encode_chunk_batch(ITEMS)
    out["json.loads(1000 items)"] = _best_us(lambda: json.loads(batch_bytes), n_batch)
    saved = _values._orjson
    engines = {"stdlib": None, "orjson": saved} if saved is not None else {"stdlib": None}
    try:
        for name, module in engines.items():
            _values._orjson = module
            out[name] = _engine_numbers(n_small, n_batch, batch_bytes)
    finally:
        _values._orjson = saved
    return out


def _engine_numbers(n_small: int, n_batch: int, batch_bytes: bytes) -> dict[str, float]:
    small_any = encode_any(SMALL)
    none_any = encode_any(SMALL_WITH_NONE)
    int_any = encode_any(42)
    return {
        "encode_any(small dict)": _best_us(lambda: encode_any(SMALL), n_small),
        "decode_any(small dict)": _best_us(lambda: decode_any(small_any), n_small),
        "encode_any(small dict with None)": _best_us(lambda: encode_any(SMALL_WITH_NONE), n_small),
        "decode_any(small dict with None)": _best_us(lambda: decode_any(none_any), n_small),
        "encode_any(42)": _best_us(lambda: encode_any(42), n_small),
        "decode_any(42)": _best_us(lambda: decode_any(int_any), n_small),
        "encode_chunk_batch(1000 items)": _best_us(lambda: encode_chunk_batch(ITEMS), n_batch),
        "decode_chunk_batch(1000 items)": _best_us(
            lambda: decode_chunk_batch(batch_bytes), n_batch
        ),
    }


class _Echo(pb_grpc.BridgeServiceServicer):  # type: ignore[misc]
    async def Ping(self, request: Any, context: Any) -> Any:
        return pb.PingResponse(message=request.message)


async def _server(token: str | None) -> tuple[Any, str]:
    interceptors = [TokenInterceptor(token)] if token else []
    server = grpc.aio.server(interceptors=interceptors, options=server_options())
    pb_grpc.add_BridgeServiceServicer_to_server(_Echo(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


async def _median_ms(stub: Any, metadata: Any, n: int) -> float:
    loop = asyncio.get_running_loop()
    request = pb.PingRequest(message="x")
    samples = []
    for _ in range(n):
        start = loop.time()
        await stub.Ping(request, metadata=metadata)
        samples.append(loop.time() - start)
    return statistics.median(samples) * 1000


async def auth_numbers(rounds: int, per_round: int) -> dict[str, Any]:
    token = new_token()
    secured, secured_addr = await _server(token)
    open_server, open_addr = await _server(None)
    channels = {
        "metadata per call": grpc.aio.insecure_channel(secured_addr, options=channel_options()),
        "client interceptors": grpc.aio.insecure_channel(
            secured_addr, options=channel_options(), interceptors=client_interceptors(token)
        ),
        "no auth at all": grpc.aio.insecure_channel(open_addr, options=channel_options()),
    }
    metadata = {
        "metadata per call": token_metadata(token),
        "client interceptors": None,
        "no auth at all": None,
    }
    stubs = {name: pb_grpc.BridgeServiceStub(ch) for name, ch in channels.items()}
    samples: dict[str, list[float]] = {name: [] for name in stubs}
    try:
        for name, stub in stubs.items():  # warm up every channel
            await _median_ms(stub, metadata[name], 50)
        for _ in range(rounds):  # interleaved, so machine noise hits all alike
            for name, stub in stubs.items():
                samples[name].append(await _median_ms(stub, metadata[name], per_round))
    finally:
        for ch in channels.values():
            await ch.close()
        await secured.stop(None)
        await open_server.stop(None)
    medians = {name: round(statistics.median(v), 4) for name, v in samples.items()}
    return {
        "loopback Ping median ms": medians,
        "interceptor cost us": round(
            (medians["client interceptors"] - medians["metadata per call"]) * 1000, 1
        ),
        "server token check cost us": round(
            (medians["metadata per call"] - medians["no auth at all"]) * 1000, 1
        ),
    }


def main() -> None:
    quick = "--quick" in sys.argv
    result = {
        "python": sys.version.split()[0],
        "orjson": _values._orjson is not None,
        "codec_us": codec_numbers(0.1 if quick else 1.0),
        "auth": asyncio.run(auth_numbers(3 if quick else 10, 100 if quick else 300)),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
