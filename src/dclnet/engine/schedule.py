"""Learning-rate schedule and optimiser (docs/method.md §8)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def lr_factor(epoch: int, warmup_epochs: int, milestones: Sequence[int], gamma: float) -> float:
    """Multiplier of the base learning rate at ``epoch`` (0-based).

    Linear warm-up ``(epoch + 1) / warmup_epochs`` for the first ``warmup_epochs`` epochs,
    then ``gamma ** (number of milestones <= epoch)``; the defaults (5, (15, 27), 0.1) give
    x1 until epoch 15, x0.1 until 27 and x0.01 after.
    """
    if epoch < warmup_epochs:
        return (epoch + 1) / warmup_epochs
    return gamma ** sum(epoch >= m for m in milestones)


def build_optimizer(
    groups: dict[str, list[nn.Parameter]],
    *,
    name: str = "adam",
    lr: float = 3.5e-3,
    backbone_lr_mult: float = 0.1,
    weight_decay: float = 5e-4,
    momentum: float = 0.9,
) -> torch.optim.Optimizer:
    """Adam (default) or Nesterov SGD with the head at ``lr`` and the rest at ``lr * mult``.

    Args:
        groups: ``{"head": [...], "backbone": [...]}`` from ``DCLNet.parameter_groups()``.
    """
    params = [
        {"params": [p for p in groups["head"] if p.requires_grad], "lr": lr, "name": "head"},
        {
            "params": [p for p in groups["backbone"] if p.requires_grad],
            "lr": lr * backbone_lr_mult,
            "name": "backbone",
        },
    ]
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, foreach=True)
    if name == "sgd":
        return torch.optim.SGD(
            params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=True, foreach=True
        )
    raise ValueError(f"unknown optimizer {name!r}; valid: adam, sgd")


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    warmup_epochs: int = 5,
    milestones: Sequence[int] = (15, 27),
    gamma: float = 0.1,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-epoch scheduler applying :func:`lr_factor` (call ``step()`` once per epoch)."""
    milestones = tuple(milestones)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda e: lr_factor(e, warmup_epochs, milestones, gamma)
    )
