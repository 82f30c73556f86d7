"""Is the synthetic cross-modality gap real? Print retrieval numbers on the test ids.

Three probes on the built-in synthetic set (``dclnet.data.sources.synthetic``):

(a) raw pixels across modalities (infrared query -> visible gallery): should sit near chance;
(b) raw pixels within the visible modality (query one camera, gallery the other visible
    cameras): clearly above chance, so identities are distinguishable;
(c) a small CNN trained for a few CPU minutes with identity cross-entropy on both modalities
    (shared weights, mixed batches), infrared -> visible: clearly above chance, so the
    cross-modality task is learnable.

Raw-pixel features: 4 x 4 block mean (128 x 64 -> 32 x 16), grayscale, standardised per
image, L2-normalised. Gallery = every visible test image (no single-shot sampling, no camera
filter). Chance: rank-1 = 1 / #test ids; mAP = mean over 20 random similarity matrices.

(d) ``--protocol``: the small CNN trained on set ``--seed`` for a wall-clock budget
    (``--seconds``) and evaluated under the very protocol ``dclnet demo`` prints (SYSU-style
    all-search, single-shot, 10 seeded gallery trials, infrared -> visible) — the
    like-for-like baseline for the demo model.

Usage::

    python benchmarks/synthetic_gap.py            # default set: 64 ids, seed 0
    python benchmarks/synthetic_gap.py --steps 0  # pixels only
    python benchmarks/synthetic_gap.py --protocol --seed 7 --seconds 240 --json cnn.json
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from dclnet.data.records import INFRARED, VISIBLE
from dclnet.data.sources.synthetic import SyntheticSet, make_synthetic


def rank1_map(sim: np.ndarray, q_labels, g_labels, valid: np.ndarray | None = None):
    """Rank-1 and mAP of a ``Q x G`` similarity matrix; ``valid`` masks gallery entries."""
    sim = np.where(valid, sim, -np.inf) if valid is not None else sim
    order = np.argsort(-sim, axis=1, kind="stable")  # Q x G
    match = np.asarray(g_labels)[order] == np.asarray(q_labels)[:, None]
    if valid is not None:
        match &= np.take_along_axis(valid, order, axis=1)
    has = match.any(1)
    match = match[has]
    hits = np.cumsum(match, axis=1)
    ranks = np.arange(1, match.shape[1] + 1)
    ap = (hits / ranks * match).sum(1) / match.sum(1)
    return float(match[:, 0].mean()), float(ap.mean())


def pixel_features(images: np.ndarray, factor: int = 4) -> np.ndarray:
    """``N x H x W x 3`` uint8 -> ``N x D`` grayscale block-mean features, standardised, L2."""
    n, h, w, _ = images.shape
    gray = images.astype(np.float32).mean(-1)
    small = gray.reshape(n, h // factor, factor, w // factor, factor).mean((2, 4)).reshape(n, -1)
    small = (small - small.mean(1, keepdims=True)) / (small.std(1, keepdims=True) + 1e-6)
    return small / np.linalg.norm(small, axis=1, keepdims=True)


def select(ds: SyntheticSet, ids: list[int], modality: str) -> np.ndarray:
    keep = set(ids)
    rows = [i for i, r in enumerate(ds.records) if r.label in keep and r.modality == modality]
    return np.array(rows, dtype=np.int64)


def chance_map(q_labels, g_labels, rng: np.random.Generator, repeats: int = 20) -> float:
    shape = (len(q_labels), len(g_labels))
    draws = [rank1_map(rng.random(shape), q_labels, g_labels)[1] for _ in range(repeats)]
    return float(np.mean(draws))


class SmallNet(nn.Module):
    """Four conv stages (16-32-64-128 channels), global average pooling, BN feature, classifier."""

    def __init__(self, num_classes: int, width: int = 16) -> None:
        super().__init__()
        layers, c_in = [], 3
        for i, c in enumerate((width, 2 * width, 4 * width, 8 * width)):
            layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU()]
            layers += [nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU()]
            if i < 3:
                layers.append(nn.MaxPool2d(2))
            c_in = c
        self.body = nn.Sequential(*layers)
        self.neck = nn.BatchNorm1d(c_in)
        self.head = nn.Linear(c_in, num_classes, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feat = self.neck(self.body(x).mean((2, 3)))  # B x C
        return feat, self.head(feat)


def to_tensor(images: np.ndarray, factor: int) -> torch.Tensor:
    """``N x H x W x 3`` uint8 -> ``N x 3 x H/f x W/f`` float, roughly zero-mean unit-scale."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    return (F.avg_pool2d(x, factor) - 0.5) / 0.25 if factor > 1 else (x - 0.5) / 0.25


