"""Command-level workflows: training runs (one or all RegDB trials), testing, the demo."""

from __future__ import annotations

import dataclasses
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dclnet.config import Config, check_protocol, from_dict, load_config, to_dict
from dclnet.data.datasets import load_eval_data
from dclnet.data.splits import ProtocolSettings
from dclnet.engine import distributed as dist_utils
from dclnet.engine.checkpoint import load_checkpoint
from dclnet.engine.train import fit, resolve_device
from dclnet.errors import CheckpointError, ConfigError, DclnetError
from dclnet.evaluation.protocols import METRIC_KEYS, ProtocolResult, format_table, write_json
from dclnet.evaluation.run import evaluate_model

logger = logging.getLogger(__name__)


def _with_data(cfg: Config, **changes: Any) -> Config:
    changes = {k: v for k, v in changes.items() if v is not None}
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, **changes))


def resolve_run_config(
    config: Path | None, overrides: list[str] | None, *, dataset=None, root=None, trial=None
) -> Config:
    """Recipe file + overrides, then ``--dataset/--root/--trial`` on top."""
    cfg = load_config(config, overrides)
    cfg = _with_data(
        cfg, dataset=dataset, root=str(root) if root is not None else None, trial=trial
    )
    check_protocol(from_dict(to_dict(cfg)))  # --dataset may have changed what eval.* allows
    if cfg.data.dataset != "synthetic" and cfg.data.root is None:
        raise ConfigError(f"data set {cfg.data.dataset!r} needs --root (the raw data-set folder)")
    return cfg


def run_training(
    *,
    config: Path | None,
    overrides: list[str] | None,
    dataset: str | None,
    root: Path | None,
    trial: str | None,
    output: Path,
    resume: bool,
    overwrite: bool = False,
) -> dict:
    """``dclnet train``: one run, or RegDB ``--trial all`` (10 runs, then mean ± std).

    A run folder that already holds a run is refused unless ``resume`` (continue it) or
    ``overwrite`` (start over; with ``--trial all`` finished trials are redone too).

    Under ``torchrun`` (``WORLD_SIZE > 1``) this process joins the process group first
    (NCCL with CUDA, else Gloo) and leaves it at the end.
    """
    created = dist_utils.init_from_env()
    try:
        return _run_training(config, overrides, dataset, root, trial, output, resume, overwrite)
    finally:
        if created:
            dist_utils.cleanup()


def _run_training(
    config, overrides, dataset, root, trial, output: Path, resume: bool, overwrite: bool
) -> dict:
    if resume and overwrite:
        raise DclnetError("--resume continues a run and --overwrite starts over; pass one")
    if resume:
        saved = output / "config.yaml"
        if trial == "all":
            saved = output / "trial1" / "config.yaml"
        if not saved.is_file():
            raise DclnetError(f"cannot resume: {saved} does not exist (wrong --output?)")
        config = saved
    if trial == "all":
        return _train_all_trials(config, overrides, dataset, root, output, resume, overwrite)
    trial_num = _parse_trial(trial)
    cfg = resolve_run_config(config, overrides, dataset=dataset, root=root, trial=trial_num)
    return fit(cfg, output, resume=resume, overwrite=overwrite)


def _parse_trial(trial: str | None) -> int | None:
    if trial is None:
        return None
    try:
        value = int(trial)
    except ValueError:
        raise ConfigError(f"--trial must be 1..10 or 'all', got {trial!r}") from None
    if not 1 <= value <= 10:
        raise ConfigError(f"--trial must be 1..10 or 'all', got {value}")
    return value


def _train_all_trials(
    config, overrides, dataset, root, output: Path, resume: bool, overwrite: bool
) -> dict:
    cfg = resolve_run_config(config, overrides, dataset=dataset, root=root)
    if cfg.data.dataset != "regdb":
        raise ConfigError(
            f"--trial all is for RegDB (10 index trials); data set is {cfg.data.dataset!r}"
        )
    trials = []
    for t in range(1, 11):
        run_dir = output / f"trial{t}"
        done = run_dir / "test_results.json"
        if done.is_file() and not overwrite:  # finished trials are redone only on --overwrite
            logger.info("trial %d already finished (%s); skipping", t, done)
            trials.append(json.loads(done.read_text()))
            continue
        resume_t = resume and (run_dir / "last.pt").is_file()
        # --resume restarts a trial that stopped before its first checkpoint.
        overwrite_t = overwrite or (resume and not resume_t)
        result = fit(_with_data(cfg, trial=t), run_dir, resume=resume_t, overwrite=overwrite_t)
        trials.append(result["test"])
    means = [t["mean"] for t in trials]
    summary = {
        "protocol": {**trials[0]["protocol"], "trial": "1..10"},
        "trials": means,
        "mean": {k: float(np.mean([m[k] for m in means])) for k in METRIC_KEYS},
        "std": {k: float(np.std([m[k] for m in means])) for k in METRIC_KEYS},
    }
    if dist_utils.rank() != 0:
        return summary
    write_json(summary, output / "summary.json")
    print(
        "RegDB, 10 trials (one model each): "
        + "  ".join(f"{k} {summary['mean'][k]:.2f} ± {summary['std'][k]:.2f}" for k in METRIC_KEYS)
    )
    return summary


