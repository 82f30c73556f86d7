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
import yaml

from dclnet.config import (
    Config,
    check_protocol,
    from_dict,
    load_config,
    parse_override,
    saved_config,
    to_dict,
)
from dclnet.data.splits import ProtocolSettings
from dclnet.engine import distributed as dist_utils
from dclnet.engine.build import (
    cache_root,
    check_weights,
    loss_kwargs,
    pretrained_weights,
    resolve_device,
)
from dclnet.engine.checkpoint import load_checkpoint, save_checkpoint
from dclnet.engine.run_data import load_eval_data_for
from dclnet.engine.run_folder import LOCK_NAME, refuse_used_run_folder
from dclnet.engine.train import fit
from dclnet.errors import CheckpointError, ConfigError, DclnetError, TrainingError
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
    if cfg.data.dataset == "regdb" and trial_num is None and not _sets_trial(config, overrides):
        # as `dclnet test`: a RegDB trial is a different identity split, never a default
        raise ConfigError(
            "RegDB needs --trial 1..10 (one model), or --trial all (10 models, mean ± std)"
        )
    return fit(cfg, output, resume=resume, overwrite=overwrite)


def _sets_trial(config: Path | None, overrides: list[str] | None) -> bool:
    """Whether the recipe file (a resumed run's config.yaml too) or an override sets data.trial."""
    for item in overrides or []:
        if "trial" in parse_override(item).get("data", {}):
            return True
    if config is None:
        return False
    loaded = yaml.safe_load(Path(config).read_text(encoding="utf-8")) or {}
    return isinstance(loaded.get("data"), dict) and "trial" in loaded["data"]


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


TRIAL_ALL_FILES = (*(f"trial{t}" for t in range(1, 11)), "summary.json")