def train_cnn(
    ds: SyntheticSet,
    steps: int,
    factor: int,
    seed: int,
    seconds: float | None = None,
    amp: str = "off",
) -> tuple[SmallNet, int]:
    """Identity cross-entropy on train ids, each batch 8 ids x 4 visible + 4 infrared images.

    The learning rate follows PyTorch's one-cycle schedule over ``steps`` steps or, with
    ``seconds``, a one-cycle shape (10 % warm-up, cosine decay to 0) over that much wall-clock
    time (training stops when the time is up): the schedule completes whatever speed the
    machine has. ``amp="bfloat16"`` runs the forward pass under CPU bfloat16 autocast (as the
    synthetic pretraining does where the CPU has native bf16 math), so that the CNN gets the
    same arithmetic speed-up as the demo.
    """
    start = time.perf_counter()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    ids = ds.train_ids
    label_of = {pid: k for k, pid in enumerate(ids)}
    pools = {(pid, m): select(ds, [pid], m) for pid in ids for m in (VISIBLE, INFRARED)}
    data = to_tensor(ds.images, factor)
    model = SmallNet(len(ids))
    max_lr = 2e-3
    opt = torch.optim.Adam(model.parameters(), lr=max_lr, weight_decay=5e-4)
    sched = None
    if not seconds:
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lr, total_steps=max(steps, 1))
    model.train()
    step = 0
    while True:
        done = (time.perf_counter() - start) / seconds if seconds else step / max(steps, 1)
        if done >= 1.0:
            break
        if seconds:
            warm = min(done / 0.1, 1.0)
            decay = 0.5 * (1 + np.cos(np.pi * max(done - 0.1, 0.0) / 0.9))
            for group in opt.param_groups:
                group["lr"] = max_lr * (warm if done < 0.1 else decay)
        chosen = rng.choice(ids, 8, replace=False)
        idx = [rng.choice(pools[(p, m)], 4) for m in (VISIBLE, INFRARED) for p in chosen]
        idx = np.concatenate(idx)
        x = data[idx]
        gray = torch.from_numpy(rng.random(len(idx)) < 0.25)[:, None, None, None]
        x = torch.where(gray, x.mean(1, keepdim=True).expand_as(x), x)
        flip = torch.from_numpy(rng.random(len(idx)) < 0.5)[:, None, None, None]
        x = torch.where(flip, x.flip(3), x)
        y = torch.tensor([label_of[ds.records[i].label] for i in idx])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp == "bfloat16"):
            _, logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        if step % 100 == 0:
            print(f"  step {step:4d}  loss {loss.item():.3f}", flush=True)
        step += 1
    print(f"  {step} steps in {time.perf_counter() - start:.0f} s", flush=True)
    return model, step


def protocol_run(args: argparse.Namespace) -> None:
    """(d): the small CNN under the demo's protocol, on the demo's set, for a time budget.

    The set is the one ``dclnet demo`` uses (``make_synthetic(num_ids, seed)`` at 128 x 64,
    fed to the CNN at 1/factor); query and gallery lists and metrics come from the package's
    protocol code, so the printed table compares with the demo's one for one.
    """
    import dataclasses

    from dclnet.data.datasets import load_eval_data, synthetic_set
    from dclnet.evaluation.protocols import evaluate_splits, format_table, write_json

    ds = synthetic_set(args.num_ids, args.seed, 128, 64, args.style)
    # the training pools use train + validation ids, as the demo's training does
    ds = dataclasses.replace(ds, train_ids=sorted(ds.train_ids + ds.val_ids))
    start = time.perf_counter()
    model, steps = train_cnn(
        ds, args.steps, args.factor, seed=args.train_seed, seconds=args.seconds, amp=args.amp
    )
    seconds = time.perf_counter() - start
    data = load_eval_data("synthetic", size=(128, 64), synthetic_ids=args.num_ids,
                          synthetic_seed=args.seed, synthetic_style=args.style, trials=10,
                          progress=False)  # fmt: skip
    rows = np.array([ds._index[p] for p in data.paths])
    feats = cnn_features(model, ds, rows, args.factor)
    result = evaluate_splits(data.paths, feats, data.splits, data.protocol)
    print(
        f"small CNN (training seed {args.train_seed}"
        + (", bfloat16 autocast" if args.amp == "bfloat16" else "")
        + f"), {steps} steps in {seconds:.0f} s of training, synthetic "
        f"seed {args.seed}, {args.num_ids} ids, "
        f"{args.style} look:"
    )
    print(format_table(result))
    if args.json is not None:
        import sys

        from dclnet.engine.runs import machine_info

        out = result.to_json()
        out["train_seconds"] = seconds
        out["train_seed"] = args.train_seed
        out["amp"] = args.amp
        out["train_steps"] = steps
        out["command"] = " ".join(["python benchmarks/synthetic_gap.py", *sys.argv[1:]])
        write_json({**out, **machine_info()}, args.json)


