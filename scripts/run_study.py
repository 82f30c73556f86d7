"""The DCLNet study on the synthetic set: four presets x seeds, identity and mechanism metrics.

    python scripts/run_study.py --output runs/study --seeds 0 1 2 \
        --run-results docs/results/study --results docs/results/study.json

Presets (docs/method.md §7): ``baseline`` (identity + metric loss), ``dcl_stripes`` (+ dense
loss with fixed stripes as masks), ``dcl_pap`` (+ part branch, PAP, dense loss with PAP
masks), ``full`` (+ SRM). Every run uses one recipe (``--config``, default ``study``) and the
same synthetic data; only ``loss.preset`` and ``train.seed`` change. Each run writes
``OUTPUT/<preset>-seed<k>/study.json`` (test metrics, ``dclnet diagnose`` metrics, wall
time, machine, the backbone file's SHA-256) as soon as it finishes, and a copy to
``--run-results DIR/<preset>-seed<k>.json`` (a folder kept in git, so that a study spanning
two sessions or machines keeps its finished runs); a re-run reads finished runs back from
either place and resumes a killed one from its ``last.pt``, so an interrupted study loses at
most one epoch. ``--only-runs`` trains the missing runs and stops without a table;
``--table-only`` trains nothing and tabulates the finished runs, naming the missing ones (a
study in progress).

The table (mean ± population std over seeds) is printed, written with the command, machine,
torch version, thread count and wall times to ``--results`` (default ``OUTPUT/study.json``;
the README's table comes from ``docs/results/study.json``) and, with ``--readme``, put in
that file's ``<!-- results:study -->`` section (:mod:`dclnet.reporting`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from dclnet.cli import resolve_config_path
from dclnet.config import to_dict
from dclnet.engine.runs import load_model, machine_info, resolve_run_config
from dclnet.engine.train import fit, pretrained_weights
from dclnet.evaluation.diagnose import diagnose_model
from dclnet.evaluation.protocols import write_json
from dclnet.reporting import render_study, replace_section

PRESETS = ("baseline", "dcl_stripes", "dcl_pap", "full")
# (column title, path into a run's study.json); mechanism cells are fractions 0..1
COLUMNS = (
    ("rank-1 (%)", ("test", "rank1")),
    ("mAP (%)", ("test", "mAP")),
    ("mINP (%)", ("test", "mINP")),
    ("fg IoU PAP+SRM", ("diagnose", "foreground_iou", "pap_srm")),
    ("part mIoU PAP+SRM", ("diagnose", "part_miou", "pap_srm")),
    ("fg IoU CAM labels", ("diagnose", "foreground_iou", "cam_labels")),
    ("correspondence", ("diagnose", "correspondence", "accuracy")),
)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def library_commit() -> str | None:
    """The git commit of the dclnet source this process imported (None outside a checkout)."""
    import subprocess

    import dclnet

    try:
        out = subprocess.run(
            ["git", "-C", str(Path(dclnet.__file__).parent), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip()


def finished(out: Path, kept: Path | None) -> dict | None:
    """A finished run's results (``kept`` first, then ``OUT/study.json``), or None."""
    for path in (kept, out / "study.json"):
        if path is not None and path.is_file():
            return json.loads(path.read_text())
    return None


def run_one(
    config: Path,
    overrides: list[str],
    preset: str,
    seed: int,
    out: Path,
    kept: Path | None = None,
) -> dict:
    """Train, test and diagnose one run, or read back its ``study.json`` (or ``kept``)."""
    done = out / "study.json"
    previous = finished(out, kept)
    if previous is not None:
        return previous
    cfg = resolve_run_config(
        config, [*overrides, f"loss.preset={preset}", f"train.seed={seed}"], dataset="synthetic"
    )
    backbone = pretrained_weights(cfg)  # made (once) before the clock starts, like a download
    start = time.perf_counter()
    # A killed run resumes from last.pt; one killed before its first checkpoint starts over.
    resume = (out / "last.pt").is_file()
    test = fit(cfg, out, resume=resume, overwrite=not resume, progress=False)["test"]
    seconds = time.perf_counter() - start
    model, _ = load_model(out / "last.pt")
    diag = diagnose_model(
        model,
        size=(cfg.data.height, cfg.data.width),
        synthetic_ids=cfg.data.synthetic_ids,
        synthetic_seed=cfg.data.synthetic_seed,
        fold_bnneck=cfg.loss.cam_fold_bn,
        trained_on_set=True,
    )
    result = {
        "preset": preset,
        "seed": seed,
        "test": test["mean"],
        "diagnose": diag,
        "train_and_test_seconds": seconds,
        "diagnose_seconds": time.perf_counter() - start - seconds,
        "load_average_end": list(os.getloadavg()),
        "library_commit": library_commit(),
        **machine_info(),
        "backbone": {
            "file": Path(backbone).name if backbone else None,
            "sha256": _sha256(Path(backbone)) if backbone else None,
        },
    }
    write_json(result, done)
    if kept is not None:
        write_json(result, kept)
    return result


