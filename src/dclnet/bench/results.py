"""Benchmark results files, and the tables printed from them.

Every benchmark (``dclnet benchmark``, ``benchmarks/bench_*.py``) writes its measurements
with ``--json OUT`` as one record: the command, where it ran (:func:`machine_info`: machine,
torch version, thread count), its wall time and the measurements. The tables the scripts
print are functions of these records, so :mod:`dclnet.reporting` regenerates the README and
``docs/benchmarks.md`` tables from ``docs/results/bench_*.json`` as exactly the printed text.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dclnet.engine.runs import machine_info
from dclnet.evaluation.protocols import write_json


def command_line(program: str, argv: Sequence[str]) -> str:
    """The command as a user would type it, e.g. ``python benchmarks/bench_eval.py --trials 3``."""
    return " ".join([program, *(shlex.quote(str(a)) for a in argv)])


def load_average() -> float | None:
    """The 1-minute load average (other processes competing for the CPU), if known."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def write_record(
    path: str | Path, *, command: str, seconds: float, **measurements: Any
) -> dict[str, Any]:
    """Write ``{"command", "machine", "torch", "threads", "seconds", **measurements}`` to
    ``path`` atomically; returns the record."""
    record = {"command": command, **machine_info(), "seconds": seconds, **measurements}
    write_json(record, path)
    return record


def where(record: dict[str, Any]) -> str:
    """``"x86_64 CPU, 2 cores (AMD EPYC, AVX2 kernels), torch 2.13.0+cpu, 2 threads"`` for a
    results record (files written before the CPU model was recorded say so)."""
    cpu = (
        f"{record['cpu']}, {record['cpu_capability']} kernels"
        if "cpu" in record
        else "CPU model not recorded"
    )
    return f"{record['machine']} ({cpu}), torch {record['torch']}, {threads(record)}"


def threads(record: dict[str, Any]) -> str:
    """``"1 thread"`` / ``"2 threads"``: the torch thread count of a results record."""
    n = record["threads"]
    return f"{n} thread{'s' * (n != 1)}"


EVAL_HEADER = (
    f"{'protocol':36s} {'vectorised s':>12s} {'loop s':>8s} {'speed-up':>9s} "
    f"{'metric-only':>12s} {'matmul s':>9s} {'bound':>7s} {'max abs diff':>13s}"
)


def format_eval_table(record: dict[str, Any]) -> str:
    """The table of ``benchmarks/bench_eval.py``: vectorised metrics against the loop."""
    lines = [EVAL_HEADER, "-" * len(EVAL_HEADER)]
    for row in record["protocols"]:
        matmul = row["matmul_s"]
        fast, slow = matmul + row["vectorised_s"], matmul + row["loop_s"]
        lines.append(
            f"{row['name']:36s} {fast:12.3f} {slow:8.3f} {slow / fast:8.1f}x "
            f"{row['loop_s'] / row['vectorised_s']:11.1f}x {matmul:9.3f} "
            f"{slow / matmul:6.1f}x {row['max_abs_diff']:13.1e}"
        )
    if record.get("rerank_seconds") is not None:
        lines.append(
            f"k-reciprocal re-ranking, 3,803 + 301 x {record['feature_dim']}: "
            f"{record['rerank_seconds']:.2f} s"
        )
    return "\n".join(lines)


EVAL_LEGEND = (
    "vectorised, loop: matmul + metric summed over trials; metric-only: the metric alone; "
    "bound: the end-to-end speed-up with a metric that took no time at all"
)

DENSE_HEADER = (
    f"{'N':>4} {'variant':>8} {'fwd+bwd s':>10} {'peak MB':>9} {'value':>10}"
    f" {'rel dval':>9} {'rel dgrad':>9} {'mem ratio':>9}"
)


def format_dense_table(record: dict[str, Any]) -> str:
    """The table of ``benchmarks/bench_dense_loss.py``: chunked against naive, per N."""
    lines = [DENSE_HEADER]
    for row in record["rows"]:
        head = f"{row['n']:>4} {row['variant']:>8}"
        if "error" in row:
            lines.append(f"{head} failed: {row['error']}")
            continue
        line = f"{head} {row['seconds']:>10.2f} {row['peak_bytes'] / 2**20:>9.0f}"
        line += f" {row['value']:>10.6f}"
        if row.get("rel_dval") is not None:
            line += f" {row['rel_dval']:>9.1e} {row['rel_dgrad']:>9.1e} {row['mem_ratio']:>9.3f}"
        lines.append(line)
    methods = sorted({row["method"] for row in record["rows"] if "method" in row})
    lines.append(f"memory: {', '.join(methods) or '?'}")
    return "\n".join(lines)


def search_table(records: list[dict[str, Any]]) -> str:
    """The docs/search.md table from ``benchmarks/bench_search.py`` results files."""
    lines = [
        "| gallery | backend | setting | build s | index MB | p50 ms | p95 ms | R@1 | R@10 |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for record in records:
        for g in record["galleries"]:
            for r in g["results"]:
                if "left_out" in r:
                    lines.append(
                        f"| {g['gallery']:,} | {r['backend']} | {r['setting']} | "
                        f"left out: {r['left_out']} | | | | | |"
                    )
                    continue
                build = f"{r['build_s']:.0f}" if r["backend"] == "faiss" else "—"
                timed = (
                    "" if r["timed_queries"] == record["queries"] else f" ({r['timed_queries']})"
                )
                lines.append(
                    f"| {g['gallery']:,} | {r['backend']} | {r['setting'] or '—'} | {build} | "
                    f"{r['bytes'] / 2**20:,.0f} | {r['p50_ms']:.1f}{timed} | {r['p95_ms']:.1f} | "
                    f"{r['recall@1']:.3f} | {r['recall@10']:.3f} |"
                )
    return "\n".join(lines)


def _fmt_or_dash(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def serve_table(record: dict[str, Any]) -> str:
    """The docs/serve.md tables from a ``benchmarks/bench_serve.py`` results file: the load
    rows, then the forward times per batch size."""
    lines = [
        f"{record['gallery']:,}-image gallery ({record['embed_dim']}-d), {record['arch']} at "
        f"{record['height']} x {record['width']}, window {record['window_ms']:g} ms, batch "
        f"limit {record['max_batch']}, {record['duration_s']:g} s per row after "
        f"{record['warmup_s']:g} s warm-up; {where(record)}; load average "
        f"{record['load_average']['start']} -> {record['load_average']['end']}",
        "",
        "| backend | clients | appends in flight | req/s | p50 ms | p99 ms | errors | mean batch |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in record["rows"]:
        appends = (
            f"{r['appended_batches']} x {record['append_images']} images" if r["appends"] else "-"
        )
        lines.append(
            f"| {r['backend']} | {r['clients']} | {appends} | {r['throughput_rps']:.1f} | "
            f"{_fmt_or_dash(r['p50_ms'], '.0f')} | {_fmt_or_dash(r['p99_ms'], '.0f')} | "
            f"{r['errors']} | "
            f"{_fmt_or_dash(r['mean_batch'], '.1f')} |"
        )
    lines += ["", "| batch | forward ms | ms per image |", "| ---: | ---: | ---: |"]
    for f in record["forward_ms"]:
        lines.append(f"| {f['batch']} | {f['ms']:.1f} | {f['ms_per_image']:.2f} |")
    return "\n".join(lines)
