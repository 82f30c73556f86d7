"""DCLNet objective on hand-made network outputs."""

from __future__ import annotations

import math

import pytest
import torch

import dclnet.losses.objective as objective
from dclnet.errors import ConfigError
from dclnet.losses.objective import ABLATIONS, LossWeights, dclnet_objective
from dclnet.losses.parsing import downsample_erased, predicted_masks
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


# -- a hand-made case, checked against written-out formulas (docs/method.md §4, §6, §7) ----------
#
# Two identities A (label 0) and B (label 1); rows 0, 1 visible and rows 2, 3 infrared, so the
# dense-loss pairs are (0, 2) and (1, 3). Every map is 2 x 2 (cells in row-major order), two
# body parts (num_parts=2), and the infrared image of A has its top-right quarter erased.

HAND_LABELS = (0, 1, 0, 1)
HAND_LOGITS = [[2, 0], [0, 1], [0, 1], [1, 3]]
HAND_PART_LOGITS = [[0, 1], [1, 1], [3, 0], [0, 0]]
# f: A's centre is (0, 1), at distance 1 from both of A's features; B's centre is (0.3, 1), at
# distance 0. The centres are 0.3 apart: push [0.7 - 0.3]+ = 0.4 for each identity.
HAND_FEATS = [[0, 0], [0.3, 1], [0, 2], [0.3, 1]]
HAND_CENTER_CLUSTER = 0.5 + 0.4
# PAP logits [bg, fg, part 1, part 2] of each cell; predicted masks m = fg * (part + 1).
HAND_PIXELS = [
    [[0, 2, 1, 0], [0, 1, 2, 0], [2, 0, 0, 1], [0, 1, 0, 3]],  # m = 1 1 / 0 2
    [[1, 0, 0, 0], [0, 2, 0, 1], [0, 1, 2, 0], [0, 3, 1, 2]],  # m = 0 2 / 1 2
    [[0, 1, 2, 1], [0, 2, 0, 1], [0, 1, 0, 2], [3, 0, 1, 0]],  # m = 1 (2, erased) / 2 0
    [[0, 1, 3, 0], [0, 2, 1, 0], [0, 1, 0, 2], [0, 2, 2, 3]],  # m = 1 1 / 2 2
]
HAND_PAP_MASKS = [[1, 1, 0, 2], [0, 2, 1, 2], [1, 0, 2, 0], [1, 1, 2, 2]]
# SRM moves two cells: image 0's top right (1, 1)/sqrt(2) is closer to part 2's prototype
# (2, 1)/sqrt(5) (cos 0.95) than to part 1's (cos 0.92); image 1's bottom right (1, -1) is
# closer to part 1's (1, 0) (cos 0.71) than to part 2's mean of (1, 2) and (1, -1) (0.59).
HAND_SRM_MASKS = [[1, 2, 0, 2], [0, 2, 1, 1], [1, 0, 2, 0], [1, 1, 2, 2]]
HAND_STRIPE_MASKS = [[1, 1, 2, 2], [1, 1, 2, 2], [1, 0, 2, 2], [1, 1, 2, 2]]
HAND_Z = [
    [[1, 0], [1, 1], [0, 1], [2, 1]],
    [[0, 1], [1, 2], [1, 0], [1, -1]],
    [[1, 0.5], [0, 1], [1, 1], [-1, 0]],
    [[2, 0], [1, 1], [0, 1], [1, 2]],
]
# Final map X = [[1, 2], [3, 5]] for every image; part-classifier rows: A (1, 1), B (-1, 1).
# Stripe k's CAM is weight_k * X(row k); the larger end of each min-max normalised row is
# above the mean, so A's parsing labels are 0 1 / 0 2 and B's (top row negated) 1 0 / 0 2.
HAND_PART_WEIGHT = [[1.0, 1.0], [-1.0, 1.0]]
HAND_TARGETS = [[0, 1, 0, 2], [1, 0, 0, 2], [0, 0, 0, 2], [1, 0, 0, 2]]  # image 2: erased


def _hand_grid(cells) -> torch.Tensor:
    """``B x 4 x C`` row-major cells -> ``B x C x 2 x 2``."""
    t = torch.tensor(cells, dtype=torch.float32)
    return t.view(len(cells), 2, 2, -1).permute(0, 3, 1, 2).contiguous()


def _hand_case():
    out = DCLNetOutput(
        global_feat=torch.tensor(HAND_FEATS),
        bn_feat=torch.zeros(4, 2),
        logits=torch.tensor(HAND_LOGITS, dtype=torch.float32),
        part_logits=torch.tensor(HAND_PART_LOGITS, dtype=torch.float32),
        final_map=torch.tensor([[1.0, 2.0], [3.0, 5.0]]).expand(4, 1, 2, 2).clone(),
        low_map=_hand_grid(HAND_Z),
        pixel_logits=_hand_grid(HAND_PIXELS),
    )
    erased = torch.zeros(4, 4, 4, dtype=torch.bool)  # 4 x 4 images: a Z cell is 2 x 2 pixels
    erased[2, 0:2, 2:4] = True
    return out, torch.tensor(HAND_LABELS), erased, torch.tensor(HAND_PART_WEIGHT)


