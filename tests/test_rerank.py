"""k-reciprocal re-ranking against a plain per-image loop, plus behaviour on a toy case."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dclnet.errors import DclnetError
from dclnet.evaluation.metrics import evaluate_ranking
from dclnet.evaluation.rerank import _squared_euclidean, k_reciprocal_rerank


def _loop_rerank(distance: np.ndarray, num_query: int, k1: int, k2: int, lam: float):
    """The method written out per image with Python sets (the test oracle)."""
    num_all = len(distance)
    distance = distance / distance.max(axis=1, keepdims=True)
    ranked = np.argsort(distance, axis=1, kind="stable")

    def reciprocal(p: int, k: int) -> list[int]:
        return [c for c in ranked[p, : k + 1] if p in ranked[c, : k + 1]]

    weights = np.zeros((num_all, num_all))
    for p in range(num_all):
        base = reciprocal(p, k1)
        expanded = set(base)
        for c in base:
            candidate = reciprocal(c, int(round(k1 / 2)))
            if len(set(candidate) & set(base)) > 2 / 3 * len(candidate):
                expanded |= set(candidate)
        members = sorted(expanded)
        w = np.exp(-distance[p, members])
        weights[p, members] = w / w.sum()
    if k2 > 1:
        weights = np.stack([weights[ranked[p, :k2]].mean(0) for p in range(num_all)])
    out = np.zeros((num_query, num_all - num_query))
    for q in range(num_query):
        for g in range(num_all - num_query):
            a, b = weights[q], weights[num_query + g]
            jaccard = 1 - np.minimum(a, b).sum() / np.maximum(a, b).sum()
            out[q, g] = (1 - lam) * jaccard + lam * distance[q, num_query + g]
    return out


@pytest.mark.parametrize(
    ("num_query", "num_gallery", "k1", "k2", "lam"),
    [(15, 25, 6, 3, 0.3), (20, 40, 20, 6, 0.3), (10, 30, 5, 1, 0.0), (6, 9, 4, 2, 0.7)],
)
def test_matches_per_image_loop(num_query, num_gallery, k1, k2, lam):
    torch.manual_seed(num_query + k1)
    query, gallery = torch.randn(num_query, 8), torch.randn(num_gallery, 8)
    got = k_reciprocal_rerank(query, gallery, k1=k1, k2=k2, lambda_value=lam)
    # The oracle gets the same float32 distances, so neighbour orders cannot differ.
    distance = _squared_euclidean(torch.cat([query, gallery])).double().numpy()
    want = _loop_rerank(distance, num_query, k1, k2, lam)
    assert got.shape == (num_query, num_gallery) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=2e-6, rtol=0)


def test_lambda_one_is_the_row_normalised_original_distance():
    rng = np.random.default_rng(0)
    query, gallery = rng.standard_normal((7, 16)), rng.standard_normal((11, 16))
    everything = np.concatenate([query, gallery])
    squared = ((query[:, None, :] - everything[None, :, :]) ** 2).sum(-1)  # 7 x 18
    want = squared[:, 7:] / squared.max(axis=1, keepdims=True)
    got = k_reciprocal_rerank(query, gallery, k1=5, k2=3, lambda_value=1.0)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def _hard_negative_case():
    # Query 0 (identity 0) at the origin; its nearest gallery image (index 3, identity 1) sits
    # on the edge of a tight identity-1 group, so the query is not among that image's nearest
    # neighbours, while the identity-0 gallery images do count the query among theirs.
    query = np.array([[0.0, 0.0], [1.2, 0.1], [1.4, -0.1]], np.float32)
    gallery = np.array(
        [[-1.0, 0.2], [-1.0, -0.2], [-1.3, 0.0], [0.9, 0.0], [1.2, -0.1], [1.4, 0.1]], np.float32
    )
    return query, gallery, np.array([0, 1, 1]), np.array([0, 0, 0, 1, 1, 1])


def test_reranking_fixes_a_hard_negative():
    query, gallery, q_lab, g_lab = _hard_negative_case()

    def evaluate(distance):
        cams = np.ones(len(q_lab), int), np.full(len(g_lab), 2)
        return evaluate_ranking(-distance, q_lab, g_lab, *cams, rule="regdb")

    before = evaluate(((query[:, None] - gallery[None]) ** 2).sum(-1))
    # k2 = 1: with so few images, query expansion would pull in the hard negative itself.
    after = evaluate(k_reciprocal_rerank(query, gallery, k1=3, k2=1))
    assert before.rank(1) == pytest.approx(2 / 3)  # query 0 retrieves identity 1 first
    assert after.rank(1) == 1.0 and after.mAP > before.mAP


def test_deterministic_and_bounded():
    torch.manual_seed(3)
    query = torch.nn.functional.normalize(torch.randn(30, 32), dim=1)
    gallery = torch.nn.functional.normalize(torch.randn(50, 32), dim=1)
    first = k_reciprocal_rerank(query, gallery)
    second = k_reciprocal_rerank(query.numpy(), gallery.numpy())
    np.testing.assert_array_equal(first, second)
    assert first.shape == (30, 50)
    # Jaccard distance and the row-normalised distance both lie in [0, 1].
    assert first.min() >= 0 and first.max() <= 1 + 1e-6


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"gallery_features": np.zeros((4, 3))}, "differ in dimension: 2 vs 3"),
        ({"query_features": np.zeros(4)}, "query_features must be a non-empty 2-D"),
        ({"gallery_features": np.full((4, 2), np.nan)}, "gallery_features contains NaN"),
        ({"k1": 0}, "k1 and k2 must be >= 1"),
        ({"lambda_value": 1.5}, r"lambda_value must lie in \[0, 1\]"),
    ],
)
def test_errors(kwargs, message):
    args = {"query_features": np.eye(3, 2), "gallery_features": np.ones((4, 2))}
    args.update(kwargs)
    with pytest.raises(DclnetError, match=message):
        k_reciprocal_rerank(**args)
