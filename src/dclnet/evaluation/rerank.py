"""k-reciprocal re-ranking (Zhong et al., "Re-ranking Person Re-identification with
k-reciprocal Encoding", CVPR 2017).

Given query and gallery features, all ``N = Q + G`` images are treated as one set:

1. Original distance ``d``: squared Euclidean distance of the given features (typically
   L2-normalised, so ``d = 2 - 2 cos``), each row divided by its maximum, as in the authors'
   released implementation.
2. ``R(p, k1)``: the k-reciprocal neighbours of ``p`` -- images among ``p``'s ``k1 + 1``
   nearest (itself included) that also have ``p`` among their ``k1 + 1`` nearest.
3. Expansion: for each ``c`` in ``R(p, k1)``, ``R(c, round(k1 / 2))`` is merged into the set
   when more than two thirds of it already lies in ``R(p, k1)`` (strict inequality, as in the
   released implementation).
4. Encoding: ``V[p, j] = exp(-d(p, j))`` on the expanded set, 0 elsewhere, rows normalised
   to sum 1; local query expansion replaces each row by the mean of the rows of its ``k2``
   nearest images (itself included).
5. Jaccard distance ``1 - sum_j min(V_p, V_g) / sum_j max(V_p, V_g)`` and the final
   distance ``(1 - lambda) * jaccard + lambda * d``.

Memory is O(N^2) (a few dense ``N x N`` float32 matrices: ~70 MB each for SYSU-MM01's
3,803 + 301 images); the Jaccard step is a sparse join, so its cost follows the number of
non-zeros rather than ``Q x G x N``.
"""

from __future__ import annotations

import numpy as np
import torch

from dclnet.errors import DclnetError

# Query-gallery pairs handled at once in the sparse Jaccard join.
_PAIRS_PER_STEP = 1 << 24


def k_reciprocal_rerank(
    query_features: np.ndarray | torch.Tensor,
    gallery_features: np.ndarray | torch.Tensor,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
) -> np.ndarray:
    """Re-ranked query-gallery distances (smaller = closer).

    Runs in float32 on the device of ``query_features`` when it is a tensor. ``k1`` and
    ``k2`` are clamped to the number of images. Exactly tied distances among an image's
    nearest neighbours (duplicate images) are ordered as ``torch.topk`` returns them, which
    is deterministic on a given device.

    Args:
        query_features: ``Q x D`` features.
        gallery_features: ``G x D`` features.
        k1: Size of the k-reciprocal neighbourhood.
        k2: Neighbours averaged in the local query expansion (1 = none).
        lambda_value: Weight of the original distance, in [0, 1].

    Returns:
        ``Q x G`` float32 distances. Turn into similarities with a minus sign for
        :func:`dclnet.evaluation.metrics.evaluate_ranking`.
    """
    query = _features(query_features, "query_features")
    gallery = _features(gallery_features, "gallery_features").to(query.device)
    if query.shape[1] != gallery.shape[1]:
        raise DclnetError(
            f"query and gallery features differ in dimension: {query.shape[1]} vs "
            f"{gallery.shape[1]}"
        )
    if k1 < 1 or k2 < 1:
        raise DclnetError(f"k1 and k2 must be >= 1, got k1={k1}, k2={k2}")
    if not 0.0 <= lambda_value <= 1.0:
        raise DclnetError(f"lambda_value must lie in [0, 1], got {lambda_value}")
    distance = _squared_euclidean(torch.cat([query, gallery]))  # N x N
    return _rerank(distance, len(query), k1, k2, lambda_value).cpu().numpy()


def _rerank(
    distance: torch.Tensor, num_query: int, k1: int, k2: int, lambda_value: float
) -> torch.Tensor:
    """Re-ranking from the ``N x N`` original distance; ``Q x G`` result."""
    num_all = len(distance)
    distance = distance / distance.amax(1, keepdim=True).clamp_min(1e-12)  # N x N
    k1 = min(k1, num_all - 1)
    k2 = min(k2, num_all)
    half = min(int(round(k1 / 2)), num_all - 1)  # round half to even, like NumPy
    depth = max(k1 + 1, k2)
    nearest = torch.topk(distance, depth, dim=1, largest=False, sorted=True).indices  # N x K

    expanded = _expanded_reciprocal_sets(nearest, k1, half)  # N x N bool
    weights = torch.where(expanded, torch.exp(-distance), 0.0)  # N x N
    weights /= weights.sum(1, keepdim=True)
    if k2 > 1:
        weights = _local_query_expansion(weights, nearest[:, :k2])
    overlap = _min_overlap(weights[:num_query], weights[num_query:])  # Q x G
    jaccard = 1.0 - overlap / (2.0 - overlap)  # rows sum to 1: sum max = 2 - sum min
    return (1.0 - lambda_value) * jaccard + lambda_value * distance[:num_query, num_query:]


