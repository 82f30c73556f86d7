"""Mechanism metrics: how well masks and low-level features match pixel ground truth.

Pure, vectorised functions behind ``dclnet diagnose`` (:mod:`dclnet.evaluation.diagnose`).
Every map is a label grid ``B x h x w`` of int64 values ``0..P``: 0 is background (or
"ignore"), ``k >= 1`` is body part / band ``k``. Scores are pooled over images: the counts of
all images are summed before dividing, so large and small people weigh by their cells.

Conventions for empty sets (documented because they decide edge cases): an IoU whose union is
empty over the whole pool is 1 (both maps agree that nothing is there); ``part_miou`` averages
only the parts present in the prediction or the truth, and is 1 when none is.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


def majority_downsample(labels: Tensor, size: tuple[int, int], num_classes: int) -> Tensor:
    """Downsample label maps by majority vote over each output cell's area.

    Each output cell takes the label that covers most of its area (area-weighted one-hot
    average, as :func:`torch.nn.functional.adaptive_avg_pool2d` defines the cells); a tie goes
    to the smaller label (background before parts).

    Args:
        labels: ``B x H x W`` integer labels in ``0..num_classes - 1``.
        size: ``(h, w)`` of the output grid.
        num_classes: Number of label values.

    Returns:
        ``B x h x w`` int64.
    """
    onehot = F.one_hot(labels.long(), num_classes).permute(0, 3, 1, 2).float()  # B x K x H x W
    share = F.adaptive_avg_pool2d(onehot, size)  # B x K x h x w
    return share.argmax(dim=1)


def _iou(inter: Tensor, union: Tensor) -> float:
    return 1.0 if union.item() == 0 else float(inter.item() / union.item())


def foreground_iou(pred: Tensor, truth: Tensor) -> float:
    """IoU of ``pred > 0`` with ``truth > 0``, pooled over images.

    Args:
        pred: ``B x h x w`` predicted labels.
        truth: ``B x h x w`` true labels.
    """
    p, t = pred > 0, truth > 0
    return _iou((p & t).sum(), (p | t).sum())


def part_ious(pred: Tensor, truth: Tensor, num_parts: int) -> Tensor:
    """Pooled IoU of each part ``k = 1..num_parts``; NaN where part k is in neither map.

    Returns:
        ``num_parts`` float64.
    """
    ks = torch.arange(1, num_parts + 1, device=pred.device).view(-1, 1, 1, 1)  # P x 1 x 1 x 1
    p, t = pred.unsqueeze(0) == ks, truth.unsqueeze(0) == ks  # P x B x h x w
    inter = (p & t).flatten(1).sum(1).double()
    union = (p | t).flatten(1).sum(1).double()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.nan)


def part_miou(pred: Tensor, truth: Tensor, num_parts: int) -> float:
    """Mean over parts ``1..num_parts`` of the pooled IoU of ``pred == k`` with ``truth == k``.

    Parts present in neither map are left out of the mean; with none present it is 1.
    """
    ious = part_ious(pred, truth, num_parts)
    present = ~ious.isnan()
    return 1.0 if not present.any() else float(ious[present].mean())


def correspondence(
    z_visible: Tensor, z_infrared: Tensor, truth_visible: Tensor, truth_infrared: Tensor
) -> dict[str, float]:
    """Cross-modality pixel matching on the low-level map, scored against true body bands.

    For each pair n and each visible cell p on the person (``truth_visible > 0``), the
    infrared cell q* most cosine-similar to p is a hit when ``truth_infrared[q*]`` equals
    ``truth_visible[p]`` (on the person, same band). Chance is the same share for a uniformly
    random infrared cell: the fraction of the infrared image's cells with p's band.

    Args:
        z_visible: ``N x C x h x w`` visible low-level maps.
        z_infrared: ``N x C x h x w`` infrared low-level maps; pair n shows one identity.
        truth_visible: ``N x h x w`` true bands of the visible cells (0 = not on the person).
        truth_infrared: ``N x h x w`` true bands of the infrared cells.

    Returns:
        ``accuracy`` and ``chance`` pooled over all anchors (0 when there is none), and
        ``num_anchors``.
    """
    n = z_visible.shape[0]
    zv = F.normalize(z_visible.float().flatten(2), dim=1)  # N x C x HW
    zi = F.normalize(z_infrared.float().flatten(2), dim=1)  # N x C x HW
    tv, ti = truth_visible.reshape(n, -1), truth_infrared.reshape(n, -1)  # N x HW
    best = torch.bmm(zv.transpose(1, 2), zi).argmax(dim=2)  # N x HW: best infrared cell per p
    anchors = tv > 0  # N x HW
    hits = (ti.gather(1, best) == tv) & anchors
    # share of the infrared image's cells carrying each label, looked up at each anchor's band
    labels = int(max(tv.max().item(), ti.max().item())) + 1
    share = F.one_hot(ti, labels).float().mean(dim=1)  # N x labels
    chance = share.gather(1, tv) * anchors  # N x HW
    count = int(anchors.sum().item())
    return {
        "accuracy": float(hits.sum().item() / count) if count else 0.0,
        "chance": float(chance.sum().item() / count) if count else 0.0,
        "num_anchors": count,
    }


def identity_by_column(cells: Tensor, labels: Tensor, fit: Tensor) -> dict[str, Any]:
    """How well each column of the final map alone tells who is in the image.

    Per column j, an image's descriptor is its cells of that column (``C x P`` values),
    standardised with the ``fit`` images' per-value mean and std and L2-normalised. Each
    identity's mean descriptor over its ``fit`` images is its prototype; every other image is
    assigned the identity of its most cosine-similar prototype. A CAM scores each cell by the
    identity evidence it carries, so it can only point at the person when the person's
    columns carry more of that evidence than the background's.

    Args:
        cells: ``N x C x P x w`` final map pooled to ``P`` stripes (any ``w`` columns).
        labels: ``N`` identity labels (any integers).
        fit: ``N`` bool, the images the prototypes are built from; the others are scored.
            Every scored identity needs at least one ``fit`` image.

    Returns:
        ``accuracy`` (one share per column, left to right) and ``chance`` (1 / identities).
    """
    classes, index = torch.unique(labels, return_inverse=True)
    if not bool(torch.isin(index[~fit], index[fit]).all()):
        raise ValueError("every scored identity needs at least one fit image")
    onehot = F.one_hot(index[fit], len(classes)).to(cells.dtype)  # N_fit x K
    accuracy = []
    for j in range(cells.shape[-1]):  # a handful of columns, each one batched matrix product
        x = cells[..., j].flatten(1).double()  # N x C*P
        mean, std = x[fit].mean(dim=0), x[fit].std(dim=0)
        x = F.normalize((x - mean) / std.clamp_min(1e-6), dim=1)
        protos = F.normalize(onehot.double().T @ x[fit], dim=1)  # K x C*P
        guess = (x[~fit] @ protos.T).argmax(dim=1)
        accuracy.append(float((guess == index[~fit]).double().mean()))
    return {"accuracy": accuracy, "chance": 1.0 / len(classes)}
