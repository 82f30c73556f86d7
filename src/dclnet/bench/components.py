"""Evaluation and dense-loss benchmarks.

Evaluation at the real protocol sizes, with 2048-d L2-normalised features drawn as a
per-identity centre plus noise (rankings neither perfect nor random), the same simulation as
``benchmarks/bench_eval.py``:

- SYSU-MM01 all-search, single-shot: 3,803 infrared queries (96 identities, cameras 3 and 6)
  against a fresh 301-image visible gallery per trial (cameras 1, 2, 4, 5), rule ``"sysu"``.
- RegDB: 2,060 queries against 2,060 gallery images (206 identities x 10), rule ``"regdb"``.

Each trial's time is the query x gallery similarity product plus
:func:`~dclnet.evaluation.metrics.evaluate_ranking`, on the benchmark's device.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dclnet.bench.common import BenchSize, PeakMemory, best_seconds
from dclnet.evaluation.extract import extract_features
from dclnet.evaluation.metrics import evaluate_ranking
from dclnet.losses.dense_contrastive import dense_contrastive_loss, resolve_precision
from dclnet.models.dclnet import DCLNet
from dclnet.models.resnet import RandomInitWarning

FEATURE_DIM = 2048
PROTOCOLS = {  # name: (queries, gallery per trial, rule)
    "SYSU-MM01 all-search": (3803, 301, "sysu"),
    "RegDB": (2060, 2060, "regdb"),
}

Trial = tuple[torch.Tensor, torch.Tensor, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _features(rng: np.random.Generator, centres: torch.Tensor, labels: np.ndarray):
    noise = torch.from_numpy(rng.standard_normal((len(labels), FEATURE_DIM), dtype=np.float32))
    return F.normalize(centres[labels] + 4.5 * noise, dim=1)


def sysu_trials(trials: int, rng: np.random.Generator) -> Iterator[Trial]:
    """Simulated SYSU-MM01 all-search trials at real size: 3,803 queries x 301 gallery."""
    centres = torch.from_numpy(rng.standard_normal((96, FEATURE_DIM), dtype=np.float32))
    q_lab = rng.integers(0, 96, 3803)
    q_cam = rng.choice([3, 6], 3803)
    query = _features(rng, centres, q_lab)
    slots = np.array([(pid, cam) for pid in range(96) for cam in (1, 2, 4, 5)])
    for _ in range(trials):
        g_lab, g_cam = slots[np.sort(rng.choice(len(slots), 301, replace=False))].T
        yield query, _features(rng, centres, g_lab), q_lab, g_lab, q_cam, g_cam


def regdb_trials(trials: int, rng: np.random.Generator) -> Iterator[Trial]:
    """Simulated RegDB trials at real size: 2,060 x 2,060, fresh features per trial."""
    labels = np.repeat(np.arange(206), 10)
    for _ in range(trials):  # each RegDB trial has its own model, hence its own features
        centres = torch.from_numpy(rng.standard_normal((206, FEATURE_DIM), dtype=np.float32))
        query, gallery = _features(rng, centres, labels), _features(rng, centres, labels)
        yield query, gallery, labels, labels, np.ones(2060, np.int64), np.full(2060, 2)


def bench_evaluation(protocol: str, trials: int, device: torch.device) -> dict[str, Any]:
    """Seconds for ``trials`` trials of a protocol (similarity + metrics), and trial 0's rank-1."""
    rule = PROTOCOLS[protocol][2]
    make = sysu_trials if rule == "sysu" else regdb_trials
    data = [
        (q.to(device), g.to(device), *rest)
        for q, g, *rest in make(trials, np.random.default_rng(0))
    ]
    first = {}

    def run() -> None:
        for i, (query, gallery, q_lab, g_lab, q_cam, g_cam) in enumerate(data):
            sim = query @ gallery.T  # Q x G cosine similarity
            result = evaluate_ranking(sim, q_lab, g_lab, q_cam, g_cam, rule=rule)
            if i == 0:
                first["rank1"] = 100 * result.rank(1)

    seconds = best_seconds(run, device, warmup=1, iters=1, repeats=2)
    return {"seconds": seconds, "rank1": first["rank1"]}


