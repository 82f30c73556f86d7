"""Dense contrastive loss: efficient form vs naive reference vs a plain-loop definition."""

from __future__ import annotations

import math

import pytest
import torch

from dclnet.losses.dense_contrastive import (
    _DenseContrastive,
    _direction_naive,
    _Products,
    dense_contrastive_loss,
    dense_contrastive_loss_naive,
    resolve_precision,
    round_tf32,
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


# --- reduced-precision products (precision="tf32" / "bf16") --------------------------------
# Unit roundoff of the operand formats: TF32 keeps 10 mantissa bits, bfloat16 7 (+1 implicit).
UNIT_ROUNDOFF = {"tf32": 2.0**-11, "bf16": 2.0**-8}
FP32_U = 2.0**-24


def _normalised_inputs(n, c, h, w, labels, seed):
    """Inputs already L2-normalised per pixel (the loss's own normalisation is then ~identity)."""
    z_v, z_i, m_v, m_i = _inputs(n, c, h, w, labels, seed=seed)
    z_v = torch.nn.functional.normalize(z_v.detach(), dim=1).requires_grad_()
    z_i = torch.nn.functional.normalize(z_i.detach(), dim=1).requires_grad_()
    return z_v, z_i, m_v, m_i


def _features(z):
    """``N x C x H x W`` -> ``N x HW x C`` (no renormalisation)."""
    return z.detach().flatten(2).transpose(1, 2)


def _loss_of_logits(logits, la, lb, envelope=False):
    """The loss as a function of the logits ``N x A x Q`` (the naive form's arithmetic).

    ``envelope``: ``sum(lse_all + lse_pos) / count`` instead, whose gradient ``W+`` (the sum
    of the two softmax weights) bounds the true gradient's entries in absolute value.
    """
    pos = (la.unsqueeze(2) == lb.unsqueeze(1)) & (la > 0).unsqueeze(2)
    total, count = 0.0, 0
    for sim, p in ((logits, pos), (logits.transpose(1, 2), pos.transpose(1, 2))):
        loss, valid = _direction_naive(sim, p)
        if envelope:
            lse_pos = torch.logsumexp(sim.masked_fill(~p, float("-inf")), dim=-1)
            loss = torch.where(valid, torch.logsumexp(sim, dim=-1) + lse_pos, 0.0)
        total = total + loss.sum()
        count = count + valid.sum()
    return total / count.clamp_min(1)


def _function_grads(a, b, la, lb, tau, precision, chunk=7):
    """Value and gradients of the chunked autograd function on normalised features."""
    a, b = a.clone().requires_grad_(), b.clone().requires_grad_()
    loss = _DenseContrastive.apply(a, b, la, lb, 7, tau, chunk, precision)
    return (loss, *torch.autograd.grad(loss, (a, b)))


def _logit_bound(precision, c, tau):
    """Largest change of one logit s(p, q) / tau from rounding the operands: each element
    moves by a relative u, so with |a| = |b| = 1 the similarity by <= 2u + u^2; float32
    accumulation of C terms (and the renormalisation of already normalised inputs) adds
    <= (C + 4) 2^-24."""
    u = UNIT_ROUNDOFF[precision]
    return (2 * u + u * u + (c + 4) * FP32_U) / tau


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
def test_reduced_precision_value_within_roundoff_bound_of_fp32(precision):
    # Every logit moves by <= eps, so does each log-sum-exp (1-Lipschitz in the max norm),
    # each anchor's lse_all - lse_pos by <= 2 eps, and so does their mean.
    n, c, h, w, tau = 2, 32, 8, 4, 0.05
    z_v, z_i, m_v, m_i = _normalised_inputs(n, c, h, w, 6, seed=11)
    eps = _logit_bound(precision, c, tau)
    ref = dense_contrastive_loss(z_v, z_i, m_v, m_i, tau=tau)
    got = dense_contrastive_loss(z_v, z_i, m_v, m_i, tau=tau, precision=precision)
    assert got.dtype == torch.float32
    assert abs(got.item() - ref.item()) <= 2 * eps
    assert got.item() != ref.item()  # a reduced-precision result indeed (emulated on CPU)
    g_got, g_ref = _grads(got, z_v, z_i), _grads(ref, z_v, z_i)
    assert all(torch.isfinite(g).all() for g in g_got)
    assert not torch.equal(g_got[0], g_ref[0])


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
def test_reduced_precision_gradient_within_roundoff_bound_of_fp32(precision):
    # dL/da_p = sum_q G_pq b_q with G = dL/ds (s: the raw similarities). Logits moved by
    # <= eps scale each softmax weight by a factor in [e^{-2 eps}, e^{2 eps}], so
    # |dG| <= (e^{2 eps} - 1) G+ with G+ the gradient of the envelope loss; rounding b and G
    # to the format adds <= 2u |G| |b| <= 2u G+ |b|. Bound per entry:
    # ((e^{2 eps} - 1) + 2u) (G+ @ |b|), plus the float32 summation-order noise of the
    # chunked form (1e-5 of the largest entry, as in the chunked-vs-naive tests).
    n, c, h, w, tau = 2, 32, 8, 4, 0.05
    z_v, z_i, m_v, m_i = _normalised_inputs(n, c, h, w, 6, seed=12)
    a, b = _features(z_v), _features(z_i)
    la, lb = m_v.flatten(1), m_i.flatten(1)
    _, ref_a, ref_b = _function_grads(a, b, la, lb, tau, "fp32")
    _, got_a, got_b = _function_grads(a, b, la, lb, tau, precision)
    a64, b64 = a.double(), b.double()
    s = torch.bmm(a64, b64.transpose(1, 2)).requires_grad_()
    (g_plus,) = torch.autograd.grad(_loss_of_logits(s / tau, la, lb, envelope=True), s)
    factor = math.expm1(2 * _logit_bound(precision, c, tau)) + 2 * UNIT_ROUNDOFF[precision]
    bound_a = factor * torch.bmm(g_plus, b64.abs())
    bound_b = factor * torch.bmm(g_plus.transpose(1, 2), a64.abs())
    for got, ref, bound in ((got_a, ref_a, bound_a), (got_b, ref_b, bound_b)):
        noise = 1e-5 * ref.abs().max().item()
        assert ((got - ref).double().abs() <= bound + noise).all()


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
def test_reduced_precision_is_fp32_arithmetic_on_rounded_operands(precision):
    # The tight check: against the float64 loss of the *rounded* operands the value differs
    # only by float32 summation noise (nothing after the products is rounded to the reduced
    # format: not the similarities, exponentials or sums), and each gradient entry by at most
    # the rounding of the G operand, u (|G| @ |b|) (+ float32 noise as above).
    n, c, h, w, tau = 3, 16, 6, 4, 0.05
    z_v, z_i, m_v, m_i = _normalised_inputs(n, c, h, w, 6, seed=13)
    a, b = _features(z_v), _features(z_i)
    la, lb = m_v.flatten(1), m_i.flatten(1)
    prod = _Products(precision, torch.float32, torch.device("cpu"))
    ar, br = prod.operand(a).double(), prod.operand(b).double()
    assert not torch.equal(ar, a.double())  # the operands are rounded
    s = torch.bmm(ar, br.transpose(1, 2)).requires_grad_()
    loss64 = _loss_of_logits(s / tau, la, lb)
    (g,) = torch.autograd.grad(loss64, s)  # dL/ds, N x A x Q
    got, got_a, got_b = _function_grads(a, b, la, lb, tau, precision, chunk=5)
    torch.testing.assert_close(got.double(), loss64.detach(), rtol=1e-5, atol=1e-6)
    u = UNIT_ROUNDOFF[precision]
    for grad, ref, bound in (
        (got_a, torch.bmm(g, br), u * torch.bmm(g.abs(), br.abs())),
        (got_b, torch.bmm(g.transpose(1, 2), ar), u * torch.bmm(g.abs().transpose(1, 2), ar.abs())),
    ):
        noise = 1e-5 * ref.abs().max().item()
        assert ((grad.double() - ref).abs() <= bound + noise).all()


def test_round_tf32_keeps_ten_mantissa_bits():
    # TF32's spacing at 1 is 2^-10: a tie (2^-11) rounds away from zero, less rounds down.
    x = torch.tensor([1.0, 1.0 + 2**-11, 1.0 + 2**-12, 1.0 + 3 * 2**-12, -(1.0 + 2**-11), 0.3])
    expected = [1.0, 1.0 + 2**-10, 1.0, 1.0 + 2**-10, -(1.0 + 2**-10)]
    got = round_tf32(x)
    assert got[:5].tolist() == expected
    assert abs(got[5].item() / 0.3 - 1) <= 2**-11 and got[5].item() != x[5].item()


def test_auto_precision_is_fp32_on_cpu_and_bad_names_are_refused():
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    z_v, z_i, m_v, m_i = _inputs(2, 8, 4, 3, 3, seed=14)
    ref = dense_contrastive_loss(z_v, z_i, m_v, m_i)
    assert torch.equal(dense_contrastive_loss(z_v, z_i, m_v, m_i, precision="auto"), ref)
    with pytest.raises(ValueError, match="precision must be one of"):
        dense_contrastive_loss(z_v, z_i, m_v, m_i, precision="fp16")


def test_float64_ignores_reduced_precision():
    z_v, z_i, m_v, m_i = _inputs(2, 4, 3, 2, 2, seed=15, dtype=torch.float64)
    ref = dense_contrastive_loss(z_v, z_i, m_v, m_i, tau=0.5)
    got = dense_contrastive_loss(z_v, z_i, m_v, m_i, tau=0.5, precision="bf16")
    assert torch.equal(got, ref) and got.dtype == torch.float64
