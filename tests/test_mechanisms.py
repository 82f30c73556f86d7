"""Mechanism metrics of ``dclnet diagnose`` on hand-made maps with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dclnet.data.sources.synthetic import make_synthetic
from dclnet.data.sources.synthetic_render import body_bands
from dclnet.evaluation.mechanisms import (
    correspondence,
    foreground_iou,
    identity_by_column,
    majority_downsample,
    part_ious,
    part_miou,
)


def _t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.int64)


def test_majority_downsample_votes_per_cell_and_breaks_ties_low():
    labels = _t([[[1, 1, 2, 0], [1, 3, 2, 2], [0, 0, 4, 4], [0, 5, 4, 6]]])
    # 2 x 2 cells: {1,1,1,3} -> 1, {2,0,2,2} -> 2, {0,0,0,5} -> 0, {4,4,4,6} -> 4
    assert majority_downsample(labels, (2, 2), 7).tolist() == [[[1, 2], [0, 4]]]
    tie = _t([[[3, 3], [5, 5]]])
    assert majority_downsample(tie, (1, 1), 7).tolist() == [[[3]]]  # 2 votes each: lower wins


def test_foreground_iou_pools_over_images():
    pred = _t([[[1, 1, 0, 0]], [[0, 0, 0, 0]]])
    truth = _t([[[2, 0, 0, 0]], [[0, 0, 3, 3]]])
    # intersection 1 (image 0), union 2 (image 0) + 2 (image 1)
    assert foreground_iou(pred, truth) == pytest.approx(1 / 4)
    assert foreground_iou(truth, truth) == 1.0


def test_foreground_iou_all_background_is_agreement():
    empty = torch.zeros(3, 4, 2, dtype=torch.int64)
    assert foreground_iou(empty, empty) == 1.0
    assert foreground_iou(empty + 1, empty) == 0.0


def test_part_miou_known_values_and_empty_parts():
    pred = _t([[[1, 1, 2, 2, 0, 0]]])
    truth = _t([[[1, 2, 2, 2, 3, 0]]])
    # part 1: inter 1, union 2; part 2: inter 2, union 3; part 3: inter 0, union 1; 4-6 absent
    ious = part_ious(pred, truth, 6)
    assert ious[:3].tolist() == pytest.approx([0.5, 2 / 3, 0.0])
    assert all(math.isnan(v) for v in ious[3:].tolist())
    assert part_miou(pred, truth, 6) == pytest.approx((0.5 + 2 / 3 + 0.0) / 3)
    empty = torch.zeros(2, 3, 3, dtype=torch.int64)
    assert part_miou(empty, empty, 6) == 1.0  # nothing anywhere: agreement
    assert part_miou(empty + 4, empty, 6) == 0.0  # part 4 predicted, never true


def _one_hot_map(cells: torch.Tensor, channels: int = 8) -> torch.Tensor:
    """``N x h x w`` codes -> ``N x C x h x w`` features: the cell's code as a one-hot."""
    return F.one_hot(cells, channels).permute(0, 3, 1, 2).float()


def test_correspondence_exact_on_hand_made_maps():
    # one pair, 1 x 4 grid; features make visible cell p most similar to infrared cell code[p]
    truth_v = _t([[[1, 2, 3, 0]]])
    truth_i = _t([[[2, 1, 3, 3]]])
    z_v = _one_hot_map(_t([[[0, 1, 2, 3]]]))
    z_i = _one_hot_map(_t([[[1, 0, 5, 2]]]))
    # anchors: visible cells 0, 1, 2 (band 1, 2, 3). best infrared cell: p0 -> q1 (band 1, hit),
    # p1 -> q0 (band 2, hit), p2 -> q3 (band 3, hit)
    res = correspondence(z_v, z_i, truth_v, truth_i)
    assert res["accuracy"] == 1.0 and res["num_anchors"] == 3
    # chance: share of infrared cells with the anchor's band: 1/4, 1/4, 2/4
    assert res["chance"] == pytest.approx((0.25 + 0.25 + 0.5) / 3)
    wrong = correspondence(z_v, _one_hot_map(_t([[[3, 4, 5, 6]]])), truth_v, truth_i)
    # every anchor's features are orthogonal to all infrared cells: argmax -> cell 0 (band 2)
    assert wrong["accuracy"] == pytest.approx(1 / 3)


