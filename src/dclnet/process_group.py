"""Where this process stands in a torch.distributed process group, and the collectives used.

Every function degrades to single-process behaviour when no process group is initialised,
so training and evaluation have one code path. This module sits below both
:mod:`dclnet.engine` (which creates the group under torchrun, see
:mod:`dclnet.engine.distributed`) and :mod:`dclnet.evaluation` (which shards feature
extraction across the ranks), so neither imports the other for it.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn


def is_distributed() -> bool:
    """True inside an initialised process group."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """Global rank (0 outside a process group)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of ranks (1 outside a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def uses_nccl() -> bool:
    """True inside a process group with the NCCL backend."""
    return is_distributed() and dist.get_backend() == "nccl"


def collective_device() -> torch.device:
    """Where tensors must live for collectives: the GPU with NCCL, the CPU with Gloo."""
    if uses_nccl():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    """Wait for every rank (no-op outside a process group)."""
    if uses_nccl():
        dist.barrier(device_ids=[torch.cuda.current_device()])
    elif is_distributed():
        dist.barrier()


def _broadcast(tensors, src: int) -> None:
    device = collective_device()
    for tensor in tensors:
        moved = tensor.data.to(device)
        dist.broadcast(moved, src)
        if moved is not tensor.data:
            tensor.data.copy_(moved)


def broadcast_buffers(model: nn.Module, src: int = 0) -> None:
    """Copy ``src``'s buffers (BatchNorm running statistics) to every rank.

    DDP broadcasts buffers at the start of each forward, so after the last step every rank
    holds the statistics of its own last batch; evaluation first makes them rank 0's (the
    ones rank 0 checkpoints), so every rank embeds with the same network.
    """
    if is_distributed():
        _broadcast(model.buffers(), src)


def broadcast_state(model: nn.Module, src: int = 0) -> None:
    """Copy ``src``'s parameters and buffers to every rank (e.g. after ``src`` loaded a file)."""
    if is_distributed():
        _broadcast([*model.parameters(), *model.buffers()], src)


def all_reduce_mean(values: Tensor) -> Tensor:
    """Mean of ``values`` over the ranks (the tensor itself outside a process group)."""
    if not is_distributed():
        return values
    out = values.detach().to(collective_device(), dtype=torch.float32, copy=True)
    dist.all_reduce(out)
    return (out / world_size()).to(values.device)


def shard_range(n: int) -> tuple[int, int, int]:
    """This rank's contiguous share ``[start, stop)`` of ``n`` items, and the padded share size.

    Rank ``r`` of ``W`` takes ``[r * s, min((r + 1) * s, n))`` with ``s = ceil(n / W)``, so
    concatenating the shares in rank order gives back ``0..n-1``.
    """
    size = -(-n // world_size())
    start = min(rank() * size, n)
    return start, min(start + size, n), size


def all_gather_rows(local: Tensor, n: int) -> Tensor:
    """Concatenate every rank's :func:`shard_range` rows into the full ``n x ...`` tensor.

    Args:
        local: This rank's rows (``stop - start`` of them).
        n: Total number of rows.

    Returns:
        ``n x ...`` on ``local``'s device, in rank order; ``local`` itself outside a group.
    """
    if not is_distributed():
        return local
    _, _, size = shard_range(n)
    device = collective_device()
    padded = local.new_zeros((size, *local.shape[1:]), device=device)
    padded[: local.shape[0]] = local.to(device)
    parts = [torch.empty_like(padded) for _ in range(world_size())]
    dist.all_gather(parts, padded)
    return torch.cat(parts)[:n].to(local.device)
