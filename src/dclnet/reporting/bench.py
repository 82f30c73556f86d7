"""Result sections of docs/benchmarks.md, docs/search.md and docs/serve.md: benchmark tables exactly
as the commands printed them, with where they ran."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dclnet.reporting.common import fenced, load_result, or_not_run, where


def _ran(record: dict[str, Any], load: tuple[Any, Any]) -> str:
    """Where and how long a benchmark ran, with the load average at its start and end."""
    return (
        f"`{record['command']}` on {where(record)}, load average {load[0]} → {load[1]}; "
        f"{record['seconds']:.0f} s in all."
    )


def render_bench_eval(record: dict[str, Any]) -> str:
    """``benchmarks/bench_eval.py``'s table, and what it says."""
    from dclnet.bench.results import EVAL_LEGEND, format_eval_table

    rows = record["protocols"]
    metric = [r["loop_s"] / r["vectorised_s"] for r in rows]
    bound = [(r["matmul_s"] + r["loop_s"]) / r["matmul_s"] for r in rows]
    load = record["load_average"]
    return "\n".join(
        [
            fenced(format_eval_table(record)),
            "",
            f"{EVAL_LEGEND}. {_ran(record, (load['start'], load['end']))}",
            "",
            f"The vectorised metrics equal the per-query loop's (max difference "
            f"{max(r['max_abs_diff'] for r in rows):.1e}). The metric alone is "
            f"{min(metric):.1f}–{max(metric):.1f}× faster than the loop; end to end both sides "
            "also pay for the same similarity matmul, which caps any end-to-end speed-up at "
            f'{min(bound):.1f}–{max(bound):.1f}× ("bound") on this CPU.',
        ]
    )


def render_bench_dense(record: dict[str, Any]) -> str:
    """``benchmarks/bench_dense_loss.py``'s table, and the largest batch's comparison."""
    from dclnet.bench.results import format_dense_table

    largest = max(r["n"] for r in record["rows"])
    naive, chunked = (
        next(r for r in record["rows"] if r["n"] == largest and r["variant"] == v)
        for v in ("naive", "chunked")
    )
    load = record["load_average"]
    return "\n".join(
        [
            fenced(format_dense_table(record)),
            "",
            _ran(record, (load["start"], load["end"])),
            "",
            f"At N = {largest} the chunked loss gives the naive loss's value (relative "
            f"difference {chunked['rel_dval']:.1e}) and gradients ({chunked['rel_dgrad']:.1e}) "
            f"with {chunked['mem_ratio']:.3f}× its peak memory "
            f"({chunked['peak_bytes'] / 2**20:.0f} MB against {naive['peak_bytes'] / 2**20:.0f} "
            f"MB) in {chunked['seconds'] / naive['seconds']:.2f}× its time.",
        ]
    )


def _bench_load(record: dict[str, Any]) -> tuple[Any, Any]:
    return record["settings"].get("load_average_start"), record["hardware"]["load_average"]


def render_bench_report(record: dict[str, Any]) -> str:
    """A ``dclnet benchmark`` table exactly as the command printed it, and where it ran."""
    from dclnet.benchmark import format_report

    hw = record["hardware"]
    machine = (
        f"Machine: {hw['cpu']}, {hw['cpu_count']} CPUs, {hw['platform']}, Python {hw['python']}."
    )
    return "\n".join(
        [fenced(format_report(record)), "", f"{_ran(record, _bench_load(record))} {machine}"]
    )


TRAIN_ROWS = {  # README row label: dclnet benchmark row name (``{arch}``: the size's backbone)
    "baseline step": "train step, baseline (id + metric)",
    "full DCLNet step": "train step, full DCLNet",
    "plain ResNet forward + backward": "{arch} forward+backward (plain)",
    "full-step time / plain time": "full DCLNet step / plain forward+backward",
}


REAL_COMMAND = "dclnet benchmark --device cpu --size real --iters 1 --only train --json {path}"


def _not_measured(path: str) -> str:
    return (
        f"Not measured in this tree: `{REAL_COMMAND.format(path=path)}` writes `{path}` "
        "(six ResNet-50 training steps of 64 images: minutes on a CPU), and "
        "`python -m dclnet.reporting` "
        "puts it here."
    )


