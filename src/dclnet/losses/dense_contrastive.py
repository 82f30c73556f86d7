"""Dense contrastive loss between aligned visible/infrared low-level maps (docs/method.md §6).

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
same value and gradient chunk by chunk over visible anchors with a custom autograd function
(see :class:`_DenseContrastive`): the forward pass keeps only per-anchor sums (``N x HW``;
the infrared direction's column sums accumulate across chunks), and the backward pass
recomputes each chunk's similarities, so the extra memory is two ``N x chunk x HW`` tensors
instead of several ``N x HW x HW`` ones, and far fewer element-wise passes run.

Numerics: both run with autocast disabled in float32 (float64 inputs stay float64, for
gradcheck): ``e^{1/tau} = e^{20}`` overflows float16. The naive form shifts by the maximum
(``torch.logsumexp``); the chunked form shifts by the bound ``1/tau`` of the normalised
similarities and switches to float64 when ``2/tau`` exceeds float32's exponent range
(``tau < 0.025``).

Precision of the products (``precision`` of :func:`dense_contrastive_loss`): the four
``N x HW x HW' x C`` products (similarities in the forward pass, their recomputation and the
two gradient products in the backward pass, ~450 GFLOP per step at the paper's size) can
take reduced-precision operands while everything else stays float32: the products
accumulate and return float32, and the exponentials, per-label sums, logarithms and the
rank-``2L`` gradient factor are float32 as in the ``"fp32"`` path.

- ``"fp32"``: float32 operands, TF32 left as the process set it (off by default).
- ``"tf32"``: operands rounded to TF32 (10 mantissa bits, unit roundoff ``u = 2^-11``) by
  the tensor cores (CUDA, with TF32 enabled around these products only).
- ``"bf16"``: operands rounded to bfloat16 (``u = 2^-8``); on CUDA bfloat16 products with a
  float32 output (``torch.bmm(..., out_dtype=torch.float32)``).
- ``"auto"``: ``"tf32"`` on CUDA devices of compute capability 8.0 or newer (Ampere+), else
  ``"fp32"`` (the CPU, older GPUs).

On the CPU the reduced formats are *emulated*: the operands are rounded to the format and
multiplied in float32, which gives the GPU path's numerics (exact products of the rounded
operands, float32 accumulation) but no speed-up; hence ``"auto"`` is ``"fp32"`` there.
With the normalised features, rounding the operands moves each logit ``s(p, q)`` by at most
``(2u + u^2) / tau`` and the loss by at most twice that (log-sum-exp is 1-Lipschitz); in
practice, with ``C`` channels, by about ``u sqrt(2 / (3 C)) / tau`` per logit. A float64
computation (float64 inputs or ``tau < 0.025``) ignores ``precision``.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

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


# exp(-80) ~ 1.8e-35 is still a normal float32 (and exp(-700) a normal float64): with every
# s(p, q) in [-1/tau, 1/tau], exp(s - 1/tau) neither overflows nor loses precision to
# denormals while 2/tau stays below these ranges.
_EXP_RANGE = {torch.float32: 80.0, torch.float64: 700.0}


def _compute_dtype(dtype: torch.dtype, tau: float) -> torch.dtype:
    """float32 (float64 inputs stay float64); float64 when 2/tau exceeds float32's range."""
    if dtype != torch.float64 and 2.0 / tau <= _EXP_RANGE[torch.float32]:
        return torch.float32
    if 2.0 / tau > _EXP_RANGE[torch.float64]:
        raise ValueError(f"tau must be > {2.0 / _EXP_RANGE[torch.float64]:.4f}, got {tau}")
    return torch.float64


def _indicators(labels: Tensor, num_labels: int, dtype: torch.dtype) -> Tensor:
    """``N x M`` labels -> ``N x M x L``: column 0 all ones, column l = [label == l]."""
    ind = F.one_hot(labels, num_labels).to(dtype)
    ind[..., 0] = 1.0
    return ind


PRECISIONS = ("auto", "fp32", "tf32", "bf16")


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"fp32"``, ``"tf32"`` or ``"bf16"`` for ``precision`` on ``device`` (``"auto"``:
    ``"tf32"`` on CUDA Ampere or newer, else ``"fp32"``)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision
    if device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8:
        return "tf32"
    return "fp32"


def round_tf32(x: Tensor) -> Tensor:
    """float32 ``x`` rounded to TF32's 10 mantissa bits (to nearest, ties away from zero, as
    the tensor cores' ``cvt.rna.tf32.f32``); returned as float32."""
    bits = x.contiguous().view(torch.int32)
    return ((bits + 0x1000) & -0x2000).view(torch.float32)


