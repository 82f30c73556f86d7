"""Semantic Rectification Module (docs/method.md §5): refine part masks with an image's features."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from dclnet.losses.parsing import stripe_index


@torch.no_grad()
def rectify_masks(z: Tensor, masks: Tensor, num_parts: int = 6) -> Tensor:
    """Relabel each foreground pixel to its most similar part prototype among nearby parts.

    Per image, the prototype of part ``k`` is the L2-normalised mean of the L2-normalised
    features of the pixels labelled ``k``. The grid is split into ``num_parts`` horizontal
    bands (rows assigned as in :func:`dclnet.losses.parsing.stripe_partition`); a foreground
    pixel in band ``i`` (1-based) takes the part in ``{i-1, i, i+1} ∩ {1..num_parts}`` whose
    prototype has the highest cosine similarity, among the parts present in the image.
    Background stays background; a foreground pixel with no present part in its
    neighbourhood keeps its label; an all-background image passes through unchanged.

    Args:
        z: ``B x C x H x W`` low-level features (gradient is not tracked).
        masks: ``B x H x W`` int64 labels ``0..num_parts`` (0 = background).
        num_parts: number of parts and bands.

    Returns:
        ``B x H x W`` int64 rectified labels.
    """
    b, _, h, w = z.shape
    with torch.autocast(device_type=z.device.type, enabled=False):
        feats = F.normalize(z.float().flatten(2), dim=1).transpose(1, 2)  # B x HW x C
        flat = masks.flatten(1)  # B x HW
        onehot = F.one_hot(flat, num_parts + 1)[..., 1:].float()  # B x HW x P
        protos = F.normalize(onehot.transpose(1, 2) @ feats, dim=2)  # B x P x C
        present = onehot.sum(dim=1) > 0  # B x P
        sim = feats @ protos.transpose(1, 2)  # B x HW x P

    parts = torch.arange(num_parts, device=z.device)  # P (0-based)
    band = stripe_index(h, num_parts, device=z.device).repeat_interleave(w)  # HW
    near = (band.unsqueeze(1) - parts.unsqueeze(0)).abs() <= 1  # HW x P
    allowed = near.unsqueeze(0) & present.unsqueeze(1)  # B x HW x P
    best = sim.masked_fill(~allowed, float("-inf")).argmax(dim=2) + 1  # B x HW
    movable = (flat > 0) & allowed.any(dim=2)
    return torch.where(movable, best, flat).view(b, h, w)
