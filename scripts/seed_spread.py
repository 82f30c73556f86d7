"""How far the training seed moves the demo and the small CNN: the first-run comparison, repeated.

    python scripts/seed_spread.py --out docs/results/spread

``scripts/first_run.py`` runs the demo recipe once per set (training seed 0) and
``benchmarks/synthetic_gap.py --protocol`` the small CNN once, for the demo's whole first-run
time. One run each is one draw: another training seed (or another CPU, which adds up every
sum in another order and so drifts like one) moves both. This script repeats the pair with
other training seeds, on synthetic seed 7 in the default look and in the held-out look:

1. ``dclnet demo data.synthetic_seed=7 [data.synthetic_style=heldout] train.seed=N`` (the
   backbone from the cache; the first call pretrains it when the cache has none, and its
   record says so);
2. ``python benchmarks/synthetic_gap.py --protocol --seed 7 [--style heldout] --train-seed N
   --seconds T``, with ``T`` the recipe's first run on seed 7
   (``docs/results/first_run/recipe-seed7.json``: the same wall time the first-run table
   gives the CNN);
3. with ``--cnn-bf16``, the same CNN run with ``--amp bfloat16``: the demo pretrains in
   bfloat16 where the CPU does it natively, and this gives the CNN the same arithmetic.

Each result goes to ``--out/<demo|cnn|cnn-bf16>-<set>-train<N>.json`` as soon as it finishes
(with the load average at its end); a file that exists is skipped, so a stopped sweep loses
at most one run. Run it on a quiet machine with nothing beside it: the CNN stops on a
wall-clock budget. ``python -m dclnet.reporting`` turns the files (and the first-run table's
seed-0 runs) into the spread table of docs/synthetic.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from first_run import run_demo  # scripts/ is on the path when this script runs

from dclnet.evaluation.protocols import write_json

SETS = {"seed7": [], "heldout": ["data.synthetic_style=heldout"]}
REPO = Path(__file__).resolve().parents[1]


def _run(cmd: list[str]) -> None:
    print("$", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    sys.stdout.write(proc.stdout[-800:])
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-3000:])
        raise SystemExit(f"error: {' '.join(cmd)} failed ({proc.returncode})")


def demo(which: str, seed: int, path: Path, cache: Path | None) -> None:
    run_demo(["data.synthetic_seed=7", *SETS[which], f"train.seed={seed}"], cache, path)


def cnn(which: str, seed: int, seconds: float, path: Path, amp: str = "off") -> None:
    style = ["--style", "heldout"] if which == "heldout" else []
    with tempfile.TemporaryDirectory(prefix="seed-spread-") as tmp:
        out = Path(tmp) / "cnn.json"
        args = ["--protocol", "--seed", "7", *style, "--train-seed", str(seed),
                "--seconds", f"{seconds:.0f}"]  # fmt: skip
        args += ["--amp", amp] if amp != "off" else []
        _run([sys.executable, str(REPO / "benchmarks" / "synthetic_gap.py"), *args,
              "--json", str(out)])  # fmt: skip
        record = json.loads(out.read_text())
    record["command"] = " ".join(["python benchmarks/synthetic_gap.py", *args])
    record["load_average"] = [round(x, 2) for x in os.getloadavg()]  # 1, 5, 15 min, at the end
    write_json(record, path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/results/spread"))
    parser.add_argument("--train-seeds", type=int, nargs="+", default=[1, 2],
                        help="training seeds to add (seed 0 is the first-run table's)")  # fmt: skip
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    parser.add_argument("--first-run", type=Path, default=Path("docs/results/first_run"),
                        help="folder with recipe-seed7.json (the CNN's time budget)")  # fmt: skip
    parser.add_argument("--seconds", type=float, default=None,
                        help="CNN budget (default: the recipe's seed-7 first run)")  # fmt: skip
    parser.add_argument("--cache", type=Path, default=None,
                        help="the demo's data.cache_dir (default: the demo's own)")  # fmt: skip
    parser.add_argument("--only", choices=("demo", "cnn", "cnn-bf16"), default=None)
    parser.add_argument("--cnn-bf16", action="store_true",
                        help="also run the CNN in bfloat16 autocast (cnn-bf16-*.json), as the "
                        "demo pretrains where the CPU does bfloat16 natively")  # fmt: skip
    args = parser.parse_args()
    seconds = args.seconds
    if seconds is None and args.only != "demo":
        first = args.first_run / "recipe-seed7.json"
        if not first.is_file():
            raise SystemExit(
                f"error: {first} not found: run python scripts/first_run.py --variants recipe "
                "first, or give the CNN's budget with --seconds"
            )
        seconds = json.loads(first.read_text())["seconds"]
    args.out.mkdir(parents=True, exist_ok=True)
    for which in args.sets:
        for seed in args.train_seeds:
            for kind in ("demo", "cnn", *(["cnn-bf16"] if args.cnn_bf16 else [])):
                path = args.out / f"{kind}-{which}-train{seed}.json"
                if (args.only and kind != args.only) or path.is_file():
                    continue
                if kind == "demo":
                    demo(which, seed, path, args.cache)
                else:
                    cnn(which, seed, seconds, path, "bfloat16" if kind == "cnn-bf16" else "off")
                mean = json.loads(path.read_text())
                mean = (mean["dclnet"] if kind == "demo" else mean)["mean"]
                print(f"{kind} {which} train seed {seed}: rank-1 {mean['rank1']:.2f} "
                      f"mAP {mean['mAP']:.2f} mINP {mean['mINP']:.2f}", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
