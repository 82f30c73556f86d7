"""Result sections of README.md and docs/synthetic.md: the demo block, the demo-vs-CNN comparison,
the first-run table, the training-seed table and the one-change-at-a-time table."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from dclnet.reporting.common import load_result, mean_cells, metrics_line, where


def _threads_pair(results: Path) -> list[dict[str, Any]]:
    """The demo recipe on seed 7 run twice, on two machines or thread counts, when both files
    exist: the same computation summed in another order."""
    names = ("first_run/recipe-seed7.json", "first_run/s64-1000-seed7.json")
    found = [results / n for n in names if (results / n).is_file()]
    return [json.loads(p.read_text()) for p in found] if len(found) == 2 else []


def _what_changed(pair: list[dict[str, Any]]) -> str:
    """How the two runs of ``pair`` differ: the CPU, the thread count or both."""
    if not all("cpu" in r for r in pair):
        return " (the first run predates recording the CPU model, so the CPU may differ too)."
    other_cpu = pair[0]["cpu"] != pair[1]["cpu"]
    other_threads = pair[0]["threads"] != pair[1]["threads"]
    if other_cpu:
        return ": another CPU" + (" and another thread count." if other_threads else ".")
    return " with nothing changed but the thread count."


def render_demo(
    record: dict[str, Any],
    pair: list[dict[str, Any]] | None = None,
    seeds: list[dict[str, Any]] | None = None,
) -> str:
    """The demo's printed summary, with the command, machine and wall time; with ``pair``
    (one recipe and set run on two CPUs or thread counts), how far another summation order
    moved the numbers; with ``seeds`` (the recipe on one set with several training seeds, one
    machine), the range they spanned."""
    lines = [
        "```",
        "SYNTHETIC data — summary (mean over trials, percent):",
        metrics_line("raw pixels", record["baseline"]["mean"]),
        metrics_line("DCLNet", record["dclnet"]["mean"]),
        "```",
        "",
        f"`{record['command']}` on {where(record)}: " + _demo_time(record),
    ]
    if pair:
        a, b = (r["dclnet"]["mean"] for r in pair)
        threads = [r["threads"] for r in pair]
        lines += [
            "",
            "How far another CPU may move these numbers: another CPU runs other kernels, so "
            "every sum is added up in another order. The same recipe on synthetic seed 7 "
            f"printed rank-1 {a['rank1']:.2f} / mAP {a['mAP']:.2f} / mINP "
            f"{a['mINP']:.2f} with {threads[0]} threads and {b['rank1']:.2f} / {b['mAP']:.2f} "
            f"/ {b['mINP']:.2f} with {threads[1]} (`{pair[1]['command']}`; on "
            f"{where(pair[0])} and on {where(pair[1])}): "
            f"{abs(a['rank1'] - b['rank1']):.1f} rank-1 points and "
            f"{abs(a['mAP'] - b['mAP']):.1f} mAP points apart" + _what_changed(pair),
        ]
    if seeds and len(seeds) > 1:
        means = [r["dclnet"]["mean"] for r in seeds]
        order = ", ".join(str(r["config"]["train"]["seed"]) for r in seeds)
        lo = {k: min(m[k] for m in means) for k in ("rank1", "mAP")}
        hi = {k: max(m[k] for m in means) for k in ("rank1", "mAP")}
        text = (
            f"For scale, training seeds {order} of the recipe on synthetic seed 7, on one "
            f"machine, printed rank-1 {lo['rank1']:.2f}–{hi['rank1']:.2f} and mAP "
            f"{lo['mAP']:.2f}–{hi['mAP']:.2f} (the training-seed table of "
            "[docs/synthetic.md](docs/synthetic.md#over-training-seeds))"
        )
        if pair:
            a, b = (r["dclnet"]["mean"] for r in pair)
            inside = all(abs(a[k] - b[k]) <= hi[k] - lo[k] for k in ("rank1", "mAP"))
            text += (
                ": the two runs above differ by less than the seeds do."
                if inside
                else ": the two runs above differ by more than the seeds do."
            )
        else:
            text += "."
        lines += ["", text]
    return "\n".join(lines)


def _demo_time(record: dict[str, Any]) -> str:
    """How long the demo took: the whole command, and the one-time pretraining inside it."""
    total, pre = record["seconds"], record.get("pretrain_seconds", 0.0)
    if pre > 0:
        return (
            f"**{total / 60:.1f} min for the whole command on an empty cache**, of which "
            f"{pre / 60:.1f} min the one-time synthetic pretraining (later runs: about "
            f"{(total - pre) / 60:.1f} min)."
        )
    return (
        f"{total / 60:.1f} min (training, test and the raw-pixel baseline; the "
        "synthetic-pretrained backbone already cached)."
    )


def render_comparison(demos: list[dict[str, Any]], cnns: list[dict[str, Any]]) -> str:
    """Demo model vs the small CNN of ``benchmarks/synthetic_gap.py``, one protocol, one set.

    ``demos``: demo runs on one set (the recipe's first, then variants, labelled by their
    pretraining length); ``cnns``: CNN runs on the same set, the first with the first demo's
    wall time, then others.
    """
    seed = demos[0]["config"]["data"]["synthetic_seed"]
    lines = [
        "| model (synthetic seed " + str(seed) + ") | train wall time | rank-1 (%) | mAP (%) "
        "| mINP (%) |",
        "|---|---|---|---|---|",
    ]
    for demo in demos:
        d = demo["dclnet"]["mean"]
        steps = demo["config"]["model"].get("pretrain_steps", 500)
        lines.append(
            f"| DCLNet demo recipe (`dclnet demo`), {steps}-step synthetic pretraining | "
            f"{demo['seconds'] / 60:.1f} min (whole command) | {d['rank1']:.2f} | "
            f"{d['mAP']:.2f} | {d['mINP']:.2f} |"
        )
    for cnn in cnns:
        c = cnn["mean"]
        lines.append(
            f"| small CNN (`benchmarks/synthetic_gap.py --protocol`) | "
            f"{cnn['train_seconds'] / 60:.1f} min | {c['rank1']:.2f} | {c['mAP']:.2f} | "
            f"{c['mINP']:.2f} |"
        )

    def command(r: dict[str, Any]) -> str:
        if "model" in r.get("config", {}) and "pretrain_steps" not in r["config"]["model"]:
            # ran before the recipes set pretrain_steps (then 500, the default)
            return (
                f"`{r['command']}` (before the recipe's 1500 steps; today add "
                "`model.pretrain_steps=500`)"
            )
        return f"`{r['command']}`"

    commands = ", ".join(command(r) for r in [*demos, *cnns])
    lines += [
        "",
        f"Commands: {commands}; on {where(demos[0])}. All use the SYSU-style all-search, "
        "single-shot protocol with 10 seeded gallery trials (infrared → visible) on the same "
        "synthetic test identities.",
    ]
    return "\n".join(lines)


def _command_note(record: dict[str, Any]) -> str:
    """A record's ``command`` in backticks, with what ran beside it or else its load average at
    its end."""
    load, beside = record.get("load_average"), record.get("beside")
    if beside:
        return f"`{record['command']}` ({beside})"
    return f"`{record['command']}`" + (f" (load average {load[0]:.1f} at its end)" if load else "")


def _pretraining(model: dict[str, Any], data: dict[str, Any], bf16: bool = False) -> str:
    """``"64 × 32, 800 steps, lr 0.002, 512 people, wide look"`` of a run's config (and
    ``", bfloat16"`` when ``bf16``: the record's backbone was pretrained in bfloat16)."""
    size = model.get("pretrain_size") or [data["height"], data["width"]]
    return (
        f"{size[0]} × {size[1]}, {model.get('pretrain_steps', 500)} steps, lr "
        f"{model.get('pretrain_lr', 1e-3):g}, {model.get('pretrain_ids', 512)} people, "
        f"{model.get('pretrain_style', 'default')} look"
        + (", last stride 2" if model.get("pretrain_last_stride", 1) == 2 else "")
        + (f", pretraining seed {model['pretrain_seed']}" if model.get("pretrain_seed") else "")
        + (", bfloat16" if bf16 else "")
    )


