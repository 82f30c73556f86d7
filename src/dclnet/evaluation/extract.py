"""Model + cached uint8 images → L2-normalised embeddings (optionally sharded across ranks)."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from dclnet import process_group
from dclnet.data.augment import test_transform
from dclnet.data.records import MODALITIES


def _batches(mods: np.ndarray, rows: np.ndarray, batch_size: int) -> list[tuple[str, np.ndarray]]:
    """``(modality, positions within rows)`` of every batch; batches never mix modalities."""
    out = []
    for modality in MODALITIES:
        index = np.flatnonzero(mods[rows] == modality)  # positions within ``rows``
        out += [(modality, index[s : s + batch_size]) for s in range(0, len(index), batch_size)]
    return out


def _gather(images: np.ndarray, index: np.ndarray, pin: bool) -> torch.Tensor:
    """``images[index]`` as a tensor, read straight into pinned memory when ``pin``."""
    if not pin:
        return torch.from_numpy(np.ascontiguousarray(images[index]))
    dtype = torch.from_numpy(np.empty(0, dtype=images.dtype)).dtype
    out = torch.empty((len(index), *images.shape[1:]), dtype=dtype, pin_memory=True)
    np.take(images, index, axis=0, out=out.numpy())
    return out


def _prefetched(
    images: np.ndarray, indices: list[np.ndarray], pin: bool, ahead: int = 2
) -> Iterator[torch.Tensor]:
    """The batches ``images[i]`` for ``i`` in ``indices``, read ``ahead`` batches in advance
    by a background thread (memory-map reads and the copy release the GIL)."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dclnet-extract")
    pending: deque = deque()
    try:
        for index in indices:
            pending.append(pool.submit(_gather, images, index, pin))
            if len(pending) > ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


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

    Batches never mix modalities: each goes through its own modality's branch. On CUDA the
    next batches are read into pinned memory in the background and copied without blocking;
    the embeddings stay on the device and come back to the host once, at the end.
    """
    batches = _batches(mods, rows, batch_size)
    if not batches:
        return None
    pin = device.type == "cuda"
    embedded: list[torch.Tensor] = []  # on the device, in batch order
    for (modality, pos), batch in zip(
        batches, _prefetched(images, [rows[pos] for _, pos in batches], pin)
    ):
        batch = batch.to(device, non_blocking=True)
        with torch.autocast(
            device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None
        ):
            embedded.append(model.embed(test_transform(batch), modality, flip=flip).float())
        bar.update(len(pos))
    order = torch.from_numpy(np.concatenate([pos for _, pos in batches]))
    feats = torch.cat(embedded)  # len(rows) x D, batch order
    out = torch.empty_like(feats)
    out[order.to(device, non_blocking=True)] = feats  # back to row order
    return out.cpu()


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
