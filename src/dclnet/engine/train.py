"""Training: one readable loop (:func:`fit`) around one explicit :func:`train_step`."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from dclnet.config import Config, check_device, save_config, to_dict
from dclnet.data.augment import IMAGENET_MEAN, IMAGENET_STD, AugmentConfig
from dclnet.data.datasets import EvalData, TrainData
from dclnet.data.sampler import CrossModalitySampler
from dclnet.engine import distributed as dist_utils
from dclnet.engine.checkpoint import load_checkpoint, save_checkpoint
from dclnet.engine.run_data import load_eval_data_for, load_train_data_for
from dclnet.engine.run_folder import (
    check_resume_config,
    claim_run_folder,
    release_run_folder,
    truncate_metrics,
)
from dclnet.engine.runlog import (
    config_summary,
    data_statistics,
    epoch_summary,
    run_log_file,
)
from dclnet.engine.schedule import build_optimizer, build_scheduler
from dclnet.engine.step import (
    BatchPrefetcher,
    StepContext,
    build_step_context,
    configure_cudnn,
    freeze_unused,
    resolve_amp,
    step_generator,
    train_step,
)
from dclnet.errors import CheckpointError, ConfigError, NonFiniteLossError
from dclnet.evaluation.protocols import ProtocolResult, format_table, write_json
from dclnet.evaluation.run import evaluate_model
from dclnet.losses.objective import ABLATIONS, LossWeights
from dclnet.models.dclnet import DCLNet
from dclnet.models.resnet import check_pretrained

logger = logging.getLogger(__name__)


def resolve_device(name: str, option: str = "train.device") -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; otherwise the named device.

    ``option`` names the setting in messages (``"--device"`` for the commands).
    """
    check_device(name, option)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{option}={name!r} but CUDA is not available; use cpu or auto")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ConfigError(
                f"{option}={name!r} but this machine has {count} CUDA device(s): "
                f"cuda:0..cuda:{count - 1}"
            )
    return device


def loss_kwargs(cfg: Config) -> dict[str, Any]:
    """Keyword arguments of :func:`dclnet_objective` from ``cfg.loss`` (a preset wins)."""
    c = cfg.loss
    kwargs: dict[str, Any] = {
        "weights": LossWeights(id=c.id, metric=c.metric, part_id=c.part_id, pap=c.pap, dcl=c.dcl),
        "metric": c.metric_loss,
        "center_push": c.center_push,
        "label_smoothing": c.label_smoothing,
        "dcl_masks": c.dcl_masks,
        "srm": c.srm,
        "cam_class": c.cam_class,
        "tau": c.tau,
        "continuity_weight": c.continuity_weight,
        "erase_rule": c.erase_rule,
        "num_parts": cfg.model.num_parts,
        "dcl_precision": c.dcl_precision,
    }
    if c.preset is not None:
        kwargs.update(ABLATIONS[c.preset])
    return kwargs


def pretrained_weights(cfg: Config) -> str | Path | None:
    """``model.pretrained``, with ``synthetic`` resolved to its cached weights file.

    The synthetic backbone is pretrained at ``model.pretrain_size`` (default: the data size)
    and then used at the data size: a file pretrained at 96 x 48 serves a 192 x 96 recipe
    as it is, never re-pretrained at the larger size.
    """
    m = cfg.model
    if m.pretrained != "synthetic":
        return m.pretrained
    from dclnet.data.cache import default_cache_dir
    from dclnet.engine.synthetic_pretrain import synthetic_backbone

    cache = Path(cfg.data.cache_dir).expanduser() if cfg.data.cache_dir else default_cache_dir()
    return synthetic_backbone(
        m.arch,
        pretrain_size(cfg),
        cache,
        layer3_stride=m.layer3_stride,
        ids=m.pretrain_ids,
        steps=m.pretrain_steps,
        shift=m.pretrain_shift,
        parts=m.pretrain_parts,
        local=m.pretrain_local,
        style=m.pretrain_style,
        lr=m.pretrain_lr,
    )


def pretrain_size(cfg: Config) -> tuple[int, int]:
    """H x W the synthetic backbone is pretrained at: ``model.pretrain_size`` or the data size."""
    if cfg.model.pretrain_size is not None:
        return tuple(cfg.model.pretrain_size)
    return (cfg.data.height, cfg.data.width)


