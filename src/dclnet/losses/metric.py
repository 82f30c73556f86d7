"""Metric losses on the global feature f (spec §7): center-cluster and batch-hard triplet."""

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
    classes, inverse = torch.unique(labels, return_inverse=True)  # K, B
    k = classes.numel()
    onehot = F.one_hot(inverse, k).to(f.dtype)  # B x K
    centres = (onehot.T @ f) / onehot.sum(dim=0).unsqueeze(1)  # K x D
    intra = torch.linalg.vector_norm(f - centres[inverse], dim=1).mean()
    dist = _pairwise_distance(centres, centres)  # K x K
    off_diag = ~torch.eye(k, dtype=torch.bool, device=f.device)
    push = F.relu(margin - dist) * off_diag  # K x K
    inter = (push.sum(dim=1) / max(k - 1, 1)).mean()
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