def render_bench_train(records: list[dict[str, Any]], missing: list[str]) -> str:
    """The float32 training-step rows of ``dclnet benchmark`` runs side by side; ``missing``
    names the results files of sizes not measured."""
    heads, columns = [], []
    for rec in records:
        st = rec["settings"]
        batch = 2 * st["num_ids"] * st["num_instances"]
        heads.append(
            f"{st['name']} ({st['arch']}, {st['height']}×{st['width']}, "
            f"P={st['num_ids']} K={st['num_instances']}, {batch} images)"
        )
        rows = {r["benchmark"]: r for r in rec["rows"] if r["dtype"] == "fp32"}
        cells = []
        for name in TRAIN_ROWS.values():
            row = rows[name.format(arch=st["arch"])]
            unit = "×" if row["unit"].startswith("x") else " img/s"
            cells.append(f"{row['value']:.3g}{unit}")
        columns.append(cells)
    lines = ["| | " + " | ".join(heads) + " |", "|---" * (len(heads) + 1) + "|"]
    for i, label in enumerate(TRAIN_ROWS):
        lines.append(f"| {label} | " + " | ".join(col[i] for col in columns) + " |")
    lines.append("")
    lines += [f"- {_ran(rec, _bench_load(rec))}" for rec in records]
    lines += [f"- {_not_measured(path)}" for path in missing]
    return "\n".join(lines)


def _bench_sizes(results: Path) -> str:
    names = ("bench_small", "bench_real")
    found = [n for n in names if (results / f"{n}.json").is_file()]
    missing = [f"docs/results/{n}.json" for n in names if n not in found]
    return render_bench_train([load_result(results, n) for n in found], missing)


def _bench_real(results: Path) -> str:
    if not (results / "bench_real.json").is_file():
        return _not_measured("docs/results/bench_real.json")
    return render_bench_report(load_result(results, "bench_real"))


def _serve_table(results: Path) -> str:
    from dclnet.bench.results import serve_table

    return serve_table(load_result(results, "bench_serve"))


def _search_table(results: Path) -> str:
    from dclnet.bench.results import search_table

    names = ("bench_search_100k", "bench_search_1m")
    return search_table(
        [load_result(results, n) for n in names if (results / f"{n}.json").is_file()]
    )


def render_bench_pretrain(record: dict[str, Any]) -> str:
    """``benchmarks/bench_pretrain.py``'s table: seconds per pretraining step by size, last
    stride, layout and arithmetic, and the population's rendering time per look."""
    lines = [
        "| input | layer4 stride | layout | arithmetic | s / step (64 images) "
        "| render 512 people: default / wide look |",
        "|---|---|---|---|---|---|",
    ]
    for r in record["rows"]:
        render = r["render_seconds"]
        lines.append(
            f"| {r['size'][0]} × {r['size'][1]} | {r['last_stride']} | {r['layout']} | "
            f"{r.get('arithmetic', 'float32')} | {r['step_seconds']:.3f} | "
            f"{render['default']:.1f} s / {render['wide']:.1f} s |"
        )
    load = record.get("load_average")
    native = record.get("bf16_native")
    lines += [
        "",
        f"`{record['command']}` on {where(record)}"
        + (f", load average {load[0]} at its end" if load else "")
        + ". Median of the timed steps after 3 warm-up steps, random images, ResNet-18 with the "
        "pretraining's GeM and 512-way classifier, Adam; bfloat16 is CPU autocast"
        + (
            ""
            if native is None
            else " (native on this CPU)"
            if native
            else " (emulated on this CPU: `model.pretrain_amp=auto` keeps float32 here)"
        )
        + ".",
    ]
    return "\n".join(lines)


# section name -> its text, rendered from the results folder
SECTIONS = {
    "bench-eval": lambda r: render_bench_eval(load_result(r, "bench_eval")),
    "bench-dense": lambda r: render_bench_dense(load_result(r, "bench_dense_loss")),
    "bench-train": _bench_sizes,
    "bench-small": lambda r: render_bench_report(load_result(r, "bench_small")),
    "bench-real": _bench_real,
    "bench-gpu": lambda r: or_not_run(
        r, "bench_gpu_real", render_bench_report, "bash scripts/gpu_check.sh"
    ),
    "bench-pretrain": lambda r: or_not_run(
        r,
        "bench_pretrain",
        render_bench_pretrain,
        "python benchmarks/bench_pretrain.py --json docs/results/bench_pretrain.json",
    ),
    "bench-search": _search_table,
    "bench-serve": _serve_table,
}