def load_model(checkpoint: str | Path, device: str | torch.device = "cpu"):
    """Rebuild the network from a checkpoint (no ImageNet weights are fetched).

    Returns:
        ``(model in eval mode, checkpoint dict)``.
    """
    from dclnet.models.dclnet import DCLNet
    from dclnet.models.resnet import RandomInitWarning

    state = load_checkpoint(checkpoint)
    args = dict(state["model_args"])
    args["pretrained"] = None
    try:
        with warnings.catch_warnings():  # weights come from the checkpoint, not random init
            warnings.simplefilter("ignore", RandomInitWarning)
            model = DCLNet(**args)
    except (TypeError, ValueError, DclnetError) as exc:
        raise CheckpointError(
            f"checkpoint {checkpoint}: field 'model_args' does not build a DCLNet ({exc})"
        ) from None
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(first[:3])[:300]
        raise CheckpointError(
            f"{checkpoint}: weights do not match the architecture {args.get('arch')}: {detail}"
        ) from None
    return model.to(device).eval(), state


def test_checkpoint(
    checkpoint: Path,
    settings: ProtocolSettings,
    *,
    root: Path | None,
    device: str = "auto",
    batch_size: int = 128,
    flip: bool = False,
    rerank: bool = False,
    cache_dir: Path | None = None,
    progress: bool = True,
) -> ProtocolResult:
    """``dclnet test``: the full protocol (all gallery trials) for a checkpoint."""
    dev = resolve_device(device)
    model, state = load_model(checkpoint, dev)
    pre = state.get("preprocessing", {})
    data_cfg = state.get("config", {}).get("data", {})
    size = (int(pre.get("height", 288)), int(pre.get("width", 144)))
    data = load_eval_data(
        settings.dataset,
        root,
        trial=settings.trial or 1,
        size=size,
        cache_dir=cache_dir,
        synthetic_ids=data_cfg.get("synthetic_ids", 64),
        synthetic_seed=data_cfg.get("synthetic_seed", 0),
        mode=settings.mode,
        shots=settings.shots,
        sampler=settings.sampler,
        trials=settings.trials,
        direction=settings.direction,
        progress=progress,
    )
    return evaluate_model(
        model, data, device=dev, batch_size=batch_size, flip=flip, rerank=rerank, progress=progress
    )


def machine_info() -> dict[str, Any]:
    """Where a result was measured: machine, cores, torch version and thread count."""
    import os
    import platform

    return {
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def run_demo(
    output: Path, *, config: Path | None, overrides: list[str] | None, overwrite: bool = False
) -> dict:
    """``dclnet demo``: raw-pixel baseline, then DCLNet trained and tested, on synthetic data.

    Returns:
        ``baseline`` and ``dclnet`` protocol results, the resolved ``config``, ``seconds``
        (wall time of the whole command) and :func:`machine_info`.
    """
    import time

    from dclnet.evaluation.baselines import pixel_features
    from dclnet.evaluation.protocols import evaluate_splits

    start = time.perf_counter()
    cfg = resolve_run_config(config, overrides, dataset="synthetic")
    d, e = cfg.data, cfg.eval
    data = load_eval_data(
        "synthetic",
        size=(d.height, d.width),
        synthetic_ids=d.synthetic_ids,
        synthetic_seed=d.synthetic_seed,
        mode=e.mode,
        trials=e.trials,
    )
    base = evaluate_splits(data.paths, pixel_features(data.images), data.splits, data.protocol)
    print("Non-learned baseline (raw pixels) on the SYNTHETIC test set:")
    print(format_table(base))
    print(
        f"\nTraining DCLNet ({cfg.model.arch}, {d.height}x{d.width}, {cfg.optim.epochs} epochs, "
        f"loss preset {cfg.loss.preset or 'custom/full'}) on the SYNTHETIC set -> {output}"
    )
    result = fit(cfg, output, overwrite=overwrite)
    print("\nSYNTHETIC data — summary (mean over trials, percent):")
    for name, summary in (("raw pixels", base.plain.mean), ("DCLNet", result["test"]["mean"])):
        print(
            f"  {name:<11} rank-1 {summary['rank1']:6.2f}   mAP {summary['mAP']:6.2f}   "
            f"mINP {summary['mINP']:6.2f}"
        )
    seconds = time.perf_counter() - start
    print(f"  (wall time {seconds / 60:.1f} min)")
    return {
        "baseline": base.to_json(),
        "dclnet": result["test"],
        "config": to_dict(cfg),
        "seconds": seconds,
        **machine_info(),
    }
