"""``dclnet benchmark``: training, evaluation, dense-loss and data-pipeline speed in one table.

::

    dclnet benchmark                                  # CPU-sized run (a few minutes)
    dclnet benchmark --device cuda --size real --json bench.json

The pieces live in :mod:`dclnet.bench`. ``--json OUT`` writes a results record (command,
machine, torch version, threads, wall time, then the rows; :mod:`dclnet.bench.results`);
the tables in docs/benchmarks.md and the README are regenerated from those files.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import torch

from dclnet.bench.common import (
    DTYPES,
    SIZES,
    BenchSize,
    Row,
    format_rows,
    machine,
    megabytes,
    rows_as_json,
)
from dclnet.bench.components import (
    PROTOCOLS,
    bench_dense_loss,
    bench_evaluation,
    bench_extraction,
    dense_loss_shape,
)
from dclnet.bench.results import load_average, write_record
from dclnet.bench.train_step import bench_data_pipeline, bench_train_step
from dclnet.errors import ConfigError
from dclnet.losses.dense_contrastive import resolve_precision

logger = logging.getLogger(__name__)

SECTIONS = ("train", "eval", "dense", "data")
DENSE_PRECISIONS = ("fp32", "tf32", "bf16")  # of the dense loss's products


def _train_rows(
    size: BenchSize, device: torch.device, dtype: str, seconds: dict[str, float], **options
) -> list[Row]:
    """Rows of the three step variants at ``dtype``; their seconds per step go to ``seconds``
    (keyed ``"variant dtype"``)."""
    amp = DTYPES[dtype]
    rows = []
    names = {
        "baseline": "train step, baseline (id + metric)",
        "full": "train step, full DCLNet",
        "plain": f"{size.arch} forward+backward (plain)",
    }
    for variant in ("baseline", "full", "plain"):
        logger.info("timing %s, %s", names[variant], dtype)
        res = bench_train_step(variant, size, device, amp, **options)
        seconds[f"{variant} {dtype}"] = res["seconds"]
        rows.append(
            Row(
                names[variant],
                device.type,
                dtype,
                str(size.batch),
                f"{size.shape} {size.arch}",
                res["images_per_s"],
                "images/s",
                megabytes(res["peak_bytes"]),
            )
        )
    rows.append(
        Row(
            "full DCLNet step / plain forward+backward",
            device.type,
            dtype,
            str(size.batch),
            f"{size.shape} {size.arch}",
            seconds[f"full {dtype}"] / seconds[f"plain {dtype}"],
            "x time",
            note="step time ratio; the full step also augments, computes 5 loss terms, "
            "runs SRM and updates with Adam",
        )
    )
    return rows


def _eval_rows(size: BenchSize, device: torch.device, dtype: str) -> list[Row]:
    rows = []
    for name, (queries, gallery, _) in PROTOCOLS.items():
        logger.info("timing evaluation, %s", name)
        res = bench_evaluation(name, size.eval_trials, device)
        rows.append(
            Row(
                f"eval metrics, {name}",
                device.type,
                "fp32",
                f"{queries}x{gallery}",
                f"{size.eval_trials} trials",
                res["seconds"],
                "s",
                note="similarity + CMC/mAP/mINP summed over trials, 2048-d features",
            )
        )
    logger.info("timing feature extraction")
    res = bench_extraction(size, device, DTYPES[dtype])
    rows.append(
        Row(
            "eval feature extraction",
            device.type,
            dtype,
            str(size.embed_batch),
            f"{size.shape} {size.arch}",
            res["images_per_s"],
            "images/s",
        )
    )
    return rows


def _dense_rows(size: BenchSize, device: torch.device, step_seconds: dict[str, float]):
    """One row per product precision of the dense loss; with the training rows' seconds,
    the share of the full step that the dense loss (at its ``auto`` precision) takes."""
    shape = dense_loss_shape(size)
    n, c, h, w = shape
    rows, seconds = [], {}
    emulated = " (emulated on the CPU: GPU numerics, not its speed)" if device.type == "cpu" else ""
    for precision in DENSE_PRECISIONS:
        logger.info("timing the dense loss at N x C x H x W = %s, %s", shape, precision)
        res = bench_dense_loss(shape, device, repeats=size.repeats, precision=precision)
        seconds[precision] = res["seconds"]
        rows.append(
            Row(
                "dense loss forward+backward",
                device.type,
                precision,
                str(n),
                f"{c}x{h}x{w}",
                res["seconds"],
                "s",
                megabytes(res["peak_bytes"]),
                note="dtype: operands of its similarity/gradient products, float32 "
                f"accumulation and log-sum-exp; tf32, bf16{emulated}; peak MB: extra memory "
                "of one forward+backward (CUDA allocator, or the CPU process's resident-set "
                "high-water mark)",
            )
        )
    auto = resolve_precision("auto", device)
    for key, step in step_seconds.items():
        variant, dtype = key.split()
        if variant != "full":
            continue
        rows.append(
            Row(
                "dense loss / full DCLNet step",
                device.type,
                dtype,
                str(size.batch),
                f"{size.shape} {size.arch}",
                seconds[auto] / step,
                "x time",
                note=f"the dense loss at loss.dcl_precision=auto ({auto} here), timed alone, "
                "over the full training step at dtype",
            )
        )
    return rows


def _data_rows(size: BenchSize, device: torch.device) -> list[Row]:
    logger.info("timing the data pipeline")
    res = bench_data_pipeline(size, device)
    common = dict(device=device.type, dtype="uint8", batch=str(size.batch), size=size.shape)
    return [
        Row("data: gather (pinned on CUDA)", value=res["gather"], unit="images/s", **common),
        Row("data: gather + copy + augment", value=res["augment"], unit="images/s", **common),
    ]


def run_suite(
    *,
    device: str = "auto",
    size: str | BenchSize = "small",
    dtypes: list[str] | None = None,
    sections: tuple[str, ...] = SECTIONS,
    iters: int | None = None,
    channels_last: bool = False,
    compile: bool = False,
) -> dict[str, Any]:
    """Run the benchmarks; returns ``{"hardware", "settings", "rows"}`` (rows as dicts).

    Args:
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
        size: A key of :data:`~dclnet.bench.common.SIZES`, or a custom size.
        dtypes: Training/extraction precisions among ``fp32``, ``bf16``, ``fp16``; default
            fp32 on the CPU, fp32 and bf16 on CUDA.
        sections: Which of ``train``, ``eval``, ``dense``, ``data`` to run.
        iters: Quick mode: one warm-up and one block of ``iters`` timed steps per training
            variant, one timed extraction of ``embed_batch`` images.
        channels_last: Channels-last layout in the training steps.
        compile: ``torch.compile`` the networks of the training steps.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda but CUDA is not available; use --device cpu")
    if isinstance(size, str) and size not in SIZES:
        raise ConfigError(f"unknown size {size!r}; valid: {', '.join(SIZES)}")
    bench = SIZES[size] if isinstance(size, str) else size
    if iters is not None:  # quick mode, e.g. the real size on a CPU
        quick = {"warmup": 1, "iters": iters, "repeats": 1, "embed_images": bench.embed_batch}
        bench = dataclasses.replace(bench, **quick)
    dtypes = dtypes or (["fp32", "bf16"] if dev.type == "cuda" else ["fp32"])
    for name in dtypes:
        if name not in DTYPES:
            raise ConfigError(f"unknown dtype {name!r}; valid: {', '.join(DTYPES)}")
    for name in sections:
        if name not in SECTIONS:
            raise ConfigError(f"unknown section {name!r}; valid: {', '.join(SECTIONS)}")
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as in training
    load_start = load_average()
    rows: list[Row] = []
    step_seconds: dict[str, float] = {}
    if "train" in sections:
        for dtype in dtypes:
            options = dict(channels_last=channels_last, compile=compile)
            rows += _train_rows(bench, dev, dtype, step_seconds, **options)
    if "eval" in sections:
        rows += _eval_rows(bench, dev, dtypes[-1])
    if "dense" in sections:
        rows += _dense_rows(bench, dev, step_seconds)
    if "data" in sections:
        rows += _data_rows(bench, dev)
    settings = {
        **bench.__dict__,
        "dtypes": dtypes,
        "channels_last": channels_last,
        "compile": compile,
        "sections": list(sections),
        "load_average_start": load_start,  # other processes competing for the machine
    }
    return {"hardware": machine(dev), "settings": settings, "rows": rows_as_json(rows)}


