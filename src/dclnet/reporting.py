"""README and docs result sections, regenerated from the results files the commands wrote.

Every number the README and docs/benchmarks.md quote lives in a JSON file under
``docs/results/`` written by the command that produced it (with the command, machine, torch
version, thread count and wall time). A document holds each section between
``<!-- results:NAME -->`` and ``<!-- /results:NAME -->``; :func:`render_readme` rewrites them
from the files, and a test fails when a document and a file disagree. Regenerate with::

    python -m dclnet.reporting              # every document of DOCUMENTS, from docs/results
    python -m dclnet.reporting --check      # exit status 1 when a section is stale
    python -m dclnet.reporting DOC.md... RESULTS_DIR [--check]

(run from the repository root).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

STUDY_LABELS = {
    "baseline": "baseline (id + center-cluster)",
    "dcl_stripes": "+ DCL, stripe masks",
    "dcl_pap": "+ DCL, PAP masks (+ part id, PAP loss)",
    "full": "+ DCL, PAP + SRM masks (full DCLNet)",
}
# The documents with generated sections (paths from the repository root).
DOCUMENTS = (
    "README.md",
    "docs/study.md",
    "docs/synthetic.md",
    "docs/benchmarks.md",
    "docs/search.md",
    "docs/serve.md",
)
RESULTS = "docs/results"
_SECTION = re.compile(
    r"(<!-- results:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /results:(?P=name) -->)", re.S
)


def _metrics_line(name: str, mean: dict[str, float]) -> str:
    return (
        f"  {name:<11} rank-1 {mean['rank1']:6.2f}   mAP {mean['mAP']:6.2f}   "
        f"mINP {mean['mINP']:6.2f}"
    )


def _where(record: dict[str, Any]) -> str:
    from dclnet.bench.results import where

    return where(record)


def _threads_pair(results: Path) -> list[dict[str, Any]]:
    """The demo recipe on seed 7 with 2 threads and with 1, when both files exist: the same
    computation summed in another order."""
    names = ("first_run/recipe-seed7.json", "first_run/s64-1000-seed7.json")
    found = [results / n for n in names if (results / n).is_file()]
    return [json.loads(p.read_text()) for p in found] if len(found) == 2 else []


def render_demo(record: dict[str, Any], pair: list[dict[str, Any]] | None = None) -> str:
    """The demo's printed summary, with the command, machine and wall time; with ``pair``
    (one recipe and set run with two thread counts), how far another summation order moves
    the numbers."""
    lines = [
        "```",
        "SYNTHETIC data — summary (mean over trials, percent):",
        _metrics_line("raw pixels", record["baseline"]["mean"]),
        _metrics_line("DCLNet", record["dclnet"]["mean"]),
        "```",
        "",
        f"`{record['command']}` on {_where(record)}: " + _demo_time(record),
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
            f"{_where(pair[0])} and on {_where(pair[1])}): "
            f"{abs(a['rank1'] - b['rank1']):.1f} rank-1 points and "
            f"{abs(a['mAP'] - b['mAP']):.1f} mAP points apart"
            + (
                " with nothing changed but the thread count."
                if all("cpu" in r for r in pair)
                else " (the first run predates recording the CPU model, so the CPU may differ too)."
            ),
        ]
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
        f"Commands: {commands}; on {_where(demos[0])}. All use the SYSU-style all-search, "
        "single-shot protocol with 10 seeded gallery trials (infrared → visible) on the same "
        "synthetic test identities.",
    ]
    return "\n".join(lines)


def _pretraining(model: dict[str, Any], data: dict[str, Any]) -> str:
    """``"64 × 32, 800 steps, lr 0.002, 512 people, wide look"`` of a run's config."""
    size = model.get("pretrain_size") or [data["height"], data["width"]]
    return (
        f"{size[0]} × {size[1]}, {model.get('pretrain_steps', 500)} steps, lr "
        f"{model.get('pretrain_lr', 1e-3):g}, {model.get('pretrain_ids', 512)} people, "
        f"{model.get('pretrain_style', 'default')} look"
        + (", last stride 2" if model.get("pretrain_last_stride", 1) == 2 else "")
    )