def check_weights(cfg: Config) -> None:
    """Raise now if ``model.pretrained`` cannot be loaded: before any data is rendered or cached.

    ``synthetic`` weights are made (and cached) by the run itself, so only their recipe is
    checked: a ``model.pretrain_size`` the backbone cannot be pretrained at, or one given
    without ``model.pretrained=synthetic``.
    """
    m = cfg.model
    if m.pretrained == "synthetic":
        if m.pretrain_size is not None:
            from dclnet.engine.synthetic_pretrain import check_pretrain_size

            check_pretrain_size(tuple(m.pretrain_size), m.layer3_stride)
        return
    if m.pretrain_size is not None:
        raise ConfigError(
            f"model.pretrain_size={list(m.pretrain_size)} applies only to "
            f"model.pretrained=synthetic (this run loads {m.pretrained!r}); remove it"
        )
    if m.pretrain_style != "default":
        raise ConfigError(
            f"model.pretrain_style={m.pretrain_style} applies only to "
            f"model.pretrained=synthetic (this run loads {m.pretrained!r}); remove it"
        )
    check_pretrained(m.pretrained, m.arch)


def _build_model(cfg: Config, num_classes: int) -> DCLNet:
    m = cfg.model
    return DCLNet(
        num_classes,
        arch=m.arch,
        pretrained=pretrained_weights(cfg),
        split=m.split,
        num_parts=m.num_parts,
        gem_p=m.gem_p,
        pixel_init=m.pixel_init,
        layer3_stride=m.layer3_stride,
    )


def _augment_config(cfg: Config) -> AugmentConfig:
    return AugmentConfig(**dataclasses.asdict(cfg.augment))


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


def _restore(path: Path, model: DCLNet, optimizer, scheduler, scaler) -> dict[str, Any]:
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