def _reciprocal(nearest: torch.Tensor, k: int) -> torch.Tensor:
    """``N x (k+1)`` mask: which of each image's ``k + 1`` nearest have it among theirs."""
    forward = nearest[:, : k + 1]  # N x (k+1)
    backward = nearest[forward, : k + 1]  # N x (k+1) x (k+1)
    me = torch.arange(len(nearest), device=nearest.device)[:, None, None]
    return (backward == me).any(-1)


def _expanded_reciprocal_sets(nearest: torch.Tensor, k1: int, half: int) -> torch.Tensor:
    """``N x N`` membership of R*(p, k1), the expanded k-reciprocal sets (steps 2-3)."""
    num_all = len(nearest)
    rows = torch.arange(num_all, device=nearest.device)[:, None]  # N x 1
    forward, in_set = nearest[:, : k1 + 1], _reciprocal(nearest, k1)  # N x K1
    members = torch.zeros(num_all, num_all, dtype=torch.bool, device=nearest.device)
    members[rows.expand_as(forward)[in_set], forward[in_set]] = True  # R(p, k1)

    # Candidate c = forward[p, i] brings R(c, half): its images and their membership mask.
    cand_images = nearest[:, : half + 1][forward]  # N x K1 x H
    cand_in_set = _reciprocal(nearest, half)[forward]  # N x K1 x H
    overlap = (members[rows[:, :, None], cand_images] & cand_in_set).sum(-1)  # N x K1
    accept = in_set & (3 * overlap > 2 * cand_in_set.sum(-1))  # more than 2/3 inside
    add = accept[:, :, None] & cand_in_set  # N x K1 x H
    expanded = members.clone()
    expanded[rows[:, :, None].expand_as(cand_images)[add], cand_images[add]] = True
    return expanded


def _local_query_expansion(weights: torch.Tensor, nearest: torch.Tensor) -> torch.Tensor:
    """Each row replaced by the mean of the rows of its ``k2`` nearest images."""
    expanded = torch.zeros_like(weights)
    for neighbour in nearest.t():  # k2 steps, each a whole-matrix row gather
        expanded += weights[neighbour]
    return expanded / nearest.shape[1]


def _min_overlap(query: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
    """``Q x G`` sums ``sum_j min(query[q, j], gallery[g, j])`` of sparse non-negative rows.

    Only columns where both rows are non-zero contribute, so every gallery non-zero
    ``(g, j)`` is joined with the query non-zeros of column ``j``.
    """
    num_query, num_gallery = len(query), len(gallery)
    q_col, q_row = query.t().nonzero(as_tuple=True)  # grouped by column
    q_val = query[q_row, q_col]
    per_col = torch.bincount(q_col, minlength=query.shape[1])
    col_start = per_col.cumsum(0) - per_col
    g_row, g_col = gallery.nonzero(as_tuple=True)
    g_val = gallery[g_row, g_col]
    pairs = per_col[g_col]  # query partners of each gallery non-zero

    out = torch.zeros(num_query * num_gallery, dtype=query.dtype, device=query.device)
    ends = pairs.cumsum(0)  # pairs up to and including each gallery non-zero
    start = 0
    while start < len(pairs):  # steps of about _PAIRS_PER_STEP pairs
        done = int(ends[start - 1]) if start else 0
        limit = torch.tensor([done + _PAIRS_PER_STEP], device=ends.device)
        stop = max(start + 1, int(torch.searchsorted(ends, limit, right=True)))
        count = pairs[start:stop]
        owner = torch.repeat_interleave(torch.arange(start, stop, device=out.device), count)
        within = (
            torch.arange(len(owner), device=out.device) - (count.cumsum(0) - count)[owner - start]
        )
        q_index = col_start[g_col[owner]] + within  # the partner's place in q_val / q_row
        values = torch.minimum(q_val[q_index], g_val[owner])
        out.index_add_(0, q_row[q_index] * num_gallery + g_row[owner], values)
        start = stop
    return out.view(num_query, num_gallery)


def _squared_euclidean(features: torch.Tensor) -> torch.Tensor:
    """``N x N`` squared Euclidean distances, exactly 0 on the diagonal."""
    squares = features.pow(2).sum(1)
    distance = (squares[:, None] + squares[None, :] - 2.0 * features @ features.t()).clamp_min(0)
    return distance.fill_diagonal_(0.0)


def _features(value: np.ndarray | torch.Tensor, name: str) -> torch.Tensor:
    tensor = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.asarray(value))
    if tensor.dim() != 2 or len(tensor) == 0:
        raise DclnetError(f"{name} must be a non-empty 2-D (images x dim) array")
    if not bool(torch.isfinite(tensor).all()):
        raise DclnetError(f"{name} contains NaN or infinite values")
    return tensor.detach().float()
