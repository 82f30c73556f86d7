"""How good is a synthetic-pretrained backbone before any re-identification training?

    python scripts/zero_shot.py --json docs/results/zero_shot.json

The demo's first-run numbers move by several points with any change to the pretrained
weights (another pretraining seed, another summation order), because the ten-epoch training
on 44 people amplifies small differences. This script measures the backbone itself: for
each pretraining variant (float32 or bfloat16 arithmetic, a number of steps; the demo's
other pretraining settings: ResNet-18, 64 x 32, lr 0.002, 512 people, default look) it
takes the cached backbone (pretraining it first when the cache has none), pools its final
map with GeM (p = 3) into an L2-normalised feature and scores infrared -> visible retrieval
under the demo's protocol (SYSU-style all-search, single-shot, 10 seeded gallery trials) on
the synthetic sets ``--seeds`` (default 0, 1, 2: tuning sets, not the judging seed 7), at the
pretraining size and at the demo's input size, 96 x 48. No part of the backbone is trained
on these sets.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dclnet.data.augment import test_transform
from dclnet.data.datasets import load_eval_data
from dclnet.engine.runs import machine_info
from dclnet.engine.synthetic_pretrain import synthetic_backbone
from dclnet.evaluation.protocols import evaluate_splits, write_json
from dclnet.models.pooling import gem
from dclnet.models.resnet import build_resnet

# name -> (model.pretrain_amp, model.pretrain_steps)
VARIANTS = {
    "fp32-600": ("off", 600),
    "fp32-1000": ("off", 1000),
    "bf16-1000": ("bfloat16", 1000),
    "bf16-1500": ("bfloat16", 1500),
}
SIZES = ((64, 32), (96, 48))


@torch.no_grad()
def gem_features(backbone: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    """``N x H x W x 3`` uint8 -> ``N x C`` L2-normalised GeM (p = 3) features."""
    x = test_transform(torch.from_numpy(images))
    maps = torch.cat([backbone.forward_features(x[i : i + 128]) for i in range(0, len(x), 128)])
    return F.normalize(gem(maps, 3.0), dim=1).numpy()


def score(path: Path, seeds: list[int]) -> dict:
    """Rank-1 and mAP per set and size for the backbone weights at ``path``."""
    backbone = build_resnet("resnet18", last_stride=1, layer3_stride=2)
    backbone.load_state_dict(torch.load(path, map_location="cpu"), strict=False)
    backbone.eval()
    out = {}
    for h, w in SIZES:
        rows = []
        for seed in seeds:
            data = load_eval_data("synthetic", size=(h, w), synthetic_ids=64,
                                  synthetic_seed=seed, trials=10, progress=False)  # fmt: skip
            feats = gem_features(backbone, data.images)
            mean = evaluate_splits(data.paths, feats, data.splits, data.protocol).plain.mean
            rows.append({"seed": seed, "rank1": mean["rank1"], "mAP": mean["mAP"]})
        out[f"{h}x{w}"] = rows
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--cache", type=Path, default=None,
                        help="cache folder of the backbones (default: dclnet's own)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.cache is None:
        from dclnet.data.cache import default_cache_dir

        args.cache = default_cache_dir()
    rows = []
    for name in args.variants:
        amp, steps = VARIANTS[name]
        path = synthetic_backbone("resnet18", (64, 32), args.cache, ids=512, steps=steps,
                                  lr=2e-3, amp=amp)  # fmt: skip
        result = score(path, args.seeds)
        rows.append({"variant": name, "amp": amp, "steps": steps, "file": path.name, **result})
        for size, per_seed in result.items():
            r1 = [r["rank1"] for r in per_seed]
            m = [r["mAP"] for r in per_seed]
            print(f"{name:10s} at {size}: rank-1 {' '.join(f'{v:.2f}' for v in r1)} "
                  f"(mean {np.mean(r1):.2f}), mAP mean {np.mean(m):.2f}", flush=True)  # fmt: skip
    if args.json is not None:
        command = " ".join(["python scripts/zero_shot.py", *sys.argv[1:]])
        write_json({"command": command, "seeds": args.seeds, "rows": rows, **machine_info()},
                   args.json)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