def _ran_on(record: dict[str, Any]) -> str:
    """``"AMD EPYC (AVX2), 1 thread"``: the CPU and thread count of a results record."""
    from dclnet.bench.results import threads

    cpu = f"{record['cpu']} ({record['cpu_capability']})" if "cpu" in record else "CPU not recorded"
    return f"{cpu}, {threads(record)}"


def _cells(mean: dict[str, float]) -> str:
    return f"{mean['rank1']:.2f} / {mean['mAP']:.2f} / {mean['mINP']:.2f}"


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
    commands, where = [], None
    for name, sets in runs.items():
        first = sets.get("seed7") or next(iter(sets.values()))
        where = where or first
        cfg = first["config"]
        cells = [_cells(sets[s]["dclnet"]["mean"]) if s in sets else "not run"
                 for s in ("seed7", "heldout")]  # fmt: skip
        pre = first.get("pretrain_seconds", 0)
        lines.append(
            f"| DCLNet demo (`{name}`) | {_pretraining(cfg['model'], cfg['data'])} | "
            f"{first['seconds'] / 60:.1f} min | "
            + (f"{pre / 60:.1f} min" if pre else "none (backbone cached earlier)")
            + f" | {_ran_on(first)} | {cells[0]} | {cells[1]} |"
        )
        for which in ("seed7", "heldout"):
            if which in sets:
                load, beside = sets[which].get("load_average"), sets[which].get("beside")
                at_end = f" (load average {load[0]:.1f} at its end)" if load else ""
                at_end = f" ({beside})" if beside else at_end
                commands.append(f"`{sets[which]['command']}`{at_end}")
    if cnn:
        cells = [_cells(cnn[s]["mean"]) if s in cnn else "not run" for s in ("seed7", "heldout")]
        first = next(iter(cnn.values()))
        lines.append(
            f"| small CNN (`benchmarks/synthetic_gap.py --protocol`) | none | "
            f"{first['train_seconds'] / 60:.1f} min of training | – | {_ran_on(first)} | "
            f"{cells[0]} | {cells[1]} |"
        )
        commands += [f"`{r['command']}`" for r in cnn.values()]
    if where is None:
        return "Not measured yet: `python scripts/first_run.py` writes `docs/results/first_run/`."
    lines += [
        "",
        f"Commands: {', '.join(commands)}; torch {where['torch']}, {where['machine']}, the "
        "CPU model and thread count in each row. A row with a pretraining time "
        "is a first run (`scripts/first_run.py`: a new, empty cache folder; its held-out-look "
        "run then loads the backbone its seed-7 run cached); the other rows load a cached "
        "backbone. Protocol: SYSU-style all-search, single-shot, 10 seeded gallery trials, "
        "infrared → visible, 20 test identities.",
    ]
    return "\n".join(lines)


def _regime(record: dict[str, Any]) -> str:
    """One sentence on the recipe a study ran (when its results file records it)."""
    recipe = record.get("recipe")
    if recipe is None:
        return ""
    d, m, o = recipe["data"], recipe["model"], recipe["optim"]
    pre = m.get("pretrain_size") or [d["height"], d["width"]]
    return (
        f"Recipe: {m['arch']} trained and tested at {d['height']} × {d['width']} from the "
        f"synthetic backbone pretrained at {pre[0]} × {pre[1]} ({m['pretrain_steps']} steps, "
        f"{m.get('pretrain_ids', 512)} people), {o['epochs']} epochs, synthetic seed "
        f"{d['synthetic_seed']} ({d['synthetic_ids']} identities). "
    )


def _progress(record: dict[str, Any]) -> str:
    missing = record.get("missing") or []
    if not missing:
        return ""
    done = sum(record["seeds"].values())
    return (
        f"**A study in progress: {done} of {done + len(missing)} runs finished**; not yet run: "
        + ", ".join(f"`{m}`" for m in missing)
        + " (the command without `--table-only` trains them and rewrites this table). "
    )


