"""What a training run keeps as it goes: checkpoints, best-model tracking, the metrics log.

``last.pt`` (every epoch, resumable) and ``best.pt`` (best validation rank-1) share the
self-describing part :func:`checkpoint_state`; :func:`restore_checkpoint` puts a ``last.pt``
back into the model, optimiser, schedule and scaler for ``--resume``; :func:`load_best` puts
``best.pt`` into the model for the final test. :class:`MetricsLog` writes ``metrics.jsonl``
(and optional TensorBoard) on rank 0. The file format itself is
:mod:`dclnet.engine.checkpoint`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from dclnet.config import Config, to_dict
from dclnet.data.augment import IMAGENET_MEAN, IMAGENET_STD
from dclnet.data.datasets import TrainData
from dclnet.engine import distributed as dist_utils
from dclnet.engine.checkpoint import load_checkpoint, save_checkpoint
from dclnet.errors import CheckpointError, ConfigError
from dclnet.evaluation.protocols import ProtocolResult
from dclnet.models.dclnet import DCLNet

logger = logging.getLogger(__name__)


class MetricsLog:
    """JSON-lines metrics log (and optional TensorBoard), written by rank 0 only."""

    def __init__(self, output: Path, tensorboard: bool, enabled: bool = True):
        self.enabled = enabled
        self.path = output / "metrics.jsonl"
        self._tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                raise ConfigError(
                    "train.tensorboard=true needs the tensorboard package: "
                    "pip install 'dclnet[tensorboard]'"
                ) from exc
            self._tb = SummaryWriter(str(output / "tensorboard"))

    def write(self, event: str, step: int, **values: Any) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as fh:
            fh.write(json.dumps({"event": event, "step": step, **values}) + "\n")
        if self._tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(f"{event}/{k}", v, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def checkpoint_state(cfg: Config, model: DCLNet, data: TrainData) -> dict[str, Any]:
    """The self-describing part of every checkpoint (enough to rebuild the model)."""
    return {
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "model_args": model.model_args(),
        "config": to_dict(cfg),
        "preprocessing": {
            "height": cfg.data.height,
            "width": cfg.data.width,
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
        },
        "num_classes": data.num_classes,
    }


def restore_checkpoint(path: Path, model: DCLNet, optimizer, scheduler, scaler) -> dict[str, Any]:
    state = load_checkpoint(path)
    for key in ("optimizer", "scheduler", "epoch", "rng"):
        if key not in state:
            raise CheckpointError(
                f"{path} has no {key!r}: it is a model-only checkpoint and cannot be resumed"
            )
    parts = [
        ("model", lambda: model.load_state_dict(state["model"])),
        ("optimizer", lambda: optimizer.load_state_dict(state["optimizer"])),
        ("scheduler", lambda: scheduler.load_state_dict(state["scheduler"])),
        ("scaler", lambda: state.get("scaler") and scaler.load_state_dict(state["scaler"])),
        ("rng", lambda: torch.set_rng_state(state["rng"]["torch"])),
    ]
    for key, load in parts:
        try:
            load()
        except (TypeError, ValueError, KeyError, IndexError, RuntimeError) as exc:
            detail = " ".join(str(exc).split())[:200]
            raise CheckpointError(
                f"checkpoint {path}: field {key!r} does not fit this run ({detail})"
            ) from None
    return state


def update_best(
    cfg: Config,
    epoch: int,
    model: DCLNet,
    data: TrainData,
    evals: dict[str, ProtocolResult],
    best: dict | None,
    output: Path,
    is_main: bool,
) -> dict | None:
    """Keep ``best.pt`` at the best validation rank-1 so far (never selected on test data)."""
    if evals.get("validation") is None:
        return best
    r1 = evals["validation"].plain.mean["rank1"]
    if best is not None and r1 <= best["rank1"]:
        return best
    best = {"epoch": epoch + 1, **evals["validation"].plain.mean}
    if is_main:
        state = {**checkpoint_state(cfg, model, data), "epoch": epoch + 1, "validation": best}
        save_checkpoint(state, output / "best.pt")
    return best


def load_best(model: DCLNet, output: Path, best: dict) -> dict | None:
    """Put ``best.pt``'s weights into ``model`` on every rank; which file and epoch, or None.

    Rank 0 reads the file (the other ranks need not see the run folder) and broadcasts the
    weights. None, with a warning, when ``best.pt`` has gone missing: the last model is tested.
    """
    path = output / "best.pt"
    found = True
    if dist_utils.rank() == 0:
        found = path.is_file()
        if found:
            model.load_state_dict(load_checkpoint(path)["model"])
        else:
            logger.warning("%s is missing: the final test uses the last model instead", path)
    found = bool(dist_utils.all_reduce_mean(torch.tensor([float(found)])).item() == 1.0)
    dist_utils.broadcast_state(model)
    return {"file": "best.pt", "epoch": int(best["epoch"])} if found else None