def _ce(row, target: int, smoothing: float = 0.0) -> float:
    """Cross-entropy of one row of logits, written out (smoothing spread uniformly)."""
    log_z = math.log(sum(math.exp(v) for v in row))
    uniform = sum(log_z - v for v in row) / len(row)
    return (1 - smoothing) * (log_z - row[target]) + smoothing * uniform


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def _pap_reference(pixels, targets, continuity_weight: float = 0.5) -> float:
    cells = [(cell, t) for img, ts in zip(pixels, targets) for cell, t in zip(img, ts)]
    fg = _mean(_ce(cell[:2], int(t > 0)) for cell, t in cells)
    part = _mean(_ce(cell[2:], t - 1) for cell, t in cells if t > 0)
    # mean |difference| of the logit maps between vertical, then horizontal neighbours
    down = _mean(abs(img[c + 2][k] - img[c][k]) for img in pixels for c in (0, 1) for k in range(4))
    right = _mean(
        abs(img[r + 1][k] - img[r][k]) for img in pixels for r in (0, 2) for k in range(4)
    )
    return fg + part + continuity_weight * (down + right)


def _dense_reference(z, masks, tau: float = 0.05) -> float:
    """§6 for the pairs (0, 2) and (1, 3), both directions, anchor by anchor."""

    def unit(v):
        return [x / math.hypot(*v) for x in v]

    losses = []
    for n in (0, 1):
        for a, b in ((n, n + 2), (n + 2, n)):  # visible anchors, then infrared anchors
            for p in range(4):
                s = [
                    sum(x * y for x, y in zip(unit(z[a][p]), unit(z[b][q]))) / tau for q in range(4)
                ]
                pos = [s[q] for q in range(4) if masks[b][q] == masks[a][p]]
                if masks[a][p] > 0 and pos:
                    lse_all = math.log(sum(math.exp(v) for v in s))
                    losses.append(lse_all - math.log(sum(math.exp(v) for v in pos)))
    return _mean(losses)


def test_hand_made_case_against_written_out_formulas():
    out, labels, erased, pw = _hand_case()
    w = LossWeights(id=1.0, metric=0.5, part_id=2.0, pap=0.3, dcl=1.5)
    losses = dclnet_objective(out, labels, erased, part_weight=pw, weights=w, num_parts=2)
    expected = {
        "id": _mean(_ce(row, t) for row, t in zip(HAND_LOGITS, HAND_LABELS)),
        "metric": 0.5 * HAND_CENTER_CLUSTER,
        "part_id": 2.0 * _mean(_ce(row, t) for row, t in zip(HAND_PART_LOGITS, HAND_LABELS)),
        "pap": 0.3 * _pap_reference(HAND_PIXELS, HAND_TARGETS),
        "dcl": 1.5 * _dense_reference(HAND_Z, HAND_SRM_MASKS),
    }
    assert set(losses) == {*expected, "total"}
    for name, value in expected.items():
        assert losses[name].item() == pytest.approx(value, rel=1e-5), name
    assert losses["total"].item() == pytest.approx(sum(expected.values()), rel=1e-5)


def test_hand_options_against_written_out_formulas():
    out, labels, erased, pw = _hand_case()
    losses = dclnet_objective(
        out,
        labels,
        erased,
        part_weight=pw,
        num_parts=2,
        cam_class="predicted",
        metric="triplet",
        label_smoothing=0.1,
    )
    smoothed = _mean(_ce(row, t, 0.1) for row, t in zip(HAND_LOGITS, HAND_LABELS))
    assert losses["id"].item() == pytest.approx(smoothed, rel=1e-5)
    # Batch-hard triplet on f (margin 0.3): farthest positive, closest negative, per anchor.
    dist = [[math.dist(f, g) for g in HAND_FEATS] for f in HAND_FEATS]
    hinges = []
    for i, yi in enumerate(HAND_LABELS):
        pos = max(d for d, y in zip(dist[i], HAND_LABELS) if y == yi)
        neg = min(d for d, y in zip(dist[i], HAND_LABELS) if y != yi)
        hinges.append(max(0.0, pos - neg + 0.3))
    assert losses["metric"].item() == pytest.approx(_mean(hinges), rel=1e-5)
    # CAM class = top-1 of the *global* logits: 0 1 1 1, so the infrared image of A is parsed
    # with B's weight row (the part logits' top-1, 1 0 0 0, would give different labels).
    targets = [HAND_TARGETS[0], HAND_TARGETS[1], [1, 0, 0, 2], HAND_TARGETS[3]]
    assert losses["pap"].item() == pytest.approx(_pap_reference(HAND_PIXELS, targets), rel=1e-5)