@contextmanager
def _tf32_matmuls():
    """TF32 for the float32 matmuls of the block only (the previous setting restored)."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


class _Products:
    """The ``C``-dimension products of the loss at one precision (see the module docstring).

    ``native``: the device's reduced-precision kernels (CUDA); otherwise the operands are
    rounded to the format and multiplied in float32 (CPU emulation, same numerics).
    """

    def __init__(self, precision: str, dtype: torch.dtype, device: torch.device):
        # A float64 computation has no reduced-precision path.
        self.precision = precision if dtype == torch.float32 else "fp32"
        self.native = device.type == "cuda"

    def operand(self, x: Tensor) -> Tensor:
        """``x`` as an operand of the products (bfloat16 on CUDA for ``"bf16"``)."""
        if self.precision == "bf16":
            return x.bfloat16() if self.native else x.bfloat16().float()
        if self.precision == "tf32" and not self.native:
            return round_tf32(x)
        return x

    def scope(self):
        return _tf32_matmuls() if self.precision == "tf32" and self.native else nullcontext()

    @property
    def _bf16_kernels(self) -> bool:
        return self.precision == "bf16" and self.native

    def shifted_exp(self, a: Tensor, bt: Tensor, tau: float) -> Tensor:
        """``exp(s - 1/tau)`` for operands ``a`` ``N x c x C`` against ``bt`` ``N x C x Q``:
        float32 ``N x c x Q``."""
        with self.scope():
            if self._bf16_kernels:
                s = torch.bmm(a, bt, out_dtype=torch.float32)  # float32 accumulation and output
                return s.sub_(1.0).mul_(1.0 / tau).exp_()
            return _shifted_exp(a, bt, tau)

    def bmm(self, x: Tensor, y: Tensor) -> Tensor:
        """float32 ``x @ y`` of two operands."""
        with self.scope():
            if self._bf16_kernels:
                return torch.bmm(x, y, out_dtype=torch.float32)
            return torch.bmm(x, y)

    def add_bmm_(self, out: Tensor, x: Tensor, y: Tensor) -> None:
        """``out += x @ y`` (float32 ``out``) of two operands."""
        with self.scope():
            if self._bf16_kernels:
                out.add_(torch.bmm(x, y, out_dtype=torch.float32))
            else:
                out.baddbmm_(x, y)


def _shifted_exp(a: Tensor, bt: Tensor, tau: float) -> Tensor:
    """``exp(s - 1/tau)`` for anchors ``N x c x C`` against ``bt`` ``N x C x Q``: ``N x c x Q``."""
    shift = a.new_full((1, 1, 1), -1.0 / tau)
    return torch.baddbmm(shift, a, bt, alpha=1.0 / tau).exp_()


class _DenseContrastive(torch.autograd.Function):
    """Chunked dense contrastive loss on normalised features, recomputing ``exp(s)`` in backward.

    Inputs: ``a`` ``N x A x C`` and ``b`` ``N x Q x C`` (normalised), labels ``la`` ``N x A``
    and ``lb`` ``N x Q`` in ``0..L-1``. Since ``|s| <= 1/tau``, every sum of exponentials
    is taken with the fixed shift ``1/tau``, which cancels in ``lse_all - lse_pos``. With
    ``E = exp(s - 1/tau)``, the sums over all ``q`` and per label of ``q`` are one product
    ``E @ [1 | onehot(lb)]``, and the column sums ``[1 | onehot(la)]^T @ E`` accumulate across
    chunks. The gradient ``dL/ds = E * M`` has
    ``M(p, q) = ra(p) + ca(q) - [la(p) = lb(q) > 0] (rp(p) + cp(q))`` (``r*``, ``c*``: inverse
    sums of valid anchors, 0 otherwise), a rank-``2L`` matrix built by one small product.
    The products with ``C`` (``s`` and the gradients) run at ``precision`` (:class:`_Products`),
    the rest in ``a``'s dtype.
    """

    @staticmethod
    def forward(  # noqa: D102
        ctx, a, b, la, lb, num_labels: int, tau: float, chunk: int, precision: str
    ):
        n, num_a, _ = a.shape
        prod = _Products(precision, a.dtype, a.device)
        ua = _indicators(la, num_labels, a.dtype)  # N x A x L
        vb = _indicators(lb, num_labels, a.dtype)  # N x Q x L
        ao, bo = prod.operand(a), prod.operand(b)  # the products' operands
        bt = bo.transpose(1, 2)  # N x C x Q
        row_all, row_pos = a.new_empty(n, num_a), a.new_empty(n, num_a)
        col = a.new_zeros(n, num_labels, b.shape[1])  # N x L x Q
        for start in range(0, num_a, chunk):
            r = slice(start, start + chunk)
            e = prod.shifted_exp(ao[:, r], bt, tau)  # N x c x Q
            per_label = torch.bmm(e, vb)  # N x c x L: all q, then q of each label
            row_all[:, r] = per_label[..., 0]
            row_pos[:, r] = per_label.gather(2, la[:, r].unsqueeze(2)).squeeze(2)
            col.baddbmm_(ua[:, r].transpose(1, 2), e)  # N x L x Q
            del e, per_label
        col_all = col[:, 0]  # N x Q
        col_pos = col.gather(1, lb.unsqueeze(1)).squeeze(1)  # N x Q
        # Valid anchor: foreground and its label present in the other image (exact counts).
        valid_row = (la > 0) & (vb.sum(dim=1) > 0).gather(1, la)  # N x A
        valid_col = (lb > 0) & (ua.sum(dim=1) > 0).gather(1, lb)  # N x Q
        count = (valid_row.sum() + valid_col.sum()).clamp_min(1).to(a.dtype)
        total = torch.where(valid_row, row_all.log() - row_pos.log(), 0.0).sum()
        total = total + torch.where(valid_col, col_all.log() - col_pos.log(), 0.0).sum()
        inv = [
            torch.where(v, 1.0 / x, 0.0)
            for v, x in (
                (valid_row, row_all),
                (valid_row, row_pos),
                (valid_col, col_all),
                (valid_col, col_pos),
            )
        ]
        ctx.save_for_backward(ao, bo, ua, vb, *inv, count)
        ctx.tau, ctx.chunk, ctx.prod = tau, chunk, prod
        return total / count

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):  # noqa: D102
        a, b, ua, vb, ra, rp, ca, cp, count = ctx.saved_tensors  # a, b: the operands
        tau, chunk, prod = ctx.tau, ctx.chunk, ctx.prod
        dtype = ra.dtype  # float32 (float64 for a float64 loss)
        with torch.autocast(device_type=a.device.type, enabled=False):
            ones_a, ones_b = ra.new_ones(*ra.shape, 1), ca.new_ones(*ca.shape, 1)
            oa, ob = ua[..., 1:], vb[..., 1:]  # N x A x (L-1), N x Q x (L-1)
            u = torch.cat([ra.unsqueeze(2), ones_a, -oa * rp.unsqueeze(2), -oa], dim=2)
            v = torch.cat([ones_b, ca.unsqueeze(2), ob, ob * cp.unsqueeze(2)], dim=2)
            u = u * (grad_out.to(dtype) / (count * tau))  # N x A x 2L, folds dL/dloss, 1/tau
            vt = v.transpose(1, 2)  # N x 2L x Q
            bt = b.transpose(1, 2)  # N x C x Q
            grad_a = torch.empty(a.shape, dtype=dtype, device=a.device)
            grad_b = torch.zeros(b.shape, dtype=dtype, device=b.device)
            for start in range(0, a.shape[1], chunk):
                r = slice(start, start + chunk)
                g = prod.shifted_exp(a[:, r], bt, tau)  # N x c x Q
                g.mul_(torch.bmm(u[:, r], vt))  # dL/ds * (1/tau)
                g = prod.operand(g)
                grad_a[:, r] = prod.bmm(g, b)  # N x c x C
                prod.add_bmm_(grad_b, g.transpose(1, 2), a[:, r])  # N x Q x C
                del g
        return grad_a, grad_b, None, None, None, None, None, None


def dense_contrastive_loss(
    z_v: Tensor,
    z_i: Tensor,
    m_v: Tensor,
    m_i: Tensor,
    *,
    tau: float = 0.05,
    chunk_size: int = 512,
    num_labels: int | None = None,
    precision: str = "fp32",
) -> Tensor:
    """Memory-efficient dense contrastive loss (same value and gradient as the naive form).

    Args:
        z_v: ``N x C x H x W`` visible low-level maps (unnormalised; normalised per pixel here).
        z_i: ``N x C x H' x W'`` infrared low-level maps, pair ``n`` aligned with ``z_v[n]``.
        m_v: ``N x H x W`` int64 part labels ``0..P`` of the visible pixels (0 = ignore).
        m_i: ``N x H' x W'`` int64 part labels of the infrared pixels.
        tau: temperature.
        chunk_size: visible anchors per image processed at once; peak extra memory is about
            two ``N x chunk_size x H'W'`` float32 tensors.
        num_labels: ``P + 1`` when known (labels in ``0..P``); skips reading the label range
            back from the device, the loss's only host synchronisation.
        precision: operands of the similarity and gradient products: ``"fp32"``, ``"tf32"``,
            ``"bf16"`` or ``"auto"`` (see the module docstring); accumulation, exponentials
            and log-sum-exps are float32 in every case.

    Returns:
        Scalar float32 loss (float64 for float64 inputs); a zero that carries gradient
        when no anchor is valid.
    """
    _check_inputs(z_v, z_i, m_v, m_i)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    precision = resolve_precision(precision, z_v.device)
    if num_labels is None:
        labels = torch.stack([m_v.min(), m_i.min(), m_v.max(), m_i.max()]).tolist()
        if min(labels[:2]) < 0:
            raise ValueError(f"mask labels must be >= 0, got minimum {min(labels[:2])}")
        num_labels = int(max(labels[2:])) + 1
    with torch.autocast(device_type=z_v.device.type, enabled=False):
        dtype = _compute_dtype(z_v.dtype, tau)
        a = _flatten_normalised(z_v).to(dtype)  # N x HW x C
        b = _flatten_normalised(z_i).to(dtype)  # N x HW' x C
        la, lb = m_v.flatten(1), m_i.flatten(1)  # N x HW, N x HW'
        loss = _DenseContrastive.apply(a, b, la, lb, num_labels, tau, chunk_size, precision)
        return loss.to(torch.float64 if z_v.dtype == torch.float64 else torch.float32)
