"""Print the README's speed table from the benchmark results; ``--write`` puts it in the READMEs.

    .venv/bin/python scripts/bench_table.py            # print the markdown table
    .venv/bin/python scripts/bench_table.py --write    # replace it in README.md and benchmarks/
    .venv/bin/python scripts/bench_table.py --check    # fail if a README's table is stale

Reads ``benchmarks/results/bench_data.json`` (the data plane against its peers) and
``benchmarks/results/bench_calls.json`` (calls and streams against raw gRPC, start-up), both
written by full runs of those benchmarks. Every row is one measurement, the baseline measured in
the same run, their ratio (snakepit_nb / baseline of the quantity measured: for a time lower is
better, for a rate higher), the target and whether the run met it. ``--write`` replaces only
the text between the ``<!-- speed-table:start -->`` and ``<!-- speed-table:end -->`` markers of
each README that shows the table; ``--check`` (part of ``make check``) fails when one of them
differs from what the results give.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
READMES = (ROOT / "README.md", ROOT / "benchmarks" / "README.md")
START = "<!-- speed-table:start -->"
END = "<!-- speed-table:end -->"

Row = tuple[str, str, str, str, str, str]


def rate(value: float) -> str:
    if value >= 10_000_000:
        return f"{value / 1e6:,.1f}M"
    return f"{value:,.0f}"


def us(value: float) -> str:
    return f"{value:,.0f} µs"


def ms(value: float) -> str:
    return f"{value:,.1f} ms" if value < 100 else f"{value:,.0f} ms"


def x(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}x"
    return f"{value:.2f}x" if value < 10 else f"{value:.1f}x"


def met(targets: dict[str, Any], name: str) -> tuple[str, str]:
    """(goal, "yes"/"no") of a target, or dashes when the run has none by that name."""
    target = targets.get(name)
    if target is None:
        return "-", "-"
    return target["goal"], "yes" if target["met"] else "**no**"


def data_rows(d: dict[str, Any]) -> list[Row]:
    c, r, t = d["cases"], d["ratios"], d["targets"]
    rows: list[Row] = []
    pool = c["seq_multiprocessing_pool_apply"]
    for kind, label in (("tool_noop", '`s.call("noop")`'), ("fn_noop", "`s.call(fn)`")):
        case = c[f"seq_sp_call_{kind}"]
        name = f"seq_call_{kind}_p50_vs_pool_apply"
        rows.append(
            (
                f"sequential {label}, p50 (p99)",
                f"{us(case['p50_us'])} ({us(case['p99_us'])})",
                f"`Pool(2).apply(fn)`: {us(pool['p50_us'])} ({us(pool['p99_us'])})",
                f"{x(t[name]['value'])} ({x(r[f'seq_call_{kind}_p99_vs_pool_apply'])})",
                *met(t, name),
            )
        )
    fn = c["map_sp_map_fn"]
    n = f"{fn['n']:,}"
    default = c["map_multiprocessing_pool_map_default"]
    rows.append(
        (
            f"`s.map(fn, range({n}))`, items/s",
            rate(fn["items_per_s"]),
            f"`Pool(2).map`, default chunksize ({default['chunksize']:,}): "
            f"{rate(default['items_per_s'])}",
            x(t["map_fn_vs_pool_map_default"]["value"]),
            *met(t, "map_fn_vs_pool_map_default"),
        )
    )
    for key, label in (
        ("multiprocessing_pool_map_tuned", "`Pool(2).map`"),
        ("process_pool_executor_map_tuned", "`ProcessPoolExecutor(2).map`"),
    ):
        peer = c[f"map_{key}"]
        rows.append(
            (
                "same",
                "",
                f"{label}, tuned chunksize ({peer['chunksize']:,}): {rate(peer['items_per_s'])}",
                x(r[f"map_fn_vs_{key}"]),
                "-",
                "-",
            )
        )
    ipp = c.get("map_ipyparallel_direct_view", {})
    if "items_per_s" in ipp:
        rows.append(
            (
                "same",
                "",
                f"ipyparallel `DirectView.map`, 2 engines: {rate(ipp['items_per_s'])}",
                x(r["map_fn_vs_ipyparallel"]),
                "-",
                "-",
            )
        )
    elif ipp:
        rows.append(("same", "", f"ipyparallel: {ipp['skipped']}", "-", "-", "-"))
    tool = c["map_sp_map_tool_add"]
    rows.append(
        (
            f'`s.map("add", [{{"a": i, "b": 1}}, ...])`, {n} items, items/s',
            rate(tool["items_per_s"]),
            f"`Pool(2).map`, default chunksize: {rate(default['items_per_s'])}",
            x(r["map_tool_vs_pool_map_default"]),
            "-",
            "-",
        )
    )
    stream, raw = c["stream_sp_stream"], c["stream_raw_grpc_stream_batched"]
    rows.append(
        (
            f'`s.stream("count", n={stream["chunks"]:,})` into Python, chunks/s',
            rate(stream["chunks_per_s"]),
            f"raw gRPC server stream, 1000 chunks per message: {rate(raw['chunks_per_s'])}",
            x(t["stream_vs_raw_grpc_batched"]["value"]),
            *met(t, "stream_vs_raw_grpc_batched"),
        )
    )
    for size in ("1MB", "10MB", "100MB"):
        echo = c.get(f"large_{size}_sp_call_echo")
        if echo is None:
            continue
        pool_ms = c[f"large_{size}_multiprocessing_pool_apply"]["ms_p50"]
        floor_ms = c[f"large_{size}_shared_memory_floor"]["ms_p50"]
        fresh_ms = c[f"large_{size}_shared_memory_fresh"]["ms_p50"]
        rows.append(
            (
                f'{size.replace("MB", " MB")} float64 array, `s.call("echo", value=arr)` '
                "round trip",
                ms(echo["ms_p50"]),
                f"`Pool(2).apply(echo, (arr,))`: {ms(pool_ms)}; shared-memory copies, fresh "
                f"segments: {ms(fresh_ms)}; reused segments (floor): {ms(floor_ms)}",
                f"{x(r[f'large_{size}_echo_vs_pool_apply'])} / "
                f"{x(r[f'large_{size}_echo_vs_shared_memory_fresh'])} / "
                f"{x(r[f'large_{size}_echo_vs_shared_memory_floor'])}",
                "-",
                "-",
            )
        )
    aio = c.get("large_10MB_sp_aio_call_echo_grpc")
    if aio is not None:
        rows.append(
            (
                "10 MB, async API (`await session.call`, gRPC path)",
                ms(aio["ms_p50"]),
                f"sync API (lane): {ms(c['large_10MB_sp_call_echo']['ms_p50'])}",
                x(r["large_10MB_aio_grpc_vs_sync_lane"]),
                "-",
                "-",
            )
        )
    memory = c["memory_100MB_echo"]
    rows.append(
        (
            "kernel peak RSS increase during a 100 MB echo",
            f"{(memory['kernel_peak_rss'] - memory['kernel_rss_before']) / 1e6:,.0f} MB",
            "the payload: 100 MB",
            x(memory["kernel_peak_increase_x_payload"]),
            *met(t, "memory_100MB_kernel_peak_x_payload"),
        )
    )
    rows.append(
        (
            "worker RSS after a 100 MB echo",
            f"{memory['worker_rss_settled'] / 2**20:,.0f} MiB",
            f"before: {memory['worker_rss_before'] / 2**20:,.0f} MiB",
            f"+{memory['worker_rss_settled_delta_mib']:g} MiB",
            "back to baseline (< 10 MiB)",
            met(t, "memory_100MB_worker_rss_delta_mib")[1],
        )
    )
    serial, sp_cpu = c["cpu_serial_in_kernel"], c["cpu_sp_map_fn"]
    pool_cpu = c["cpu_multiprocessing_pool_map"]
    rows.append(
        (
            f"CPU-bound pure Python, {sp_cpu['tasks']} tasks of ~50 ms, `s.map(fn, ...)`, "
            "2 workers",
            f"{sp_cpu['seconds']:.2f} s",
            f"serially in the kernel: {serial['seconds']:.2f} s; `Pool(2).map`: "
            f"{pool_cpu['seconds']:.2f} s",
            f"speed-up {x(t['cpu_sp_map_speedup_vs_serial']['value'])} "
            f"(Pool: {x(r['cpu_pool_map_speedup_vs_serial'])}); best rounds "
            f"{x(r['cpu_sp_map_speedup_vs_serial_best_rounds'])} "
            f"(Pool: {x(r['cpu_pool_map_speedup_vs_serial_best_rounds'])})",
            *met(t, "cpu_sp_map_speedup_vs_serial"),
        )
    )
    ray = c.get("ray_100MB", {})
    if "skipped" in ray:
        rows.append(("Ray `put`/`get` and actor echo, 100 MB", "-", ray["skipped"], "-", "-", "-"))
    elif ray:
        rows.append(
            (
                "Ray, 100 MB: `ray.get(ray.put(arr))`; actor echo",
                f"{ms(ray['put_get_100MB']['ms_p50'])}; {ms(ray['actor_echo_100MB']['ms_p50'])}",
                f'`s.call("echo")` 100 MB: {ms(c["large_100MB_sp_call_echo"]["ms_p50"])}',
                "-",
                "-",
                "-",
            )
        )
    return rows


def calls_rows(d: dict[str, Any]) -> list[Row]:
    """The cases of bench_calls.py against raw gRPC and its absolute targets (issue 4)."""
    c, t = d["cases"], d["targets"]
    rows: list[Row] = []
    raw_seq, raw_64 = c["raw_grpc_unary_seq"], c["raw_grpc_unary_64"]
    seq = c["sp_call_seq"]
    rows.append(
        (
            '`s.call("noop")` p50 (p99), sequential',
            f"{us(seq['p50_us'])} ({us(seq['p99_us'])})",
            f"raw grpc.aio unary echo: {us(raw_seq['p50_us'])} ({us(raw_seq['p99_us'])})",
            x(t["call_seq_p50_vs_raw_p50"]["value"]),
            *met(t, "call_seq_p50_vs_raw_p50"),
        )
    )
    for key, label, target in (
        ("sp_call_64_async", "an async tool, 64 in flight, default settings", True),
        ("sp_call_64_capacity32", "a sync tool, 64 in flight, `capacity=32`", False),
        ("sp_call_64", "a sync tool, 64 in flight, default `capacity=1`", False),
    ):
        rows.append(
            (
                f"`session.call` of {label} (async API), calls/s",
                rate(c[key]["calls_per_s"]),
                f"raw grpc.aio unary, 64 in flight: {rate(raw_64['calls_per_s'])}",
                x(c[key]["calls_per_s"] / raw_64["calls_per_s"]),
                *(met(t, "call_64_async_vs_raw_unary_64") if target else ("-", "-")),
            )
        )
    rows.append(
        (
            '`session.map("noop", ...)`, calls/s',
            rate(c["sp_map"]["calls_per_s"]),
            "-",
            "-",
            *met(t, "map_calls_per_s"),
        )
    )
    first, raw_first = c["sp_stream"]["first_chunk"], c["raw_grpc_stream"]["first_chunk"]
    rows.append(
        (
            "first chunk of a stream, p50",
            ms(first["p50_us"] / 1000),
            f"raw gRPC stream: {ms(raw_first['p50_us'] / 1000)}",
            x(first["p50_us"] / raw_first["p50_us"]),
            *met(t, "stream_first_chunk_p50_ms"),
        )
    )
    start = c["sp_start_4_workers"]
    rows.append(
        (
            "`sp.start(workers=4)` until every worker is ready",
            f"{start['seconds_best']:.2f} s",
            "-",
            "-",
            *met(t, "start_4_workers_s"),
        )
    )
    return rows


def load_note(d: dict[str, Any], path: str) -> str:
    m = d["machine"]
    return (
        f"`{path}`: {d['started']}, {m['cpus']} CPUs, Python {m['python']}, "
        f"load average {m['load_1m']} at the start, {m['load_1m_end']} at the end"
    )


def table(results: Path) -> str:
    rows: list[Row] = []
    notes: list[str] = []
    data = json.loads((results / "bench_data.json").read_text())
    if data.get("quick"):
        raise SystemExit("bench_data.json is from a --quick run; run the full benchmark first")
    rows += data_rows(data)
    notes.append(load_note(data, "benchmarks/results/bench_data.json"))
    calls_path = results / "bench_calls.json"
    if calls_path.exists():
        calls = json.loads(calls_path.read_text())
        if not calls.get("quick"):
            rows += calls_rows(calls)
            notes.append(load_note(calls, "benchmarks/results/bench_calls.json"))
    lines = [
        "| what | measured | baseline, same run | ratio | target | met |",
        "|---|---|---|---|---|---|",
    ]
    lines += ["| " + " | ".join(cell or " " for cell in row) + " |" for row in rows]
    lines.append("")
    lines.append("Runs: " + "; ".join(notes) + ".")
    return "\n".join(lines) + "\n"


def _region(readme: Path) -> tuple[str, int, int]:
    content = readme.read_text()
    start, end = content.find(START), content.find(END)
    if start < 0 or end < start:
        raise SystemExit(
            f"{readme} has no {START} ... {END} region; add both markers around the speed table"
        )
    return content, start + len(START), end


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def write(readme: Path, text: str) -> None:
    content, start, end = _region(readme)
    readme.write_text(content[:start] + "\n" + text + content[end:])


def is_current(readme: Path, text: str) -> bool:
    content, start, end = _region(readme)
    return content[start:end] == "\n" + text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--write", action="store_true", help="replace the table in the READMEs")
    what.add_argument("--check", action="store_true", help="fail if a README's table is stale")
    parser.add_argument("--results", type=Path, default=RESULTS, help="the results folder")
    parser.add_argument(
        "--readme", type=Path, action="append", help="a README to write or check (default: both)"
    )
    args = parser.parse_args()
    readmes = args.readme or list(READMES)
    text = table(args.results)
    if args.write:
        for readme in readmes:
            write(readme, text)
            print(f"wrote the speed table into {_shown(readme)}", file=sys.stderr)
    elif args.check:
        stale = [_shown(readme) for readme in readmes if not is_current(readme, text)]
        if stale:
            raise SystemExit(
                f"the speed table in {', '.join(stale)} does not match benchmarks/results/; "
                "run .venv/bin/python scripts/bench_table.py --write"
            )
        print("speed tables match the benchmark results", file=sys.stderr)
    else:
        print(text, end="")


if __name__ == "__main__":
    main()