def format_report(report: dict[str, Any]) -> str:
    """The printed form of :func:`run_suite`'s result: machine line, then the table."""
    m = report["hardware"]
    where = m.get("gpu") or m["cpu"]
    head = (
        f"dclnet benchmark, size {report['settings']['name']}: {where} "
        f"({m['cpu_count']} CPUs, {m['torch_threads']} torch threads), torch {m['torch']}, "
        f"load average {report['settings'].get('load_average_start')} -> {m['load_average']}"
    )
    return head + "\n" + format_rows([Row(**r) for r in report["rows"]])


def command(args: argparse.Namespace) -> str:
    """The ``dclnet benchmark`` command line that gives ``args`` (options left at their
    defaults omitted)."""
    words = ["dclnet", "benchmark"]
    if args.device != "auto":
        words += ["--device", args.device]
    if args.size != "small":
        words += ["--size", args.size]
    for flag, values in (("--dtype", args.dtype), ("--only", args.only)):
        for value in values or ():
            words += [flag, value]
    for flag in ("iters", "threads"):
        if getattr(args, flag) is not None:
            words += [f"--{flag}", str(getattr(args, flag))]
    words += ["--channels-last"] * args.channels_last + ["--compile"] * args.compile
    if args.json is not None:
        words += ["--json", str(args.json)]
    return " ".join(words)


