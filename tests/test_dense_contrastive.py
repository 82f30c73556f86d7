"""Dense contrastive loss: efficient form vs naive reference vs a plain-loop definition."""

from __future__ import annotations

import math

import pytest
import torch

from dclnet.losses.dense_contrastive import (
    dense_contrastive_loss,
    dense_contrastive_loss_naive,
)


def _inputs(n, c, h, w, labels, seed=0, dtype=torch.float32, hw_i=None):
    g = torch.Generator().manual_seed(seed)
    hi, wi = hw_i or (h, w)
    z_v = torch.randn(n, c, h, w, generator=g, dtype=dtype).requires_grad_()
    z_i = torch.randn(n, c, hi, wi, generator=g, dtype=dtype).requires_grad_()
    m_v = torch.randint(0, labels + 1, (n, h, w), generator=g)
    m_i = torch.randint(0, labels + 1, (n, hi, wi), generator=g)
    return z_v, z_i, m_v, m_i


def _loop_reference(z_v, z_i, m_v, m_i, tau):
    """Definition of docs/method.md §6 written anchor by anchor with Python loops (float64)."""
    total, count = 0.0, 0
    for n in range(z_v.shape[0]):
        a = torch.nn.functional.normalize(z_v[n].detach().double().flatten(1), dim=0).T  # HW x C
        b = torch.nn.functional.normalize(z_i[n].detach().double().flatten(1), dim=0).T
        la, lb = m_v[n].flatten().tolist(), m_i[n].flatten().tolist()
        for anchors, others, l_anchor, l_other in ((a, b, la, lb), (b, a, lb, la)):
            for p in range(len(l_anchor)):
                positives = [q for q in range(len(l_other)) if l_other[q] == l_anchor[p]]
                if l_anchor[p] == 0 or not positives:
                    continue
                s = [float(anchors[p] @ others[q]) / tau for q in range(len(l_other))]
                lse_all = math.log(sum(math.exp(v) for v in s))
                lse_pos = math.log(sum(math.exp(s[q]) for q in positives))
                total += lse_all - lse_pos
                count += 1
    return total / max(count, 1)


def _grads(loss, z_v, z_i):
    return torch.autograd.grad(loss, (z_v, z_i))


def test_naive_matches_plain_loop_definition():
    z_v, z_i, m_v, m_i = _inputs(2, 5, 3, 2, labels=3, seed=1)
    m_i[1][m_i[1] == 2] = 0  # a part present in one modality only
    expected = _loop_reference(z_v, z_i, m_v, m_i, tau=0.1)
    got = dense_contrastive_loss_naive(z_v, z_i, m_v, m_i, tau=0.1)
    assert got.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(
    ("n", "c", "h", "w", "labels", "chunk"),
    [
        (1, 4, 3, 2, 1, 1),
        (2, 8, 6, 4, 3, 5),
        (3, 16, 12, 6, 6, 7),
        (2, 32, 8, 4, 6, 512),
        (4, 8, 9, 3, 2, 4),
    ],
)
def test_efficient_matches_naive_value_and_gradient(n, c, h, w, labels, chunk):
    z_v, z_i, m_v, m_i = _inputs(n, c, h, w, labels, seed=n * 100 + c)
    m_i[0][m_i[0] == 1] = 0  # part 1 empty in infrared image 0: its visible anchors skip
    ref = dense_contrastive_loss_naive(z_v, z_i, m_v, m_i, tau=0.05)
    got = dense_contrastive_loss(z_v, z_i, m_v, m_i, tau=0.05, chunk_size=chunk)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    for g_got, g_ref in zip(_grads(got, z_v, z_i), _grads(ref, z_v, z_i)):
        torch.testing.assert_close(g_got, g_ref, rtol=1e-5, atol=1e-5 * g_ref.abs().max().item())


def test_efficient_different_grid_sizes_and_small_tau():
    z_v, z_i, m_v, m_i = _inputs(2, 8, 6, 3, 4, seed=3, hw_i=(4, 5))
    for tau in (0.05, 0.01):
        ref = dense_contrastive_loss_naive(z_v, z_i, m_v, m_i, tau=tau)
        got = dense_contrastive_loss(z_v, z_i, m_v, m_i, tau=tau, chunk_size=4)
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
        for g_got, g_ref in zip(_grads(got, z_v, z_i), _grads(ref, z_v, z_i)):
            torch.testing.assert_close(
                g_got, g_ref, rtol=1e-5, atol=1e-5 * g_ref.abs().max().item()
            )


def test_efficient_gradcheck_float64():
    z_v, z_i, m_v, m_i = _inputs(2, 3, 3, 2, 2, seed=4, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda a, b: dense_contrastive_loss(a, b, m_v, m_i, tau=0.5, chunk_size=4),
        (z_v, z_i),
    )


def test_chunk_size_does_not_change_result():
    z_v, z_i, m_v, m_i = _inputs(2, 8, 6, 4, 6, seed=5)
    values = [dense_contrastive_loss(z_v, z_i, m_v, m_i, chunk_size=k) for k in (1, 3, 24, 1000)]
    for v in values[1:]:
        torch.testing.assert_close(v, values[0], rtol=1e-6, atol=1e-6)