def check_trial_all_folder(output: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse a used ``--trial all`` folder unless ``resume`` or ``overwrite``, as for one run.

    Without either, finished trials would be skipped and the old run's summary reported as
    if new. ``overwrite`` redoes every trial but deletes nothing it did not write: another
    file at the top of the folder is refused.
    """
    if resume or not output.is_dir():
        return
    present = sorted(p.name for p in output.iterdir() if p.name != LOCK_NAME)
    foreign = [name for name in present if name not in TRIAL_ALL_FILES]
    if foreign or (present and not overwrite):
        listed = foreign or present
        shown = ", ".join(listed[:5]) + (", ..." if len(listed) > 5 else "")
        hint = (
            "--overwrite redoes only the trials' own folders; choose another --output"
            if overwrite
            else "continue it with --resume, start over with --overwrite, or choose another "
            "--output"
        )
        raise TrainingError(f"run folder {output} is not empty ({shown}): {hint}")


def _train_all_trials(
    config, overrides, dataset, root, output: Path, resume: bool, overwrite: bool
) -> dict:
    check_trial_all_folder(output, resume=resume, overwrite=overwrite)
    cfg = resolve_run_config(config, overrides, dataset=dataset, root=root)
    if cfg.data.dataset != "regdb":
        raise ConfigError(
            f"--trial all is for RegDB (10 index trials); data set is {cfg.data.dataset!r}"
        )
    trials = []
    for t in range(1, 11):
        run_dir = output / f"trial{t}"
        done = run_dir / "test_results.json"
        if done.is_file() and not overwrite:  # here only with --resume (see the check above)
            logger.info("trial %d already finished (%s); skipping", t, done)
            trials.append(json.loads(done.read_text()))
            keep_model_only(run_dir / "last.pt")  # if a run stopped before slimming it
            continue
        resume_t = resume and (run_dir / "last.pt").is_file()
        # --resume restarts a trial that stopped before its first checkpoint.
        overwrite_t = overwrite or (resume and not resume_t)
        result = fit(_with_data(cfg, trial=t), run_dir, resume=resume_t, overwrite=overwrite_t)
        trials.append(result["test"])
        keep_model_only(run_dir / "last.pt")
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


RESUME_ONLY = ("optimizer", "scheduler", "scaler", "rng")  # checkpoint keys only --resume reads


def keep_model_only(path: Path) -> None:
    """Drop the resume-only state (optimiser, scheduler, scaler, RNG) from a finished trial's
    ``last.pt``, keeping what ``dclnet test`` and the ``Embedder`` read (model, its arguments,
    config, preprocessing, epoch): ten trials with Adam state would take three times the disk.

    Rank 0 only. A file that is missing, cannot be read or is already slim is left as it is.
    """
    if dist_utils.rank() != 0 or not path.is_file():
        return
    try:
        state = load_checkpoint(path)
    except CheckpointError as exc:
        logger.warning("%s kept as it is: %s", path, exc)
        return
    if any(key in state for key in RESUME_ONLY):
        save_checkpoint({k: v for k, v in state.items() if k not in RESUME_ONLY}, path)


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
    flip: bool | None = None,
    rerank: bool = False,
    cache_dir: Path | None = None,
    progress: bool = True,
) -> ProtocolResult:
    """``dclnet test``: the full protocol (all gallery trials) for a checkpoint.

    The test data come through the same mapping as a training run's final test
    (:func:`~dclnet.engine.run_data.load_eval_data_for`), from the checkpoint's own ``data.*``
    keys (image size, synthetic set, ``skip_corrupt``, ``verify_cache``) with the data set,
    root and protocol of ``settings`` and the cache folder ``cache_dir`` on top. ``flip``
    None tests as the run did (its ``eval.flip``).
    """
    dev = resolve_device(device)
    model, state = load_model(checkpoint, dev)
    cfg = checkpoint_test_config(state, settings, root=root, cache_dir=cache_dir)
    flip = cfg.eval.flip if flip is None else flip
    data = load_eval_data_for(cfg, progress=progress)
    return evaluate_model(
        model, data, device=dev, batch_size=batch_size, flip=flip, rerank=rerank, progress=progress
    )


def checkpoint_test_config(
    state: dict[str, Any],
    settings: ProtocolSettings,
    *,
    root: Path | None,
    cache_dir: Path | None,
) -> Config:
    """The config of a checkpoint's run with a test protocol and data location on top.

    The image size is the checkpoint's ``preprocessing`` (its config's ``data.height`` /
    ``width`` when absent); the cache folder is ``cache_dir`` or the default one, not the
    training machine's.
    """
    saved = saved_config(state.get("config") or {})
    pre = state.get("preprocessing") or {}
    data = dataclasses.replace(
        saved.data,
        dataset=settings.dataset,
        root=str(root) if root is not None else None,
        trial=settings.trial if settings.trial is not None else saved.data.trial,
        height=int(pre.get("height", saved.data.height)),
        width=int(pre.get("width", saved.data.width)),
        cache_dir=str(cache_dir) if cache_dir is not None else None,
    )
    protocol = dataclasses.replace(
        saved.eval,
        mode=settings.mode,
        shots=settings.shots,
        sampler=settings.sampler,
        trials=settings.trials,
        direction=settings.direction,
    )
    return dataclasses.replace(saved, data=data, eval=protocol)


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; the platform's processor string elsewhere)."""
    import platform

    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    """Where a result was measured: machine, CPU model, the instruction-set level torch's CPU
    kernels use, cores, torch version and thread count.

    Float results are bit-identical only on one machine: another CPU (another ISA level, so
    other kernels and summation orders) moves them, so every results file says which it was.
    """
    import os
    import platform

    return {
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores",
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def _effective_recipe(kwargs: dict[str, Any]) -> tuple:
    """What decides a loss: the weights, the dense loss's masks (if it is on) and SRM (PAP)."""
    weights = kwargs["weights"]
    masks = kwargs["dcl_masks"] if weights.dcl > 0 else None
    return weights, masks, bool(kwargs["srm"]) if masks == "pap" else None


def loss_summary(cfg: Config) -> str:
    """One phrase naming the loss a run trains with, e.g. ``loss id+metric+part_id+pap+dcl,
    PAP masks + SRM (= loss.preset full)``; the preset is named whether ``loss.preset`` sets
    it or the individual ``loss.*`` keys amount to it (``dclnet config`` then shows
    ``preset: null``), and ``custom`` when no preset matches.
    """
    from dclnet.losses.objective import ABLATIONS

    kwargs = loss_kwargs(cfg)
    weights, masks, srm = _effective_recipe(kwargs)
    terms = [
        name if value == 1.0 else f"{name} x{value:g}"
        for name, value in dataclasses.asdict(weights).items()
        if value > 0
    ]
    text = "loss " + ("+".join(terms) or "none")
    if masks is not None:
        text += ", PAP masks" if masks == "pap" else ", stripe masks"
        text += (" + SRM" if srm else ", no SRM") if masks == "pap" else ""
    if cfg.loss.preset is not None:
        return f"{text} (loss.preset {cfg.loss.preset})"
    same = [
        name
        for name, preset in ABLATIONS.items()
        if _effective_recipe({**kwargs, **preset}) == (weights, masks, srm)
    ]
    return f"{text} (= loss.preset {same[0]})" if same else f"{text} (custom: no loss.preset)"


def run_demo(
    output: Path, *, config: Path | None, overrides: list[str] | None, overwrite: bool = False
) -> dict:
    """``dclnet demo``: raw-pixel baseline, then DCLNet trained and tested, on synthetic data.

    A used ``output`` is refused first, before the baseline's data are rendered (as
    :func:`~dclnet.engine.train.fit` would refuse it later); the banner names the loss terms
    and the ``loss.preset`` they amount to (:func:`loss_summary`).

    Returns:
        ``baseline`` and ``dclnet`` protocol results, the resolved ``config``, ``seconds``
        (wall time of the whole command), ``pretrain_seconds`` (the one-time synthetic
        pretraining inside it; 0 when its backbone was cached), ``pretrain_bf16`` (whether
        that backbone is the bfloat16 one, ``model.pretrain_amp``) and :func:`machine_info`.
    """
    import time

    from dclnet.evaluation.baselines import pixel_features
    from dclnet.evaluation.protocols import evaluate_splits

    start = time.perf_counter()
    refuse_used_run_folder(output, overwrite=overwrite, can_resume=False)  # before any work
    cfg = resolve_run_config(config, overrides, dataset="synthetic")
    check_weights(cfg)  # before the baseline renders the data
    d = cfg.data
    data = load_eval_data_for(cfg, progress=True)
    base = evaluate_splits(data.paths, pixel_features(data.images), data.splits, data.protocol)
    print("Non-learned baseline (raw pixels) on the SYNTHETIC test set:")
    print(format_table(base))
    print(
        f"\nTraining DCLNet ({cfg.model.arch}, {d.height}x{d.width}, {cfg.optim.epochs} epochs, "
        f"{loss_summary(cfg)}) on the SYNTHETIC set -> {output}"
    )
    pretrain_seconds = _pretrain_once(cfg)
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
        "pretrain_seconds": pretrain_seconds,
        "pretrain_bf16": _pretrain_bf16(cfg),
        **machine_info(),
    }


def _pretrain_bf16(cfg: Config) -> bool:
    """Whether this run's synthetic backbone (made by :func:`_pretrain_once`) is the bfloat16
    one: its cache file says so (``model.pretrain_amp=auto`` decides by a timing)."""
    if cfg.model.pretrained != "synthetic":
        return False
    from dclnet.engine.synthetic_pretrain import RECIPE_VERSION

    return Path(pretrained_weights(cfg)).stem.endswith(f"-bf16-v{RECIPE_VERSION}")


def _pretrain_once(cfg: Config) -> float:
    """Make the ``model.pretrained=synthetic`` backbone when it is not cached yet and return
    the seconds that took (0 when it was cached or is not synthetic); training then loads
    the cached file."""
    import time

    if cfg.model.pretrained != "synthetic":
        return 0.0
    before = set((cache_root(cfg) / "pretrained").glob("*.pt"))
    start = time.perf_counter()
    path = Path(pretrained_weights(cfg))
    return 0.0 if path in before else time.perf_counter() - start
