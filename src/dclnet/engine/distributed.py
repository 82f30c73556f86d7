"""torchrun / DistributedDataParallel: joining and leaving the process group, wrapping the model.

Launch with ``torchrun --nproc_per_node N -m dclnet train ...`` (docs/distributed.md):
torchrun sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``
and :func:`init_from_env` turns them into a process group (NCCL on CUDA, Gloo on CPU).

The rank queries and collectives (``rank``, ``world_size``, ``barrier``,
``broadcast_buffers``, ``all_reduce_mean``, ``shard_range``, ``all_gather_rows``, ...) live in
:mod:`dclnet.process_group`, which evaluation imports too; they are re-exported here. All of
them degrade to single-process behaviour outside a process group.
"""

from __future__ import annotations

import logging
import os

import torch
import torch.distributed as dist
from torch import nn

from dclnet.errors import ConfigError
from dclnet.process_group import (
    all_gather_rows,
    all_reduce_mean,
    barrier,
    broadcast_buffers,
    broadcast_state,
    collective_device,
    is_distributed,
    rank,
    shard_range,
    uses_nccl,
    world_size,
)

__all__ = [
    "all_gather_rows",
    "all_reduce_mean",
    "barrier",
    "broadcast_buffers",
    "broadcast_state",
    "cleanup",
    "collective_device",
    "env_rank",
    "init_from_env",
    "is_distributed",
    "local_device",
    "local_rank",
    "rank",
    "shard_range",
    "uses_nccl",
    "world_size",
    "wrap_model",
]

logger = logging.getLogger(__name__)


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


def local_device() -> torch.device:
    """This process's device: ``cuda:LOCAL_RANK`` with NCCL, else CPU."""
    if torch.cuda.is_available() and uses_nccl():
        return torch.device("cuda", local_rank())
    return torch.device("cpu")


def wrap_model(model: nn.Module, device: torch.device, *, sync_bn: bool = False) -> nn.Module:
    """DDP-wrap ``model`` in a distributed run (optionally with SyncBatchNorm); else as is.

    Parameters that no loss term reaches must be frozen (``requires_grad=False``) before this
    call (see ``freeze_unused`` in :mod:`dclnet.engine.step`): DDP then ignores them
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
