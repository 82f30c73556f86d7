"""A stand-in for ImageNet initialisation on CPU: a backbone pretrained on other synthetic people.

DCLNet assumes an ImageNet-pretrained backbone (docs/method.md §3): features that are already
discriminative and localised before the re-identification losses start. Offline, on a CPU, in
minutes, there is no ImageNet. ``model.pretrained=synthetic`` trains the backbone once on a
*separate, larger* synthetic population — other people (seed :data:`PRETRAIN_SEED`, never a
data set's own seed range by default) rendered at the recipe's input size — with identity
cross-entropy on both modalities, and caches the weights (torchvision key names) under
``<cache dir>/pretrained/``. Later runs load the cached file in a second, like a downloaded
ImageNet file. The people a model is trained and tested on are not in this population.

``shift`` (``model.pretrain_shift``) moves each pretraining person sideways by up to that
many pixels on a fresh random background, as objects sit anywhere in ImageNet photographs, so
that the classifier has to find the person wherever it stands. Meant to make the features
more local; what it did in one study-recipe run is in the README's study section (it did
not help there).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from dclnet.data.augment import AugmentConfig, augment_batch
from dclnet.data.records import INFRARED, VISIBLE
from dclnet.fileio import atomic_write
from dclnet.models.pooling import GeM
from dclnet.models.resnet import build_resnet

logger = logging.getLogger(__name__)

PRETRAIN_SEED = 1_000_003  # population seed: other people than any small data.synthetic_seed
RECIPE_VERSION = 1  # bump when the pretraining recipe changes (new cache file)


def pretrained_path(
    cache_dir: Path,
    arch: str,
    size: tuple[int, int],
    layer3_stride: int,
    ids: int,
    steps: int,
    shift: int = 0,
) -> Path:
    """Cache file of one pretraining recipe."""
    h, w = size
    moved = f"-shift{shift}" if shift else ""
    name = f"synthetic-{arch}-{h}x{w}-s3{layer3_stride}-{ids}ids-{steps}steps{moved}"
    return Path(cache_dir) / "pretrained" / f"{name}-v{RECIPE_VERSION}.pt"


class _Classifier(nn.Module):
    """ResNet → GeM → BatchNorm → linear identity classifier (shared by both modalities)."""

    def __init__(self, arch: str, layer3_stride: int, num_classes: int) -> None:
        super().__init__()
        self.backbone = build_resnet(arch, last_stride=1, layer3_stride=layer3_stride)
        dim = self.backbone.stage_channels[-1]
        self.pool = GeM(3.0)
        self.neck = nn.BatchNorm1d(dim)
        self.head = nn.Linear(dim, num_classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.neck(self.pool(self.backbone.forward_features(x))))


def _batch(images, labels, infrared, rng, size: int):
    """``size`` random images, visible first: (visible uint8, infrared uint8, labels)."""
    rows = rng.choice(len(images), size, replace=False)
    rows = np.concatenate([rows[~infrared[rows]], rows[infrared[rows]]])
    n_vis = int((~infrared[rows]).sum())
    x = torch.from_numpy(images[rows])
    return x[:n_vis], x[n_vis:], torch.from_numpy(labels[rows])


def shift_people(
    images: np.ndarray, offsets: np.ndarray, backgrounds: np.ndarray, shift: int
) -> torch.Tensor:
    """Move each image sideways onto its own background.

    Image ``i`` is pasted at column ``offsets[i]`` of a ``W + 2 shift`` wide background and the
    middle ``W`` columns are kept, so its content moves by ``offsets[i] - shift`` pixels
    (``offsets`` in ``0..2 shift``); uncovered columns show the background.

    Args:
        images: ``N x H x W x 3`` uint8.
        offsets: ``N`` ints in ``[0, 2 shift]``.
        backgrounds: ``N x H x (W + 2 shift) x 3`` uint8.
        shift: Largest move in pixels.

    Returns:
        ``N x H x W x 3`` uint8.
    """
    n, h, w, _ = images.shape
    canvas = backgrounds.copy()
    cols = offsets[:, None] + np.arange(w)[None]  # N x W
    canvas[np.arange(n)[:, None, None], np.arange(h)[None, :, None], cols[:, None, :]] = images
    return torch.from_numpy(np.ascontiguousarray(canvas[:, :, shift : shift + w]))


def _shifted(images: torch.Tensor, infrared: bool, shift: int, rng) -> torch.Tensor:
    """``images`` moved by up to ``shift`` px onto fresh random backgrounds of their modality."""
    from dclnet.data.sources.synthetic_render import background

    if shift == 0 or len(images) == 0:
        return images
    n, h, w, _ = images.shape
    bg = background(rng, n, h, w + 2 * shift, 1 if infrared else 3)
    bg = (np.broadcast_to(bg, (*bg.shape[:3], 3)) * 255).round().astype(np.uint8)
    return shift_people(images.numpy(), rng.integers(0, 2 * shift + 1, n), bg, shift)


def pretrain_backbone(
    arch: str,
    size: tuple[int, int],
    *,
    layer3_stride: int = 2,
    ids: int = 512,
    steps: int = 500,
    batch_size: int = 64,
    lr: float = 1e-3,
    shift: int = 0,
    progress: bool = True,
) -> dict[str, torch.Tensor]:
    """Train a ResNet to classify the people of a separate synthetic population.

    Batches of ``batch_size`` random images of both modalities; each person moved sideways
    by up to ``shift`` pixels on a new background (:func:`shift_people`; 0 = as rendered);
    augmentation as in training (visible random grayscale, flips, random erasing); Adam with
    a linear warm-up over the first 5 % of ``steps`` and cosine decay to 0.

    Returns:
        The backbone's state dict with torchvision key names (``fc.*`` dropped).
    """
    from dclnet.data.sources.synthetic import make_synthetic

    syn = make_synthetic(
        ids, seed=PRETRAIN_SEED, height=size[0], width=size[1], num_val_ids=0, num_test_ids=1
    )
    train = set(syn.train_ids)
    keep = np.array([r.label in train for r in syn.records])
    images = syn.images[keep]
    labels = np.searchsorted(syn.train_ids, np.array([r.label for r in syn.records])[keep])
    infrared = np.array([r.modality == INFRARED for r in syn.records])[keep]
    torch.manual_seed(PRETRAIN_SEED)
    rng = np.random.default_rng(PRETRAIN_SEED)
    gen = torch.Generator().manual_seed(PRETRAIN_SEED)
    model = _Classifier(arch, layer3_stride, len(syn.train_ids)).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=5e-4)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warm
            if s < warm
            else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm)))
        ),
    )
    augment = AugmentConfig()
    bar = tqdm(range(steps), desc="synthetic pretraining", disable=not progress, leave=False)
    for _ in bar:
        vis, ir, y = _batch(images, labels, infrared, rng, batch_size)
        vis, ir = _shifted(vis, False, shift, rng), _shifted(ir, True, shift, rng)
        x_vis = augment_batch(vis, VISIBLE, augment, gen)[0]
        x = torch.cat([x_vis, augment_batch(ir, INFRARED, augment, gen)[0]])
        loss = F.cross_entropy(model(x), y.long())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    state = model.backbone.state_dict()
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


def synthetic_backbone(
    arch: str,
    size: tuple[int, int],
    cache_dir: Path,
    *,
    layer3_stride: int = 2,
    ids: int = 512,
    steps: int = 500,
    shift: int = 0,
    progress: bool = True,
) -> Path:
    """Path of the cached synthetic-pretrained backbone; trains and caches it when missing.

    The file is written atomically (temp file, then rename), so an interrupted pretraining
    leaves nothing that a later run would load.
    """
    path = pretrained_path(cache_dir, arch, size, layer3_stride, ids, steps, shift)
    if path.is_file():
        return path
    logger.info(
        "model.pretrained=synthetic: pretraining %s on %d other synthetic people for %d steps "
        "(once; cached as %s)",
        arch,
        ids,
        steps,
        path,
    )
    start = time.perf_counter()
    state = pretrain_backbone(
        arch,
        size,
        layer3_stride=layer3_stride,
        ids=ids,
        steps=steps,
        shift=shift,
        progress=progress,
    )
    with atomic_write(path, "wb") as fh:
        torch.save(state, fh)
    logger.info("synthetic pretraining took %.0f s", time.perf_counter() - start)
    return path