def _get(run: dict, path: tuple[str, ...]) -> float:
    value = run
    for key in path:
        value = value[key]
    return float(value)


def summarise(results: dict[str, list[dict]]) -> dict[str, dict[str, list[float]]]:
    """preset -> column title -> [mean, std] over seeds."""
    out = {}
    for preset, runs in results.items():
        out[preset] = {}
        for title, path in COLUMNS:
            values = np.array([_get(r, path) for r in runs])
            out[preset][title] = [float(values.mean()), float(values.std())]
    return out


def floors(results: dict[str, list[dict]]) -> dict[str, float]:
    """Reference levels every run shares (same test images): stripes and chance."""
    diag = [r["diagnose"] for runs in results.values() for r in runs]
    return {
        "stripes fg IoU": float(np.mean([d["foreground_iou"]["stripes"] for d in diag])),
        "stripes part mIoU": float(np.mean([d["part_miou"]["stripes"] for d in diag])),
        "correspondence chance": float(np.mean([d["correspondence"]["chance"] for d in diag])),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("runs/study"), help="run folders")
    parser.add_argument("--config", default="study", help="recipe (file or bundled name)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--presets",
        nargs="+",
        default=list(PRESETS),
        choices=PRESETS,
        help="presets in the order they run within a seed (the table keeps its own order)",
    )
    parser.add_argument("--results", type=Path, help="results JSON (default OUTPUT/...)")
    parser.add_argument("--readme", type=Path, help="README to update between the markers")
    parser.add_argument(
        "--run-results", type=Path, help="folder of one results file per finished run (kept)"
    )
    parser.add_argument("--only-runs", action="store_true", help="train the missing runs; no table")
    parser.add_argument(
        "--table-only",
        action="store_true",
        help="train nothing: the table of the finished runs, naming the missing ones",
    )
    parser.add_argument("overrides", nargs="*", help="section.key=value for every run")
    args = parser.parse_args()
    if len(args.seeds) < 3:
        print("note: fewer than 3 seeds; the std is not meaningful", file=sys.stderr)
    config = resolve_config_path(args.config)
    results: dict[str, list[dict]] = {p: [] for p in args.presets}
    missing = []
    for seed in args.seeds:
        for preset in args.presets:
            name = f"{preset}-seed{seed}"
            kept = args.run_results / f"{name}.json" if args.run_results else None
            if args.table_only:
                res = finished(args.output / name, kept)
                if res is None:
                    missing.append(name)
                    continue
            else:
                res = run_one(config, args.overrides, preset, seed, args.output / name, kept)
            results[preset].append(res)
            d = res["diagnose"]
            print(
                f"{preset:<12} seed {seed}: rank-1 {res['test']['rank1']:.2f} "
                f"mAP {res['test']['mAP']:.2f}  fg IoU PAP+SRM "
                f"{d['foreground_iou']['pap_srm']:.3f}  corr "
                f"{d['correspondence']['accuracy']:.3f}  "
                f"({res['train_and_test_seconds'] / 60:.1f} min)",
                flush=True,
            )
    if args.only_runs:
        return 0
    # the table in the presets' own order, whatever order they ran in
    results = {p: results[p] for p in PRESETS if results.get(p)}
    if not results:
        print("error: no finished run to tabulate", file=sys.stderr)
        return 2
    recipe = to_dict(resolve_run_config(config, args.overrides, dataset="synthetic"))
    record = {
        "command": "python scripts/run_study.py " + " ".join(sys.argv[1:]),
        **machine_info(),
        "recipe": {k: recipe[k] for k in ("data", "model", "optim")},
        "missing": missing,
        "run_machines": sorted(
            {
                f"{r.get('cpu', 'CPU model not recorded')}, {r.get('threads', '?')} "
                f"thread{'' if r.get('threads') == 1 else 's'}"
                for runs in results.values()
                for r in runs
            }
        ),  # fmt: skip
        "seeds": {p: len(r) for p, r in results.items()},
        "run_seconds": [r["train_and_test_seconds"] for runs in results.values() for r in runs],
        "summary": summarise(results),
        "floors": floors(results),
        "runs": results,
    }
    text = render_study(record)
    print(text)
    path = args.results or args.output / "study.json"
    write_json(record, path)
    if args.readme:
        args.readme.write_text(replace_section(args.readme.read_text(), "study", text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
