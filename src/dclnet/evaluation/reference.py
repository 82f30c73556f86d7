"""Plain per-query reference for :func:`dclnet.evaluation.metrics.evaluate_ranking`.

One loop over the queries that follows the protocol text of ``docs/protocols.md`` §7-8 step by step,
with an explicit list de-duplication. It makes no attempt at speed: it is the test oracle and
the benchmark baseline; use
:func:`~dclnet.evaluation.metrics.evaluate_ranking` for real work.
"""

from __future__ import annotations

import numpy as np
import torch

from dclnet.errors import DclnetError
from dclnet.evaluation.metrics import RULES, RankingMetrics


def reference_evaluate_ranking(
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
    """Same contract as ``evaluate_ranking``; ``chunk_size`` is accepted and ignored."""
    if rule not in RULES:
        raise DclnetError(f"unknown ranking rule {rule!r}; valid rules: {', '.join(RULES)}")
    # float64 holds float32, float16 and integer similarities exactly: same order, same ties.
    sim = _numpy(similarity).astype(np.float64)
    q_labels, g_labels = _numpy(query_labels), _numpy(gallery_labels)
    q_cams, g_cams = _numpy(query_cams), _numpy(gallery_cams)
    num_query, num_gallery = sim.shape
    num_points = min(max_rank, num_gallery)

    curves, aps, inps = [], [], []
    for i in range(num_query):
        # Rank the gallery by ascending distance, ties in gallery order (stable sort).
        distance = 0.0 - sim[i]
        order = np.argsort(distance, kind="stable")
        ranked_labels = g_labels[order]
        ranked_cams = g_cams[order]

        # Remove the gallery entries the rule excludes for this query.
        if rule == "sysu":
            removed = ((q_cams[i] == 3) & (ranked_cams == 2)) | (
                (q_cams[i] == 2) & (ranked_cams == 3)
            )
        elif rule == "llcm":
            removed = (ranked_labels == q_labels[i]) & (ranked_cams == q_cams[i])
        else:
            removed = np.zeros(num_gallery, dtype=bool)
        remaining = ranked_labels[~removed]

        # Queries without any true match are skipped.
        matches = remaining == q_labels[i]
        if not matches.any():
            continue

        # CMC: SYSU and LLCM de-duplicate identities, keeping the first occurrence.
        if rule == "regdb":
            cmc_list = list(remaining)
        else:
            cmc_list, seen = [], set()
            for label in remaining.tolist():
                if label not in seen:
                    seen.add(label)
                    cmc_list.append(label)
        hit = np.cumsum(np.asarray(cmc_list) == q_labels[i]) > 0
        curve = np.full(num_points, hit[-1], dtype=np.float64)  # extended with last value
        length = min(num_points, len(hit))
        curve[:length] = hit[:length]
        curves.append(curve)

        # AP and INP on the remaining list without de-duplication.
        ranks = np.flatnonzero(matches) + 1.0
        matches_so_far = np.arange(1, len(ranks) + 1)
        aps.append(np.mean(matches_so_far / ranks))
        inps.append(len(ranks) / ranks[-1])

    if not curves:
        raise DclnetError(f"no query has a true match in the gallery under rule {rule!r}")
    return RankingMetrics(
        cmc=np.mean(curves, axis=0),
        mAP=float(np.mean(aps)),
        mINP=float(np.mean(inps)),
        num_valid=len(curves),
        num_query=num_query,
    )


def _numpy(value: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)
