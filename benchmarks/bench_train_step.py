"""Training-step throughput: baseline and full DCLNet steps against a plain ResNet.

Usage::

    python benchmarks/bench_train_step.py                               # CPU, small size
    python benchmarks/bench_train_step.py --device cuda --size real --dtype fp32 --dtype bf16
    python benchmarks/bench_train_step.py --size real --iters 1 --repeats 1   # ResNet-50 on CPU
    python benchmarks/bench_train_step.py --device cuda --size real --channels-last --compile
    python benchmarks/bench_train_step.py --json step.json    # also write the results file

The same measurement as the ``train`` section of ``dclnet benchmark``
(:func:`dclnet.bench.train_step.bench_train_step`), with every knob exposed: each variant
and precision runs ``warmup`` untimed steps, then ``repeats`` blocks of ``iters`` steps; the
fastest block is reported. The last column compares each step's time with the plain
ResNet forward + backward of the same batch. ``--json OUT`` writes the rows with the command,
machine, torch version, thread count and wall time (:mod:`dclnet.bench.results`).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

from dclnet.bench.common import DTYPES, SIZES, Row, format_rows, machine, megabytes, rows_as_json
from dclnet.bench.results import command_line, write_record
from dclnet.bench.train_step import VARIANTS, bench_train_step


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    started = time.perf_counter()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--size", default="small", choices=tuple(SIZES))
    parser.add_argument("--arch", help="override the size's backbone")
    parser.add_argument("--height", type=int)
    parser.add_argument("--width", type=int)
    parser.add_argument("-P", "--num-ids", type=int, help="identities per batch")
    parser.add_argument("-K", "--num-instances", type=int, help="images per identity/modality")
    parser.add_argument("--dtype", action="append", choices=tuple(DTYPES))
    parser.add_argument("--variant", action="append", choices=VARIANTS)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--warmup", type=int)
    parser.add_argument("--iters", type=int)
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = {
        k: getattr(args, k)
        for k in ("arch", "height", "width", "num_ids", "num_instances", "warmup", "iters")
        if getattr(args, k) is not None
    }
    if args.repeats is not None:
        overrides["repeats"] = args.repeats
    size = dataclasses.replace(SIZES[args.size], **overrides)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    dtypes = args.dtype or ["fp32"]
    variants = args.variant or list(VARIANTS)
    info = machine(device)
    print(
        f"{info.get('gpu') or info['cpu']}, {info['cpu_count']} CPUs, "
        f"{info['torch_threads']} torch threads, torch {info['torch']}, load {info['load_average']}"
    )
    print(
        f"{size.arch}, {size.shape}, P={size.num_ids} K={size.num_instances} "
        f"({size.batch} images/step), channels_last={args.channels_last}, "
        f"compile={args.compile}, warmup {size.warmup}, {size.repeats} x {size.iters} steps"
    )
    rows = []
    for dtype in dtypes:
        seconds = {}
        for variant in variants:
            res = bench_train_step(
                variant,
                size,
                device,
                DTYPES[dtype],
                channels_last=args.channels_last,
                compile=args.compile,
            )
            seconds[variant] = res["seconds"]
            rows.append(
                Row(
                    f"{variant} step",
                    device.type,
                    dtype,
                    str(size.batch),
                    f"{size.shape} {size.arch}",
                    res["images_per_s"],
                    "images/s",
                    megabytes(res["peak_bytes"]),
                    note=f"{1000 * res['seconds']:.1f} ms/step",
                )
            )
        if "plain" in seconds:
            for variant in (v for v in seconds if v != "plain"):
                rows.append(
                    Row(
                        f"{variant} / plain step time",
                        device.type,
                        dtype,
                        str(size.batch),
                        f"{size.shape} {size.arch}",
                        seconds[variant] / seconds["plain"],
                        "x",
                    )
                )
    print(format_rows(rows))
    if args.json is not None:
        settings = {
            **size.__dict__,
            "dtypes": dtypes,
            "variants": variants,
            "channels_last": args.channels_last,
            "compile": args.compile,
        }
        write_record(
            args.json,
            command=command_line("python benchmarks/bench_train_step.py", argv),
            seconds=time.perf_counter() - started,
            hardware=info,
            settings=settings,
            rows=rows_as_json(rows),
        )
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
