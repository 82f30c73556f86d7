"""Non-learned baselines, to put learned numbers in perspective."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def pixel_features(
    images: np.ndarray, size: tuple[int, int] = (32, 16), batch_size: int = 512
) -> np.ndarray:
    """Raw-pixel descriptors: grayscale, area-downsampled, standardised, L2-normalised.

    Grayscale removes the colour that infrared images lack, so the baseline measures what
    raw appearance alone shares across modalities.

    Args:
        images: ``N x H x W x 3`` uint8.
        size: ``(h, w)`` of the downsampled image.
        batch_size: Images converted at once (bounds memory for memory-mapped inputs).

    Returns:
        ``N x (h*w)`` float32, unit L2 norm per row.
    """
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    out = []
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size]))
        x = x.permute(0, 3, 1, 2).float() / 255.0  # B x 3 x H x W
        gray = (x * luma).sum(1, keepdim=True)  # B x 1 x H x W
        small = F.interpolate(gray, size=size, mode="area").flatten(1)  # B x hw
        small = (small - small.mean(1, keepdim=True)) / (small.std(1, keepdim=True) + 1e-6)
        out.append(F.normalize(small, dim=1))
    return torch.cat(out).numpy()
