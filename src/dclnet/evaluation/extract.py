"""Model + cached uint8 images → L2-normalised embeddings (optionally sharded across ranks)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from dclnet import process_group
from dclnet.data.augment import test_transform
from dclnet.data.records import MODALITIES


def _embed_rows(
    model: nn.Module,
    images: np.ndarray,
    mods: np.ndarray,
    rows: np.ndarray,
    *,
    batch_size: int,
    device: torch.device,
    flip: bool,
    amp_dtype: torch.dtype | None,
    bar: tqdm,
) -> torch.Tensor | None:
    """Embeddings of ``images[rows]`` (``len(rows) x D`` on the CPU), None when ``rows`` is empty.

    Batches never mix modalities: each goes through its own modality's branch.
    """
    out: torch.Tensor | None = None
    for modality in MODALITIES:
        index = np.flatnonzero(mods[rows] == modality)  # positions within ``rows``
        for start in range(0, len(index), batch_size):
            pos = index[start : start + batch_size]
            batch = torch.from_numpy(np.ascontiguousarray(images[rows[pos]])).to(device)
            with torch.autocast(
                device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None
            ):
                emb = model.embed(test_transform(batch), modality, flip=flip).float()
            if out is None:
                out = torch.empty(len(rows), emb.shape[1], dtype=torch.float32)
            out[torch.from_numpy(pos)] = emb.cpu()
            bar.update(len(pos))
    return out


@torch.inference_mode()
def extract_features(
    model: nn.Module,
    images: np.ndarray,
    modalities: Sequence[str],
    *,
    batch_size: int = 128,
    device: str | torch.device = "cpu",
    flip: bool = False,
    amp_dtype: torch.dtype | None = None,
    progress: bool = True,
    sharded: bool = False,
) -> torch.Tensor:
    """Embed every image with the branch of its own modality.

    Args:
        model: A network with ``embed(images, modality, flip)`` (e.g. ``DCLNet``).
        images: ``N x H x W x 3`` uint8 (may be a memmap; read batch by batch).
        modalities: ``N`` modality names, ``"visible"`` or ``"infrared"``.
        batch_size: Images per forward pass.
        device: Where the model runs.
        flip: Average with horizontally flipped images.
        amp_dtype: Autocast dtype on CUDA (e.g. ``torch.bfloat16``); ``None`` = float32.
        progress: Show a progress bar.
        sharded: In an initialised process group, embed only this rank's contiguous share of
            the images and all-gather the shares, so every rank returns all ``N`` rows (every
            rank must call). The model must be identical on all ranks, buffers included (see
            :func:`dclnet.process_group.broadcast_buffers`). No effect outside a group.

    Returns:
        ``N x D`` float32 L2-normalised embeddings on the CPU, in input order.
    """
    device = torch.device(device)
    mods = np.asarray(modalities)
    n = len(mods)
    if n == 0:
        raise ValueError("no images to embed")
    start, stop, _ = process_group.shard_range(n) if sharded else (0, n, n)
    rows = np.arange(start, stop)
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(rows), desc="extracting features", unit="img", disable=not progress)
    try:
        kwargs = dict(batch_size=batch_size, device=device, flip=flip, amp_dtype=amp_dtype)
        local = _embed_rows(model, images, mods, rows, bar=bar, **kwargs)
        if local is None:  # an empty share (fewer images than ranks): learn D from one image
            probe = _embed_rows(model, images, mods, np.arange(1), bar=bar, **kwargs)
            local = probe[:0]
    finally:
        bar.close()
        model.train(was_training)
    return process_group.all_gather_rows(local, n) if sharded else local
