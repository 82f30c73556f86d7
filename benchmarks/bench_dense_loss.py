"""Dense contrastive loss: chunked vs naive — peak memory, time, value and gradient agreement.

Usage::

    python benchmarks/bench_dense_loss.py                      # N=32, 256 x 72 x 36, CPU
    python benchmarks/bench_dense_loss.py --n 8 --device cuda

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
    z_v, z_i, m_v, m_i = _inputs(args.n, args.c, args.h, args.w, args.parts, device)
    z_v.requires_grad_()
    z_i.requires_grad_()

    def step(z_v, z_i, m_v, m_i):
        if args.variant == "naive":
            loss = dense_contrastive_loss_naive(z_v, z_i, m_v, m_i, tau=args.tau)
        else:
            loss = dense_contrastive_loss(z_v, z_i, m_v, m_i, tau=args.tau, chunk_size=args.chunk)
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
    for key in ("c", "h", "w", "parts", "chunk", "tau", "device", "warmup"):
        cmd += [f"--{key}", str(getattr(args, key))]
    cmd += ["--n", str(n)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["killed"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[32], help="pairs per batch")
    parser.add_argument("--c", type=int, default=256)
    parser.add_argument("--h", type=int, default=72)
    parser.add_argument("--w", type=int, default=36)
    parser.add_argument("--parts", type=int, default=6)
    parser.add_argument("--chunk", type=int, default=512)
    parser.add_argument("--tau", type=float, default=0.05)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--warmup", type=int, default=0)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.n = args.n[0]
        worker(args)
        return
    print(
        f"dense contrastive loss, C={args.c}, {args.h} x {args.w}, chunk={args.chunk}, "
        f"device={args.device}, torch {torch.__version__}, threads={torch.get_num_threads()}"
    )
    header = f"{'N':>4} {'variant':>8} {'fwd+bwd s':>10} {'peak MB':>9} {'value':>10}"
    print(header + f" {'rel dval':>9} {'rel dgrad':>9} {'mem ratio':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.n:
            res, saved = {}, {}
            for variant in ("naive", "chunked"):
                path = Path(tmp) / f"{variant}_{n}.pt"
                res[variant] = _run_variant(args, variant, n, path)
                if path.exists():
                    saved[variant] = torch.load(path)
            for variant in ("naive", "chunked"):
                r = res[variant]
                if "error" in r:
                    print(f"{n:>4} {variant:>8} failed: {r['error']}")
                    continue
                line = f"{n:>4} {variant:>8} {r['seconds']:>10.2f} {r['peak_bytes'] / 2**20:>9.0f}"
                line += f" {float(saved[variant]['loss']):>10.6f}"
                if variant == "chunked" and "naive" in saved:
                    ref, got = saved["naive"], saved["chunked"]
                    dval = _rel(got["loss"], ref["loss"])
                    dgrad = max(_rel(got[k], ref[k]) for k in ("g_v", "g_i"))
                    ratio = r["peak_bytes"] / max(res["naive"]["peak_bytes"], 1)
                    line += f" {dval:>9.1e} {dgrad:>9.1e} {ratio:>9.3f}"
                print(line)
            print(f"     memory: {res['chunked'].get('method', '?')}")


if __name__ == "__main__":
    main()