def _ran_on(record: dict[str, Any]) -> str:
    """``"AMD EPYC (AVX2), 1 thread"``: the CPU and thread count of a results record."""
    from dclnet.bench.results import threads

    cpu = f"{record['cpu']} ({record['cpu_capability']})" if "cpu" in record else "CPU not recorded"
    return f"{cpu}, {threads(record)}"


def render_first_run(folder: Path) -> str:
    """The first ``dclnet demo`` on an empty cache per pretraining variant, against the small
    CNN given that whole time, on synthetic seed 7 and on the held-out look.

    ``folder`` holds ``<variant>-seed7.json`` / ``<variant>-heldout.json``
    (``scripts/first_run.py``) and ``cnn-seed7.json`` / ``cnn-heldout.json``
    (``benchmarks/synthetic_gap.py --protocol --json``).
    """
    runs: dict[str, dict[str, dict]] = {}
    for path in sorted(folder.glob("*.json")):
        name, _, which = path.stem.rpartition("-")
        runs.setdefault(name, {})[which] = json.loads(path.read_text())
    cnn = runs.pop("cnn", {})
    lines = [
        "| model | synthetic pretraining | whole command | of it pretraining | ran on "
        "| seed 7: rank-1 / mAP / mINP | held-out look: rank-1 / mAP / mINP |",
        "|---|---|---|---|---|---|---|",
    ]
    commands, anchor = [], None
    for name, sets in runs.items():
        first = sets.get("seed7") or next(iter(sets.values()))
        anchor = anchor or first
        cfg = first["config"]
        cells = [mean_cells(sets[s]["dclnet"]["mean"]) if s in sets else "not run"
                 for s in ("seed7", "heldout")]  # fmt: skip
        pre = first.get("pretrain_seconds", 0)
        recipe = _pretraining(cfg["model"], cfg["data"], first.get("pretrain_bf16", False))
        lines.append(
            f"| DCLNet demo (`{name}`) | {recipe} | "
            f"{first['seconds'] / 60:.1f} min | "
            + (f"{pre / 60:.1f} min" if pre else "none (backbone cached earlier)")
            + f" | {_ran_on(first)} | {cells[0]} | {cells[1]} |"
        )
        for which in ("seed7", "heldout"):
            if which in sets:
                commands.append(_command_note(sets[which]))
    if cnn:
        cells = [
            mean_cells(cnn[s]["mean"]) if s in cnn else "not run" for s in ("seed7", "heldout")
        ]
        first = next(iter(cnn.values()))
        lines.append(
            f"| small CNN (`benchmarks/synthetic_gap.py --protocol`) | none | "
            f"{first['train_seconds'] / 60:.1f} min of training | – | {_ran_on(first)} | "
            f"{cells[0]} | {cells[1]} |"
        )
        commands += [f"`{r['command']}`" for r in cnn.values()]
    if anchor is None:
        return "Not measured yet: `python scripts/first_run.py` writes `docs/results/first_run/`."
    lines += [
        "",
        f"Commands: {', '.join(commands)}; torch {anchor['torch']}, {anchor['machine']}, the "
        "CPU model and thread count in each row. A row with a pretraining time "
        "is a first run (`scripts/first_run.py`: a new, empty cache folder; its held-out-look "
        "run then loads the backbone its seed-7 run cached); the other rows load a cached "
        "backbone. Protocol: SYSU-style all-search, single-shot, 10 seeded gallery trials, "
        "infrared → visible, 20 test identities.",
    ]
    return "\n".join(lines)


