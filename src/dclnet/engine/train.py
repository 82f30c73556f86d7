"""Training: one readable loop (:func:`fit`) around one explicit :func:`train_step`.

The loop itself: epochs of steps, the metrics-log lines, periodic evaluation and the final
test. What it is built from lives next to it: the model, losses and device of a config in
:mod:`dclnet.engine.build` (whose public names are re-exported here: ``resolve_device``,
``loss_kwargs``, ``pretrained_weights``, ``pretrain_size``, ``check_weights``), checkpoints,
best-model tracking and the metrics log in :mod:`dclnet.engine.run_state`, one step in
:mod:`dclnet.engine.step`.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from dclnet.config import Config, save_config, to_dict
from dclnet.data.datasets import EvalData, TrainData
from dclnet.data.sampler import CrossModalitySampler
from dclnet.engine import distributed as dist_utils
from dclnet.engine.build import (
    augment_config,
    build_model,
    check_weights,
    loss_kwargs,
    pretrain_size,
    pretrained_weights,
    resolve_device,
)
from dclnet.engine.checkpoint import load_checkpoint, save_checkpoint
from dclnet.engine.run_data import load_eval_data_for, load_train_data_for
from dclnet.engine.run_folder import (
    check_resume_config,
    claim_run_folder,
    release_run_folder,
    truncate_metrics,
)
from dclnet.engine.run_state import (
    MetricsLog,
    checkpoint_state,
    load_best,
    restore_checkpoint,
    update_best,
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
from dclnet.errors import NonFiniteLossError
from dclnet.evaluation.protocols import ProtocolResult, format_table, write_json
from dclnet.evaluation.run import evaluate_model
from dclnet.models.dclnet import DCLNet

# fit is defined here; the other names are dclnet.engine.build's, re-exported because scripts
# and the commands import them from this module.
__all__ = [
    "check_weights",
    "fit",
    "loss_kwargs",
    "pretrain_size",
    "pretrained_weights",
    "resolve_device",
]

logger = logging.getLogger(__name__)


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
    model = build_model(cfg, data.num_classes).to(device)
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
        augment=augment_config(cfg),
        channels_last=cfg.train.channels_last,
        compile=cfg.train.compile,
        compile_scope=cfg.train.compile_scope,
        sync_bn=cfg.train.sync_bn,
        cam_fold_bn=cfg.loss.cam_fold_bn,
    )
    start_epoch, best = 0, None
    if resume:
        state = restore_checkpoint(output / "last.pt", model, optimizer, scheduler, ctx.scaler)
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
            best = update_best(cfg, epoch, model, data, evals, best, output, is_main)
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
    tested = load_best(model, output, best) if best is not None else None
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
