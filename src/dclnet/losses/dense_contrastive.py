"""Dense contrastive loss between aligned visible/infrared low-level maps (spec §6).

For pair ``n`` (visible image ``n`` and infrared image ``n``, same identity), with
per-pixel L2-normalised features ``z_v(p)``, ``z_i(q)`` and part masks ``m_v``, ``m_i``
(labels ``0..P``, ``0`` = background / ignore)::

    s(p, q) = <z_v(p), z_i(q)> / tau
    l_v(p)  = -logsumexp_{q : m_i(q) = m_v(p)} s(p, q) + logsumexp_{all q} s(p, q)
    l_i(q)  = -logsumexp_{p : m_v(p) = m_i(q)} s(p, q) + logsumexp_{all p} s(p, q)

Anchors with label 0 or without a positive in the other image are skipped; the loss is one
mean over all valid anchors of both directions and all pairs.

:func:`dense_contrastive_loss_naive` materialises the ``N x HW x HW`` similarities and lets
autograd differentiate them (the reference). :func:`dense_contrastive_loss` computes the
same value and gradient chunk by chunk over visible anchors with a custom autograd function:
the forward pass keeps only per-anchor log-sum-exps (``N x HW`` each; the infrared
direction's column statistics are accumulated online across chunks), and the backward pass
recomputes each chunk's similarities, so peak memory is ``O(N x chunk x HW)`` instead of
several ``N x HW x HW`` tensors.

Both run in float32 (float64 inputs stay float64, for gradcheck) with autocast disabled:
``e^{1/tau} = e^{20}`` overflows float16.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _flatten_normalised(z: Tensor) -> Tensor:
    """``N x C x H x W`` -> per-pixel L2-normalised ``N x HW x C`` (float32, or float64 kept)."""
    z = z if z.dtype == torch.float64 else z.float()
    return F.normalize(z.flatten(2), dim=1).transpose(1, 2)


def _check_inputs(z_v: Tensor, z_i: Tensor, m_v: Tensor, m_i: Tensor) -> None:
    shapes = f"{tuple(z_v.shape)}, {tuple(z_i.shape)}"
    if z_v.dim() != 4 or z_i.dim() != 4:
        raise ValueError(f"z_v, z_i must be N x C x H x W, got {shapes}")
    if z_v.shape[:2] != z_i.shape[:2]:
        raise ValueError(f"z_v and z_i need the same N and C, got {shapes}")
    if m_v.shape != (z_v.shape[0], *z_v.shape[2:]) or m_i.shape != (z_i.shape[0], *z_i.shape[2:]):
        raise ValueError(
            f"masks must be N x H x W matching the maps, got {tuple(m_v.shape)} for "
            f"{tuple(z_v.shape)} and {tuple(m_i.shape)} for {tuple(z_i.shape)}"
        )


def _direction_naive(s: Tensor, pos: Tensor) -> tuple[Tensor, Tensor]:
    """Per-anchor losses along the last dim of ``s`` (``N x A x Q``) and the valid mask."""
    valid = pos.any(-1)  # N x A
    # Anchors without positives get every q as "positive" so that the discarded value stays
    # finite (an all -inf logsumexp would put NaN into the gradient through torch.where).
    pos_eff = pos | ~valid.unsqueeze(-1)
    lse_pos = torch.logsumexp(s.masked_fill(~pos_eff, float("-inf")), dim=-1)  # N x A
    lse_all = torch.logsumexp(s, dim=-1)  # N x A
    return torch.where(valid, lse_all - lse_pos, torch.zeros_like(lse_all)), valid


def dense_contrastive_loss_naive(
    z_v: Tensor, z_i: Tensor, m_v: Tensor, m_i: Tensor, *, tau: float = 0.05
) -> Tensor:
    """Reference dense contrastive loss that materialises all similarities.

    Args:
        z_v: ``N x C x H x W`` visible low-level maps (unnormalised).
        z_i: ``N x C x H' x W'`` infrared low-level maps, pair ``n`` aligned with ``z_v[n]``.
        m_v: ``N x H x W`` int64 part labels ``0..P`` of the visible pixels (0 = ignore).
        m_i: ``N x H' x W'`` int64 part labels of the infrared pixels.
        tau: temperature.

    Returns:
        Scalar float32 loss (float64 for float64 inputs); a zero that carries gradient
        when no anchor is valid.
    """
    _check_inputs(z_v, z_i, m_v, m_i)
    with torch.autocast(device_type=z_v.device.type, enabled=False):
        a = _flatten_normalised(z_v)  # N x HW x C
        b = _flatten_normalised(z_i)  # N x HW' x C
        s = torch.bmm(a, b.transpose(1, 2)) / tau  # N x HW x HW'
        lv, li = m_v.flatten(1), m_i.flatten(1)  # N x HW, N x HW'
        pos = (lv.unsqueeze(2) == li.unsqueeze(1)) & (lv > 0).unsqueeze(2)  # N x HW x HW'
        loss_v, valid_v = _direction_naive(s, pos)
        loss_i, valid_i = _direction_naive(s.transpose(1, 2), pos.transpose(1, 2))
        count = valid_v.sum() + valid_i.sum()
        return (loss_v.sum() + loss_i.sum()) / count.clamp_min(1)


def _online_lse_update(m: Tensor, s: Tensor, chunk_s: Tensor) -> tuple[Tensor, Tensor]:
    """Fold ``chunk_s`` (``N x c x Q``, may hold -inf) into running column max/sum (``N x Q``)."""
    new_m = torch.maximum(m, chunk_s.amax(dim=1))  # N x Q
    shift = torch.where(torch.isfinite(new_m), new_m, torch.zeros_like(new_m))
    s = s * torch.exp(m - shift) + torch.exp(chunk_s - shift.unsqueeze(1)).sum(dim=1)
    return new_m, s


def _finalise(lse: Tensor) -> Tensor:
    """Invalid anchors (no positive: -inf) get +inf so that ``exp(s - lse)`` is 0 in backward."""
    return torch.where(torch.isfinite(lse), lse, torch.full_like(lse, float("inf")))


class _DenseContrastive(torch.autograd.Function):
    """Chunked dense contrastive loss on normalised features with recomputation in backward.

    Inputs: ``a`` ``N x A x C`` and ``b`` ``N x Q x C`` (normalised float32), ``la`` ``N x A``
    and ``lb`` ``N x Q`` labels where background is already mapped to -2 / -1 so that
    ``la == lb`` is exactly the positive relation.
    """

    @staticmethod
    def forward(ctx, a, b, la, lb, tau: float, chunk: int):  # noqa: D102
        n, num_a, _ = a.shape
        num_q = b.shape[1]
        a_s = a / tau  # N x A x C, folds the temperature into the anchors
        bt = b.transpose(1, 2)  # N x C x Q
        row_all = a.new_empty(n, num_a)
        row_pos = a.new_empty(n, num_a)
        col_m = a.new_full((n, num_q), float("-inf"))
        col_s = a.new_zeros(n, num_q)
        colp_m = a.new_full((n, num_q), float("-inf"))
        colp_s = a.new_zeros(n, num_q)
        for start in range(0, num_a, chunk):
            r = slice(start, start + chunk)
            s = torch.bmm(a_s[:, r], bt)  # N x c x Q
            pos = la[:, r].unsqueeze(2) == lb.unsqueeze(1)  # N x c x Q
            row_all[:, r] = torch.logsumexp(s, dim=2)
            col_m, col_s = _online_lse_update(col_m, col_s, s)
            s_pos = s.masked_fill_(~pos, float("-inf"))  # in place: s is not needed any more
            row_pos[:, r] = torch.logsumexp(s_pos, dim=2)
            colp_m, colp_s = _online_lse_update(colp_m, colp_s, s_pos)
            del s, s_pos, pos
        col_all = col_m + torch.log(col_s)  # N x Q
        col_pos = colp_m + torch.log(colp_s)  # -inf where an infrared anchor has no positive
        valid_row = torch.isfinite(row_pos)  # N x A (label 0 never matches, so it is -inf)
        valid_col = torch.isfinite(col_pos)  # N x Q
        count = (valid_row.sum() + valid_col.sum()).clamp_min(1).to(a.dtype)
        total = (
            torch.where(valid_row, row_all - row_pos, 0.0).sum()
            + torch.where(valid_col, col_all - col_pos, 0.0).sum()
        )
        row_all = torch.where(valid_row, row_all, float("inf"))
        col_all = torch.where(valid_col, col_all, float("inf"))
        ctx.save_for_backward(
            a, b, la, lb, row_all, _finalise(row_pos), col_all, _finalise(col_pos), count
        )
        ctx.tau, ctx.chunk = tau, chunk
        return total / count

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):  # noqa: D102
        a, b, la, lb, row_all, row_pos, col_all, col_pos, count = ctx.saved_tensors
        tau, chunk = ctx.tau, ctx.chunk
        with torch.autocast(device_type=a.device.type, enabled=False):
            grad_out = grad_out.to(a.dtype)
            scale = grad_out / (count * tau)
            a_s = a / tau
            bt = b.transpose(1, 2)  # N x C x Q
            grad_a = torch.empty_like(a)
            grad_b = torch.zeros_like(b)
            col_all_u, col_pos_u = col_all.unsqueeze(1), col_pos.unsqueeze(1)  # N x 1 x Q
            for start in range(0, a.shape[1], chunk):
                r = slice(start, start + chunk)
                s = torch.bmm(a_s[:, r], bt)  # N x c x Q
                not_pos = la[:, r].unsqueeze(2) != lb.unsqueeze(1)  # N x c x Q
                # dL/ds = softmax_all - softmax_pos, row-wise (visible anchors) plus
                # column-wise (infrared anchors); invalid anchors have lse = +inf -> 0.
                g = (s - row_all[:, r].unsqueeze(2)).exp_()  # N x c x Q
                tmp = (s - row_pos[:, r].unsqueeze(2)).exp_().masked_fill_(not_pos, 0.0)
                g.sub_(tmp)
                torch.sub(s, col_all_u, out=tmp).exp_()
                g.add_(tmp)
                del tmp
                s.sub_(col_pos_u).exp_().masked_fill_(not_pos, 0.0)
                g.sub_(s).mul_(scale)
                del s, not_pos
                grad_a[:, r] = torch.bmm(g, b)  # N x c x C
                grad_b.add_(torch.bmm(g.transpose(1, 2), a[:, r]))  # N x Q x C
                del g
        return grad_a, grad_b, None, None, None, None


def dense_contrastive_loss(
    z_v: Tensor,
    z_i: Tensor,
    m_v: Tensor,
    m_i: Tensor,
    *,
    tau: float = 0.05,
    chunk_size: int = 512,
) -> Tensor:
    """Memory-efficient dense contrastive loss (same value and gradient as the naive form).

    Args:
        z_v: ``N x C x H x W`` visible low-level maps (unnormalised; normalised per pixel here).
        z_i: ``N x C x H' x W'`` infrared low-level maps, pair ``n`` aligned with ``z_v[n]``.
        m_v: ``N x H x W`` int64 part labels ``0..P`` of the visible pixels (0 = ignore).
        m_i: ``N x H' x W'`` int64 part labels of the infrared pixels.
        tau: temperature.
        chunk_size: visible anchors per image processed at once; peak extra memory is a few
            ``N x chunk_size x H'W'`` float32 tensors.

    Returns:
        Scalar float32 loss (float64 for float64 inputs); a zero that carries gradient
        when no anchor is valid.
    """
    _check_inputs(z_v, z_i, m_v, m_i)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    with torch.autocast(device_type=z_v.device.type, enabled=False):
        a = _flatten_normalised(z_v)  # N x HW x C
        b = _flatten_normalised(z_i)  # N x HW' x C
        # Background never matches: -2 on the anchor side, -1 on the other.
        la = torch.where(m_v > 0, m_v, -2).flatten(1)  # N x HW
        lb = torch.where(m_i > 0, m_i, -1).flatten(1)  # N x HW'
        return _DenseContrastive.apply(a, b, la, lb, float(tau), int(chunk_size))
