"""Identity-level classification losses (docs/method.md §7)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def identity_loss(logits: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Cross-entropy on identity logits (global or part branch), computed in float32.

    Args:
        logits: ``B x num_classes`` identity logits.
        targets: ``B`` int64 identity labels.
        label_smoothing: label-smoothing factor in ``[0, 1)``.

    Returns:
        Scalar mean loss.
    """
    return F.cross_entropy(logits.float(), targets, label_smoothing=label_smoothing)
