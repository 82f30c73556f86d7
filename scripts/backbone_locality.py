"""How local a recipe's pretrained backbone is at several input sizes, before any training.

    python scripts/backbone_locality.py --config study --sizes 96x48 192x96 288x144 \
        --json docs/results/backbone_locality.json

Loads the backbone the recipe starts from (``model.pretrained``: for ``synthetic`` the cached
file of its ``model.pretrain_*`` keys, pretrained once when missing) and prints, per input
size, who is in a synthetic test image as read from one final-map column alone
(:mod:`dclnet.evaluation.locality`). The JSON file (with the command, machine and torch
version) feeds the table in docs/study.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from dclnet.cli_commands import resolve_config_path
from dclnet.engine.build import pretrained_weights
from dclnet.engine.runs import machine_info, resolve_run_config
from dclnet.errors import DclnetError
from dclnet.evaluation.locality import backbone_locality, format_locality
from dclnet.evaluation.protocols import write_json


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not HxW, e.g. 192x96") from None
    return h, w


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="study", help="recipe (file or bundled name)")
    parser.add_argument("--sizes", type=_size, nargs="+", default=[(96, 48), (192, 96)])
    parser.add_argument("--synthetic-seed", type=int, default=0, help="population scored")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("overrides", nargs="*", help="section.key=value for the recipe")
    args = parser.parse_args()
    start = time.perf_counter()
    try:
        cfg = resolve_run_config(
            resolve_config_path(args.config), args.overrides, dataset="synthetic"
        )
        weights = pretrained_weights(cfg)
        rows = backbone_locality(
            str(weights),
            cfg.model.arch,
            args.sizes,
            synthetic_ids=cfg.data.synthetic_ids,
            synthetic_seed=args.synthetic_seed,
            layer3_stride=cfg.model.layer3_stride,
            stripes=cfg.model.num_parts,
        )
    except DclnetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"identity from one final-map column, left to right ({Path(str(weights)).name}):")
    print(format_locality(rows))
    if args.json:
        record = {
            "command": "python scripts/backbone_locality.py " + " ".join(sys.argv[1:]),
            **machine_info(),
            "seconds": time.perf_counter() - start,
            "weights": Path(str(weights)).name,
            "synthetic_seed": args.synthetic_seed,
            "rows": rows,
        }
        write_json(record, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