@torch.no_grad()
def cnn_features(model: SmallNet, ds: SyntheticSet, index: np.ndarray, factor: int) -> np.ndarray:
    model.eval()
    x = to_tensor(ds.images[index], factor)
    feat = (model(x)[0] + model(x.flip(3))[0]) / 2
    return F.normalize(feat, dim=1).numpy()


def pixel_probes(ds: SyntheticSet, rng: np.random.Generator) -> np.ndarray:
    """Chance, (a) and (b) as ``[chance r1, chance mAP, a r1, a mAP, b r1, b mAP]`` in %."""
    q, g = select(ds, ds.test_ids, INFRARED), select(ds, ds.test_ids, VISIBLE)
    labels = np.array([r.label for r in ds.records])
    cams = np.array([r.cam for r in ds.records])
    pix = pixel_features(ds.images)
    cross = rank1_map(pix[q] @ pix[g].T, labels[q], labels[g])
    other_cam = cams[g][:, None] != cams[g][None, :]
    within = rank1_map(pix[g] @ pix[g].T, labels[g], labels[g], other_cam)
    chance = (1 / len(ds.test_ids), chance_map(labels[q], labels[g], rng))
    return 100 * np.array([*chance, *cross, *within])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-ids", type=int, default=64)
    parser.add_argument("--seeds", type=int, default=5, help="pixel probes on seeds 0..n-1")
    parser.add_argument("--steps", type=int, default=400, help="CNN steps (0: skip the CNN)")
    parser.add_argument("--factor", type=int, default=2, help="CNN input downsampling")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--protocol", action="store_true", help="run (d) only")
    parser.add_argument("--seed", type=int, default=0, help="(d): synthetic seed")
    parser.add_argument("--seconds", type=float, default=None, help="(d): training budget")
    parser.add_argument("--json", default=None, help="(d): write the protocol result here")
    parser.add_argument(
        "--train-seed", type=int, default=0, help="(d): the CNN's initialisation and batches"
    )
    parser.add_argument(
        "--amp",
        default="off",
        choices=("off", "bfloat16"),
        help="(d): the CNN's training arithmetic (bfloat16: CPU autocast; default: off)",
    )
    parser.add_argument(
        "--style",
        default="default",
        choices=("default", "wide", "heldout"),
        help="(d): the synthetic set's look (data.synthetic_style)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.protocol:
        protocol_run(args)
        return
    rng = np.random.default_rng(0)
    names = ["chance", "(a) pixels IR->vis", "(b) pixels vis->vis"]
    print(f"{'seed':>4s} {'images':>6s} {'gen s':>5s}  " + "  ".join(f"{n:>19s}" for n in names))
    print(f"{'':18s}  " + "  ".join(f"{'r1':>9s} {'mAP':>9s}" for _ in names))
    rows, first = [], None
    for seed in range(args.seeds):
        start = time.perf_counter()
        ds = make_synthetic(args.num_ids, seed=seed)
        seconds = time.perf_counter() - start
        first = ds if first is None else first
        rows.append(pixel_probes(ds, rng))
        cells = " ".join(f"{x:9.1f}" for x in rows[-1])
        print(f"{seed:4d} {len(ds.records):6d} {seconds:5.1f}  {cells}")
    print(f"{'mean':>4s} {'':12s}  " + " ".join(f"{x:9.1f}" for x in np.mean(rows, 0)))
    ir = first.images[[r.modality == INFRARED for r in first.records]].astype(np.int16)
    print(f"seed 0: infrared max channel difference {np.abs(np.diff(ir, axis=-1)).max()}")
    if args.steps == 0:
        return
    start = time.perf_counter()
    model, _ = train_cnn(first, args.steps, args.factor, seed=0)
    seconds = time.perf_counter() - start
    q, g = select(first, first.test_ids, INFRARED), select(first, first.test_ids, VISIBLE)
    labels = np.array([r.label for r in first.records])
    fq, fg = cnn_features(model, first, q, args.factor), cnn_features(model, first, g, args.factor)
    r1, mean_ap = rank1_map(fq @ fg.T, labels[q], labels[g])
    print(
        f"seed 0: (c) small CNN, {args.steps} steps in {seconds:.0f} s, infrared -> visible: "
        f"rank-1 {100 * r1:.1f}, mAP {100 * mean_ap:.1f} "
        f"(chance {100 / len(first.test_ids):.1f} / {rows[0][1]:.1f})"
    )


if __name__ == "__main__":
    main()
