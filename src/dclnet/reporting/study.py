"""Result sections of docs/study.md: the ablation study, its diagnosis, the shift probes and the
backbone-locality table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dclnet.reporting.common import fenced, load_result, or_not_run, where

STUDY_LABELS = {
    "baseline": "baseline (id + center-cluster)",
    "dcl_stripes": "+ DCL, stripe masks",
    "dcl_pap": "+ DCL, PAP masks (+ part id, PAP loss)",
    "full": "+ DCL, PAP + SRM masks (full DCLNet)",
}


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
        f"`{record['command']}`{note}; table made on {where(record)}; runs on "
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
        f"`{record['command']}` (synthetic data) on {where(record)}, "
        f"{record['train_and_test_seconds'] / 60:.1f} min train + test "
        f"({record.get('load_note', 'quiet machine')}); rank-1 {m['rank1']:.2f}, mAP "
        f"{m['mAP']:.2f}, mINP {m['mINP']:.2f}; `dclnet diagnose` printed:\n\n"
        + fenced(format_diagnosis(record["diagnose"]))
    )


def render_diagnosis(record: dict[str, Any]) -> str:
    """What ``dclnet diagnose`` printed for one checkpoint, with the command."""
    from dclnet.evaluation.diagnose import format_diagnosis

    return (
        f"`dclnet diagnose --checkpoint {record['checkpoint']}` printed (synthetic data):\n\n"
        + fenced(format_diagnosis(record))
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
        f"of {study['summary']['full']['rank-1 (%)'][1]:.2f}. {where(study)}.",
    ]
    return "\n".join(lines)


def _shift_rows(results: Path) -> str:
    study = load_result(results, "study_500steps")
    seed0 = next(r for r in study["runs"]["full"] if r["seed"] == 0)
    rows = [
        ("`model.pretrained=synthetic`, 500 steps (the earlier study's run)",
         {"mean": seed0["test"]}, load_result(results, "diagnose_full_seed0_500steps")),
        ("… `model.pretrain_shift=18`", load_result(results, "test_shift18_seed0"),
         load_result(results, "diagnose_shift18_seed0")),
        ("… `model.pretrain_parts=1`", load_result(results, "test_parts1_seed0"),
         load_result(results, "diagnose_parts1_seed0")),
        ("… `model.pretrain_local=1`", load_result(results, "test_local1_seed0"),
         load_result(results, "diagnose_local1_seed0")),
    ]  # fmt: skip
    return render_shift(study, rows)


STUDY_COMMAND = (
    "python scripts/run_study.py --output runs/study --seeds 0 1 2 "
    "--run-results docs/results/study --results docs/results/study.json"
)


LOCALITY_COMMAND = (
    "python scripts/backbone_locality.py --config study --sizes 96x48 192x96 288x144 "
    "--json docs/results/backbone_locality.json"
)


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
        f"part stripes. `{record['command']}` on {where(record)}, {record['seconds']:.0f} s.",
    ]
    return "\n".join(lines)


# section name -> its text, rendered from the results folder
SECTIONS = {
    "study": lambda r: or_not_run(r, "study", render_study, STUDY_COMMAND),
    "locality": lambda r: or_not_run(r, "backbone_locality", render_locality, LOCALITY_COMMAND),
    "study96": lambda r: render_study(
        load_result(r, "study96"),
        " (recorded when `configs/study.yaml` was this recipe; today add `--config study96`)",
    ),
    "diagnose-full": lambda r: render_diagnosis(load_result(r, "diagnose_full_seed0")),
    "probe": lambda r: render_probe(load_result(r, "probe_study_full_seed0")),
    "shift": _shift_rows,
}
