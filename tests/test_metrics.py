"""Ranking metrics: hand-computed cases, the tie rule, errors, and the reference oracle."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dclnet.errors import DclnetError
from dclnet.evaluation import metrics
from dclnet.evaluation.metrics import RULES, RankingMetrics, evaluate_ranking
from dclnet.evaluation.reference import reference_evaluate_ranking

BOTH = (evaluate_ranking, reference_evaluate_ranking)


def _cams(n: int, cam: int) -> np.ndarray:
    return np.full(n, cam)


@pytest.mark.parametrize("evaluate", BOTH)
def test_regdb_hand_computed(evaluate):
    # Both queries rank the gallery in its own order: labels 1, 2, 1, 3.
    sim = np.array([[0.9, 0.8, 0.7, 0.6]] * 3)
    # q0 (label 1): matches at ranks 1, 3 -> AP = (1/1 + 2/3) / 2 = 5/6, INP = 2/3, hit @1.
    # q1 (label 3): match at rank 4     -> AP = 1/4, INP = 1/4, hit @4.
    # q2 (label 5): no match -> skipped.
    out = evaluate(sim, [1, 3, 5], [1, 2, 1, 3], _cams(3, 1), _cams(4, 2), rule="regdb")
    np.testing.assert_allclose(out.cmc, [0.5, 0.5, 0.5, 1.0])  # 4 points: gallery < 20
    assert out.mAP == pytest.approx((5 / 6 + 1 / 4) / 2)  # 13/24
    assert out.mINP == pytest.approx((2 / 3 + 1 / 4) / 2)  # 11/24
    assert (out.num_valid, out.num_query) == (2, 3)


@pytest.mark.parametrize("evaluate", BOTH)
def test_sysu_camera_filter_and_deduplication(evaluate):
    sim = np.array([[0.9, 0.8, 0.7, 0.6, 0.5]] * 2)
    labels, cams = [7, 7, 4, 9, 4], [2, 1, 1, 4, 5]
    # q0 (label 4, cam 3): the cam-2 entry goes; left 7, 4, 9, 4. De-duplicated 7, 4, 9:
    # hit @2. AP = (1/2 + 2/4) / 2 = 1/2, INP = 2/4.
    # q1 (label 7, cam 6): nothing removed; 7, 7, 4, 9, 4 -> hit @1, AP = 1, INP = 1.
    out = evaluate(sim, [4, 7], labels, [3, 6], cams, rule="sysu")
    np.testing.assert_allclose(out.cmc, [0.5, 1, 1, 1, 1])
    assert out.mAP == pytest.approx(0.75)
    assert out.mINP == pytest.approx(0.75)
    # RegDB rule on the same data: q0 sees 7, 7, 4, 9, 4 -> hit @3 (no de-duplication),
    # AP = (1/3 + 2/5) / 2 = 11/30, INP = 2/5.
    out = evaluate(sim, [4, 7], labels, [3, 6], cams, rule="regdb")
    np.testing.assert_allclose(out.cmc, [0.5, 0.5, 1, 1, 1])
    assert out.mAP == pytest.approx((11 / 30 + 1) / 2)
    assert out.mINP == pytest.approx((2 / 5 + 1) / 2)


@pytest.mark.parametrize("evaluate", BOTH)
def test_sysu_rule_is_symmetric_for_visible_queries(evaluate):
    # A camera-2 (visible) query loses the camera-3 gallery entries, and only those.
    sim = np.array([[0.9, 0.8, 0.7]])
    # Gallery 5 (cam 3), 6 (cam 6), 5 (cam 3): remaining 6 only -> no true match left.
    with pytest.raises(DclnetError, match="no query has a true match"):
        evaluate(sim, [5], [5, 6, 5], [2], [3, 6, 3], rule="sysu")
    # Gallery 6 (cam 3), 5 (cam 6): remaining 5 -> hit @1.
    out = evaluate(sim[:, :2], [5], [6, 5], [2], [3, 6], rule="sysu")
    assert out.rank(1) == 1.0 and out.mAP == 1.0
    # A camera-1 query keeps everything: 6 then 5 -> hit @2.
    out = evaluate(sim[:, :2], [5], [6, 5], [1], [3, 6], rule="sysu")
    assert out.rank(1) == 0.0 and out.mAP == 0.5


@pytest.mark.parametrize("evaluate", BOTH)
def test_llcm_removes_same_identity_and_camera(evaluate):
    sim = np.array([[0.9, 0.5, 0.8, 0.7]])
    labels, cams = [4, 4, 7, 4], [3, 1, 3, 3]
    # Ranked: 4 (cam 3), 7 (cam 3), 4 (cam 3), 4 (cam 1). The query is label 4, cam 3, so
    # both "4, cam 3" entries go: left 7, 4 -> hit @2, AP = 1/2, INP = 1/2.
    out = evaluate(sim, [4], labels, [3], cams, rule="llcm")
    np.testing.assert_allclose(out.cmc, [0, 1, 1, 1])
    assert out.mAP == pytest.approx(0.5) and out.mINP == pytest.approx(0.5)
    # The SYSU rule removes nothing here (no camera 2): matches at ranks 1, 3, 4,
    # AP = (1 + 2/3 + 3/4) / 3 = 29/36, INP = 3/4.
    out = evaluate(sim, [4], labels, [3], cams, rule="sysu")
    assert out.mAP == pytest.approx(29 / 36) and out.mINP == pytest.approx(0.75)


@pytest.mark.parametrize("evaluate", BOTH)
def test_short_deduplicated_list_extends_its_curve(evaluate):
    # Query label 3, cam 3; gallery cams 2, 2, 1, 1 with labels 1, 2, 1, 3: after the filter
    # the de-duplicated list is 1, 3 (length 2) while the curve has min(20, 4) = 4 points.
    sim = np.array([[0.9, 0.8, 0.7, 0.6]])
    out = evaluate(sim, [3], [1, 2, 1, 3], [3], [2, 2, 1, 1], rule="sysu")
    np.testing.assert_allclose(out.cmc, [0, 1, 1, 1])
    assert out.mAP == pytest.approx(0.5) and out.mINP == pytest.approx(0.5)


@pytest.mark.parametrize("evaluate", BOTH)
@pytest.mark.parametrize("rule", RULES)
def test_exact_ties_keep_gallery_order(evaluate, rule):
    # Equal similarity: the earlier gallery entry ranks first (stable sort), so the true
    # match decides rank-1 by its position only. +0.0 and -0.0 are a tie too.
    for sims in ([0.5, 0.5], [0.0, -0.0], [-0.0, 0.0]):
        sim = torch.tensor([sims], dtype=torch.float32)
        miss = evaluate(sim, [6], [5, 6], [1], [4, 5], rule=rule)
        hit = evaluate(sim, [6], [6, 5], [1], [5, 4], rule=rule)
        assert (miss.rank(1), miss.mAP) == (0.0, 0.5)
        assert (hit.rank(1), hit.mAP) == (1.0, 1.0)


def _random_case(rng: np.random.Generator, kind: str):
    num_query, num_gallery = int(rng.integers(1, 30)), int(rng.integers(1, 60))
    ids = np.array([3, 17, 100, -2, 5000, 7, 8])[: rng.integers(1, 8)]  # not contiguous
    labels = rng.choice(ids, num_query), rng.choice(ids, num_gallery)
    if rng.random() < 0.1:  # no identity in common: no valid query
        labels = (labels[0] + 1_000_000, labels[1])
    cams = rng.integers(1, 7, num_query), rng.integers(1, 7, num_gallery)  # hits 2 and 3
    shape = (num_query, num_gallery)
    if kind == "int":  # many exact ties
        sim = rng.integers(0, 4, shape)
    elif kind == "float32":
        sim = rng.standard_normal(shape).astype(np.float32)
    else:  # float64 with some ties
        sim = np.round(rng.standard_normal(shape), 1)
    return sim, labels[0], labels[1], cams[0], cams[1]


def _assert_same(got: RankingMetrics, want: RankingMetrics) -> None:
    assert got.cmc.shape == want.cmc.shape
    np.testing.assert_allclose(got.cmc, want.cmc, rtol=0, atol=1e-12)
    assert abs(got.mAP - want.mAP) <= 1e-12
    assert abs(got.mINP - want.mINP) <= 1e-12
    assert (got.num_valid, got.num_query) == (want.num_valid, want.num_query)


@pytest.mark.parametrize("max_counted", [0, 10**9], ids=["sorting", "counting"])
@pytest.mark.parametrize("kind", ["int", "float32", "float64"])
def test_matches_reference_on_random_cases(monkeypatch, max_counted, kind):
    monkeypatch.setattr(metrics, "_MAX_COUNTED_MATCHES", max_counted)
    rng = np.random.default_rng(["int", "float32", "float64"].index(kind))
    compared = skipped = 0
    for _ in range(60):
        case = _random_case(rng, kind)
        for rule in RULES:
            max_rank = int(rng.choice([1, 5, 20, 50]))
            chunk_size = int(rng.integers(1, 8))
            try:
                want = reference_evaluate_ranking(*case, rule=rule, max_rank=max_rank)
            except DclnetError:  # no valid query: the vectorised code must agree
                with pytest.raises(DclnetError, match="no query has a true match"):
                    evaluate_ranking(*case, rule=rule, max_rank=max_rank, chunk_size=chunk_size)
                skipped += 1
                continue
            got = evaluate_ranking(*case, rule=rule, max_rank=max_rank, chunk_size=chunk_size)
            _assert_same(got, want)
            compared += 1
    assert compared > 100 and skipped > 0  # the cases really cover both outcomes


def test_many_images_per_identity_sorts_and_agrees(monkeypatch):
    # More than 40 gallery images of one identity switches to the sorting path.
    calls = []
    sort_chunk = metrics._sort_chunk
    monkeypatch.setattr(metrics, "_sort_chunk", lambda *a: calls.append(1) or sort_chunk(*a))
    rng = np.random.default_rng(5)
    g_lab = np.repeat([1, 2], 45)
    q_lab = rng.choice([1, 2, 3], 25)
    sim = rng.integers(0, 6, (25, 90)).astype(np.float32)
    q_cam, g_cam = rng.choice([2, 3], 25), rng.integers(1, 7, 90)
    for rule in RULES:
        want = reference_evaluate_ranking(sim, q_lab, g_lab, q_cam, g_cam, rule=rule)
        _assert_same(evaluate_ranking(sim, q_lab, g_lab, q_cam, g_cam, rule=rule), want)
    assert calls


def test_tensor_and_array_inputs_agree():
    rng = np.random.default_rng(1)
    sim, q_lab, g_lab, q_cam, g_cam = _random_case(rng, "float32")
    while not np.isin(q_lab, g_lab).any():
        sim, q_lab, g_lab, q_cam, g_cam = _random_case(rng, "float32")
    arrays = evaluate_ranking(sim, q_lab, g_lab, q_cam, g_cam, rule="regdb")
    tensors = evaluate_ranking(
        *(torch.from_numpy(np.asarray(x)) for x in (sim, q_lab, g_lab, q_cam, g_cam)),
        rule="regdb",
    )
    _assert_same(tensors, arrays)
    # Python lists and non-contiguous views are accepted as well.
    listed = evaluate_ranking(sim.T.copy().T, list(q_lab), list(g_lab), q_cam, g_cam, rule="regdb")
    _assert_same(listed, arrays)


def test_curve_length_and_accessors():
    rng = np.random.default_rng(2)
    sim = rng.standard_normal((10, 30))
    labels = np.arange(30) % 5
    out = evaluate_ranking(sim, labels[:10], labels, _cams(10, 1), _cams(30, 2), rule="regdb")
    assert out.cmc.shape == (20,) and out.cmc.dtype == np.float64
    assert np.all(np.diff(out.cmc) >= 0) and out.cmc[-1] <= 1
    short = evaluate_ranking(
        sim, labels[:10], labels, _cams(10, 1), _cams(30, 2), rule="regdb", max_rank=3
    )
    assert short.cmc.shape == (3,)
    assert short.rank(10) == short.cmc[-1]  # k beyond the curve reads its last point
    percent = out.as_percent()
    assert set(percent) == {"rank1", "rank5", "rank10", "rank20", "mAP", "mINP"}
    assert percent["rank5"] == pytest.approx(100 * out.cmc[4])
    assert percent["mAP"] == pytest.approx(100 * out.mAP)
    with pytest.raises(DclnetError, match="k must be >= 1"):
        out.rank(0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rule": "market"}, "unknown ranking rule 'market'; valid rules: sysu, regdb, llcm"),
        ({"query_labels": np.zeros(3, int)}, r"query_labels has shape \(3,\), expected \(2,\)"),
        ({"gallery_cams": np.zeros((4, 1), int)}, "gallery_cams has shape"),
        ({"similarity": np.zeros(4)}, "similarity must be 2-D"),
        ({"similarity": np.zeros((2, 0))}, "similarity is empty"),
        ({"similarity": np.array([[0, np.nan, 0, 0]] * 2)}, "NaN"),
        ({"query_labels": np.array([1.0, 2.0])}, "query_labels must hold integers"),
        ({"gallery_labels": ["a", "b", "c", "d"]}, "gallery_labels must be numeric"),
        ({"max_rank": 0}, "max_rank must be >= 1"),
        ({"chunk_size": 0}, "chunk_size must be >= 1"),
        ({"query_labels": np.array([8, 9])}, "no query has a true match"),
    ],
)
def test_errors_are_one_line(kwargs, message):
    args = {
        "similarity": np.zeros((2, 4)),
        "query_labels": np.array([1, 2]),
        "gallery_labels": np.array([1, 2, 3, 4]),
        "query_cams": np.array([3, 3]),
        "gallery_cams": np.array([1, 1, 1, 1]),
        "rule": "sysu",
    }
    args.update(kwargs)
    with pytest.raises(DclnetError, match=message) as info:
        evaluate_ranking(**args)
    assert "\n" not in str(info.value)
