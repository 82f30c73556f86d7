"""DCLNet objective on hand-made network outputs."""

from __future__ import annotations

import pytest
import torch

import dclnet.losses.objective as objective
from dclnet.errors import ConfigError
from dclnet.losses.dense_contrastive import dense_contrastive_loss
from dclnet.losses.identity import identity_loss
from dclnet.losses.metric import center_cluster_loss, triplet_loss
from dclnet.losses.objective import ABLATIONS, LossWeights, dclnet_objective
from dclnet.losses.parsing import (
    downsample_erased,
    pap_loss,
    parsing_labels,
    predicted_masks,
    stripe_masks,
)
from dclnet.losses.rectify import rectify_masks
from dclnet.models.outputs import DCLNetOutput

N, CLASSES, C, C_LOW = 3, 5, 16, 8
GRID, FINAL, IMAGE = (12, 6), (6, 3), (48, 24)


def _outputs(seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    b = 2 * N

    def leaf(*shape):
        return torch.randn(*shape, generator=g).to(dtype).requires_grad_()

    out = DCLNetOutput(
        global_feat=leaf(b, C),
        bn_feat=leaf(b, C),
        logits=leaf(b, CLASSES),
        part_logits=leaf(b, CLASSES),
        final_map=leaf(b, C, *FINAL),
        low_map=leaf(b, C_LOW, *GRID),
        pixel_logits=leaf(b, 8, *GRID),
    )
    labels = torch.tensor([0, 2, 4]).repeat(2)
    erased = torch.zeros(b, *IMAGE, dtype=torch.bool)
    erased[0, 10:30, 4:20] = True
    erased[4, :, :12] = True
    part_weight = torch.randn(CLASSES, 6 * C, generator=g)
    return out, labels, erased, part_weight


def _expected_dcl(out, masks):
    z = out.low_map
    return dense_contrastive_loss(z[:N], z[N:], masks[:N], masks[N:])


def test_full_objective_terms_match_components():
    out, labels, erased, pw = _outputs()
    w = LossWeights(id=1.0, metric=0.5, part_id=2.0, pap=0.3, dcl=1.5)
    losses = dclnet_objective(out, labels, erased, part_weight=pw, weights=w)
    assert set(losses) == {"id", "metric", "part_id", "pap", "dcl", "total"}
    erased_z = downsample_erased(erased, GRID)
    assert erased_z[0].any() and erased_z[4].any()
    targets = parsing_labels(out.final_map, pw, labels, erased_z, GRID)
    masks = rectify_masks(out.low_map, predicted_masks(out.pixel_logits, erased_z))
    expected = {
        "id": identity_loss(out.logits, labels),
        "metric": 0.5 * center_cluster_loss(out.global_feat, labels),
        "part_id": 2.0 * identity_loss(out.part_logits, labels),
        "pap": 0.3 * pap_loss(out.pixel_logits, targets),
        "dcl": 1.5 * _expected_dcl(out, masks),
    }
    for name, value in expected.items():
        torch.testing.assert_close(losses[name], value, msg=name)
    torch.testing.assert_close(losses["total"], sum(expected.values()))


def test_gradients_reach_trained_outputs_but_not_final_map():
    out, labels, erased, pw = _outputs(1)
    pw.requires_grad_()
    dclnet_objective(out, labels, erased, part_weight=pw)["total"].backward()
    for name in ("global_feat", "logits", "part_logits", "low_map", "pixel_logits"):
        grad = getattr(out, name).grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name
    assert out.final_map.grad is None and pw.grad is None  # CAMs are pseudo-label sources
    assert out.bn_feat.grad is None


def test_srm_switch_and_stripe_masks():
    out, labels, erased, pw = _outputs(2)
    erased_z = downsample_erased(erased, GRID)
    raw = predicted_masks(out.pixel_logits, erased_z)
    no_srm = dclnet_objective(out, labels, erased, part_weight=pw, srm=False)
    torch.testing.assert_close(no_srm["dcl"], _expected_dcl(out, raw))
    assert not torch.equal(rectify_masks(out.low_map, raw), raw)  # SRM changes something
    stripes = dclnet_objective(out, labels, erased, part_weight=pw, dcl_masks="stripes")
    expected = _expected_dcl(out, stripe_masks(2 * N, GRID, erased=erased_z))
    torch.testing.assert_close(stripes["dcl"], expected)


def test_predicted_cam_class_and_triplet_and_smoothing():
    out, labels, erased, pw = _outputs(3)
    losses = dclnet_objective(
        out,
        labels,
        None,
        part_weight=pw,
        cam_class="predicted",
        metric="triplet",
        label_smoothing=0.1,
    )
    # the released code's rule: top-1 of the *global* identity classifier, not the part one
    global_top1, part_top1 = out.logits.argmax(1), out.part_logits.argmax(1)
    assert not torch.equal(global_top1, part_top1)
    targets = parsing_labels(out.final_map, pw, global_top1, None, GRID)
    assert not torch.equal(targets, parsing_labels(out.final_map, pw, part_top1, None, GRID))
    assert not torch.equal(targets, parsing_labels(out.final_map, pw, labels, None, GRID))
    torch.testing.assert_close(losses["pap"], pap_loss(out.pixel_logits, targets))
    torch.testing.assert_close(losses["metric"], triplet_loss(out.global_feat, labels))
    torch.testing.assert_close(losses["id"], identity_loss(out.logits, labels, 0.1))


def test_disabled_terms_are_not_computed(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("disabled term was computed")

    for name in ("dense_contrastive_loss", "parsing_labels", "pap_loss", "rectify_masks"):
        monkeypatch.setattr(objective, name, boom)
    out, labels, erased, _ = _outputs(4)
    losses = dclnet_objective(out, labels, erased, **ABLATIONS["baseline"])
    assert set(losses) == {"id", "metric", "total"}
    torch.testing.assert_close(losses["total"], losses["id"] + losses["metric"])


@pytest.mark.parametrize(
    ("preset", "keys", "srm", "masks"),
    [
        ("baseline", {"id", "metric"}, False, None),
        ("dcl_stripes", {"id", "metric", "dcl"}, False, "stripes"),
        ("dcl_pap", {"id", "metric", "part_id", "pap", "dcl"}, False, "pap"),
        ("full", {"id", "metric", "part_id", "pap", "dcl"}, True, "pap"),
    ],
)
def test_ablation_presets(preset, keys, srm, masks):
    kwargs = ABLATIONS[preset]
    assert kwargs["srm"] is srm
    if masks is not None:
        assert kwargs["dcl_masks"] == masks
    out, labels, erased, pw = _outputs(5)
    losses = dclnet_objective(out, labels, erased, part_weight=pw, **kwargs)
    assert set(losses) == keys | {"total"}
    assert torch.isfinite(losses["total"])


def test_all_terms_off_gives_zero_with_grad():
    out, labels, erased, _ = _outputs(6)
    off = LossWeights(id=0, metric=0, part_id=0, pap=0, dcl=0)
    losses = dclnet_objective(out, labels, erased, weights=off)
    assert set(losses) == {"total"} and losses["total"].item() == 0.0
    assert losses["total"].requires_grad


def test_bfloat16_autocast_outputs_are_finite():
    out, labels, erased, pw = _outputs(7, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = dclnet_objective(out, labels, erased, part_weight=pw)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    losses["total"].backward()
    assert torch.isfinite(out.low_map.grad).all()


def test_invalid_choices_and_batch():
    out, labels, erased, pw = _outputs()
    with pytest.raises(ConfigError, match="center_cluster, triplet"):
        dclnet_objective(out, labels, erased, part_weight=pw, metric="arcface")
    with pytest.raises(ConfigError, match="pap, stripes"):
        dclnet_objective(out, labels, erased, part_weight=pw, dcl_masks="grid")
    with pytest.raises(ConfigError, match="label, predicted"):
        dclnet_objective(out, labels, erased, part_weight=pw, cam_class="gt")
    with pytest.raises(ValueError, match="part_weight"):
        dclnet_objective(out, labels, erased)
    with pytest.raises(ValueError, match="even"):
        dclnet_objective(out, labels[:5], erased)
