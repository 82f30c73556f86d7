"""Benchmark sizes, timing and peak-memory helpers, machine description, result table."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch


@dataclass(frozen=True)
class BenchSize:
    """One benchmark size; ``real`` is the paper's setting (docs/method.md §1, §3)."""

    name: str
    arch: str  # backbone of the training-step and extraction benchmarks
    height: int  # input height
    width: int  # input width
    num_ids: int  # P identities per batch
    num_instances: int  # K images per identity and modality: 2PK images per step
    num_classes: int  # training identities (395 in SYSU-MM01)
    warmup: int  # untimed iterations before each measurement
    iters: int  # iterations per timed block
    repeats: int  # timed blocks; the fastest is reported
    embed_images: int  # images embedded by the extraction benchmark
    embed_batch: int  # extraction batch size
    pipeline_images: int  # images per modality held by the data-pipeline benchmark
    pipeline_batches: int  # batches drawn by the data-pipeline benchmark
    eval_trials: int  # trials of each evaluation protocol (sizes are always the real ones)

    @property
    def batch(self) -> int:
        """Images per training step (visible + infrared)."""
        return 2 * self.num_ids * self.num_instances

    @property
    def shape(self) -> str:
        return f"{self.height}x{self.width}"


SIZES = {
    "tiny": BenchSize(  # checks that the suite runs (scripts/gpu_check.sh on a CPU), no figures
        name="tiny",
        arch="resnet18",
        height=32,
        width=16,
        num_ids=2,
        num_instances=2,
        num_classes=4,
        warmup=0,
        iters=1,
        repeats=1,
        embed_images=8,
        embed_batch=4,
        pipeline_images=16,
        pipeline_batches=2,
        eval_trials=1,
    ),
    "small": BenchSize(
        name="small",
        arch="resnet18",
        height=128,
        width=64,
        num_ids=4,
        num_instances=4,
        num_classes=64,
        warmup=1,
        iters=3,
        repeats=3,
        embed_images=256,
        embed_batch=64,
        pipeline_images=512,
        pipeline_batches=16,
        eval_trials=10,
    ),
    "real": BenchSize(
        name="real",
        arch="resnet50",
        height=288,
        width=144,
        num_ids=8,
        num_instances=4,
        num_classes=395,
        warmup=3,
        iters=10,
        repeats=3,
        embed_images=2048,
        embed_batch=128,
        pipeline_images=1024,
        pipeline_batches=32,
        eval_trials=10,
    ),
}

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Row:
    """One line of the result table."""

    benchmark: str
    device: str
    dtype: str
    batch: str
    size: str
    value: float
    unit: str
    peak_mb: float | None = None
    note: str = ""


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_seconds(
    fn: Callable[[], Any], device: torch.device, *, warmup: int, iters: int, repeats: int
) -> float:
    """Seconds per call of ``fn``: the fastest of ``repeats`` blocks of ``iters`` calls.

    Each block is timed from a synchronised device to a synchronised device, so queued GPU
    work is counted and the CPU may run ahead within a block as in training. The fastest
    block is the least disturbed by other processes on a shared machine.
    """
    for _ in range(warmup):
        fn()
    synchronize(device)
    best = float("inf")
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        for _ in range(max(1, iters)):
            fn()
        synchronize(device)
        best = min(best, (time.perf_counter() - start) / max(1, iters))
    return best


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class PeakMemory:
    """Peak memory added by a block of code, in bytes (``None`` where it cannot be measured).

    CUDA: ``torch.cuda.max_memory_allocated`` minus the allocation at the start. CPU
    (Linux): the resident-set high-water mark, reset by writing ``5`` to
    ``/proc/self/clear_refs``, minus the resident set at the start (torch's CPU allocations
    are invisible to tracemalloc, hence the RSS).
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.bytes: int | None = None
        self._base: int | None = None

    def __enter__(self) -> PeakMemory:
        synchronize(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return self
        try:
            Path("/proc/self/clear_refs").write_text("5")
            rss = _status_kb("VmRSS")
            self._base = None if rss is None else rss * 1024
        except OSError:
            self._base = None
        return self

    def __exit__(self, *exc) -> None:
        synchronize(self.device)
        if self._base is None:
            return
        if self.device.type == "cuda":
            self.bytes = torch.cuda.max_memory_allocated(self.device) - self._base
        else:
            hwm = _status_kb("VmHWM")
            self.bytes = None if hwm is None else max(0, hwm * 1024 - self._base)


def megabytes(value: int | None) -> float | None:
    return None if value is None else value / 2**20


def machine(device: torch.device) -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "device": str(device),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / 2**30, 1))
        info.update(cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    return info


def format_rows(rows: list[Row]) -> str:
    """The result table, one benchmark per line."""
    header = ("benchmark", "device", "dtype", "batch", "size", "value", "unit", "peak MB")
    lines = [
        (
            r.benchmark,
            r.device,
            r.dtype,
            r.batch,
            r.size,
            f"{r.value:.4g}" if r.value == r.value else "n/a",  # NaN: not measured
            r.unit,
            "" if r.peak_mb is None else f"{r.peak_mb:.0f}",
        )
        for r in rows
    ]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    right = {5, 7}

    def fmt(cells) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))
        ).rstrip()

    out = [fmt(header), fmt(["-" * w for w in widths])]
    out += [fmt(line) for line in lines]
    notes = list(dict.fromkeys(f"  {r.benchmark}: {r.note}" for r in rows if r.note))
    return "\n".join(out + (["notes:", *notes] if notes else []))


def rows_as_json(rows: list[Row]) -> list[dict[str, Any]]:
    return [asdict(r) for r in rows]