def cmd_benchmark(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    report = run_suite(
        device=args.device,
        size=args.size,
        dtypes=args.dtype,
        sections=tuple(args.only or SECTIONS),
        iters=args.iters,
        channels_last=args.channels_last,
        compile=args.compile,
    )
    print(format_report(report))
    if args.json is not None:
        seconds = time.perf_counter() - started
        write_record(args.json, command=command(args), seconds=seconds, **report)
        print(f"wrote {args.json}")


def register(subparsers) -> None:
    """Add the ``benchmark`` sub-command to ``dclnet``'s sub-parsers."""
    p = subparsers.add_parser("benchmark", help="time training, evaluation, dense loss, data")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument(
        "--size",
        default="small",
        choices=tuple(SIZES),
        help="tiny: ResNet-18, 32x16, P=2 K=2 (a check that it runs); small: ResNet-18, "
        "128x64, P=4 K=4 (CPU minutes); real: ResNet-50, 288x144, P=8 K=4 (the paper's setting)",
    )
    p.add_argument(
        "--dtype",
        action="append",
        choices=tuple(DTYPES),
        help="precision of the steps (repeatable); default fp32 on CPU, fp32 and bf16 on CUDA",
    )
    p.add_argument(
        "--only", action="append", choices=SECTIONS, help="run only these sections (repeatable)"
    )
    p.add_argument(
        "--iters",
        type=int,
        default=None,
        help="quick mode: 1 warm-up + ITERS timed steps per variant, one extraction batch",
    )
    p.add_argument("--channels-last", action="store_true", help="channels-last training steps")
    p.add_argument("--compile", action="store_true", help="torch.compile the training steps")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's choice); 1 avoids thread oversubscription "
        "on a CPU shared with other processes",
    )
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.set_defaults(func=cmd_benchmark)
