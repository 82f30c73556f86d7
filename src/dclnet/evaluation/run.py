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
    amp_dtype: torch.dtype | None = None,
    progress: bool = True,
    sharded: bool = False,
) -> ProtocolResult:
    """Embed every image the protocol needs (each once, with its modality's branch) and
    evaluate all trials with :func:`~dclnet.evaluation.protocols.evaluate_splits` — the same
    code path as ``dclnet evaluate-features``.

    With ``sharded`` (inside a process group; every rank must call) each rank embeds its share
    of the images and every rank gets all features and the same result; see
    :func:`~dclnet.evaluation.extract.extract_features`.
    """
    feats = extract_features(
        model,
        data.images,
        data.modalities,
        batch_size=batch_size,
        device=device,
        flip=flip,
        amp_dtype=amp_dtype,
        progress=progress,
        sharded=sharded,
    )
    return evaluate_splits(data.paths, feats, data.splits, data.protocol, rerank=rerank)