def test_hand_masks_are_what_the_comments_say():
    # the literals above, derived by hand, against the library's mask functions
    out, _, erased, _ = _hand_case()
    masks = predicted_masks(out.pixel_logits, downsample_erased(erased, (2, 2)))
    assert masks.flatten(1).tolist() == HAND_PAP_MASKS
    assert rectify_masks(out.low_map, masks, 2).flatten(1).tolist() == HAND_SRM_MASKS


def test_gradients_reach_trained_outputs_but_not_final_map():
    out, labels, erased, pw = _outputs(1)
    pw.requires_grad_()
    dclnet_objective(out, labels, erased, part_weight=pw)["total"].backward()
    for name in ("global_feat", "logits", "part_logits", "low_map", "pixel_logits"):
        grad = getattr(out, name).grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name
    assert out.final_map.grad is None and pw.grad is None  # CAMs are pseudo-label sources
    assert out.bn_feat.grad is None


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
    ("preset", "nonzero", "dcl_masks"),
    [
        ("baseline", {"id", "metric"}, None),
        ("dcl_stripes", {"id", "metric", "dcl"}, HAND_STRIPE_MASKS),
        ("dcl_pap", {"id", "metric", "part_id", "pap", "dcl"}, HAND_PAP_MASKS),
        ("full", {"id", "metric", "part_id", "pap", "dcl"}, HAND_SRM_MASKS),
    ],
)
def test_presets_train_the_ablation_terms(preset, nonzero, dcl_masks):
    """docs/method.md §7's table: which terms each preset trains, and on which masks."""
    out, labels, erased, pw = _hand_case()
    kwargs = ABLATIONS[preset]
    losses = dclnet_objective(out, labels, erased, part_weight=pw, num_parts=2, **kwargs)
    assert {k for k, v in losses.items() if k != "total" and v.item() != 0} == nonzero
    assert set(losses) == nonzero | {"total"}  # a term that is off is not computed at all
    if dcl_masks is not None:
        dcl = _dense_reference(HAND_Z, dcl_masks)
        assert losses["dcl"].item() == pytest.approx(dcl, rel=1e-5)
    total = sum(losses[k].item() for k in nonzero)
    assert losses["total"].item() == pytest.approx(total, rel=1e-6)


def test_no_preset_is_the_full_model():
    out, labels, erased, pw = _hand_case()
    default = dclnet_objective(out, labels, erased, part_weight=pw, num_parts=2)
    full = dclnet_objective(out, labels, erased, part_weight=pw, num_parts=2, **ABLATIONS["full"])
    assert {k: v.item() for k, v in default.items()} == {k: v.item() for k, v in full.items()}


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


def _hand_erase_mask() -> torch.Tensor:
    """8 x 8 pixels over a 2 x 2 grid of 4 x 4 cells, each cell a case of its own."""
    erased = torch.zeros(1, 8, 8, dtype=torch.bool)
    erased[0, 0, 0] = True  # cell (0, 0): only its top-left pixel (1 of 16)
    erased[0, 1:4, 4:8] = True  # cell (0, 1): 12 of 16, its top-left row spared
    erased[0, 4:8, 4:8] = True  # cell (1, 1): all 16; cell (1, 0): none
    return erased


def test_erase_rules_on_a_hand_made_mask():
    erased = _hand_erase_mask()
    majority = downsample_erased(erased, (2, 2), "majority")
    top_left = downsample_erased(erased, (2, 2), "top_left")
    assert majority.tolist() == [[[False, True], [False, True]]]
    assert top_left.tolist() == [[[True, False], [False, True]]]
    assert torch.equal(downsample_erased(erased, (2, 2)), majority)  # the default
    with pytest.raises(ValueError, match="majority, top_left"):
        downsample_erased(erased, (2, 2), "any")


def test_erase_rule_reaches_the_objective(monkeypatch):
    seen = []
    real = objective.downsample_erased

    def spy(erased, size, rule="majority"):
        seen.append(rule)
        return real(erased, size, rule)

    monkeypatch.setattr(objective, "downsample_erased", spy)
    out, labels, erased, pw = _outputs(2)
    dclnet_objective(out, labels, erased, part_weight=pw, erase_rule="top_left")
    dclnet_objective(out, labels, erased, part_weight=pw)
    assert seen == ["top_left", "majority"]
    with pytest.raises(ConfigError, match="erase_rule"):
        dclnet_objective(out, labels, erased, part_weight=pw, erase_rule="nearest")


def test_erase_rule_and_num_parts_reach_the_training_objective():
    from dclnet.config import load_config
    from dclnet.engine.build import loss_kwargs

    kwargs = loss_kwargs(load_config(None, ["loss.erase_rule=top_left", "model.num_parts=4"]))
    assert kwargs["erase_rule"] == "top_left" and kwargs["num_parts"] == 4
    kwargs = loss_kwargs(load_config(None, ["loss.preset=dcl_stripes", "model.num_parts=8"]))
    assert kwargs["num_parts"] == 8 and kwargs["dcl_masks"] == "stripes"
    with pytest.raises(ConfigError, match="loss.erase_rule"):
        load_config(None, ["loss.erase_rule=nearest"])