def test_correspondence_background_target_is_a_miss_and_no_anchor_is_zero():
    truth_v = _t([[[1, 0]]])
    truth_i = _t([[[0, 1]]])
    z_v = _one_hot_map(_t([[[0, 1]]]))
    z_i = _one_hot_map(_t([[[0, 1]]]))  # visible cell 0 matches infrared cell 0: background
    assert correspondence(z_v, z_i, truth_v, truth_i)["accuracy"] == 0.0
    none = correspondence(z_v, z_i, torch.zeros_like(truth_v), truth_i)
    assert none == {"accuracy": 0.0, "chance": 0.0, "num_anchors": 0}


def test_body_bands_follow_body_coordinate():
    labels = np.array([[[0, 3], [2, 2], [5, 0], [1, 1]]], dtype=np.uint8)  # 1 x 4 x 2
    v = np.array([[-0.05, 0.2, 0.55, 1.02]], dtype=np.float32)  # above head .. below soles
    bands = body_bands(labels, v, 6)
    assert bands.tolist() == [[[0, 1], [2, 2], [4, 0], [6, 6]]]


def test_synthetic_bands_cover_the_person_top_to_bottom():
    ds = make_synthetic(6, seed=2, height=96, width=48, images_per_camera=(1, 1))
    bands = ds.bands()
    assert bands.shape == ds.parts.shape
    np.testing.assert_array_equal(bands > 0, ds.parts > 0)
    # on an unoccluded image the person spans all six bands, in order from top to bottom
    full = [i for i in range(len(bands)) if set(np.unique(bands[i])) == set(range(7))]
    assert full
    first_row = [np.flatnonzero((bands[full[0]] == k).any(1)).min() for k in range(1, 7)]
    assert first_row == sorted(first_row)


def test_cam_person_correlation_per_image():
    from dclnet.evaluation.diagnose import _mean_correlation

    a = torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [0.0, 5.0, 0.0]])
    b = torch.tensor([[2.0, 4.0, 6.0], [3.0, 2.0, 1.0], [7.0, 7.0, 7.0], [0.1, 0.9, 0.1]])
    # +1, -1, 0 (a constant person share has no correlation), +1
    assert _mean_correlation(a, b) == pytest.approx((1 - 1 + 0 + 1) / 4)
    assert _mean_correlation(a[:1], a[:1] * 0) == 0.0


def test_identity_by_column_finds_the_one_column_that_knows_who():
    gen = torch.Generator().manual_seed(0)
    labels = torch.tensor([3, 3, 7, 7, 9, 9, 3, 7, 9, 9])  # 3 identities, not 0..K-1
    cells = torch.zeros(10, 4, 2, 3)
    cells[:, :, :, 0] = 1.0  # the same for everyone: no evidence at all
    ident = F.one_hot(torch.unique(labels, return_inverse=True)[1], 3).float()  # 10 x 3
    cells[:, :3, 0, 1] = ident + 0.1 * torch.randn(10, 3, generator=gen)  # identity, noisy
    cells[:, :, :, 2] = torch.randn(10, 4, 2, generator=gen)  # noise unrelated to identity
    fit = torch.tensor([True, False, True, False, True, False, False, True, True, False])
    out = identity_by_column(cells, labels, fit)
    assert out["chance"] == pytest.approx(1 / 3)
    assert out["accuracy"][1] == 1.0
    # no evidence: every score ties and argmax takes the first identity (3), right for the
    # 2 of the 5 scored images (labels 3, 7, 9, 3, 9) that show identity 3
    assert out["accuracy"][0] == pytest.approx(2 / 5)
    assert len(out["accuracy"]) == 3 and 0 <= out["accuracy"][2] <= 1
    with pytest.raises(ValueError, match="at least one fit image"):
        identity_by_column(cells, labels, labels == 3)


def test_every_other_image_of_each_identity_is_a_prototype():
    from dclnet.evaluation.diagnose import _every_other

    labels = np.array([5, 2, 5, 5, 2, 9])
    assert _every_other(labels).tolist() == [True, True, False, True, False, True]


def test_backbone_locality_reads_one_column_per_final_map_column(tmp_path):
    from dclnet.engine.synthetic_pretrain import synthetic_backbone
    from dclnet.evaluation.locality import backbone_locality, format_locality

    weights = synthetic_backbone("resnet18", (32, 16), tmp_path, ids=6, steps=1, progress=False)
    rows = backbone_locality(
        str(weights), "resnet18", [(32, 16), (64, 32)], synthetic_ids=12, stripes=2
    )
    assert [r["grid"] for r in rows] == [[2, 1], [4, 2]]
    assert [len(r["accuracy"]) for r in rows] == [1, 2]  # one share per final-map column
    for r in rows:
        assert all(0.0 <= a <= 1.0 for a in r["accuracy"]) and r["chance"] == 1 / r["identities"]
    assert format_locality(rows).splitlines()[1].startswith("64 x 32 (final map 4 x 2): ")
