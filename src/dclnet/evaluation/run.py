"""Evaluate a model under a protocol: extract features once, then the shared runner."""

from __future__ import annotations

import torch
from torch import nn

from dclnet.data.datasets import EvalData
from dclnet.evaluation.extract import extract_features
from dclnet.evaluation.protocols import ProtocolResult, evaluate_splits


def evaluate_model(
    model: nn.Module,
    data: EvalData,
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 128,
    flip: bool = False,
    rerank: bool = False,
    progress: bool = True,
) -> ProtocolResult:
    """Embed every image the protocol needs (each once, with its modality's branch) and
    evaluate all trials with :func:`~dclnet.evaluation.protocols.evaluate_splits` — the same
    code path as ``dclnet evaluate-features``."""
    feats = extract_features(
        model,
        data.images,
        data.modalities,
        batch_size=batch_size,
        device=device,
        flip=flip,
        progress=progress,
    )
    return evaluate_splits(data.paths, feats, data.splits, data.protocol, rerank=rerank)