def render_study(record: dict[str, Any], note: str = "") -> str:
    """The study table (mean ± std over seeds) with its floors, command and timing.

    ``note`` follows the command (e.g. what a recorded command means today).
    """
    titles = list(next(iter(record["summary"].values())))
    lines = ["| variant | " + " | ".join(titles) + " | seeds |", "|---" * (len(titles) + 2) + "|"]
    for preset, cells in record["summary"].items():
        one = record["seeds"][preset] == 1  # no spread to show
        fmt = [
            (f"{m:.2f}" if "%" in title else f"{m:.3f}")
            + ("" if one else (f" ± {s:.2f}" if "%" in title else f" ± {s:.3f}"))
            for title, (m, s) in cells.items()
        ]
        label = STUDY_LABELS.get(preset, preset)
        lines.append(f"| {label} | {' | '.join(fmt)} | {record['seeds'][preset]} |")
    f = record["floors"]
    minutes = [r / 60 for r in record["run_seconds"]]
    lines += [
        "",
        f"Floors on the same test images: fixed stripes fg IoU {f['stripes fg IoU']:.3f}, "
        f"part mIoU {f['stripes part mIoU']:.3f}; random-cell correspondence "
        f"{f['correspondence chance']:.3f}. The baseline and stripe presets do not train the "
        "PAP head, so their PAP columns score an untrained head.",
        "",
        f"{_progress(record)}Synthetic data (not SYSU-MM01/RegDB). {_regime(record)}Command: "
        f"`{record['command']}`{note}; table made on {_where(record)}; runs on "
        f"{'; '.join(record.get('run_machines', [])) or 'the same machine'}; "
        + (
            f"one run of {minutes[0]:.1f} min (train + test). "
            if len(minutes) == 1
            else f"{len(minutes)} runs of {min(minutes):.1f}–{max(minutes):.1f} min each "
            "(train + test). "
        )
        + "Cells: mean ± population std over seeds; identity metrics are "
        "the 10-trial mean of the SYSU-style all-search protocol on the synthetic test "
        "identities, mechanism metrics come from `dclnet diagnose` (fractions 0–1).",
    ]
    return "\n".join(lines)


def render_probe(record: dict[str, Any]) -> str:
    """One training run + its diagnosis: the command, identity metrics and the diagnose table."""
    from dclnet.evaluation.diagnose import format_diagnosis

    m = record["test"]["mean"]
    return (
        f"`{record['command']}` (synthetic data) on {_where(record)}, "
        f"{record['train_and_test_seconds'] / 60:.1f} min train + test "
        f"({record.get('load_note', 'quiet machine')}); rank-1 {m['rank1']:.2f}, mAP "
        f"{m['mAP']:.2f}, mINP {m['mINP']:.2f}; `dclnet diagnose` printed:\n\n"
        + _fenced(format_diagnosis(record["diagnose"]))
    )


def render_diagnosis(record: dict[str, Any]) -> str:
    """What ``dclnet diagnose`` printed for one checkpoint, with the command."""
    from dclnet.evaluation.diagnose import format_diagnosis

    return (
        f"`dclnet diagnose --checkpoint {record['checkpoint']}` printed (synthetic data):\n\n"
        + _fenced(format_diagnosis(record))
    )