def bench_extraction(
    size: BenchSize, device: torch.device, amp_dtype: torch.dtype | None = None
) -> dict[str, Any]:
    """Images per second of :func:`~dclnet.evaluation.extract.extract_features` (half of
    the images visible, half infrared) with a randomly initialised network of ``size.arch``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomInitWarning)
        net = DCLNet(size.num_classes, arch=size.arch, pretrained=None).to(device).eval()
    rng = np.random.default_rng(0)
    n = size.embed_images
    images = rng.integers(0, 256, (n, size.height, size.width, 3), dtype=np.uint8)
    modalities = ["visible", "infrared"] * (n // 2) + ["visible"] * (n % 2)

    def run(count: int = n) -> None:
        extract_features(
            net,
            images[:count],
            modalities[:count],
            batch_size=size.embed_batch,
            device=device,
            amp_dtype=amp_dtype,
            progress=False,
        )

    run(min(n, 2 * size.embed_batch))  # warm-up: one batch of each modality
    seconds = best_seconds(run, device, warmup=0, iters=1, repeats=max(1, size.repeats - 1))
    return {"seconds": seconds, "images_per_s": n / seconds}


def dense_loss_shape(size: BenchSize) -> tuple[int, int, int, int]:
    """``(N, C, H, W)`` of the dense loss in a training step of ``size``: N pairs, the
    layer-1 map (64 channels for ResNet-18/34, 256 for ResNet-50) at 1/4 of the input."""
    channels = 256 if size.arch == "resnet50" else 64
    return size.num_ids * size.num_instances, channels, size.height // 4, size.width // 4


def _dense_inputs(n: int, c: int, h: int, w: int, parts: int, device: torch.device):
    g = torch.Generator().manual_seed(0)
    z_v = torch.randn(n, c, h, w, generator=g)
    z_i = torch.randn(n, c, h, w, generator=g)
    # Stripe-shaped part masks with ~30 % background, like PAP masks.
    stripe = (torch.arange(h) * parts // h + 1).view(1, h, 1).expand(n, h, w)
    m_v = stripe * (torch.rand(n, h, w, generator=g) > 0.3)
    m_i = stripe * (torch.rand(n, h, w, generator=g) > 0.3)
    return [t.to(device) for t in (z_v, z_i, m_v, m_i)]


def _dense_step(
    shape: tuple[int, int, int, int],
    device: torch.device,
    tau: float,
    chunk: int,
    precision: str = "fp32",
):
    n, c, h, w = shape
    z_v, z_i, m_v, m_i = _dense_inputs(n, c, h, w, 6, device)
    z_v.requires_grad_()
    z_i.requires_grad_()

    def run() -> None:
        z_v.grad = z_i.grad = None
        loss = dense_contrastive_loss(
            z_v, z_i, m_v, m_i, tau=tau, chunk_size=chunk, precision=precision
        )
        loss.backward()

    return run


def _cpu_dense_peak(
    shape: tuple[int, int, int, int], tau: float, chunk: int, precision: str = "fp32"
) -> int | None:
    """Peak of the first full-size forward + backward in this (fresh) process: the C
    allocator has not kept any freed memory yet, so every allocation shows in the resident
    set. A tiny call first takes the one-time costs (thread pools, kernel set-up)."""
    _dense_step((1, 8, 4, 4), torch.device("cpu"), tau, chunk, precision)()
    run = _dense_step(shape, torch.device("cpu"), tau, chunk, precision)
    with PeakMemory(torch.device("cpu")) as mem:
        run()
    return mem.bytes


def bench_dense_loss(
    shape: tuple[int, int, int, int],
    device: torch.device,
    *,
    tau: float = 0.05,
    chunk_size: int = 512,
    repeats: int = 2,
    precision: str = "fp32",
) -> dict[str, Any]:
    """Seconds and peak extra memory of one forward + backward of the dense loss.

    ``precision``: of its products (``"fp32"``, ``"tf32"``, ``"bf16"``, ``"auto"``; emulated
    on the CPU, see :mod:`dclnet.losses.dense_contrastive`). On the CPU the memory is
    measured in a fresh subprocess (see :func:`_cpu_dense_peak`). Also returns the resolved
    ``precision``.
    """
    precision = resolve_precision(precision, device)
    run = _dense_step(shape, device, tau, chunk_size, precision)
    seconds = best_seconds(run, device, warmup=1, iters=1, repeats=repeats)
    if device.type == "cuda":
        with PeakMemory(device) as mem:
            run()
        peak = mem.bytes
    else:
        code = (
            "import json, sys; from dclnet.bench.components import _cpu_dense_peak; "
            "print(json.dumps(_cpu_dense_peak(*json.loads(sys.argv[1]))))"
        )
        args = json.dumps([list(shape), tau, chunk_size, precision])
        proc = subprocess.run(
            [sys.executable, "-c", code, args], capture_output=True, text=True, check=True
        )
        peak = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"seconds": seconds, "peak_bytes": peak, "precision": precision}
