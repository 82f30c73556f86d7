"""Where the synthetic pretraining's time goes: seconds per step by size, layout and arithmetic.

    python benchmarks/bench_pretrain.py --json docs/results/bench_pretrain.json

One pretraining step (``dclnet.engine.synthetic_pretrain``: ResNet-18, GeM, a 512-way
identity classifier, Adam; 64 images) timed on random images at each size, with layer4 at
stride 1 (the default) and 2 (``model.pretrain_last_stride=2``), in the default
(contiguous) and ``channels_last`` memory layouts, in float32 and under CPU bfloat16 autocast
(``model.pretrain_amp=bfloat16``; ``auto`` picks it where the CPU does bfloat16 natively,
which the record's ``bf16_native`` says), after 3 warm-up steps, as the median of ``--steps``
timed steps. Also the time to render the 512-person pretraining
population at each size in each look. The numbers say what a first ``dclnet demo`` pays
for per step, so that the pretraining recipe is chosen on measurements.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time

import torch


def step_seconds(
    size: tuple[int, int], channels_last: bool, steps: int, last_stride: int = 1, bf16: bool = False
) -> float:
    """Median seconds of one training step of the pretraining classifier at ``size``."""
    from dclnet.engine.synthetic_pretrain import _Classifier, timed_step

    torch.manual_seed(0)
    model = _Classifier("resnet18", 2, 512, last_stride=last_stride).train()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    x = torch.randn(64, 3, *size)
    y = torch.randint(0, 512, (64,))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    times = [timed_step(model, opt, x, y, bf16) for _ in range(3 + steps)]
    return statistics.median(times[3:])  # after 3 warm-up steps


def render_seconds(size: tuple[int, int], style: str) -> float:
    """Seconds to render the 512-person pretraining population at ``size``."""
    from dclnet.data.sources.synthetic import make_synthetic
    from dclnet.engine.synthetic_pretrain import PRETRAIN_SEED

    start = time.perf_counter()
    make_synthetic(512, seed=PRETRAIN_SEED, height=size[0], width=size[1], num_val_ids=0,
                   num_test_ids=1, style=style)  # fmt: skip
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per setting")
    parser.add_argument("--threads", type=int, default=None, help="default: torch's")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    print(f"{'size':>8s} {'last stride':>11s} {'layout':>14s} {'arithmetic':>10s} "
          f"{'s/step':>7s} {'render s (default, wide)':>25s}")  # fmt: skip
    for size in ((64, 32), (96, 48)):
        render = {s: render_seconds(size, s) for s in ("default", "wide")}
        for last_stride, channels_last, bf16 in itertools.product(
            (1, 2), (False, True), (False, True)
        ):
            sec = step_seconds(size, channels_last, args.steps, last_stride, bf16)
            layout = "channels_last" if channels_last else "contiguous"
            arithmetic = "bfloat16" if bf16 else "float32"
            rows.append({"size": list(size), "last_stride": last_stride, "layout": layout,
                         "arithmetic": arithmetic, "step_seconds": sec,
                         "render_seconds": render})  # fmt: skip
            print(f"{size[0]:>4d}x{size[1]:<3d} {last_stride:>11d} {layout:>14s} {arithmetic:>10s} "
                  f"{sec:7.3f} {render['default']:12.1f} {render['wide']:12.1f}")  # fmt: skip
    if args.json:
        import os

        from dclnet.engine.runs import machine_info
        from dclnet.engine.synthetic_pretrain import native_cpu_bf16
        from dclnet.evaluation.protocols import write_json

        record = {
            "command": " ".join(["python benchmarks/bench_pretrain.py", *sys.argv[1:]]),
            "rows": rows,
            "bf16_native": native_cpu_bf16(),
            "load_average": [round(x, 2) for x in os.getloadavg()],
            **machine_info(),
        }
        write_json(record, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
