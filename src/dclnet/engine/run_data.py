"""A run config → its data: the one place that maps ``data.*`` and ``eval.*`` keys onto the
loaders of :mod:`dclnet.data.datasets` (which, like every library component, take plain
keyword arguments).

Training, its periodic and final test, ``dclnet test`` (a checkpoint's saved config with
the command line's protocol on top) and ``dclnet demo`` all go through here, so a data key
such as ``data.skip_corrupt`` means the same thing everywhere.
"""

from __future__ import annotations

from typing import Any

from dclnet.config import Config, DataConfig
from dclnet.data.datasets import EvalData, TrainData, load_eval_data, load_train_data


def source_kwargs(d: DataConfig) -> dict[str, Any]:
    """Where the images come from, at what size, and how the cache treats them."""
    return {
        "trial": d.trial,
        "size": (d.height, d.width),
        "cache_dir": d.cache_dir,
        "skip_corrupt": d.skip_corrupt,
        "verify_cache": d.verify_cache,
        "synthetic_ids": d.synthetic_ids,
        "synthetic_seed": d.synthetic_seed,
        "synthetic_style": d.synthetic_style,
    }


def load_train_data_for(cfg: Config, *, progress: bool) -> TrainData:
    """The training arrays (and validation split, ``train.validation``) of the config."""
    d = cfg.data
    return load_train_data(
        d.dataset,
        d.root,
        **source_kwargs(d),
        validation=cfg.train.validation,
        val_fraction=cfg.train.val_fraction,
        seed=cfg.train.seed,
        progress=progress,
    )


def load_eval_data_for(cfg: Config, *, progress: bool) -> EvalData:
    """The test protocol of the configured data set, with the ``eval.*`` settings."""
    d, e = cfg.data, cfg.eval
    return load_eval_data(
        d.dataset,
        d.root,
        **source_kwargs(d),
        mode=e.mode,
        shots=e.shots,
        sampler=e.sampler,
        trials=e.trials,
        direction=e.direction,
        progress=progress,
    )