SPREAD_SETS = {"seed7": "seed 7, default look", "heldout": "seed 7, held-out look"}


def spread_runs(first_run: Path, spread: Path) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """``{kind: {set: [records by training seed]}}`` for kind ``demo`` / ``cnn``: training
    seed 0 from the first-run table's files (``recipe-<set>.json``, ``cnn-<set>.json``), the
    others from ``spread/<kind>-<set>-train<N>.json`` (``scripts/seed_spread.py``)."""
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {"demo": {}, "cnn": {}}
    for kind, first in (("demo", "recipe"), ("cnn", "cnn")):
        for which in SPREAD_SETS:
            found = []
            if (first_run / f"{first}-{which}.json").is_file():
                found.append((0, json.loads((first_run / f"{first}-{which}.json").read_text())))
            for path in spread.glob(f"{kind}-{which}-train*.json"):
                found.append((int(path.stem.rpartition("train")[2]), json.loads(path.read_text())))
            if found:
                runs[kind][which] = [r for _, r in sorted(found, key=lambda x: x[0])]
    return runs


def _seed_of(kind: str, record: dict[str, Any]) -> int:
    return record["config"]["train"]["seed"] if kind == "demo" else record.get("train_seed", 0)


def _spread_cell(means: list[float]) -> str:
    values = ", ".join(f"{m:.2f}" for m in means)
    if len(means) < 2:
        return values
    return f"{values} (mean {statistics.mean(means):.2f} ± {statistics.stdev(means):.2f})"


