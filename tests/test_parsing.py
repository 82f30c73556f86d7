"""PAP pseudo-labels, PAP loss, predicted and stripe masks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dclnet.losses.parsing import (
    downsample_erased,
    pap_loss,
    parsing_labels,
    part_cams,
    predicted_masks,
    stripe_bounds,
    stripe_index,
    stripe_masks,
    stripe_partition,
)


@pytest.mark.parametrize("h", [1, 3, 4, 7, 9, 18, 20, 72])
def test_stripe_bounds_match_adaptive_pooling(h):
    x = torch.randn(1, 1, h, 2)
    pooled = F.adaptive_avg_pool2d(x, (6, 1)).flatten()
    ours = torch.stack([x[0, 0, s:e].mean() for s, e in stripe_bounds(h, 6)])
    torch.testing.assert_close(ours, pooled)


@pytest.mark.parametrize("h", [4, 7, 16, 18, 20, 72])
def test_stripe_partition_covers_rows_once_inside_adaptive_stripes(h):
    part = stripe_partition(h, 6)
    rows = [r for s, e in part for r in range(s, e)]
    assert rows == list(range(h))
    for (s, e), (bs, be) in zip(part, stripe_bounds(h, 6)):
        assert bs <= s and e <= be
    index = stripe_index(h, 6)
    for k, (s, e) in enumerate(part):
        assert (index[s:e] == k).all()
    if h % 6 == 0:
        assert part == stripe_bounds(h, 6)


def _hand_made(num_parts=3, h=6, w=4):
    """Channel 0 lights the left half, channel 1 the right half of every row."""
    x = torch.zeros(2, 2, h, w)
    x[:, 0, :, : w // 2] = 1.0
    x[:, 1, :, w // 2 :] = 1.0
    weight = torch.zeros(2, num_parts * 2)
    weight[0, 0::2] = 1.0  # class 0: every chunk reads channel 0 (left)
    weight[1, 1::2] = 1.0  # class 1: every chunk reads channel 1 (right)
    weight[0, 2:4] = torch.tensor([0.0, 1.0])  # ... except class 0's chunk 1 reads the right
    return x, weight


def test_parsing_labels_follow_class_and_stripe_chunk():
    x, weight = _hand_made()
    labels = parsing_labels(x, weight, torch.tensor([0, 1]), None, out_size=(12, 8), num_parts=3)
    assert labels.dtype == torch.int64 and labels.shape == (2, 12, 8)
    left = torch.zeros(4, 8, dtype=torch.int64)
    left[:, :4] = 1
    right = 1 - left
    # image 0 / class 0: stripes 0 and 2 on the left, stripe 1 (chunk 1 reads channel 1) right
    torch.testing.assert_close(labels[0, 0:4], left * 1)
    torch.testing.assert_close(labels[0, 4:8], right * 2)
    torch.testing.assert_close(labels[0, 8:12], left * 3)
    # image 1 / class 1: right half everywhere
    for k in range(3):
        torch.testing.assert_close(labels[1, 4 * k : 4 * k + 4], right * (k + 1))


def test_part_cams_min_max_per_stripe():
    x, weight = _hand_made()
    x[:, :, 2:4] *= 7.0  # scale of stripe 1 must not matter after normalisation
    cams = part_cams(x, weight, torch.tensor([0, 1]), num_parts=3)
    assert cams.shape == (2, 6, 4)
    assert cams.min() == 0.0 and cams.max() == 1.0
    torch.testing.assert_close(cams[0, 0], torch.tensor([1.0, 1.0, 0.0, 0.0]))
    torch.testing.assert_close(cams[0, 2], torch.tensor([0.0, 0.0, 1.0, 1.0]))


def test_constant_stripe_and_erased_pixels_are_background():
    x, weight = _hand_made()
    x[0, :, 0:2] = 0.5  # stripe 0 of image 0 constant
    erased = torch.zeros(2, 12, 8, dtype=torch.bool)
    erased[1, :, 7] = True
    erased[1, 0, :] = True
    labels = parsing_labels(x, weight, torch.tensor([0, 1]), erased, (12, 8), num_parts=3)
    assert (labels[0, 0:4] == 0).all()
    assert (labels[0, 4:8] > 0).any()
    assert (labels[1][erased[1]] == 0).all()
    assert (labels[1, 1:4, 4:7] == 1).all()


def test_parsing_labels_when_rows_do_not_divide():
    torch.manual_seed(0)
    x = torch.randn(3, 4, 4, 2)  # h = 4 < 6 parts: adaptive stripes overlap
    weight = torch.randn(5, 6 * 4)
    labels = parsing_labels(x, weight, torch.tensor([0, 3, 4]), None, (16, 8))
    expected_part = (stripe_index(16, 6) + 1).view(1, 16, 1).expand_as(labels)
    nonzero = labels > 0
    assert nonzero.any()
    assert (labels[nonzero] == expected_part[nonzero]).all()
    assert part_cams(x, weight, torch.tensor([0, 3, 4])).shape == (3, 4, 2)


def test_downsample_erased_majority_rule():
    erased = torch.zeros(1, 8, 8, dtype=torch.bool)
    erased[0, :4, :4] = True  # top-left cell fully erased
    erased[0, 4:6, 4:8] = True  # bottom-right cell exactly half erased: not erased
    erased[0, 0:3, 4:8] = True  # top-right cell 3/4 erased
    out = downsample_erased(erased, (2, 2))
    assert out.dtype == torch.bool
    assert out[0].tolist() == [[True, True], [False, False]]


def test_pap_loss_matches_hand_computation():
    torch.manual_seed(1)
    logits = torch.randn(2, 8, 3, 4, requires_grad=True)
    labels = torch.randint(0, 7, (2, 3, 4))
    labels[0, 0, 0], labels[1, 2, 3] = 0, 5
    loss = pap_loss(logits, labels, continuity_weight=0.5)
    flat = logits.permute(0, 2, 3, 1).reshape(-1, 8)
    lab = labels.flatten()
    fg_terms = [-torch.log_softmax(flat[i, :2], 0)[int(lab[i] > 0)] for i in range(len(lab))]
    part_terms = [
        -torch.log_softmax(flat[i, 2:], 0)[int(lab[i]) - 1] for i in range(len(lab)) if lab[i] > 0
    ]
    vert = (logits[:, :, 1:] - logits[:, :, :-1]).abs().mean()
    horiz = (logits[..., 1:] - logits[..., :-1]).abs().mean()
    expected = torch.stack(fg_terms).mean() + torch.stack(part_terms).mean() + 0.5 * (vert + horiz)
    torch.testing.assert_close(loss, expected)


def test_pap_loss_all_background_is_finite():
    logits = torch.randn(2, 8, 4, 3, requires_grad=True)
    loss = pap_loss(logits, torch.zeros(2, 4, 3, dtype=torch.int64))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    assert logits.grad[:, 2:].abs().sum() > 0  # only via the continuity term
    smooth = torch.zeros(1, 8, 4, 3)
    smooth[:, 0] = -5.0
    expected = F.cross_entropy(torch.tensor([[-5.0, 0.0]]), torch.tensor([0]))
    assert pap_loss(smooth, torch.zeros(1, 4, 3, dtype=torch.int64)).item() == pytest.approx(
        expected.item()
    )


def test_predicted_masks():
    logits = torch.zeros(1, 8, 1, 3)
    logits[0, 1, 0, 0] = 1.0  # fg, part 4
    logits[0, 2 + 3, 0, 0] = 2.0
    logits[0, 0, 0, 1] = 1.0  # bg although a part is confident
    logits[0, 2 + 5, 0, 1] = 9.0
    logits[0, 1, 0, 2] = 1.0  # fg, part 6, but erased
    logits[0, 2 + 5, 0, 2] = 1.0
    assert predicted_masks(logits).tolist() == [[[4, 0, 6]]]
    erased = torch.tensor([[[False, False, True]]])
    assert predicted_masks(logits, erased).tolist() == [[[4, 0, 0]]]


def test_stripe_masks():
    masks = stripe_masks(2, (12, 3))
    assert masks.shape == (2, 12, 3) and masks.dtype == torch.int64
    assert masks[1, :, 0].tolist() == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6]
    erased = torch.zeros(2, 12, 3, dtype=torch.bool)
    erased[0, 5, 1] = True
    masks = stripe_masks(2, (12, 3), erased=erased)
    assert masks[0, 5, 1] == 0 and masks[0, 5, 0] == 3 and masks[1, 5, 1] == 3
    odd = stripe_masks(1, (7, 1))
    assert odd[0, :, 0].tolist() == (stripe_index(7, 6) + 1).tolist()


@pytest.mark.parametrize("fold", [False, True])
def test_cam_chunks_are_the_weights_the_model_applies_to_each_stripe(fold):
    """CAM path vs the network: chunk k of a class row must score stripe k of the final map.

    With the part BNNeck folded in (``cam_weight(True)``), the part logit of class c is exactly
    ``sum_k <chunk_k, GeM(stripe k) - running_mean_k>``: the CAMs read the evidence the
    classifier uses. Without folding, chunk k is still applied to stripe k (before the BNNeck).
    """
    import warnings

    from dclnet.models.dclnet import DCLNet

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = DCLNet(5, arch="resnet18", pretrained=None, num_parts=3).eval()
    bn = net.part_bnneck
    with torch.no_grad():
        bn.running_mean.uniform_(0.0, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        net.part_classifier.weight.normal_()
    x = torch.rand(2, 512, 6, 3)  # final map
    stripes = net.stripe_pool(x)  # B x C x P
    feat = stripes.transpose(1, 2).flatten(1)  # the model's stripe-major layout
    logits = net.part_classifier(bn(feat))  # B x classes
    w = net.cam_weight(fold).view(5, 3, 512)  # classes x P x C
    if fold:
        centred = (stripes - bn.running_mean.view(3, 512).T).transpose(1, 2)  # B x P x C
        got = torch.einsum("npc,bpc->bn", w, centred)
        torch.testing.assert_close(got, logits, rtol=1e-4, atol=1e-3)
    else:
        scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).view(3, 512)
        expected = torch.einsum("npc,bpc->bn", w * scale, (stripes.transpose(1, 2)))
        offset = (w * scale * bn.running_mean.view(3, 512)).sum((1, 2))
        torch.testing.assert_close(expected - offset, logits, rtol=1e-4, atol=1e-3)
