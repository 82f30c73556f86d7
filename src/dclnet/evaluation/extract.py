"""Model + cached uint8 images → L2-normalised embeddings."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from dclnet.data.augment import test_transform
from dclnet.data.records import MODALITIES


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

    Returns:
        ``N x D`` float32 L2-normalised embeddings on the CPU, in input order.
    """
    device = torch.device(device)
    mods = np.asarray(modalities)
    was_training = model.training
    model.eval()
    out: torch.Tensor | None = None
    bar = tqdm(total=len(mods), desc="extracting features", unit="img", disable=not progress)
    try:
        for modality in MODALITIES:
            index = np.flatnonzero(mods == modality)
            for start in range(0, len(index), batch_size):
                rows = index[start : start + batch_size]
                batch = torch.from_numpy(np.ascontiguousarray(images[rows])).to(device)
                with torch.autocast(
                    device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None
                ):
                    emb = model.embed(test_transform(batch), modality, flip=flip).float()
                if out is None:
                    out = torch.empty(len(mods), emb.shape[1], dtype=torch.float32)
                out[torch.from_numpy(rows)] = emb.cpu()
                bar.update(len(rows))
    finally:
        bar.close()
        model.train(was_training)
    if out is None:
        raise ValueError("no images to embed")
    return out