def _runs(n: int, kind: str) -> str:
    return f"{n} {kind} run" + ("s" if n != 1 else "")


def render_spread(first_run: Path, spread: Path) -> str:
    """The demo recipe and the small CNN (given the demo's first-run time) over training
    seeds, on synthetic seed 7 in the default and the held-out look; then, per look and
    metric, whether every demo run is above every CNN run, the other way round, or neither."""
    runs = spread_runs(first_run, spread)
    if not runs["demo"] or not runs["cnn"]:
        return (
            "Not measured yet: `python scripts/first_run.py --variants recipe`, the small CNN "
            "runs of the first-run table and `python scripts/seed_spread.py` write it."
        )
    lines = [
        "| model | synthetic set | training seeds | rank-1 | mAP | mINP |",
        "|---|---|---|---|---|---|",
    ]
    commands, verdicts = [], []
    for kind, label in (("demo", "DCLNet demo recipe"), ("cnn", "small CNN")):
        for which, set_label in SPREAD_SETS.items():
            records = runs[kind].get(which, [])
            if not records:
                continue
            means = [r["dclnet"]["mean"] if kind == "demo" else r["mean"] for r in records]
            if kind == "cnn":
                label = f"small CNN, {records[0]['train_seconds'] / 60:.1f} min of training"
            seeds = ", ".join(str(_seed_of(kind, r)) for r in records)
            lines.append(
                f"| {label} | {set_label} | {seeds} | "
                + " | ".join(_spread_cell([m[k] for m in means]) for k in ("rank1", "mAP", "mINP"))
                + " |"
            )
            commands += [_command_note(r) for r in records]
    for which, set_label in SPREAD_SETS.items():
        demo, cnn = runs["demo"].get(which), runs["cnn"].get(which)
        if not demo or not cnn:
            continue
        metrics = (("rank-1", "rank1"), ("mAP", "mAP"), ("mINP", "mINP"))
        d = {k: [r["dclnet"]["mean"][k] for r in demo] for _, k in metrics}
        c = {k: [r["mean"][k] for r in cnn] for _, k in metrics}
        demo_ahead = [n for n, k in metrics if min(d[k]) > max(c[k])]
        cnn_ahead = [n for n, k in metrics if min(c[k]) > max(d[k])]
        overlap = [n for n, _ in metrics if n not in demo_ahead + cnn_ahead]
        parts = [
            f"every demo run above every CNN run on {', '.join(demo_ahead)}" if demo_ahead else "",
            f"every CNN run above every demo run on {', '.join(cnn_ahead)}" if cnn_ahead else "",
            f"the runs overlap on {', '.join(overlap)}" if overlap else "",
        ]
        runs_of = f"{_runs(len(demo), 'demo')}, {_runs(len(cnn), 'CNN')}"
        verdicts.append(f"{set_label} ({runs_of}): " + "; ".join(p for p in parts if p))
    everything = [r for sets in runs.values() for records in sets.values() for r in records]
    machines = sorted({where(r) for r in everything})  # one machine, unless files were mixed
    lines += [
        "",
        *(f"- {v}." for v in verdicts),
        "",
        f"Commands: {', '.join(commands)}; on {' and on '.join(machines)}. "
        "Training seed 0 is the first-run table's pair (the demo's first run, then its "
        "held-out run on the cached backbone); the other demo runs use the same recipe's "
        "backbone, cached or pretrained by the first of them (its pretraining has its own "
        "fixed seed, apart from the training seed).",
    ]
    return "\n".join(lines)