def fit(
    cfg: Config,
    output: Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Train DCLNet as configured; write checkpoints, logs and final test results to ``output``.

    ``output`` must be new or empty unless ``resume`` (continue from ``output/last.pt``; the
    metrics log is cut back to the checkpoint's step) or ``overwrite`` (delete the previous
    run's files first). One training at a time holds a folder (``output/.lock``).

    The run logs its config (keys changed from the defaults), a statistics table of the
    training data and one summary line per epoch; rank 0 mirrors the ``dclnet`` loggers into
    ``output/log.txt`` (appended on ``resume``).

    In a process group (``torchrun``, see docs/distributed.md) every rank trains on its own
    sampler stream under DDP; rank 0 alone writes the run folder, and evaluation is sharded
    across the ranks. ``output`` must be visible to every rank for ``resume``.

    Returns:
        ``{"test": ProtocolResult JSON or None, "validation": best validation metrics or None}``.
    """
    output = Path(output)
    if resume and (output / "last.pt").is_file():  # every rank: all stop, or none
        saved = load_checkpoint(output / "last.pt").get("config") or {}
        check_resume_config(saved, to_dict(cfg), output / "last.pt")
    lock = None
    if dist_utils.rank() == 0:  # rank 0 alone writes the folder
        lock = claim_run_folder(output, resume=resume, overwrite=overwrite)
    try:
        with run_log_file(output, enabled=dist_utils.rank() == 0):
            return _fit(cfg, output, resume=resume, progress=progress)
    finally:
        release_run_folder(lock)


def _fit(cfg: Config, output: Path, *, resume: bool, progress: bool) -> dict:
    rank, world = dist_utils.rank(), dist_utils.world_size()
    is_main = rank == 0
    output = Path(output)
    device = resolve_device(cfg.train.device) if world == 1 else dist_utils.local_device()
    amp_dtype = resolve_amp(cfg.train.amp, device)
    torch.manual_seed(cfg.train.seed)
    np.random.seed(cfg.train.seed % 2**32)
    configure_cudnn(device, cfg.train.deterministic)
    if is_main:
        logger.info("%s training in %s", "resuming" if resume else "starting", output)
        logger.info("%s", config_summary(cfg))
    check_weights(cfg)
    data = load_train_data_for(cfg, progress=progress and is_main)
    model = _build_model(cfg, data.num_classes).to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    kwargs = loss_kwargs(cfg)
    freeze_unused(model, kwargs["weights"])
    optimizer = build_optimizer(
        model.parameter_groups(),
        name=cfg.optim.optimizer,
        lr=cfg.optim.lr,
        backbone_lr_mult=cfg.optim.backbone_lr_mult,
        weight_decay=cfg.optim.weight_decay,
        momentum=cfg.optim.momentum,
    )
    scheduler = build_scheduler(
        optimizer,
        warmup_epochs=cfg.optim.warmup_epochs,
        milestones=cfg.optim.milestones,
        gamma=cfg.optim.gamma,
    )
    ctx = build_step_context(
        model,
        optimizer,
        device=device,
        amp_dtype=amp_dtype,
        loss_kwargs=kwargs,
        augment=_augment_config(cfg),
        channels_last=cfg.train.channels_last,
        compile=cfg.train.compile,
        compile_scope=cfg.train.compile_scope,
        sync_bn=cfg.train.sync_bn,
        cam_fold_bn=cfg.loss.cam_fold_bn,
    )
    start_epoch, best = 0, None
    if resume:
        state = _restore(output / "last.pt", model, optimizer, scheduler, ctx.scaler)
        start_epoch, best = int(state["epoch"]), state.get("best")
        logger.info("resumed from %s at epoch %d", output / "last.pt", start_epoch)
    if is_main:
        save_config(cfg, output / "config.yaml")
    sampler = CrossModalitySampler(
        data.visible.labels,
        data.infrared.labels,
        num_ids=cfg.data.num_ids,
        num_instances=cfg.data.num_instances,
        seed=cfg.train.seed,
        rank=rank,
        world_size=world,
    )
    log = MetricsLog(output, cfg.train.tensorboard, enabled=is_main)
    steps_per_epoch = len(sampler)
    if is_main:
        table = data_statistics(
            data,
            cfg.data.dataset,
            batches_per_epoch=steps_per_epoch,
            num_ids=cfg.data.num_ids,
            num_instances=cfg.data.num_instances,
            world_size=world,
        )
        logger.info("%s", table)
    if resume and is_main:
        truncate_metrics(
            output / "metrics.jsonl",
            start_epoch * steps_per_epoch,
            drop_test=start_epoch >= cfg.optim.epochs,  # the final test is run again
        )
    try:
        started = time.perf_counter()
        for epoch in range(start_epoch, cfg.optim.epochs):
            stats = _train_epoch(
                ctx, data, sampler, epoch, cfg, log, steps_per_epoch, progress and is_main
            )
            if is_main:  # ETA: mean wall time of this session's epochs (evaluation included)
                per_epoch = (time.perf_counter() - started) / (epoch + 1 - start_epoch)
                eta = per_epoch * (cfg.optim.epochs - epoch - 1)
                logger.info(
                    "%s", epoch_summary(epoch + 1, cfg.optim.epochs, **stats, eta_seconds=eta)
                )
            scheduler.step()
            evals = _periodic_eval(
                cfg, epoch, model, data, device, log, is_main, (epoch + 1) * steps_per_epoch
            )
            best = _update_best(cfg, epoch, model, data, evals, best, output, is_main)
            if is_main:
                save_checkpoint(
                    {
                        **checkpoint_state(cfg, model, data),
                        "epoch": epoch + 1,
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "scaler": ctx.scaler.state_dict() if ctx.scaler.is_enabled() else None,
                        "rng": {"torch": torch.get_rng_state()},
                        "best": best,
                    },
                    output / "last.pt",
                )
            dist_utils.barrier()
        test = _final_test(cfg, model, data, best, device, log, output, progress, steps_per_epoch)
    finally:
        log.close()
    return {"test": test, "validation": best}


def _evaluate(
    cfg: Config, model: DCLNet, data: EvalData, device: torch.device, progress: bool
) -> ProtocolResult:
    """Evaluate the bare network; in a process group sharded, with rank 0's BN statistics."""
    dist_utils.broadcast_buffers(model)
    return evaluate_model(
        model,
        data,
        device=device,
        batch_size=cfg.eval.batch_size,
        flip=cfg.eval.flip,
        progress=progress,
        sharded=dist_utils.is_distributed(),
    )


def _update_best(
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


def _final_test(
    cfg: Config,
    model: DCLNet,
    data: TrainData,
    best: dict | None,
    device: torch.device,
    log: MetricsLog,
    output: Path,
    progress: bool,
    steps_per_epoch: int,
) -> dict | None:
    """Test ``best.pt`` (with a validation split) or the last model; rank 0 writes the result.

    Returns:
        The result JSON (``test_results.json``) with ``"checkpoint"``: the file and epoch of
        the weights tested; None when the data set has no test protocol.
    """
    if not data.has_test:
        return None
    is_main = dist_utils.rank() == 0
    tested = _load_best(model, output, best) if best is not None else None
    if tested is None:
        tested = {"file": "last.pt", "epoch": cfg.optim.epochs}
    test_data = load_eval_data_for(cfg, progress=progress and is_main)
    result = _evaluate(cfg, model, test_data, device, progress and is_main)
    out = {**result.to_json(), "checkpoint": tested}
    if is_main:
        write_json(out, output / "test_results.json")
        log.write(
            "test",
            cfg.optim.epochs * steps_per_epoch,
            monitoring=False,
            checkpoint=tested["file"].removesuffix(".pt"),
            epoch=tested["epoch"],
            **result.plain.mean,
        )
        print(format_table(result))
        mean = result.plain.mean
        why = ", best validation rank-1" if tested["file"] == "best.pt" else ", the last epoch"
        logger.info(
            "final test of %s (epoch %d%s): rank-1 %.2f mAP %.2f mINP %.2f; table in %s",
            tested["file"],
            tested["epoch"],
            why,
            mean["rank1"],
            mean["mAP"],
            mean["mINP"],
            output / "test_results.json",
        )
    return out


def _load_best(model: DCLNet, output: Path, best: dict) -> dict | None:
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


def _train_epoch(
    ctx: StepContext,
    data: TrainData,
    sampler: CrossModalitySampler,
    epoch: int,
    cfg: Config,
    log: MetricsLog,
    steps_per_epoch: int,
    progress: bool,
) -> dict[str, Any]:
    """One epoch; its mean losses, learning rate, seconds and images/s (for the summary line)."""
    sampler.set_epoch(epoch)
    batches = list(sampler)
    ctx.model.train()
    sums: dict[str, Tensor] = {}
    totals: dict[str, float] = {}  # epoch sums of the loss terms, from the window means
    window = 0
    lr = ctx.optimizer.param_groups[0]["lr"]
    start = time.perf_counter()
    pin = ctx.device.type == "cuda"
    bar = tqdm(
        BatchPrefetcher(data, batches, pin=pin, workers=cfg.train.workers),
        total=len(batches),
        desc=f"epoch {epoch + 1}/{cfg.optim.epochs}",
        disable=not progress,
        leave=False,
    )
    for step, (vis, ir, labels) in enumerate(bar):
        gen = step_generator(cfg.train.seed, epoch, step, sampler.rank)
        losses = train_step(ctx, vis, ir, labels, gen)
        for k, v in losses.items():
            sums[k] = sums.get(k, 0) + v
        window += 1
        last = step == len(batches) - 1
        if (step + 1) % cfg.train.log_every == 0 or last:
            # The only host sync: one read of the window's sums, averaged over the ranks (so
            # that every rank sees the same values and stops together on a non-finite loss).
            values = dist_utils.all_reduce_mean(torch.stack(list(sums.values())))
            means = {k: v / window for k, v in zip(sums, values.tolist())}
            if not all(math.isfinite(v) for v in means.values()):
                raise NonFiniteLossError(
                    f"non-finite loss at epoch {epoch + 1} step {step}: "
                    f"{means}; lower optim.lr or disable train.amp"
                )
            bar.set_postfix({k: f"{v:.3f}" for k, v in means.items()})
            for k, v in means.items():
                totals[k] = totals.get(k, 0.0) + v * window
            log.write("train", epoch * steps_per_epoch + step + 1, epoch=epoch + 1, lr=lr, **means)
            sums, window = {}, 0
    bar.close()
    elapsed = time.perf_counter() - start
    # All ranks step in lockstep, so the run's throughput is world_size times one rank's.
    images = 2 * len(batches) * cfg.data.num_ids * cfg.data.num_instances * sampler.world_size
    images_per_s = images / max(elapsed, 1e-9)
    log.write(
        "epoch",
        (epoch + 1) * steps_per_epoch,
        epoch=epoch + 1,
        seconds=elapsed,
        images_per_s=images_per_s,
    )
    return {
        "losses": {k: v / max(len(batches), 1) for k, v in totals.items()},
        "lr": lr,
        "seconds": elapsed,
        "images_per_s": images_per_s,
    }


def _periodic_eval(
    cfg: Config,
    epoch: int,
    model: DCLNet,
    data: TrainData,
    device,
    log: MetricsLog,
    is_main: bool,
    step: int,
) -> dict[str, ProtocolResult]:
    every, last = cfg.train.eval_every, epoch + 1 == cfg.optim.epochs
    due = (every > 0 and (epoch + 1) % every == 0) or last
    results: dict[str, ProtocolResult] = {}
    if not due:
        return results
    if data.validation is not None:
        res = _evaluate(cfg, model, data.validation, device, progress=False)
        results["validation"] = res
        log.write("validation", step, epoch=epoch + 1, **res.plain.mean)
        if is_main:
            logger.info(
                "epoch %d validation: rank-1 %.2f mAP %.2f",
                epoch + 1,
                res.plain.mean["rank1"],
                res.plain.mean["mAP"],
            )
    if every > 0 and not last and data.has_test:
        res = _evaluate(cfg, model, load_eval_data_for(cfg, progress=False), device, False)
        log.write("monitoring", step, epoch=epoch + 1, uses_test_data=True, **res.plain.mean)
        if is_main:
            logger.info(
                "epoch %d monitoring on TEST data (not used for selection): rank-1 %.2f mAP %.2f",
                epoch + 1,
                res.plain.mean["rank1"],
                res.plain.mean["mAP"],
            )
    return results
