"""How local a backbone's final-map cells are at a given input size, before any training.

A class activation map can only point at the body when the cells over the person carry more
identity evidence than the cells over the background. :func:`backbone_locality` reads who is
in an image from one final-map column alone (:func:`~dclnet.evaluation.mechanisms.
identity_by_column`: nearest identity prototype, no classifier) for a backbone used at
several input sizes. A backbone pretrained at 96 × 48 and used there identifies the person
from every column about equally; used at twice or three times that size, the edge columns
stop identifying the person — its cells have become local.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dclnet.data.augment import test_transform
from dclnet.data.records import INFRARED, VISIBLE
from dclnet.evaluation.diagnose import _every_other
from dclnet.evaluation.mechanisms import identity_by_column
from dclnet.models.resnet import build_resnet, pretrained_state_dict


@torch.no_grad()
def column_features(
    backbone: torch.nn.Module, images: np.ndarray, stripes: int, batch_size: int = 64
) -> torch.Tensor:
    """Final map of ``N x H x W x 3`` uint8 images average-pooled to ``stripes`` rows, columns
    kept: ``N x C x stripes x w`` (CPU, float32)."""
    out = []
    for start in range(0, len(images), batch_size):
        x = test_transform(torch.from_numpy(images[start : start + batch_size]))
        fmap = backbone.forward_features(x)  # B x C x h x w
        out.append(F.adaptive_avg_pool2d(fmap.float(), (stripes, fmap.shape[-1])))
    return torch.cat(out)


def backbone_locality(
    weights: str,
    arch: str,
    sizes: list[tuple[int, int]],
    *,
    synthetic_ids: int = 64,
    synthetic_seed: int = 0,
    layer3_stride: int = 2,
    stripes: int = 6,
) -> list[dict[str, Any]]:
    """Identity from one final-map column, per column, for a backbone used at each size.

    Args:
        weights: A backbone weights file (torchvision key names), e.g. a cached synthetic
            pretraining.
        arch: Its architecture (``resnet18``, ...).
        sizes: ``(H, W)`` input sizes; the synthetic set is rendered at each.
        synthetic_ids: Identities of the synthetic set (its test identities are scored).
        synthetic_seed: Seed of the synthetic set.
        layer3_stride: The backbone's layer3 stride (final map at 1/16 of the input with 2).
        stripes: Horizontal stripes each column is pooled to (the model's parts).

    Returns:
        One dict per size: ``size``, ``grid`` (final map ``h x w``), ``accuracy`` (one share
        per column, left to right), ``chance``, ``images``, ``identities``.
    """
    from dclnet.data.datasets import synthetic_set

    backbone = build_resnet(arch, last_stride=1, layer3_stride=layer3_stride)
    missing, unexpected = backbone.load_state_dict(
        pretrained_state_dict(weights, arch), strict=False
    )
    if unexpected or [k for k in missing if not k.startswith("fc.")]:
        raise ValueError(f"{weights} is not a {arch} backbone: {len(missing)} missing keys")
    backbone.eval()
    rows = []
    for height, width in sizes:
        syn = synthetic_set(synthetic_ids, synthetic_seed, height, width)
        labels = np.array([r.label for r in syn.records])
        modality = np.array([r.modality for r in syn.records])
        test = np.isin(labels, syn.test_ids) & np.isin(modality, (VISIBLE, INFRARED))
        cells = column_features(backbone, syn.images[test], stripes)
        result = identity_by_column(
            cells, torch.from_numpy(labels[test]), torch.from_numpy(_every_other(labels[test]))
        )
        rows.append(
            {
                "size": [height, width],
                "grid": [height // (8 * layer3_stride), width // (8 * layer3_stride)],
                **result,
                "images": int(test.sum()),
                "identities": len(syn.test_ids),
            }
        )
    return rows


def format_locality(rows: list[dict[str, Any]]) -> str:
    """One line per size: the per-column identity accuracy, left to right."""
    lines = []
    for r in rows:
        h, w = r["size"]
        gh, gw = r["grid"]
        cols = " ".join(f"{a:.2f}" for a in r["accuracy"])
        lines.append(f"{h} x {w} (final map {gh} x {gw}): {cols} (chance {r['chance']:.2f})")
    return "\n".join(lines)