def render_shift(study: dict[str, Any], rows: list[tuple[str, dict, dict]]) -> str:
    """Identity and mechanism metrics of single runs, one row each: (label, test, diagnose)."""
    head = (
        "| full DCLNet, study recipe, seed 0 | rank-1 (%) | mAP (%) | fg IoU PAP | "
        "fg IoU PAP+SRM | part mIoU PAP | part mIoU PAP+SRM | fg IoU CAM labels (train) | "
        "CAM-person correlation (train) | identity from one column, left / centre / right | "
        "correspondence |"
    )
    lines = [head, "|---" * 11 + "|"]
    for label, test, diag in rows:
        fg, miou, cam = diag["foreground_iou"], diag["part_miou"], diag["cam_train"]
        cells = [
            f"{test['mean']['rank1']:.2f}",
            f"{test['mean']['mAP']:.2f}",
            *(f"{v:.3f}" for v in (fg["pap"], fg["pap_srm"], miou["pap"], miou["pap_srm"])),
            f"{cam['foreground_iou']:.3f}",
            f"{cam['correlation']:.3f}",
            " / ".join(f"{v:.2f}" for v in diag["identity_by_column"]["accuracy"]),
            f"{diag['correspondence']['accuracy']:.3f}",
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    diag = rows[0][2]
    lines += [
        "",
        f"Floors: fixed stripes fg IoU {diag['foreground_iou']['stripes']:.3f}, part mIoU "
        f"{diag['part_miou']['stripes']:.3f}; identity from one column: chance "
        f"{diag['identity_by_column']['chance']:.2f}. Every row: the study recipe with the "
        "earlier 500-step synthetic pretraining (today add `model.pretrain_steps=500`) plus the "
        "row's option, `loss.preset=full`, then `dclnet diagnose`. Synthetic data, one run each; "
        f"across that study's {study['seeds']['full']} seeds the full model's rank-1 has a std "
        f"of {study['summary']['full']['rank-1 (%)'][1]:.2f}. {_where(study)}.",
    ]
    return "\n".join(lines)


def _shift_rows(results: Path) -> str:
    study = _load(results, "study_500steps")
    seed0 = next(r for r in study["runs"]["full"] if r["seed"] == 0)
    rows = [
        ("`model.pretrained=synthetic`, 500 steps (the earlier study's run)",
         {"mean": seed0["test"]}, _load(results, "diagnose_full_seed0_500steps")),
        ("… `model.pretrain_shift=18`", _load(results, "test_shift18_seed0"),
         _load(results, "diagnose_shift18_seed0")),
        ("… `model.pretrain_parts=1`", _load(results, "test_parts1_seed0"),
         _load(results, "diagnose_parts1_seed0")),
        ("… `model.pretrain_local=1`", _load(results, "test_local1_seed0"),
         _load(results, "diagnose_local1_seed0")),
    ]  # fmt: skip
    return render_shift(study, rows)


def _fenced(text: str) -> str:
    return f"```\n{text}\n```"


def _ran(record: dict[str, Any], load: tuple[Any, Any]) -> str:
    """Where and how long a benchmark ran, with the load average at its start and end."""
    return (
        f"`{record['command']}` on {_where(record)}, load average {load[0]} → {load[1]}; "
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
            _fenced(format_eval_table(record)),
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
            _fenced(format_dense_table(record)),
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
        [_fenced(format_report(record)), "", f"{_ran(record, _bench_load(record))} {machine}"]
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


STUDY_COMMAND = (
    "python scripts/run_study.py --output runs/study --seeds 0 1 2 "
    "--run-results docs/results/study --results docs/results/study.json"
)
LOCALITY_COMMAND = (
    "python scripts/backbone_locality.py --config study --sizes 96x48 192x96 288x144 "
    "--json docs/results/backbone_locality.json"
)


def _or_not_run(results: Path, name: str, render, command: str) -> str:
    """``render`` of ``results/NAME.json``, or a line saying which command writes it."""
    if not (results / f"{name}.json").is_file():
        return f"Not measured yet: `{command}` writes `docs/results/{name}.json`."
    return render(_load(results, name))


def render_locality(record: dict[str, Any]) -> str:
    """Identity from one final-map column per input size, as a table."""
    rows = record["rows"]
    width = max(len(r["accuracy"]) for r in rows)
    lines = [
        "| input (final map) | " + " | ".join(f"col {j + 1}" for j in range(width)) + " |",
        "|---" * (width + 1) + "|",
    ]
    for r in rows:
        cells = [f"{a:.2f}" for a in r["accuracy"]] + [""] * (width - len(r["accuracy"]))
        lines.append(
            f"| {r['size'][0]} × {r['size'][1]} ({r['grid'][0]} × {r['grid'][1]}) | "
            + " | ".join(cells)
            + " |"
        )
    first = rows[0]
    lines += [
        "",
        f"Columns left to right; chance {first['chance']:.2f} ({first['identities']} test "
        f"identities, {first['images']} images of synthetic seed {record['synthetic_seed']}); "
        f"backbone `{record['weights']}`, each column's cells average-pooled to the model's "
        f"part stripes. `{record['command']}` on {_where(record)}, {record['seconds']:.0f} s.",
    ]
    return "\n".join(lines)


def _load(results: Path, name: str) -> dict[str, Any]:
    return json.loads((results / f"{name}.json").read_text())


def _bench_sizes(results: Path) -> str:
    names = ("bench_small", "bench_real")
    found = [n for n in names if (results / f"{n}.json").is_file()]
    missing = [f"docs/results/{n}.json" for n in names if n not in found]
    return render_bench_train([_load(results, n) for n in found], missing)


def _bench_real(results: Path) -> str:
    if not (results / "bench_real.json").is_file():
        return _not_measured("docs/results/bench_real.json")
    return render_bench_report(_load(results, "bench_real"))


RENDERERS = {
    "demo": lambda r: render_demo(_load(r, "demo"), _threads_pair(r)),
    "comparison": lambda r: render_comparison(
        [_load(r, "demo_seed7"), _load(r, "demo_seed7_500steps")],
        [_load(r, "cnn_seed7_241s"), _load(r, "cnn_seed7")],
    ),
    "first-run": lambda r: render_first_run(r / "first_run"),
    "study": lambda r: _or_not_run(r, "study", render_study, STUDY_COMMAND),
    "locality": lambda r: _or_not_run(r, "backbone_locality", render_locality, LOCALITY_COMMAND),
    "study96": lambda r: render_study(
        _load(r, "study96"),
        " (recorded when `configs/study.yaml` was this recipe; today add `--config study96`)",
    ),
    "diagnose-full": lambda r: render_diagnosis(_load(r, "diagnose_full_seed0")),
    "probe": lambda r: render_probe(_load(r, "probe_study_full_seed0")),
    "shift": _shift_rows,
    "bench-eval": lambda r: render_bench_eval(_load(r, "bench_eval")),
    "bench-dense": lambda r: render_bench_dense(_load(r, "bench_dense_loss")),
    "bench-train": _bench_sizes,
    "bench-small": lambda r: render_bench_report(_load(r, "bench_small")),
    "bench-real": _bench_real,
    "bench-gpu": lambda r: _or_not_run(
        r, "bench_gpu_real", render_bench_report, "bash scripts/gpu_check.sh"
    ),
    "bench-search": lambda r: _search_table(r),
    "bench-serve": lambda r: _serve_table(r),
}


def _serve_table(results: Path) -> str:
    from dclnet.bench.results import serve_table

    return serve_table(_load(results, "bench_serve"))


def _search_table(results: Path) -> str:
    from dclnet.bench.results import search_table

    names = ("bench_search_100k", "bench_search_1m")
    return search_table([_load(results, n) for n in names if (results / f"{n}.json").is_file()])


def replace_section(text: str, name: str, body: str) -> str:
    """``text`` with the body of section ``results:NAME`` replaced by ``body``."""
    found = [m for m in _SECTION.finditer(text) if m["name"] == name]
    if not found:
        raise ValueError(f"no <!-- results:{name} --> ... <!-- /results:{name} --> section")
    m = found[0]
    return f"{text[: m.start('body')]}{body}\n{text[m.end('body') :]}"


def render_readme(text: str, results: Path) -> str:
    """``text`` with every ``results:NAME`` section regenerated from ``results``."""

    def replace(match: re.Match) -> str:
        name = match["name"]
        if name not in RENDERERS:
            raise ValueError(f"README section results:{name} has no renderer")
        return f"{match.group(1)}{RENDERERS[name](results)}\n{match.group(4)}"

    return _SECTION.sub(replace, text)


def main(argv: list[str] | None = None) -> int:
    """``python -m dclnet.reporting [DOC... RESULTS_DIR] [--check]``: rewrite (or check) each
    document's result sections (default: :data:`DOCUMENTS` from :data:`RESULTS`); exit status
    1 when ``--check`` finds one stale."""
    args = sys.argv[1:] if argv is None else argv
    paths = [Path(a) for a in args if a != "--check"]
    if not paths:
        paths = [Path(d) for d in (*DOCUMENTS, RESULTS)]
    if len(paths) < 2:
        print("usage: python -m dclnet.reporting DOC.md... RESULTS_DIR [--check]", file=sys.stderr)
        return 2
    *docs, results = paths
    stale = []
    for doc in docs:
        text = doc.read_text()
        new = render_readme(text, results)
        if new == text:
            continue
        if "--check" in args:
            stale.append(doc)
        else:
            doc.write_text(new)
    for doc in stale:
        print(f"{doc}: result sections are stale; run python -m dclnet.reporting")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
