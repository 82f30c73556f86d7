"""A fresh machine's first ``dclnet demo``, measured: pretraining variants on an empty cache.

    python scripts/first_run.py --variants s64-800-wide --out docs/results/first_run

For each variant (a set of ``section.key=value`` overrides on top of the demo recipe), in a
new, empty cache folder, as a new user would:

1. ``dclnet demo <overrides> data.synthetic_seed=7`` - the whole first run on a synthetic
   population nothing was tuned on: the synthetic pretraining (its seconds are in the
   demo's record), then the demo. Its wall time is the "first run" figure.
2. ``dclnet demo <overrides> data.synthetic_seed=7 data.synthetic_style=heldout`` - the same
   recipe on people drawn in the held-out look (docs/synthetic.md), which neither the
   pretraining nor any tuning saw; it loads the backbone cached by step 1.

Each run's ``--json`` record (the demo's metrics, config, machine, CPU, pretraining
seconds) is written to ``--out/<variant>-<set>.json`` with the load average at its end, as
soon as it finishes; a variant whose files exist is skipped, so a stopped sweep loses at
most one run. ``python -m dclnet.reporting`` turns the files into the first-run table of
docs/synthetic.md. ``recipe`` is the demo recipe as configured; ``r96-1500`` the same
pretraining spelled out.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dclnet.evaluation.protocols import write_json

# name -> overrides on top of configs/demo.yaml (the recipe of record is "recipe": no overrides).
# The recipes before it ran ResNet-18: "recipe-b64" (1000 pretraining steps of 64 images, 10
# epochs; the recipe's own schedule) is the base of the older variants, most of them measured
# with float32 pretraining and tests without flipping; "recipe-b32-1000-e7" and
# "recipe-b32-700-e5" were the tries at a shorter first run with that backbone.
R18 = ["model.arch=resnet18"]
B64 = [*R18, "model.pretrain_steps=1000", "model.pretrain_batch=64", "optim.epochs=10",
       "optim.warmup_epochs=2", "optim.milestones=[7,9]"]  # fmt: skip
FP32 = [*B64, "model.pretrain_amp=off", "eval.flip=false"]
VARIANTS = {
    "recipe": [],
    "recipe-b64": B64,
    "recipe-b32-1000-e7": [
        *R18,
        "model.pretrain_steps=1000",
        "model.pretrain_batch=32",
        "optim.epochs=7",
        "optim.warmup_epochs=2",
        "optim.milestones=[5,6]",
    ],  # fmt: skip
    "recipe-b32-700-e5": [
        *R18,
        "model.pretrain_steps=700",
        "model.pretrain_batch=32",
        "optim.epochs=5",
        "optim.warmup_epochs=1",
        "optim.milestones=[3,4]",
    ],  # fmt: skip
    "r96-1500": [*FP32, "model.pretrain_size=[96,48]", "model.pretrain_steps=1500"],
    "s64-800": [
        *FP32,
        "model.pretrain_size=[64,32]",
        "model.pretrain_steps=800",
        "model.pretrain_lr=2e-3",
        "model.pretrain_style=default",
    ],
    "s64-800-wide": [
        *FP32,
        "model.pretrain_size=[64,32]",
        "model.pretrain_steps=800",
        "model.pretrain_lr=2e-3",
        "model.pretrain_style=wide",
    ],
}
# 64 x 32 at lr 2e-3 with N steps, in a look, with layer4 at stride 1 or 2 while pretraining
for _steps, _style, _stride in [(1000, "default", 1), (1000, "wide", 1), (1000, "default", 2),
                                (1200, "default", 2), (1200, "wide", 2)]:  # fmt: skip
    VARIANTS[
        f"s64-{_steps}" + ("-wide" if _style == "wide" else "") + ("-ls2" if _stride == 2 else "")
    ] = [
        *FP32,
        "model.pretrain_size=[64,32]",
        f"model.pretrain_steps={_steps}",
        "model.pretrain_lr=2e-3",
        f"model.pretrain_style={_style}",
        *([f"model.pretrain_last_stride={_stride}"] if _stride != 1 else []),
    ]
# the recipe before bfloat16 pretraining and flip-averaged tests (the recipe of record until
# then), and two variants of it: another pretraining seed (its initialisation, batches,
# augmentation) and a pretraining population twice as large (same steps: more people, fewer
# views of each)
VARIANTS["recipe-fp32"] = FP32
VARIANTS["recipe-ps1"] = [*FP32, "model.pretrain_seed=1"]
VARIANTS["recipe-1024ids"] = [*FP32, "model.pretrain_ids=1024"]
SETS = {"seed7": ["data.synthetic_seed=7"], "heldout": ["data.synthetic_seed=7",
        "data.synthetic_style=heldout"]}  # fmt: skip
_TOOK = re.compile(r"synthetic pretraining took (\d+) s")


def run_demo(overrides: list[str], cache: Path | None, record: Path) -> dict:
    """One ``dclnet demo`` in a fresh run folder (``data.cache_dir=cache`` unless None: the
    demo's own cache); writes its JSON record to ``record`` atomically, with the
    pretraining's seconds (0 when the backbone was cached), the load average at its end and
    the command line, and returns it."""
    with tempfile.TemporaryDirectory(prefix="first-run-") as tmp:
        out_json = Path(tmp) / "demo.json"
        dclnet = shutil.which("dclnet") or str(Path(sys.executable).with_name("dclnet"))
        cmd = [
            dclnet, "demo", "--output", str(Path(tmp) / "run"), "--json", str(out_json),
            *overrides, *([f"data.cache_dir={cache}"] if cache else []),
        ]  # fmt: skip
        print("$", " ".join(cmd), flush=True)
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        sys.stdout.write(proc.stdout[-1500:])
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr[-3000:])
            raise SystemExit(f"error: {' '.join(cmd)} failed ({proc.returncode})")
        res = json.loads(out_json.read_text())
    if "pretrain_seconds" not in res:  # written by dclnet before the demo recorded it
        took = _TOOK.search(proc.stderr)
        res["pretrain_seconds"] = int(took.group(1)) if took else 0
    res["process_seconds"] = seconds
    res["load_average"] = [round(x, 2) for x in os.getloadavg()]  # 1, 5, 15 min, at the end
    res["command"] = "dclnet demo " + " ".join(overrides)
    write_json(res, record)
    return res


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    parser.add_argument("--out", type=Path, default=Path("docs/results/first_run"))
    parser.add_argument("--keep-cache", type=Path, default=None,
                        help="keep each variant's cache here (default: deleted)")  # fmt: skip
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.variants:
        records = {s: args.out / f"{name}-{s}.json" for s in args.sets}
        if all(p.is_file() for p in records.values()):
            print(f"{name}: done (results in {args.out})")
            continue
        root = args.keep_cache or Path(tempfile.mkdtemp(prefix="first-run-cache-"))
        cache = root / name
        shutil.rmtree(cache, ignore_errors=True)  # an empty cache: the first run of a machine
        for s, path in records.items():
            if path.is_file():
                continue
            res = run_demo(VARIANTS[name] + SETS[s], cache, path)
            d = res["dclnet"]["mean"]
            print(
                f"{name} {s}: {res['seconds'] / 60:.1f} min (pretraining "
                f"{res['pretrain_seconds'] / 60:.1f} min)  rank-1 {d['rank1']:.2f} "
                f"mAP {d['mAP']:.2f} mINP {d['mINP']:.2f}",
                flush=True,
            )
        if args.keep_cache is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
