"""Train the four ablations of docs/method.md §7 on the synthetic set, several seeds each.

    python scripts/run_ablations.py --output runs/ablations --seeds 0 1 2 [--readme README.md]

Presets: ``baseline`` (identity + metric loss), ``dcl_stripes`` (+ dense loss with fixed
stripes as masks), ``dcl_pap`` (+ part branch, PAP and dense loss with PAP masks), ``full``
(+ SRM). Every run uses the same recipe (``--config``, default: the demo recipe) and the same
synthetic data; only ``loss.preset`` and ``train.seed`` change. Finished runs are skipped on
a re-run (their ``test_results.json`` is read back), so an interrupted sweep loses nothing.

The table (mean ± population std over seeds of the 10-trial mean rank-1 / mAP) is printed,
written to ``OUTPUT/ablation.md`` and, with ``--readme``, put between the
``<!-- ablation:start -->`` and ``<!-- ablation:end -->`` markers of that file.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from dclnet.cli import resolve_config_path
from dclnet.engine.runs import resolve_run_config
from dclnet.engine.train import fit

PRESETS = ("baseline", "dcl_stripes", "dcl_pap", "full")
LABELS = {
    "baseline": "baseline (id + center-cluster)",
    "dcl_stripes": "+ DCL, stripe masks",
    "dcl_pap": "+ DCL, PAP masks (+ part id, PAP loss)",
    "full": "+ DCL, PAP + SRM masks (full DCLNet)",
}
START, END = "<!-- ablation:start -->", "<!-- ablation:end -->"


def run_one(config: Path, overrides: list[str], preset: str, seed: int, out: Path) -> dict:
    done = out / "test_results.json"
    if done.is_file():
        return json.loads(done.read_text())
    cfg = resolve_run_config(
        config, [*overrides, f"loss.preset={preset}", f"train.seed={seed}"], dataset="synthetic"
    )
    resume = (out / "last.pt").is_file()
    return fit(cfg, out, resume=resume, progress=False)["test"]


def table(results: dict[str, list[dict]], command: str, seconds: float) -> str:
    lines = [
        "| variant | rank-1 (%) | mAP (%) | mINP (%) | seeds |",
        "|---|---|---|---|---|",
    ]
    for preset, runs in results.items():
        cells = []
        for key in ("rank1", "mAP", "mINP"):
            values = np.array([r["mean"][key] for r in runs])
            cells.append(f"{values.mean():.2f} ± {values.std():.2f}")
        lines.append(f"| {LABELS[preset]} | {' | '.join(cells)} | {len(runs)} |")
    machine = f"{platform.machine()} CPU, {torch.get_num_threads()} threads"
    lines += [
        "",
        f"Synthetic data (not SYSU-MM01/RegDB). Command: `{command}`; {machine}; "
        f"{seconds / 60:.1f} min for the runs trained by this invocation (finished runs are "
        "re-read). Each cell: mean ± std over seeds of the 10-trial mean "
        "(SYSU-style all-search protocol on the synthetic test identities).",
    ]
    return "\n".join(lines)


def update_readme(readme: Path, text: str) -> None:
    content = readme.read_text()
    if START not in content or END not in content:
        raise SystemExit(f"{readme} has no {START} ... {END} markers")
    head, rest = content.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{text}\n{END}{tail}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("runs/ablations"))
    parser.add_argument("--config", default="demo", help="recipe (file or bundled name)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=PRESETS)
    parser.add_argument("--readme", type=Path, help="README to update between the markers")
    parser.add_argument("overrides", nargs="*", help="section.key=value for every run")
    args = parser.parse_args()
    if len(args.seeds) < 3:
        print("note: fewer than 3 seeds; the std is not meaningful", file=sys.stderr)
    config = resolve_config_path(args.config)
    start = time.perf_counter()
    results: dict[str, list[dict]] = {p: [] for p in PRESETS}
    for seed in args.seeds:
        for preset in args.presets:
            out = args.output / f"{preset}-seed{seed}"
            res = run_one(config, args.overrides, preset, seed, out)
            results[preset].append(res)
            print(
                f"{preset:<12} seed {seed}: rank-1 {res['mean']['rank1']:.2f} "
                f"mAP {res['mean']['mAP']:.2f}",
                flush=True,
            )
    results = {p: r for p, r in results.items() if r}
    command = "python scripts/run_ablations.py " + " ".join(sys.argv[1:])
    text = table(results, command.strip(), time.perf_counter() - start)
    print(text)
    (args.output / "ablation.md").write_text(text + "\n")
    if args.readme:
        update_readme(args.readme, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
