"""Generalised-mean (GeM) pooling, global and over horizontal stripes.

GeM with exponent p: ``f_c = (mean_hw X_c^p + eps)^(1/p)`` (docs/method.md §3, p = 3, eps = 1e-12).
X is a post-ReLU map, hence non-negative; it is clamped at 0 anyway so that a fractional power
of a negative value can never produce NaN. Low-precision inputs (float16 / bfloat16, e.g. a
backbone map under autocast) are pooled in float32, since ``X^3`` overflows float16 and 1e-12
underflows it, and the result stays float32: the metric losses and the part branch take the
pooled features as float32 (float32 and float64 inputs keep their dtype).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def _powered(x: Tensor, p: float) -> Tensor:
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    return x.clamp(min=0).pow(p)


def gem(x: Tensor, p: float = 3.0, eps: float = 1e-12) -> Tensor:
    """GeM over the spatial dimensions: ``N x C x H x W`` → ``N x C`` (float32 for
    float16 / bfloat16 input)."""
    pooled = _powered(x, p).mean(dim=(-2, -1))  # N x C
    return pooled.add(eps).pow(1.0 / p)


def stripe_bounds(height: int, parts: int) -> tuple[list[int], list[int]]:
    """Row ranges ``[start_k, end_k)`` of ``parts`` horizontal stripes over ``height`` rows.

    The same split as ``torch.nn.functional.adaptive_avg_pool2d``: ``start_k = floor(k H / n)``
    and ``end_k = ceil((k + 1) H / n)``. Stripes are equal when ``n`` divides ``H`` (18 rows →
    six stripes of 3); otherwise neighbouring stripes may share a row (4 rows, 6 parts →
    [0,1) [0,2) [1,2) [2,3) [2,4) [3,4)).
    """
    starts = [(k * height) // parts for k in range(parts)]
    ends = [-((-(k + 1) * height) // parts) for k in range(parts)]
    return starts, ends


def stripe_weights(height: int, parts: int, *, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``parts x height`` matrix averaging the rows of each stripe (see :func:`stripe_bounds`)."""
    k = torch.arange(parts, device=device)[:, None]  # n x 1, built on the device: no sync
    start = k * height // parts  # n x 1, floor(k H / n) as in stripe_bounds
    end = -(-(k + 1) * height // parts)  # n x 1, ceil((k + 1) H / n)
    rows = torch.arange(height, device=device)  # H
    inside = (rows >= start) & (rows < end)  # n x H
    return inside.to(dtype) / (end - start).to(dtype)


def stripe_gem(x: Tensor, parts: int = 6, p: float = 3.0, eps: float = 1e-12) -> Tensor:
    """GeM over each of ``parts`` horizontal stripes: ``N x C x H x W`` → ``N x C x parts``
    (float32 for float16 / bfloat16 input).

    Stripe k covers rows ``stripe_bounds(H, parts)[k]``; a mean over a stripe is the mean over
    its rows of the per-row means over the width, which is what the weight matrix applies.
    """
    powered = _powered(x, p)
    rows = powered.mean(dim=-1)  # N x C x H
    weights = stripe_weights(x.shape[-2], parts, dtype=rows.dtype, device=x.device)  # n x H
    # Broadcast-and-sum rather than a matmul: autocast would run a matmul in float16.
    pooled = (rows[:, :, None, :] * weights).sum(dim=-1)  # N x C x parts
    return pooled.add(eps).pow(1.0 / p)


class GeM(nn.Module):
    """GeM pooling with a fixed exponent: ``N x C x H x W`` → ``N x C``."""

    def __init__(self, p: float = 3.0, eps: float = 1e-12) -> None:
        super().__init__()
        self.p = p
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return gem(x, self.p, self.eps)

    def extra_repr(self) -> str:
        return f"p={self.p}, eps={self.eps}"


class StripeGeM(nn.Module):
    """GeM over ``parts`` horizontal stripes: ``N x C x H x W`` → ``N x C x parts``."""

    def __init__(self, parts: int = 6, p: float = 3.0, eps: float = 1e-12) -> None:
        super().__init__()
        self.parts = parts
        self.p = p
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return stripe_gem(x, self.parts, self.p, self.eps)

    def extra_repr(self) -> str:
        return f"parts={self.parts}, p={self.p}, eps={self.eps}"
