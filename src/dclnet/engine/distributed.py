"""torch.distributed helpers (torchrun / DistributedDataParallel).

Launch with ``torchrun --nproc_per_node N -m dclnet train ...`` (docs/distributed.md):
torchrun sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``
and :func:`init_from_env` turns them into a process group (NCCL on CUDA, Gloo on CPU).

Everything else here degrades to single-process behaviour when no process group is
initialised, so the training loop and the evaluation have one code path.
"""

from __future__ import annotations

import logging
import os

import torch
import torch.distributed as dist
from torch import Tensor, nn

from dclnet.errors import ConfigError

logger = logging.getLogger(__name__)


def is_distributed() -> bool:
    """True inside an initialised process group."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def env_rank() -> int:
    """Global rank from torchrun's ``RANK`` (0 outside torchrun), known before the group exists."""
    try:
        return int(os.environ.get("RANK", 0))
    except ValueError:
        return 0


def local_rank() -> int:
    """Rank of this process on its node (torchrun's ``LOCAL_RANK``; 0 outside torchrun)."""
    return int(os.environ.get("LOCAL_RANK", 0))


def init_from_env(backend: str | None = None) -> bool:
    """Join the process group described by torchrun's environment variables.

    Does nothing (returns False) when ``WORLD_SIZE`` is unset or 1, or when a group already
    exists. With CUDA the process first selects ``cuda:LOCAL_RANK``, so that NCCL and every
    later ``"cuda"`` allocation use this process's own GPU.

    Args:
        backend: ``"nccl"`` or ``"gloo"``; default NCCL when CUDA is available, else Gloo.

    Returns:
        True when this call created the process group.
    """
    if int(os.environ.get("WORLD_SIZE", 1)) <= 1 or is_distributed():
        return False
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend=backend, init_method="env://")
    logger.info(
        "process group: rank %d of %d (local rank %d), backend %s",
        dist.get_rank(),
        dist.get_world_size(),
        local_rank(),
        backend,
    )
    return True


def cleanup() -> None:
    """Leave the process group (no-op outside one)."""
    if is_distributed():
        dist.destroy_process_group()


def _uses_nccl() -> bool:
    return is_distributed() and dist.get_backend() == "nccl"


def barrier() -> None:
    if _uses_nccl():
        dist.barrier(device_ids=[torch.cuda.current_device()])
    elif is_distributed():
        dist.barrier()


def local_device() -> torch.device:
    """This process's device: ``cuda:LOCAL_RANK`` with NCCL, else CPU."""
    if torch.cuda.is_available() and _uses_nccl():
        return torch.device("cuda", local_rank())
    return torch.device("cpu")


def collective_device() -> torch.device:
    """Where tensors must live for collectives: the GPU with NCCL, the CPU with Gloo."""
    return (
        torch.device("cuda", torch.cuda.current_device()) if _uses_nccl() else torch.device("cpu")
    )


def wrap_model(model: nn.Module, device: torch.device, *, sync_bn: bool = False) -> nn.Module:
    """DDP-wrap ``model`` in a distributed run (optionally with SyncBatchNorm); else as is.

    Parameters that no loss term reaches must be frozen (``requires_grad=False``) before this
    call (see ``freeze_unused_heads`` in :mod:`dclnet.engine.train`): DDP then ignores them
    and ``find_unused_parameters`` (a graph walk every step) is not needed.

    With ``sync_bn`` (CUDA only: SyncBatchNorm has no CPU kernel) the BatchNorm layers are
    replaced inside ``model``, so the module that is evaluated and checkpointed shares them;
    SyncBatchNorm keeps the state-dict keys, so checkpoints load into a plain model.
    """
    if not is_distributed():
        return model
    if sync_bn:
        if device.type != "cuda":
            raise ConfigError("train.sync_bn=true needs CUDA GPUs (NCCL); set it to false on CPU")
        # The root is not a BatchNorm, so its children are converted in place.
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def broadcast_buffers(model: nn.Module, src: int = 0) -> None:
    """Copy ``src``'s buffers (BatchNorm running statistics) to every rank.

    DDP broadcasts buffers at the start of each forward, so after the last step every rank
    holds the statistics of its own last batch; evaluation first makes them rank 0's (the
    ones rank 0 checkpoints), so every rank embeds with the same network.
    """
    if not is_distributed():
        return
    device = collective_device()
    for buf in model.buffers():
        moved = buf.data.to(device)
        dist.broadcast(moved, src)
        if moved is not buf.data:
            buf.data.copy_(moved)


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
