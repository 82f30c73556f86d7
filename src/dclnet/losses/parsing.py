"""Part Aware Parsing (docs/method.md §4): CAM pseudo-labels, PAP loss, predicted and stripe masks.

Stripe geometry. The part branch splits the final map (``h`` rows) into ``P`` horizontal
stripes with adaptive-pooling boundaries, :func:`stripe_bounds` (``start = floor(k h / P)``,
``end = ceil((k + 1) h / P)``); when ``P`` does not divide ``h`` neighbouring stripes share a
row. A grid whose every row needs exactly one stripe (the parsing-label grid, SRM bands,
fixed stripe masks) uses :func:`stripe_partition`: row ``r`` belongs to stripe
``floor(r P / h)``. That partition's stripe ``k`` lies inside the adaptive stripe ``k``, and
both rules coincide when ``P`` divides ``h`` (18 rows / 6 -> 3, 72 rows / 6 -> 12).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from dclnet.models.outputs import pap_mask
from dclnet.models.pooling import stripe_bounds as pooling_stripe_bounds

_EPS = 1e-6


def stripe_bounds(h: int, num_parts: int = 6) -> list[tuple[int, int]]:
    """Adaptive-pooling row ranges ``[start, end)`` of ``num_parts`` stripes (may overlap).

    The network's stripe split (:func:`dclnet.models.pooling.stripe_bounds`) as pairs.
    """
    return list(zip(*pooling_stripe_bounds(h, num_parts)))


def stripe_partition(h: int, num_parts: int = 6) -> list[tuple[int, int]]:
    """Non-overlapping row ranges: row ``r`` in stripe ``floor(r * num_parts / h)``.

    A stripe is empty when ``h < num_parts`` leaves it no row.
    """
    return [(-(-k * h // num_parts), -(-(k + 1) * h // num_parts)) for k in range(num_parts)]


def stripe_index(h: int, num_parts: int = 6, device: torch.device | None = None) -> Tensor:
    """``h`` int64 stripe number (0-based) of every row under :func:`stripe_partition`."""
    return torch.arange(h, device=device) * num_parts // h


def _stripe_cams(
    final_map: Tensor, part_weight: Tensor, classes: Tensor, num_parts: int
) -> list[Tensor]:
    """Min-max normalised CAM of each adaptive stripe: list of ``B x rows_k x w``."""
    b, c, h, _ = final_map.shape
    if part_weight.shape[1] != num_parts * c:
        raise ValueError(
            f"part_weight must be num_classes x {num_parts}*{c}, got {tuple(part_weight.shape)}"
        )
    with torch.autocast(device_type=final_map.device.type, enabled=False):
        x = final_map.float()
        w = part_weight.float()[classes].view(b, num_parts, c)  # B x P x C
        cams = []
        for k, (start, end) in enumerate(stripe_bounds(h, num_parts)):
            cam = torch.einsum("bc,bchw->bhw", w[:, k], x[:, :, start:end])  # B x rows x w
            lo = cam.amin(dim=(1, 2), keepdim=True)
            hi = cam.amax(dim=(1, 2), keepdim=True)
            cams.append((cam - lo) / (hi - lo).clamp_min(_EPS))  # constant stripe -> 0
    return cams


@torch.no_grad()
def part_cams(
    final_map: Tensor, part_weight: Tensor, classes: Tensor, num_parts: int = 6
) -> Tensor:
    """Per-stripe class activation maps of the part classifier.

    Stripe ``k`` of the final map is scored with chunk ``k`` of the class's weight row,
    ``CAM(p) = <chunk_k, X(p)>``, and min-max normalised within the stripe (a constant stripe
    gives 0). Rows shared by two adaptive stripes show the stripe of
    :func:`stripe_partition`.

    Args:
        final_map: ``B x C x h x w`` final map X.
        part_weight: ``num_classes x (num_parts * C)`` part-classifier weight.
        classes: ``B`` int64 class whose weight row scores each image.
        num_parts: number of stripes.

    Returns:
        ``B x h x w`` float32 CAM in ``[0, 1]``.
    """
    h = final_map.shape[2]
    cams = _stripe_cams(final_map, part_weight, classes, num_parts)
    out = final_map.new_zeros(final_map.shape[0], h, final_map.shape[3], dtype=torch.float32)
    bounds = stripe_bounds(h, num_parts)
    for k, (start, end) in enumerate(stripe_partition(h, num_parts)):
        offset = start - bounds[k][0]
        out[:, start:end] = cams[k][:, offset : offset + end - start]
    return out


@torch.no_grad()
def parsing_labels(
    final_map: Tensor,
    part_weight: Tensor,
    classes: Tensor,
    erased: Tensor | None,
    out_size: tuple[int, int],
    num_parts: int = 6,
) -> Tensor:
    """PAP pseudo-labels on Z's grid from the part-branch CAMs.

    Stripe ``k``'s normalised CAM is bilinearly upsampled to its share of the output grid
    (its :func:`stripe_partition` rows x all columns; 3 x 9 -> 12 x 36 by default). A pixel
    gets label ``k + 1`` where the upsampled CAM exceeds its mean over that upsampled stripe
    (the values that are thresholded are the ones averaged), else 0. Erased pixels get 0.

    Args:
        final_map: ``B x C x h x w`` final map X (use a detached map).
        part_weight: ``num_classes x (num_parts * C)`` part-classifier weight.
        classes: ``B`` int64 class per image (ground truth or predicted).
        erased: ``B x H_z x W_z`` bool erased cells of the output grid, or None.
        out_size: ``(H_z, W_z)``.
        num_parts: number of stripes.

    Returns:
        ``B x H_z x W_z`` int64 labels in ``0..num_parts``.
    """
    cams = _stripe_cams(final_map, part_weight, classes, num_parts)
    height, width = out_size
    labels = torch.zeros(
        final_map.shape[0], height, width, dtype=torch.int64, device=final_map.device
    )
    for k, (start, end) in enumerate(stripe_partition(height, num_parts)):
        if end == start:
            continue
        cam = F.interpolate(
            cams[k].unsqueeze(1), size=(end - start, width), mode="bilinear", align_corners=False
        ).squeeze(1)  # B x rows x W_z
        above = cam > cam.mean(dim=(1, 2), keepdim=True)
        labels[:, start:end] = above.long() * (k + 1)
    if erased is not None:
        labels = labels.masked_fill(erased, 0)
    return labels


ERASE_RULES = ("majority", "top_left")


def downsample_erased(erased: Tensor, size: tuple[int, int], rule: str = "majority") -> Tensor:
    """Image-resolution erase mask ``B x H x W`` -> ``B x h x w`` bool.

    Args:
        erased: ``B x H x W`` bool, True = erased pixel.
        size: ``(h, w)`` of the output grid.
        rule: ``"majority"``: a cell counts as erased when more than half of its pixels are
            (adaptive average pooling). ``"top_left"``: nearest-neighbour downsampling, as
            the released code does — for an integer ratio, a cell takes the value of its
            top-left pixel.
    """
    if rule == "top_left":
        nearest = F.interpolate(erased.unsqueeze(1).float(), size=size, mode="nearest")
        return nearest.squeeze(1) > 0.5
    if rule != "majority":
        raise ValueError(f"rule must be one of {', '.join(ERASE_RULES)}, got {rule!r}")
    pooled = F.adaptive_avg_pool2d(erased.unsqueeze(1).float(), size)  # B x 1 x h x w
    return pooled.squeeze(1) > 0.5


def pap_loss(pixel_logits: Tensor, labels: Tensor, continuity_weight: float = 0.5) -> Tensor:
    """PAP loss: fg/bg CE + part CE on foreground + logit-map continuity.

    Args:
        pixel_logits: ``B x (2 + P) x h x w`` logits, channels ``[bg, fg, part_1..part_P]``.
        labels: ``B x h x w`` int64 pseudo-labels ``0..P`` (0 = background).
        continuity_weight: weight of the mean absolute difference between vertically and
            horizontally adjacent logit vectors.

    Returns:
        Scalar float32 loss; the part term is 0 (with gradient) when no pixel is foreground.
    """
    logits = pixel_logits.float()
    fg = labels > 0  # B x h x w
    loss_fg = F.cross_entropy(logits[:, :2], fg.long())
    part_ce = F.cross_entropy(logits[:, 2:], labels - 1, ignore_index=-1, reduction="sum")
    loss_part = part_ce / fg.sum().clamp_min(1)
    continuity = logits.new_zeros(())
    if logits.shape[2] > 1:
        continuity = continuity + (logits[:, :, 1:] - logits[:, :, :-1]).abs().mean()
    if logits.shape[3] > 1:
        continuity = continuity + (logits[:, :, :, 1:] - logits[:, :, :, :-1]).abs().mean()
    return loss_fg + loss_part + continuity_weight * continuity


@torch.no_grad()
def predicted_masks(pixel_logits: Tensor, erased: Tensor | None = None) -> Tensor:
    """Predicted part mask ``m = fg * (part + 1)``, 0 on erased cells.

    Args:
        pixel_logits: ``B x (2 + P) x h x w`` PAP logits.
        erased: ``B x h x w`` bool, or None.

    Returns:
        ``B x h x w`` int64 in ``0..P``.
    """
    masks = pap_mask(pixel_logits)  # B x h x w
    return masks if erased is None else masks.masked_fill(erased, 0)


def stripe_masks(
    batch: int,
    size: tuple[int, int],
    num_parts: int = 6,
    erased: Tensor | None = None,
    device: torch.device | None = None,
) -> Tensor:
    """Fixed horizontal stripes labelled ``1..num_parts`` (the "+DCL with stripes" ablation).

    Args:
        batch: number of images B.
        size: ``(H, W)`` of the grid.
        num_parts: number of stripes (rows assigned by :func:`stripe_partition`).
        erased: ``B x H x W`` bool cells set to 0, or None.
        device: output device (default: ``erased``'s, else CPU).

    Returns:
        ``B x H x W`` int64.
    """
    if device is None and erased is not None:
        device = erased.device
    height, width = size
    rows = stripe_index(height, num_parts, device=device) + 1  # H
    masks = rows.view(1, height, 1).expand(batch, height, width).clone()
    return masks if erased is None else masks.masked_fill(erased, 0)
