"""Ranking metrics (CMC, mAP, mINP) under the SYSU-MM01, RegDB and LLCM rules.

Pure, vectorised functions of a query x gallery *similarity* matrix and the label and camera
vectors; which images form the query and the gallery is protocol code's business
(``dclnet.evaluation.protocols``). The rules follow ``docs/protocols.md`` §7-8 to the letter:

* Each query ranks the gallery by descending similarity, i.e. ascending distance
  ``d = -similarity``, as a **stable** sort would: exactly tied similarities keep gallery
  order (the AGW-family reference code uses an unstable sort, which leaves ties
  implementation-defined). ``+0.0`` and ``-0.0`` are a tie.
* ``"sysu"``: gallery images from camera 2 are removed when the query comes from camera 3
  (the two cameras share a location). The AGW-family code evaluates infrared (3, 6) →
  visible (1, 2, 4, 5), where only that case can occur; for the visible → infrared direction
  we apply the same rule symmetrically and also remove gallery camera 3 when the query comes
  from camera 2. CMC uses the remaining list with duplicate identities removed (first
  occurrence kept); mAP and mINP use the remaining list without de-duplication.
* ``"llcm"``: as ``"sysu"``, but the removed gallery entries are those sharing the query's
  identity **and** camera.
* ``"regdb"``: nothing removed, CMC without de-duplication.

AP is the mean over the true matches of (matches so far / rank); INP is (number of true
matches) / (rank of the last true match). Queries with no true match left are skipped and
every average divides by the number of valid queries. The CMC curve has
``min(max_rank, gallery size)`` points; a query whose (de-duplicated) list is shorter keeps
its last value, which for a valid query is a hit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dclnet.errors import DclnetError

RULES = ("sysu", "regdb", "llcm")

# Similarities (queries x gallery) per chunk: small enough for the temporaries (~10-20 bytes
# an element when counting, a few times more when sorting) to stay in cache; measured best.
_CHUNK_ELEMENTS = 1 << 19
# Above this many gallery images of one identity, sorting each row beats counting (the
# crossover measured on CPU lies between 40 and 50).
_MAX_COUNTED_MATCHES = 40


@dataclass(frozen=True, eq=False)
class RankingMetrics:
    """Result of :func:`evaluate_ranking` (``eq=False``: it holds an array).

    Attributes:
        cmc: ``R`` float64 fractions, ``R = min(max_rank, gallery size)``; ``cmc[k-1]`` is
            rank-k.
        mAP: Mean average precision, a fraction.
        mINP: Mean inverse negative penalty, a fraction.
        num_valid: Queries with at least one true match after the camera filter.
        num_query: All queries.
    """

    cmc: np.ndarray
    mAP: float
    mINP: float
    num_valid: int
    num_query: int

    def rank(self, k: int) -> float:
        """Rank-k accuracy; k beyond the curve reads its last point."""
        if k < 1:
            raise DclnetError(f"rank k must be >= 1, got {k}")
        return float(self.cmc[min(k, len(self.cmc)) - 1])

    def as_percent(self) -> dict[str, float]:
        """``rank1``, ``rank5``, ``rank10``, ``rank20``, ``mAP``, ``mINP`` in percent."""
        out = {f"rank{k}": 100.0 * self.rank(k) for k in (1, 5, 10, 20)}
        out["mAP"] = 100.0 * self.mAP
        out["mINP"] = 100.0 * self.mINP
        return out


def evaluate_ranking(
    similarity: np.ndarray | torch.Tensor,
    query_labels: np.ndarray | torch.Tensor,
    gallery_labels: np.ndarray | torch.Tensor,
    query_cams: np.ndarray | torch.Tensor,
    gallery_cams: np.ndarray | torch.Tensor,
    *,
    rule: str,
    max_rank: int = 20,
    chunk_size: int | None = None,
) -> RankingMetrics:
    """CMC, mAP and mINP of a similarity matrix under one camera-filter rule.

    Runs on the device of ``similarity`` when it is a tensor (CPU for NumPy input), in
    chunks of queries so that memory stays bounded for any set size.

    A query's true matches are few (one per camera in single-shot SYSU-MM01, ten in RegDB),
    so by default nothing is sorted: the rank of a match is one plus the number of kept
    gallery entries ordered before it, counted with vectorised comparisons in
    O(G x matches) per query. When an identity has more than 40 gallery images each row is
    sorted instead (O(G log G)). Both give identical results.

    Args:
        similarity: ``Q x G`` similarities, larger = closer (e.g. cosine). Integer or
            half-precision input is promoted to float64, which keeps its order and ties.
        query_labels: ``Q`` integer identities.
        gallery_labels: ``G`` integer identities.
        query_cams: ``Q`` integer camera ids (as the data set numbers them).
        gallery_cams: ``G`` integer camera ids.
        rule: One of :data:`RULES`: ``"sysu"``, ``"regdb"`` or ``"llcm"``.
        max_rank: Longest CMC curve to report.
        chunk_size: Queries per chunk; by default about 0.5M similarities per chunk.

    Returns:
        The metrics; fractions, not percent.

    Raises:
        DclnetError: On a bad rule, inconsistent shapes, NaN similarities, or when no query
            has a true match in the gallery.
    """
    sim, q_lab, g_lab, q_cam, g_cam = _validated(
        similarity, query_labels, gallery_labels, query_cams, gallery_cams, rule, max_rank
    )
    num_query, num_gallery = sim.shape
    gallery = _Gallery.build(g_lab, g_cam)
    counting = gallery.id_cols.shape[1] <= _MAX_COUNTED_MATCHES
    if chunk_size is None:
        per_query = num_gallery * (1 if counting else 4)  # sorting needs more temporaries
        chunk_size = max(1, _CHUNK_ELEMENTS // per_query)
    elif chunk_size < 1:
        raise DclnetError(f"chunk_size must be >= 1, got {chunk_size}")
    num_points = min(max_rank, num_gallery)

    ap_sum = inp_sum = 0.0
    num_valid = 0
    hits = torch.zeros(num_points + 1, dtype=torch.float64, device=sim.device)
    for start in range(0, num_query, chunk_size):
        rows = slice(start, start + chunk_size)
        chunk = _count_chunk if counting else _sort_chunk
        ap, inp, hit_rank = chunk(sim[rows], q_lab[rows], q_cam[rows], gallery, rule)
        ap_sum += float(ap.sum())
        inp_sum += float(inp.sum())
        num_valid += len(hit_rank)
        # Ranks beyond the curve fall into the overflow bin num_points.
        hits += torch.bincount((hit_rank - 1).clamp_max(num_points), minlength=num_points + 1)
    if num_valid == 0:
        raise DclnetError(
            f"no query has a true match in the gallery under rule {rule!r} "
            f"({num_query} queries, {num_gallery} gallery images); "
            "check that query and gallery share identities"
        )
    cmc = (hits[:num_points].cumsum(0) / num_valid).cpu().numpy()
    return RankingMetrics(
        cmc=cmc,
        mAP=ap_sum / num_valid,
        mINP=inp_sum / num_valid,
        num_valid=num_valid,
        num_query=num_query,
    )


@dataclass(frozen=True)
class _Gallery:
    """Gallery labels and cameras plus an identity index.

    Attributes:
        labels: ``G`` identities.
        cams: ``G`` cameras.
        ids: ``G`` identity index into ``id_values``.
        id_values: ``n_id`` distinct identities, ascending.
        id_cols: ``n_id x P`` gallery columns of each identity, ascending, padded with ``G``
            (``P`` = most images of one identity).
    """

    labels: torch.Tensor
    cams: torch.Tensor
    ids: torch.Tensor
    id_values: torch.Tensor
    id_cols: torch.Tensor

    @staticmethod
    def build(labels: torch.Tensor, cams: torch.Tensor) -> _Gallery:
        id_values, ids, counts = torch.unique(labels, return_inverse=True, return_counts=True)
        num_gallery = len(labels)
        cols = torch.sort(ids, stable=True).indices  # G, grouped by identity, ascending
        slot = (
            torch.arange(num_gallery, device=labels.device) - (counts.cumsum(0) - counts)[ids[cols]]
        )
        id_cols = torch.full((len(id_values), int(counts.max())), num_gallery, device=labels.device)
        id_cols[ids[cols], slot] = cols
        return _Gallery(labels, cams, ids, id_values, id_cols)

    def columns_of(self, query_labels: torch.Tensor) -> torch.Tensor:
        """``Qc x P`` gallery columns sharing each query's identity, padded with ``G``."""
        where = torch.searchsorted(self.id_values, query_labels).clamp_max(len(self.id_values) - 1)
        present = self.id_values[where] == query_labels
        return torch.where(present[:, None], self.id_cols[where], len(self.labels))


