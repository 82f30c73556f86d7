"""Top-k by dot product over a gallery read in chunks: exact, stable, and NaN-safe.

Pure tensor maths for :mod:`dclnet.inference.index`: :func:`topk_search` never builds the
``Q x G`` similarity matrix, keeps equal scores in gallery order, and refuses NaN or infinite
inputs (or similarities that overflow) with :class:`NonFiniteError` instead of ranking them.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import Tensor

from dclnet.errors import DataError, DclnetError


class NonFiniteError(DataError):
    """A NaN or infinite query, gallery vector or similarity.

    Attributes:
        what: What is wrong (``"is NaN or infinite"``).
        gallery_row: The gallery row at fault, or ``None`` when a query is.
    """

    def __init__(self, what: str, gallery_row: int | None = None) -> None:
        where = "a query embedding" if gallery_row is None else f"gallery row {gallery_row}"
        super().__init__(f"{where} {what}")
        self.what = what
        self.gallery_row = gallery_row


def check_finite_queries(queries: Tensor) -> None:
    """Raise :class:`NonFiniteError` when a query embedding holds NaN or inf."""
    if not torch.isfinite(queries).all():
        raise NonFiniteError("is NaN or infinite")


def _chunk_topk(sim: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Best ``k`` columns per row of ``sim`` (``q x c``), ties in column order.

    As ``sim.sort(descending=True, stable=True)[:, :k]``, but a full sort only for the rare
    rows where a value tied with the k-th best was left out by ``topk``.
    """
    k = min(k, sim.shape[1])
    vals, idx = sim.topk(k, dim=1)  # q x k
    order = idx.argsort(dim=1)  # equal values in column order, then a stable sort by value
    vals, idx = vals.gather(1, order), idx.gather(1, order)
    order = vals.argsort(dim=1, descending=True, stable=True)
    vals, idx = vals.gather(1, order), idx.gather(1, order)
    crowded = ((sim >= vals[:, -1:]).sum(dim=1) > k).nonzero().squeeze(1)
    if len(crowded):
        s, i = sim[crowded].sort(dim=1, descending=True, stable=True)
        vals[crowded], idx[crowded] = s[:, :k], i[:, :k]
    return vals, idx


def topk_search(
    queries: Tensor,
    gallery: np.ndarray | Tensor,
    k: int,
    *,
    chunk_size: int = 8192,
    query_chunk: int = 1024,
) -> tuple[Tensor, Tensor]:
    """The ``k`` most similar gallery rows per query, by dot product, best first.

    Equal scores keep gallery order (the lower index first), exactly as a stable sort of the
    full ``Q x G`` matrix would, but only ``query_chunk x chunk_size`` scores exist at once.

    Args:
        queries: ``Q x D`` embeddings (their device is used).
        gallery: ``G x D`` embeddings, a (memory-mapped) array or tensor, read chunk by chunk.
        k: Results per query (capped at ``G``).
        chunk_size: Gallery rows scored at once.
        query_chunk: Queries scored at once.

    Returns:
        ``Q x k`` float32 scores and ``Q x k`` int64 gallery indices.

    Raises:
        NonFiniteError: A query or gallery row holds NaN/inf, or a similarity overflows.
    """
    num_gallery = gallery.shape[0]
    if k < 1 or chunk_size < 1 or query_chunk < 1:
        raise DclnetError(f"top-k and chunk sizes must be >= 1 (got k={k}, chunk={chunk_size})")
    k = min(k, num_gallery)
    device = queries.device
    queries = queries.float()
    check_finite_queries(queries)
    best_s = torch.empty(queries.shape[0], 0, device=device)
    best_i = torch.empty(queries.shape[0], 0, dtype=torch.int64, device=device)
    for g0 in range(0, num_gallery, chunk_size):
        g = _as_tensor(gallery[g0 : g0 + chunk_size]).to(device, torch.float32)  # c x D
        parts_s, parts_i = [], []
        for q0 in range(0, queries.shape[0], query_chunk):
            sim = queries[q0 : q0 + query_chunk] @ g.T  # q x c
            _check_finite_scores(sim, g, g0)
            s, i = _chunk_topk(sim, k)
            parts_s.append(s)
            parts_i.append(i + g0)
        cand_s = torch.cat([best_s, torch.cat(parts_s)], dim=1)  # Q x (k' + k)
        cand_i = torch.cat([best_i, torch.cat(parts_i)], dim=1)
        # Earlier chunks come first, so a stable sort keeps ties in gallery order.
        order = cand_s.sort(dim=1, descending=True, stable=True).indices[:, :k]
        best_s, best_i = cand_s.gather(1, order), cand_i.gather(1, order)
    return best_s, best_i


def _as_tensor(rows: np.ndarray | Tensor) -> Tensor:
    """Rows as a tensor, without a copy for float32 arrays (memory-mapped ones included).

    Copying every chunk of a memory-mapped gallery costed more than scoring it (fresh pages
    for each copy); the view is only read, so torch's warning about read-only arrays is moot.
    """
    if isinstance(rows, Tensor):
        return rows
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(rows)


def _check_finite_scores(sim: Tensor, g: Tensor, g0: int) -> None:
    """A NaN/inf gallery row makes its whole column non-finite (inf * 0 is NaN too)."""
    if torch.isfinite(sim).all():
        return
    column = int((~torch.isfinite(sim)).any(dim=0).nonzero()[0])
    if not torch.isfinite(g[column]).all():
        raise NonFiniteError("is NaN or infinite", g0 + column)
    raise NonFiniteError("gives a similarity that overflows float32", g0 + column)
