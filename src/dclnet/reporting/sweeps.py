"""Result sections of docs/synthetic.md that vary the demo recipe: its runs over training seeds
against the small CNN (float32 and bfloat16), one change at a time, the choices tried on seed
0, and the pretrained backbones scored before any re-identification training."""

from __future__ import annotations

import itertools
import json
import statistics
from pathlib import Path
from typing import Any

from dclnet.reporting.common import change_today, command_note, mean_cells, where

SPREAD_SETS = {"seed7": "seed 7, default look", "heldout": "seed 7, held-out look"}


def spread_runs(
    first_run: Path, spread: Path, recipe: str = "recipe", cnn_seed0: bool = True
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """``{kind: {set: [records by training seed]}}`` for kind ``demo`` / ``cnn`` /
    ``cnn-bf16``: training seed 0 of the demo from the first-run table's
    ``<recipe>-<set>.json`` and of the CNN from its ``cnn-<set>.json`` (with ``cnn_seed0``),
    the rest from ``spread/<kind>-<set>-train<N>.json`` (``scripts/seed_spread.py``)."""
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {"demo": {}, "cnn": {}, "cnn-bf16": {}}
    for kind, first in (
        ("demo", recipe),
        ("cnn", "cnn" if cnn_seed0 else None),
        ("cnn-bf16", None),
    ):
        for which in SPREAD_SETS:
            found = []
            if first and (first_run / f"{first}-{which}.json").is_file():
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


def render_spread(
    first_run: Path, spread: Path, recipe: str = "recipe", cnn_seed0: bool = True
) -> str:
    """The demo recipe and the small CNN (given the demo's first-run time; in float32 and,
    where run, in bfloat16) over training seeds, on synthetic seed 7 in the default and the
    held-out look; then, per look, CNN variant and metric, whether every demo run is above
    every CNN run, the other way round, or neither."""
    runs = spread_runs(first_run, spread, recipe, cnn_seed0)
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
    cnn_names = {"cnn": "small CNN", "cnn-bf16": "small CNN in bfloat16"}
    for kind in ("demo", *cnn_names):
        for which, set_label in SPREAD_SETS.items():
            records = runs[kind].get(which, [])
            if not records:
                continue
            means = [r["dclnet"]["mean"] if kind == "demo" else r["mean"] for r in records]
            label = "DCLNet demo recipe"
            if kind != "demo":
                minutes = records[0]["train_seconds"] / 60
                label = f"{cnn_names[kind]}, {minutes:.1f} min of training"
            seeds = ", ".join(str(_seed_of(kind, r)) for r in records)
            lines.append(
                f"| {label} | {set_label} | {seeds} | "
                + " | ".join(_spread_cell([m[k] for m in means]) for k in ("rank1", "mAP", "mINP"))
                + " |"
            )
            commands += [command_note(r) for r in records]
    for (which, set_label), kind in itertools.product(SPREAD_SETS.items(), cnn_names):
        demo, cnn = runs["demo"].get(which), runs[kind].get(which)
        short = {"cnn": "CNN", "cnn-bf16": "bfloat16 CNN"}[kind]
        if not demo or not cnn:
            continue
        metrics = (("rank-1", "rank1"), ("mAP", "mAP"), ("mINP", "mINP"))
        d = {k: [r["dclnet"]["mean"][k] for r in demo] for _, k in metrics}
        c = {k: [r["mean"][k] for r in cnn] for _, k in metrics}
        demo_ahead = [n for n, k in metrics if min(d[k]) > max(c[k])]
        cnn_ahead = [n for n, k in metrics if min(c[k]) > max(d[k])]
        overlap = [n for n, _ in metrics if n not in demo_ahead + cnn_ahead]
        parts = [
            f"every demo run above every {short} run on {', '.join(demo_ahead)}"
            if demo_ahead
            else "",
            f"every {short} run above every demo run on {', '.join(cnn_ahead)}"
            if cnn_ahead
            else "",
            f"the runs overlap on {', '.join(overlap)}" if overlap else "",
        ]
        mean_ahead = [n for n, k in metrics if statistics.mean(d[k]) > statistics.mean(c[k])]
        mean_behind = [n for n, _ in metrics if n not in mean_ahead]
        parts.append(
            "the demo's mean is "
            + " and ".join(
                f"{word} on {', '.join(names)}"
                for word, names in (("ahead", mean_ahead), ("not ahead", mean_behind))
                if names
            )
        )
        runs_of = f"{_runs(len(demo), 'demo')}, {_runs(len(cnn), short)}"
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


_FP32 = ("model.pretrain_amp=off", "eval.flip=false")  # the recipe before bfloat16


def _change(record: dict[str, Any]) -> str:
    """The overrides a demo record adds to the float32 recipe on seed 7, ``dclnet demo
    model.pretrain_amp=off eval.flip=false data.synthetic_seed=7``."""
    words = record["command"].split()[2:]
    return " ".join(w for w in words if w not in ("data.synthetic_seed=7", *_FP32))


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


def render_budget(first_run: Path, budget: Path, spread: Path) -> str:
    """The float32 demo recipe with one change each and the small CNN at other budgets, on
    synthetic seed 7: that recipe's first run, its CNN (``spread/cnn-seed7-train0.json``)
    and ``budget/*.json``."""
    paths = [first_run / "recipe-fp32-seed7.json", spread / "cnn-seed7-train0.json"]
    paths += sorted(budget.glob("*.json"))
    records = [json.loads(p.read_text()) for p in paths if p.is_file()]
    if len(records) < 2:
        return "Not measured yet: the first-run table's files and `docs/results/budget/`."
    records.sort(
        key=lambda r: (
            (0, bool(_change(r)), _change(r)) if "dclnet" in r else (1, r["train_seconds"], "")
        )
    )
    commands = [command_note(r) for r in records]
    lines = [
        "| model | change to the float32 recipe | time | seed 7: rank-1 / mAP / mINP |",
        "|---|---|---|---|",
        *(_budget_row(r) for r in records),
        "",
        f"Commands: {', '.join(commands)}; on {where(records[0])}. The demo's time is its "
        "whole command, the CNN's its training (its data rendering and test not counted).",
    ]
    return "\n".join(lines)


def render_tuning(tuning: Path, recipe: dict[str, Any] | None, note: str | None = None) -> str:
    """The recipe's choices tried on synthetic seed 0 (the tuning set; seed 7 and the held-out
    look judge): ``recipe`` (the README's demo record: the recipe on seed 0) and
    ``tuning/*.json``, each a ``dclnet demo`` with its overrides; a row's change is to today's
    demo recipe (:func:`change_today`: what an earlier recipe set is added, an override
    today's recipe already holds is left out)."""
    records = [json.loads(p.read_text()) for p in sorted(tuning.glob("*.json"))]
    records.sort(key=lambda r: (len(r["command"].split()), r["command"]))  # fewest changes first
    if recipe is not None:
        records.insert(0, recipe)
    if not records:
        return "Not measured yet: `docs/results/tuning/` holds no file."
    lines = [
        "| change to the demo recipe | time | seed 0: rank-1 / mAP / mINP |",
        "|---|---|---|",
    ]
    for r in records:
        change = change_today(r)
        pre = r.get("pretrain_seconds", 0)
        time = f"{r['seconds'] / 60:.1f} min, " + (
            f"of it {pre / 60:.1f} min pretraining" if pre else "backbone cached"
        )
        time += ", another job beside it" if r.get("beside") else ""
        cells = mean_cells(r["dclnet"]["mean"])
        lines.append(f"| {f'`{change}`' if change else 'none'} | {time} | {cells} |")
    lines += [
        "",
        f"Commands: {', '.join(command_note(r) for r in records)}; on {where(records[0])}. "
        + (
            note
            or "`model.pretrain_amp=off` is the float32 pretraining (a cached backbone of that "
            "recipe: its first run pretrained it)."
        ),
    ]
    return "\n".join(lines)


def render_zero_shot(record: dict[str, Any]) -> str:
    """``scripts/zero_shot.py``: each pretrained backbone's GeM features, untrained on the
    sets, scored per size (mean over the sets, the sets' values in brackets)."""
    seeds = ", ".join(str(s) for s in record["seeds"])
    sizes = [k for k in record["rows"][0] if "x" in k and k[0].isdigit()]
    head = " | ".join(f"{k.replace('x', ' × ')}: rank-1 | mAP" for k in sizes)
    lines = [f"| pretraining (64 × 32) | {head} |", "|---" * (1 + 2 * len(sizes)) + "|"]
    for row in record["rows"]:
        cells = []
        for size in sizes:
            r1 = [r["rank1"] for r in row[size]]
            ap = [r["mAP"] for r in row[size]]
            cells.append(f"{statistics.mean(r1):.2f} ({', '.join(f'{v:.1f}' for v in r1)})")
            cells.append(f"{statistics.mean(ap):.2f}")
        arithmetic = "bfloat16" if row["amp"] == "bfloat16" else "float32"
        lines.append(f"| {row['steps']} steps, {arithmetic} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"`{record['command']}` on {where(record)}; synthetic seeds {seeds} (the tuning "
        "sets), infrared → visible, the demo's protocol. Files: "
        + ", ".join(f"`{row['file']}`" for row in record["rows"])
        + ".",
    ]
    return "\n".join(lines)