def _count_chunk(
    sim: torch.Tensor, q_lab: torch.Tensor, q_cam: torch.Tensor, gallery: _Gallery, rule: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """AP, INP and CMC hit rank of the valid queries of a chunk, by counting (no sort)."""
    num_rows, num_gallery = sim.shape
    dist = -sim  # Qc x G; comparisons treat -0.0 and +0.0 as the tie they are
    cols = gallery.columns_of(q_lab)  # Qc x P
    safe_cols = cols.clamp_max(num_gallery - 1)
    is_match = cols < num_gallery
    removed = _removed(rule, q_lab, q_cam, gallery.labels, gallery.cams)  # Qc x G or None
    if removed is not None:
        is_match &= ~removed.gather(1, safe_cols)
        # NaN compares false with everything: removed entries are never counted.
        dist = dist.masked_fill(removed, float("nan"))

    # Rank of a match = 1 + entries closer than it + entries tied with it earlier in the
    # gallery. Ties (beyond the match itself) are rare, so the second term is computed only
    # when some exist. One slot at a time: 2-D comparisons are faster than one 3-D one.
    col = torch.arange(num_gallery, device=sim.device)
    match_dist = dist.gather(1, safe_cols)  # Qc x P
    ranks = []
    for slot in range(cols.shape[1]):  # P <= _MAX_COUNTED_MATCHES slots
        m = match_dist[:, slot, None]  # Qc x 1
        ahead = (dist < m).sum(1, dtype=torch.int32)  # Qc
        tied = dist == m  # Qc x G, the match itself included
        if bool((is_match[:, slot] & (tied.sum(1, dtype=torch.int32) > 1)).any()):
            ahead += (tied & (col < cols[:, slot, None])).sum(1, dtype=torch.int32)
        ranks.append(ahead + 1)
    rank = torch.stack(ranks, 1)  # Qc x P
    rank = torch.where(is_match, rank, num_gallery + 1)

    if rule == "regdb":
        return _summarise(rank, is_match, None)
    # De-duplicated rank: 1 + distinct identities with a kept entry before the first match.
    first = rank.argmin(1, keepdim=True)  # Qc x 1
    first_dist, first_col = match_dist.gather(1, first), cols.gather(1, first)  # Qc x 1
    ahead = (dist < first_dist) | ((dist == first_dist) & (col < first_col))  # Qc x G
    return _summarise(rank, is_match, _distinct_ids(ahead, gallery.ids))


def _sort_chunk(
    sim: torch.Tensor, q_lab: torch.Tensor, q_cam: torch.Tensor, gallery: _Gallery, rule: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """As :func:`_count_chunk`, by sorting each row (for identities with many images)."""
    num_gallery = sim.shape[1]
    # 0 - s rather than -s: no -0.0, so +0/-0 tie on every backend's sort.
    order = torch.sort(0.0 - sim, dim=1, stable=True).indices  # Qc x G
    match = gallery.labels[order] == q_lab[:, None]  # Qc x G, ranked order
    removed = _removed(rule, q_lab, q_cam, gallery.labels, gallery.cams)  # gallery order
    if removed is None:
        rank_of = torch.arange(1, num_gallery + 1, device=sim.device).expand_as(order)
        good = match
    else:
        kept = ~removed.gather(1, order)  # Qc x G, ranked order
        rank_of = kept.cumsum(1)  # rank among kept entries, valid where kept
        good = match & kept
    # Ranks of the matches, moved to the front of each row in ranked order.
    num_slots = max(1, int(good.sum(1).max()))
    front = torch.sort(good.to(torch.uint8), dim=1, descending=True, stable=True).indices
    front = front[:, :num_slots]  # Qc x M ranked positions of the matches
    is_match = good.gather(1, front)
    rank = torch.where(is_match, rank_of.gather(1, front), num_gallery + 1)

    if rule == "regdb":
        return _summarise(rank, is_match, None)
    first = front[:, 0]  # ranked position of the first match
    position = torch.arange(num_gallery, device=sim.device)
    first_ahead = kept & (position < first[:, None])  # Qc x G, ranked order
    return _summarise(rank, is_match, _distinct_ids(first_ahead, gallery.ids[order]))


def _distinct_ids(mask: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Per row, the number of distinct identities among the entries in ``mask``.

    Args:
        mask: ``Qc x G`` entries to count.
        ids: ``G`` (or ``Qc x G``) identity index of each entry.
    """
    num_ids = int(ids.max()) + 1
    seen = torch.zeros(len(mask), num_ids, device=mask.device)
    if ids.dim() == 1:
        seen.index_add_(1, ids, mask.to(seen.dtype))
    else:
        seen.scatter_add_(1, ids, mask.to(seen.dtype))
    return (seen > 0).sum(1)


def _summarise(
    rank: torch.Tensor, is_match: torch.Tensor, num_ahead: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """AP, INP and CMC hit rank of the rows with at least one match.

    Args:
        rank: ``Qc x M`` 1-based rank of each match among the kept entries; larger than the
            gallery where ``is_match`` is false.
        is_match: ``Qc x M`` which slots hold a true match.
        num_ahead: ``Qc`` distinct identities before the first match (de-duplicated CMC),
            or None for CMC on the plain list.
    """
    num_true = is_match.sum(1)  # Qc
    valid = num_true > 0
    rank, num_true = torch.sort(rank[valid], dim=1).values.double(), num_true[valid]
    found = torch.arange(1, rank.shape[1] + 1, device=rank.device)  # matches so far
    in_use = found <= num_true[:, None]  # Qc x M
    ap = torch.where(in_use, found / rank, 0.0).sum(1) / num_true
    inp = num_true / rank.gather(1, (num_true - 1)[:, None]).squeeze(1)
    hit_rank = rank[:, 0].long() if num_ahead is None else num_ahead[valid] + 1
    return ap, inp, hit_rank


def _removed(
    rule: str, q_lab: torch.Tensor, q_cam: torch.Tensor, g_lab: torch.Tensor, g_cam: torch.Tensor
) -> torch.Tensor | None:
    """``Qc x G`` gallery entries (gallery order) the rule removes; None = nothing."""
    if rule == "regdb":
        return None
    if rule == "llcm":
        return (g_lab[None, :] == q_lab[:, None]) & (g_cam[None, :] == q_cam[:, None])
    # The SYSU rule depends on cameras only: one row per distinct query camera, gathered.
    cams, row_of = torch.unique(q_cam, return_inverse=True)
    table = ((cams == 3)[:, None] & (g_cam == 2)[None, :]) | (
        (cams == 2)[:, None] & (g_cam == 3)[None, :]
    )
    return table[row_of]


def _validated(
    similarity: np.ndarray | torch.Tensor,
    query_labels: np.ndarray | torch.Tensor,
    gallery_labels: np.ndarray | torch.Tensor,
    query_cams: np.ndarray | torch.Tensor,
    gallery_cams: np.ndarray | torch.Tensor,
    rule: str,
    max_rank: int,
) -> tuple[torch.Tensor, ...]:
    """Inputs as tensors on the similarity's device, checked for rule, shape and dtype."""
    if rule not in RULES:
        raise DclnetError(f"unknown ranking rule {rule!r}; valid rules: {', '.join(RULES)}")
    if max_rank < 1:
        raise DclnetError(f"max_rank must be >= 1, got {max_rank}")
    sim = _tensor(similarity, "similarity")
    if sim.dim() != 2:
        raise DclnetError(f"similarity must be 2-D (queries x gallery), got {tuple(sim.shape)}")
    if sim.dtype not in (torch.float32, torch.float64):
        sim = sim.to(torch.float64)
    num_query, num_gallery = sim.shape
    if num_query == 0 or num_gallery == 0:
        raise DclnetError(f"similarity is empty ({num_query} x {num_gallery})")
    if bool(torch.isnan(sim).any()):
        raise DclnetError("similarity contains NaN values")
    vectors = []
    for name, value, size in (
        ("query_labels", query_labels, num_query),
        ("gallery_labels", gallery_labels, num_gallery),
        ("query_cams", query_cams, num_query),
        ("gallery_cams", gallery_cams, num_gallery),
    ):
        vector = _tensor(value, name)
        if tuple(vector.shape) != (size,):
            raise DclnetError(
                f"{name} has shape {tuple(vector.shape)}, expected ({size},) to match "
                f"the {num_query} x {num_gallery} similarity"
            )
        if vector.is_floating_point() or vector.is_complex():
            raise DclnetError(f"{name} must hold integers, got {vector.dtype}")
        vectors.append(vector.to(device=sim.device, dtype=torch.int64))
    return (sim, *vectors)


def _tensor(value: np.ndarray | torch.Tensor, name: str) -> torch.Tensor:
    """A tensor view of an array-like (NumPy arrays of any strides, lists, tensors)."""
    if isinstance(value, torch.Tensor):
        return value
    array = np.ascontiguousarray(np.asarray(value))
    if array.dtype.kind not in "biuf":
        raise DclnetError(f"{name} must be numeric, got dtype {array.dtype}")
    return torch.from_numpy(array)
