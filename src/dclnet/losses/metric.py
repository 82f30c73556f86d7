"""Metric losses on the global feature f (docs/method.md §7): center-cluster, batch-hard triplet."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

CENTER_PUSH = ("identities", "released")


def _pairwise_distance(x: Tensor, y: Tensor) -> Tensor:
    """Exact Euclidean distances ``M x D``, ``K x D`` -> ``M x K`` (zero distance: zero grad)."""
    return torch.cdist(x, y, compute_mode="donot_use_mm_for_euclid_dist")


def center_cluster_loss(
    features: Tensor, labels: Tensor, margin: float = 0.7, push_rows: str = "identities"
) -> Tensor:
    """Center-cluster loss: pull features to their class centre, push centres apart.

    With centres ``c_y`` = mean of the batch's features of identity ``y`` (both modalities)
    and ``Y`` the batch's identities::

        L = mean_i ||f_i - c_{y_i}|| + mean_{y in S} mean_{y' in Y, y' != y} h(y, y')
        h(y, y') = [margin - ||c_y - c_{y'}||]_+

    The push term's outer mean runs over ``S``, chosen by ``push_rows``:

    - ``"identities"``: every identity of the batch once (``S = Y``).
    - ``"released"`` (the authors' released code, ``k_size`` = P): the identities of batch rows
      ``0, P, 2P, ...`` where ``P = |Y|`` is the number of identities in the batch (the
      sampler's ``P`` of a ``2 P K`` batch: P identities x K images, visible then infrared,
      the same order in both halves). ``S`` is a multiset, one entry per selected row: with
      P = 8, K = 4 the rows 0, 8, ..., 56 select the centres of identities 0, 2, 4, 6 (the
      batch's 1st, 3rd, 5th and 7th), each twice (once per modality); pairs of two unselected
      identities (e.g. the 2nd and the 4th) are never pushed apart. The released code
      averages over the other *rows'* centres; with the P x K layout (every identity has
      ``2K`` rows) that equals the mean over the other identities used here.

    Args:
        features: ``B x D`` features (GeM output, before the BNNeck).
        labels: ``B`` int64 identity labels.
        margin: minimum distance between two centres.
        push_rows: ``"identities"`` or ``"released"`` (see above).

    Returns:
        Scalar float32 loss; the centre term is 0 when the batch holds one identity.
    """
    if push_rows not in CENTER_PUSH:
        raise ValueError(f"push_rows must be one of {', '.join(CENTER_PUSH)}, got {push_rows!r}")
    f = features.float()
    # B x B same-identity matrix instead of torch.unique: no host synchronisation
    same = (labels.unsqueeze(0) == labels.unsqueeze(1)).to(f.dtype)  # B x B
    count = same.sum(dim=1)  # B, images of identity y_i
    centres = (same @ f) / count.unsqueeze(1)  # B x D, c_{y_i} per row
    intra = torch.linalg.vector_norm(f - centres, dim=1).mean()
    k = (1.0 / count).sum()  # number of identities
    dist = _pairwise_distance(centres, centres)  # B x B
    hinge = F.relu(margin - dist) * (1.0 - same)  # B x B, 0 within an identity
    # row i: mean over the other identities y' (each of its count[j] rows weighs 1/count[j])
    per_row = (hinge / count.unsqueeze(0)).sum(dim=1) / (k - 1.0).clamp_min(1.0)  # B
    if push_rows == "identities":
        inter = (per_row / count).sum() / k  # each identity once
    else:
        stride = k.round().long()  # P, kept on the device (no host synchronisation)
        rows = torch.arange(labels.shape[0], device=f.device)
        chosen = (rows % stride == 0).to(f.dtype)  # B, rows 0, P, 2P, ...
        inter = (per_row * chosen).sum() / chosen.sum()
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
