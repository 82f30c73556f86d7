"""Result sections of README.md and docs/synthetic.md: the demo block, the demo-vs-CNN comparison
and the first-run table (the recipe's sweeps are in :mod:`dclnet.reporting.sweeps`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dclnet.reporting.common import (
    command_note,
    load_result,
    mean_cells,
    metrics_line,
    or_not_run,
    today_add,
    where,
)
from dclnet.reporting.sweeps import (
    render_budget,
    render_spread,
    render_tuning,
    render_zero_shot,
    spread_runs,
)


def _threads_pair(results: Path) -> list[dict[str, Any]]:
    """The float32 demo recipe (before bfloat16 pretraining) on seed 7 run twice, on two
    machines or thread counts, when both files exist: the same computation summed in another
    order."""
    names = ("first_run/recipe-fp32-seed7.json", "first_run/s64-1000-seed7.json")
    found = [results / n for n in names if (results / n).is_file()]
    return [json.loads(p.read_text()) for p in found] if len(found) == 2 else []


def _other_cpus(results: Path, folder: str = "demo_cpus") -> list[dict[str, Any]]:
    """The README's demo command run on other machines, each on an empty cache
    (``demo_cpus/*.json``, ``dclnet demo --json ...`` there; ``demo_cpus_b32_700/``: the
    recipe before this one, ``demo_cpus_b64/`` the one before that), in name order."""
    return [json.loads(p.read_text()) for p in sorted((results / folder).glob("*.json"))]


def _earlier_on_cpus(records: list[dict[str, Any]]) -> str:
    """One paragraph: an earlier recipe's ``dclnet demo`` on several machines, each on an
    empty cache: what each printed and how long it took."""
    if not records:
        return ""
    runs = []
    for r in records:
        pre = r.get("pretrain_seconds", 0.0)
        arithmetic = "bfloat16" if r.get("pretrain_bf16") else "float32"
        runs.append(
            f"on {where(r)} rank-1 / mAP / mINP {mean_cells(r['dclnet']['mean'])} in "
            f"{r['seconds'] / 60:.1f} min ({pre / 60:.1f} min of it pretraining in {arithmetic})"
        )
    return (
        f"The recipe before this one (today `dclnet demo {today_add(records[0])}`), each on an "
        "empty cache: " + "; ".join(runs) + ". A wall time is one draw of the machine's speed "
        "too: on one Xeon the same work took very different times within a session "
        "([docs/synthetic.md](docs/synthetic.md#the-first-run-pretraining-variants-the-held-"
        "out-look-and-a-small-plain-cnn))."
    )


def _elsewhere(record: dict[str, Any], other: dict[str, Any]) -> str:
    """One sentence: ``other`` (the same command on another machine) against ``record``."""
    a, b = record["dclnet"]["mean"], other["dclnet"]["mean"]
    total, pre = other["seconds"], other.get("pretrain_seconds", 0.0)
    if other["command"] != record["command"]:
        raise ValueError(
            f"docs/results/demo_cpus: a record of {other['command']!r}, not the README's "
            f"{record['command']!r}; keep only runs of the same command there"
        )
    target = " (over the 10-minute target)" if pre > 0 and total > 600 else ""
    arithmetic = "bfloat16" if other.get("pretrain_bf16") else "float32"
    cache = (
        f", of which {pre / 60:.1f} min pretraining in {arithmetic}"
        if pre > 0
        else " (backbone cached)"
    )
    return (
        f"The same command on {where(other)} printed rank-1 / mAP / mINP {mean_cells(b)} and took "
        f"{total / 60:.1f} min{cache}{target}: {abs(a['rank1'] - b['rank1']):.1f} rank-1 and "
        f"{abs(a['mAP'] - b['mAP']):.1f} mAP points from the run above."
    )


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
    elsewhere: list[dict[str, Any]] | None = None,
    earlier: list[dict[str, Any]] | None = None,
) -> str:
    """The demo's printed summary, with the command, machine and wall time; with ``elsewhere``
    (the same command on other machines), what each printed and how long it took; with ``pair``
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
    lines += [line for other in elsewhere or [] for line in ("", _elsewhere(record, other))]
    if earlier:
        lines += ["", _earlier_on_cpus(earlier)]
    if pair:
        a, b = (r["dclnet"]["mean"] for r in pair)
        threads = [r["threads"] for r in pair]
        lines += [
            "",
            "How far another CPU may move these numbers: another CPU runs other kernels, so "
            "every sum is added up in another order. The same float32 recipe (before the "
            "pretraining's bfloat16 and the flip-averaged test) on synthetic seed 7 "
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
                ": the two float32 runs above differ by less than the seeds do."
                if inside
                else ": the two float32 runs above differ by more than the seeds do."
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


def _pretraining(model: dict[str, Any], data: dict[str, Any], bf16: bool = False) -> str:
    """``"64 × 32, 800 steps, lr 0.002, 512 people, wide look"`` of a run's config (and
    ``", bfloat16"`` when ``bf16``: the record's backbone was pretrained in bfloat16)."""
    size = model.get("pretrain_size") or [data["height"], data["width"]]
    return (
        f"{size[0]} × {size[1]}, {model.get('pretrain_steps', 500)} steps × "
        f"{model.get('pretrain_batch', 64)} images, lr "
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


def render_first_run(folder: Path, cnn_folder: Path | None = None) -> str:
    """The first ``dclnet demo`` on an empty cache per pretraining variant, against the small
    CNN given that whole time, on synthetic seed 7 and on the held-out look.

    ``folder`` holds ``<variant>-seed7.json`` / ``<variant>-heldout.json``
    (``scripts/first_run.py``) and ``cnn-seed7.json`` / ``cnn-heldout.json``
    (``benchmarks/synthetic_gap.py --protocol --json``) or, with ``cnn_folder``, the CNN's
    training-seed-0 runs there (``cnn-<set>-train0.json``, ``scripts/seed_spread.py``).
    """
    runs: dict[str, dict[str, dict]] = {}
    for path in sorted(folder.glob("*.json")):
        name, _, which = path.stem.rpartition("-")
        runs.setdefault(name, {})[which] = json.loads(path.read_text())
    cnn = runs.pop("cnn", {})
    if cnn_folder is not None:
        for which in ("seed7", "heldout"):
            path = cnn_folder / f"cnn-{which}-train0.json"
            if path.is_file():
                cnn[which] = json.loads(path.read_text())
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
        arch, epochs = cfg["model"].get("arch"), cfg.get("optim", {}).get("epochs")
        label = f", ResNet-{arch.removeprefix('resnet')}" if arch else ""  # resnet10: ResNet-10
        label += f", {epochs} epochs" if epochs else ""
        recipe = _pretraining(cfg["model"], cfg["data"], first.get("pretrain_bf16", False))
        lines.append(
            f"| DCLNet demo (`{name}`){label} | {recipe} | "
            f"{first['seconds'] / 60:.1f} min | "
            + (f"{pre / 60:.1f} min" if pre else "none (backbone cached earlier)")
            + f" | {_ran_on(first)} | {cells[0]} | {cells[1]} |"
        )
        for which in ("seed7", "heldout"):
            if which in sets:
                commands.append(command_note(sets[which]))
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
        commands += [command_note(r) for r in cnn.values()]
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


_TUNING_XEON = (
    "The first row is `recipe-b64` (ResNet-18, 1000 pretraining steps of 64 images, 10 "
    "epochs; `model.pretrain_amp=auto` timed both arithmetics and pretrained in float32); "
    "`model.pretrain_amp=off` pretrains in float32, `bfloat16` loads the bfloat16 backbone "
    "of the same recipe pretrained on this machine earlier."
)

_TUNING_R10 = (
    "The first row is the README's demo of `recipe-b32-700-e5` (ResNet-18, 700 pretraining "
    "steps of 32 images, 5 epochs), alone on 2 threads; the others pretrain ResNet-10, with "
    "`recipe-b32-1000-e7`'s and with `recipe-b64`'s pretraining and epochs (the last is today's "
    "recipe in float32), two 1-thread jobs at a time, each pretraining its own backbone."
)

# section name -> its text, rendered from the results folder
SECTIONS = {
    "demo": lambda r: render_demo(
        load_result(r, "demo"),
        _threads_pair(r),
        spread_runs(r / "first_run", r / "spread")["demo"].get("seed7"),
        _other_cpus(r),
        _other_cpus(r, "demo_cpus_b32_700"),
    ),
    "comparison": lambda r: render_comparison(
        [load_result(r, "demo_seed7"), load_result(r, "demo_seed7_500steps")],
        [load_result(r, "cnn_seed7_241s"), load_result(r, "cnn_seed7")],
    ),
    "first-run": lambda r: render_first_run(r / "first_run", r / "spread"),
    "spread": lambda r: render_spread(r / "first_run", r / "spread", cnn_seed0=False),
    "spread-b32-700": lambda r: render_spread(
        r / "first_run", r / "spread_b32_700", recipe="recipe-b32-700-e5", cnn_seed0=False
    ),
    "spread-b64": lambda r: render_spread(
        r / "first_run", r / "spread_b64", recipe="recipe-b64", cnn_seed0=False
    ),
    "spread-fp32": lambda r: render_spread(
        r / "first_run", r / "spread_fp32", recipe="recipe-fp32", cnn_seed0=False
    ),
    "zero-shot": lambda r: or_not_run(
        r,
        "zero_shot",
        render_zero_shot,
        "python scripts/zero_shot.py --json docs/results/zero_shot.json",
    ),
    "tuning": lambda r: render_tuning(r / "tuning", load_result(r, "demo_cpus_b64/amd-epyc")),
    "tuning-xeon": lambda r: render_tuning(
        r / "tuning_xeon", load_result(r, "demo_cpus_b64/intel-xeon"), note=_TUNING_XEON
    ),
    "tuning-r10": lambda r: render_tuning(
        r / "tuning_r10", load_result(r, "demo_cpus_b32_700/intel-xeon"), note=_TUNING_R10
    ),
    "budget": lambda r: render_budget(r / "first_run", r / "budget", r / "spread_fp32"),
}
