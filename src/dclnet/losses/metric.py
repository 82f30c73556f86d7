"""Metric losses on the global feature f (docs/method.md §7): center-cluster, batch-hard triplet."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _pairwise_distance(x: Tensor, y: Tensor) -> Tensor:
    """Exact Euclidean distances ``M x D``, ``K x D`` -> ``M x K`` (zero distance: zero grad)."""
    return torch.cdist(x, y, compute_mode="donot_use_mm_for_euclid_dist")


def center_cluster_loss(features: Tensor, labels: Tensor, margin: float = 0.7) -> Tensor:
    """Center-cluster loss: pull features to their class centre, push centres apart.

    With centres ``c_y`` = mean of the batch's features of identity ``y`` (both modalities)::

        L = mean_i ||f_i - c_{y_i}|| + mean_y mean_{y' != y} [margin - ||c_y - c_{y'}||]_+

    Args:
        features: ``B x D`` features (GeM output, before the BNNeck).
        labels: ``B`` int64 identity labels.
        margin: minimum distance between two centres.

    Returns:
        Scalar float32 loss; the centre term is 0 when the batch holds one identity.
    """
    f = features.float()
    # B x B same-identity matrix instead of torch.unique: no host synchronisation
    same = (labels.unsqueeze(0) == labels.unsqueeze(1)).to(f.dtype)  # B x B
    count = same.sum(dim=1)  # B, images of identity y_i
    centres = (same @ f) / count.unsqueeze(1)  # B x D, c_{y_i} per row
    intra = torch.linalg.vector_norm(f - centres, dim=1).mean()
    k = (1.0 / count).sum()  # number of identities
    dist = _pairwise_distance(centres, centres)  # B x B
    weight = (1.0 - same) / (count.unsqueeze(0) * count.unsqueeze(1))  # each class pair once
    push = (F.relu(margin - dist) * weight).sum()  # sum over ordered pairs y != y'
    inter = push / (k * (k - 1.0).clamp_min(1.0))
    return intra + inter


def triplet_loss(features: Tensor, labels: Tensor, margin: float = 0.3) -> Tensor:
    """Batch-hard triplet loss with Euclidean distance.

    Every anchor takes its farthest same-identity sample (itself included) and its closest
    other-identity sample: ``mean_i [d(i, p_i) - d(i, n_i) + margin]_+``. Anchors without a
    negative in the batch are left out.

    Args:
        features: ``B x D`` features.
        labels: ``B`` int64 identity labels.
        margin: ranking margin.

    Returns:
        Scalar float32 loss; a zero that carries gradient when no anchor has a negative.
    """
    f = features.float()
    dist = _pairwise_distance(f, f)  # B x B
    same = labels.unsqueeze(0) == labels.unsqueeze(1)  # B x B
    hardest_pos = dist.masked_fill(~same, float("-inf")).amax(dim=1)  # B
    hardest_neg = dist.masked_fill(same, float("inf")).amin(dim=1)  # B
    has_neg = (~same).any(dim=1)
    hinge = F.relu(hardest_pos - hardest_neg + margin)
    hinge = torch.where(has_neg, hinge, torch.zeros_like(hinge))
    return hinge.sum() / has_neg.sum().clamp_min(1)