def test_only_matching_parts_count_as_positives():
    # Visible pixel 0 (part 1) equals infrared pixel 1 (part 1) exactly; infrared pixel 0 is
    # the same feature but part 2, so it only sits in the denominator.
    z_v = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).T.reshape(1, 2, 1, 2).requires_grad_()
    z_i = torch.tensor([[1.0, 0.0], [1.0, 0.0]]).T.reshape(1, 2, 1, 2).requires_grad_()
    m_v = torch.tensor([[[1, 0]]])
    m_i = torch.tensor([[[2, 1]]])
    tau = 0.5
    # visible anchor 0: -log e^{2} + log(e^{2} + e^{2}) = log 2
    # infrared anchor 1 (part 1): positives {visible 0}: -2 + log(e^{2} + e^{0})
    expected = (math.log(2.0) + (-2.0 + math.log(math.exp(2.0) + 1.0))) / 2
    for fn in (dense_contrastive_loss, dense_contrastive_loss_naive):
        assert fn(z_v, z_i, m_v, m_i, tau=tau).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("case", ["all_background", "disjoint_parts"])
def test_no_valid_anchor_gives_zero_with_gradient(case):
    z_v, z_i, m_v, m_i = _inputs(2, 4, 4, 3, 3, seed=6)
    if case == "all_background":
        m_v.zero_()
    else:
        m_v.fill_(1)
        m_i.fill_(2)
    for fn in (dense_contrastive_loss, dense_contrastive_loss_naive):
        loss = fn(z_v, z_i, m_v, m_i)
        assert loss.item() == 0.0 and loss.requires_grad
        for g in _grads(loss, z_v, z_i):
            assert torch.isfinite(g).all() and g.abs().max() == 0


def test_bfloat16_autocast_is_finite_and_close_to_float32():
    z_v, z_i, m_v, m_i = _inputs(2, 16, 8, 4, 6, seed=7)
    ref = dense_contrastive_loss(z_v, z_i, m_v, m_i)
    zb_v = z_v.detach().bfloat16().requires_grad_()
    zb_i = z_i.detach().bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = dense_contrastive_loss(zb_v, zb_i, m_v, m_i)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert loss.item() == pytest.approx(ref.item(), rel=2e-2)
    g_v, g_i = _grads(loss, zb_v, zb_i)
    assert g_v.dtype == torch.bfloat16 and torch.isfinite(g_v).all() and torch.isfinite(g_i).all()


def test_float16_inputs_are_finite():
    z_v, z_i, m_v, m_i = _inputs(2, 16, 8, 4, 6, seed=8)
    # Large activations: e^{s} in float16 would overflow without the float32 cast.
    zh_v = (z_v.detach() * 100).half().requires_grad_()
    zh_i = (z_i.detach() * 100).half().requires_grad_()
    loss = dense_contrastive_loss(zh_v, zh_i, m_v, m_i, tau=0.05)
    ref = dense_contrastive_loss_naive(zh_v.float(), zh_i.float(), m_v, m_i, tau=0.05)
    assert torch.isfinite(loss) and loss.item() == pytest.approx(ref.item(), rel=1e-5)
    assert all(torch.isfinite(g).all() for g in _grads(loss, zh_v, zh_i))


def test_rejects_mismatched_masks():
    z_v, z_i, m_v, m_i = _inputs(2, 4, 4, 3, 3)
    with pytest.raises(ValueError, match="masks"):
        dense_contrastive_loss(z_v, z_i, m_v[:, :2], m_i)


def test_all_background_both_sides_and_negative_labels():
    z_v, z_i, m_v, m_i = _inputs(2, 4, 4, 3, 3, seed=9)
    loss = dense_contrastive_loss(z_v, z_i, torch.zeros_like(m_v), torch.zeros_like(m_i))
    assert loss.item() == 0.0 and loss.requires_grad
    with pytest.raises(ValueError, match=">= 0"):
        dense_contrastive_loss(z_v, z_i, m_v - 1, m_i)


@pytest.mark.parametrize("tau", [0.026, 0.02, 0.005])
def test_anti_aligned_positives_near_exponent_limits(tau):
    # Positives at cosine -1 and a negative at +1: the positive sum is e^{-2/tau} relative to
    # the shift, the extreme the fixed-shift float32 (or float64) path must still resolve.
    g = torch.Generator().manual_seed(10)
    e1 = torch.zeros(1, 4, 1, 1)
    e1[0, 0] = 1.0
    z_v = (e1.expand(1, 4, 2, 3) + 1e-3 * torch.randn(1, 4, 2, 3, generator=g)).requires_grad_()
    z_i = torch.cat([-e1, -e1, e1], dim=3).expand(1, 4, 2, 3).clone().requires_grad_()
    m_v = torch.ones(1, 2, 3, dtype=torch.int64)
    m_i = torch.tensor([[[1, 1, 2], [1, 1, 2]]])
    z64 = [z.detach().double().requires_grad_() for z in (z_v, z_i)]
    ref = dense_contrastive_loss_naive(*z64, m_v, m_i, tau=tau)  # float64 reference
    got = dense_contrastive_loss(z_v, z_i, m_v, m_i, tau=tau)
    # 6 visible anchors at ~2/tau, 4 infrared anchors at 0 (positives = all visible pixels)
    assert torch.isfinite(got) and got.item() == pytest.approx(1.2 / tau, rel=2e-2)
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-6)
    for g_got, g_ref in zip(_grads(got, z_v, z_i), _grads(ref, *z64)):
        scale = g_ref.abs().max().item()
        # float32 normalisation of nearly parallel inputs limits agreement to ~1e-5 of scale
        torch.testing.assert_close(g_got.double(), g_ref, rtol=1e-3, atol=1e-4 * scale)