def _change(record: dict[str, Any]) -> str:
    """The overrides a demo record adds to ``dclnet demo data.synthetic_seed=7``."""
    words = record["command"].split()[2:]
    return " ".join(w for w in words if w != "data.synthetic_seed=7")


def _budget_row(record: dict[str, Any]) -> str:
    """One row of the time-budget table: the demo (its change to the recipe, first run or
    cached backbone) or the small CNN (its training budget)."""
    if "dclnet" in record:
        pre = record.get("pretrain_seconds", 0)
        time = f"{record['seconds'] / 60:.1f} min, " + (
            f"of it {pre / 60:.1f} min pretraining"
            if pre
            else "backbone cached (a first run adds its pretraining)"
        )
        change = f"`{_change(record)}`" if _change(record) else "none"
        if record.get("beside"):
            time += ", another job beside it"
        name, mean = "DCLNet demo", record["dclnet"]["mean"]
    else:
        time = f"{record['train_seconds'] / 60:.1f} min of training"
        name, mean, change = "small CNN", record["mean"], "–"
    return f"| {name} | {change} | {time} | {mean_cells(mean)} |"


def render_budget(first_run: Path, budget: Path) -> str:
    """The demo recipe with one change each and the small CNN at other budgets, on synthetic
    seed 7: the first-run table's recipe and CNN runs with ``budget/*.json``."""
    paths = [first_run / "recipe-seed7.json", first_run / "cnn-seed7.json"]
    paths += sorted(budget.glob("*.json"))
    records = [json.loads(p.read_text()) for p in paths if p.is_file()]
    if len(records) < 2:
        return "Not measured yet: the first-run table's files and `docs/results/budget/`."
    records.sort(
        key=lambda r: (
            (0, bool(_change(r)), _change(r)) if "dclnet" in r else (1, r["train_seconds"], "")
        )
    )
    commands = [_command_note(r) for r in records]
    lines = [
        "| model | change to the demo recipe | time | seed 7: rank-1 / mAP / mINP |",
        "|---|---|---|---|",
        *(_budget_row(r) for r in records),
        "",
        f"Commands: {', '.join(commands)}; on {where(records[0])}. The demo's time is its "
        "whole command, the CNN's its training (its data rendering and test not counted).",
    ]
    return "\n".join(lines)


# section name -> its text, rendered from the results folder
SECTIONS = {
    "demo": lambda r: render_demo(
        load_result(r, "demo"),
        _threads_pair(r),
        spread_runs(r / "first_run", r / "spread")["demo"].get("seed7"),
    ),
    "comparison": lambda r: render_comparison(
        [load_result(r, "demo_seed7"), load_result(r, "demo_seed7_500steps")],
        [load_result(r, "cnn_seed7_241s"), load_result(r, "cnn_seed7")],
    ),
    "first-run": lambda r: render_first_run(r / "first_run"),
    "spread": lambda r: render_spread(r / "first_run", r / "spread"),
    "budget": lambda r: render_budget(r / "first_run", r / "budget"),
}
