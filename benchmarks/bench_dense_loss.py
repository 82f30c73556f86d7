"""Dense contrastive loss: chunked vs naive — peak memory, time, value and gradient agreement.

Usage::

    python benchmarks/bench_dense_loss.py                      # N=32, 256 x 72 x 36, CPU
    python benchmarks/bench_dense_loss.py --n 8 --device cuda
    python benchmarks/bench_dense_loss.py --json docs/results/bench_dense_loss.json   # README

Variants: ``naive`` (the reference, float32), ``chunked`` (the training loss, float32
products) and, for each ``--precision`` (default ``tf32 bf16``), the chunked loss with
reduced-precision operands in its products (float32 accumulation and log-sum-exp; on the
CPU emulated: the GPU's numerics, not its speed). Each chunked row is compared with naive.

Every variant runs in a fresh subprocess on identical seeded inputs and reports the time of
one forward + backward and the peak memory it adds. Before it, one tiny run pages in the
kernels' code (and ``--warmup`` untimed full-size runs happen, useful on CUDA; on CPU they
can hide memory that the allocator keeps from them, so the default is 0):

- CUDA: ``torch.cuda.max_memory_allocated()`` minus the allocation before the loss.
- CPU: the process's resident-set high-water mark (``VmHWM``), reset just before the loss by
  writing ``5`` to ``/proc/self/clear_refs`` (Linux), minus the resident set at that moment.
  Without that file it falls back to ``resource.getrusage(...).ru_maxrss`` over the whole
  process (then the figure includes the baseline). tracemalloc does not see torch's
  allocations, hence the RSS.

Values and input gradients are written to a temporary folder and compared at the end.
``--json OUT`` writes the table's numbers with the command, machine, torch version, thread
count and wall time (:mod:`dclnet.bench.results`).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from dclnet.bench.results import command_line, format_dense_table, load_average, write_record
from dclnet.losses.dense_contrastive import dense_contrastive_loss, dense_contrastive_loss_naive


def _inputs(n: int, c: int, h: int, w: int, parts: int, device: str):
    g = torch.Generator().manual_seed(0)
    z_v = torch.randn(n, c, h, w, generator=g)
    z_i = torch.randn(n, c, h, w, generator=g)
    # Stripe-shaped part masks with ~30 % background, like PAP masks.
    stripe = (torch.arange(h) * parts // h + 1).view(1, h, 1).expand(n, h, w)
    m_v = stripe * (torch.rand(n, h, w, generator=g) > 0.3)
    m_i = stripe * (torch.rand(n, h, w, generator=g) > 0.3)
    return [t.to(device) for t in (z_v, z_i, m_v, m_i)]


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def worker(args: argparse.Namespace) -> None:
    """Run one variant, print a JSON line, save value and gradients to ``args.out``."""
    device = args.device
    if args.threads:
        torch.set_num_threads(args.threads)
    z_v, z_i, m_v, m_i = _inputs(args.n, args.c, args.h, args.w, args.parts, device)
    z_v.requires_grad_()
    z_i.requires_grad_()

    precision = "fp32" if args.variant == "chunked" else args.variant

    def step(z_v, z_i, m_v, m_i):
        if args.variant == "naive":
            loss = dense_contrastive_loss_naive(z_v, z_i, m_v, m_i, tau=args.tau)
        else:
            loss = dense_contrastive_loss(
                z_v, z_i, m_v, m_i, tau=args.tau, chunk_size=args.chunk, precision=precision
            )
        loss.backward()
        return loss.detach()

    # A tiny run first pages in the kernels' code, which would otherwise count as "peak".
    tiny = _inputs(1, args.c, 12, 6, args.parts, device)
    step(tiny[0].requires_grad_(), tiny[1].requires_grad_(), *tiny[2:])
    for _ in range(args.warmup):
        step(z_v, z_i, m_v, m_i)
        z_v.grad = z_i.grad = None
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        method = "VmHWM after clear_refs" if _reset_peak() else "ru_maxrss (whole process)"
        base = _rss_kb("VmRSS") * 1024 if method.startswith("VmHWM") else 0
    start = time.perf_counter()
    loss = step(z_v, z_i, m_v, m_i)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
        method = "cuda max_memory_allocated"
    elif base:
        peak = _rss_kb("VmHWM") * 1024 - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    seconds = time.perf_counter() - start
    torch.save({"loss": loss.cpu(), "g_v": z_v.grad.cpu(), "g_i": z_i.grad.cpu()}, args.out)
    print(json.dumps({"seconds": seconds, "peak_bytes": peak, "method": method}))


def _run_variant(args: argparse.Namespace, variant: str, n: int, out: Path) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--variant", variant, "--out", str(out)]
    for key in ("c", "h", "w", "parts", "chunk", "tau", "device", "warmup", "threads"):
        cmd += [f"--{key}", str(getattr(args, key))]
    cmd += ["--n", str(n)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["killed"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def _compare(args: argparse.Namespace, n: int, tmp: str) -> list[dict]:
    """Every variant at ``n`` pairs: one row each, the chunked rows against the naive one."""
    res, saved = {}, {}
    variants = ("naive", "chunked", *args.precision)
    for variant in variants:
        path = Path(tmp) / f"{variant}_{n}.pt"
        res[variant] = {"n": n, "variant": variant, **_run_variant(args, variant, n, path)}
        if path.exists():
            saved[variant] = torch.load(path)
            res[variant]["value"] = float(saved[variant]["loss"])
    for variant in variants[1:]:
        if "naive" in saved and variant in saved:
            ref, got = saved["naive"], saved[variant]
            res[variant]["rel_dval"] = _rel(got["loss"], ref["loss"])
            res[variant]["rel_dgrad"] = max(_rel(got[k], ref[k]) for k in ("g_v", "g_i"))
            ratio = res[variant]["peak_bytes"] / max(res["naive"]["peak_bytes"], 1)
            res[variant]["mem_ratio"] = ratio
    return [res[v] for v in variants]


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[32], help="pairs per batch")
    parser.add_argument("--c", type=int, default=256)
    parser.add_argument("--h", type=int, default=72)
    parser.add_argument("--w", type=int, default=36)
    parser.add_argument("--parts", type=int, default=6)
    parser.add_argument("--chunk", type=int, default=512)
    parser.add_argument("--tau", type=float, default=0.05)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--precision",
        nargs="*",
        default=["tf32", "bf16"],
        choices=("tf32", "bf16"),
        help="reduced product precisions timed besides fp32 (none: --precision alone)",
    )
    parser.add_argument("--warmup", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        args.n = args.n[0]
        worker(args)
        return
    started, load_start = time.perf_counter(), load_average()
    if args.threads:  # the workers set it too; here it is what the record reports
        torch.set_num_threads(args.threads)
    print(
        f"dense contrastive loss, C={args.c}, {args.h} x {args.w}, chunk={args.chunk}, "
        f"device={args.device}, torch {torch.__version__}, threads={torch.get_num_threads()}, "
        f"load average {load_average()}",
        flush=True,
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.n:
            rows += _compare(args, n, tmp)
    keys = ("c", "h", "w", "parts", "chunk", "tau", "device", "precision")
    settings = {k: getattr(args, k) for k in keys}
    record = {"settings": {**settings, "warmup": args.warmup}, "rows": rows}
    record["load_average"] = {"start": load_start, "end": load_average()}
    print(format_dense_table(record))
    if args.json is not None:
        command = command_line("python benchmarks/bench_dense_loss.py", argv)
        seconds = time.perf_counter() - started
        write_record(args.json, command=command, seconds=seconds, **record)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
