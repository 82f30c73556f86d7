"""Building a run from its config: device, loss arguments, pretrained weights, model.

The one place a :class:`~dclnet.config.Config` becomes the library's plain arguments for
training: the device (``train.device``), the keyword arguments of the objective
(``loss.*``, a preset winning), the backbone weights (``model.pretrained``, ``synthetic``
resolved to its cached file) and the network and augmentation built from them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from dclnet.config import Config, check_device
from dclnet.data.augment import AugmentConfig
from dclnet.errors import ConfigError
from dclnet.losses.objective import ABLATIONS, LossWeights
from dclnet.models.dclnet import DCLNet
from dclnet.models.resnet import check_pretrained


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


def cache_root(cfg: Config) -> Path:
    """The cache folder of a run: ``data.cache_dir`` or the default one (its ``pretrained/``
    holds the synthetic backbones)."""
    from dclnet.data.cache import default_cache_dir

    return Path(cfg.data.cache_dir).expanduser() if cfg.data.cache_dir else default_cache_dir()


def pretrained_weights(cfg: Config) -> str | Path | None:
    """``model.pretrained``, with ``synthetic`` resolved to its cached weights file.

    The synthetic backbone is pretrained at ``model.pretrain_size`` (default: the data size)
    and then used at the data size: a file pretrained at 96 x 48 serves a 192 x 96 recipe
    as it is, never re-pretrained at the larger size.
    """
    m = cfg.model
    if m.pretrained != "synthetic":
        return m.pretrained
    from dclnet.engine.synthetic_pretrain import synthetic_backbone

    cache = cache_root(cfg)
    return synthetic_backbone(
        m.arch,
        pretrain_size(cfg),
        cache,
        layer3_stride=m.layer3_stride,
        ids=m.pretrain_ids,
        steps=m.pretrain_steps,
        batch_size=m.pretrain_batch,
        shift=m.pretrain_shift,
        parts=m.pretrain_parts,
        local=m.pretrain_local,
        style=m.pretrain_style,
        lr=m.pretrain_lr,
        last_stride=m.pretrain_last_stride,
        seed=m.pretrain_seed,
        amp=m.pretrain_amp,
    )


def pretrain_size(cfg: Config) -> tuple[int, int]:
    """H x W the synthetic backbone is pretrained at: ``model.pretrain_size`` or the data size."""
    if cfg.model.pretrain_size is not None:
        return tuple(cfg.model.pretrain_size)
    return (cfg.data.height, cfg.data.width)


def check_weights(cfg: Config) -> None:
    """Raise now if ``model.pretrained`` cannot be loaded: before any data is rendered or cached.

    ``synthetic`` weights are made (and cached) by the run itself, so only their recipe is
    checked: a size the backbone cannot be pretrained at (``model.pretrain_size``, or the
    data size with ``model.pretrain_last_stride`` 2), or a pretraining setting given without
    ``model.pretrained=synthetic``.
    """
    m = cfg.model
    if m.pretrained == "synthetic":
        if m.pretrain_size is not None or m.pretrain_last_stride != 1:
            from dclnet.engine.synthetic_pretrain import check_pretrain_size

            check_pretrain_size(pretrain_size(cfg), m.layer3_stride, m.pretrain_last_stride)
        return
    for key, value, default in (
        ("pretrain_size", m.pretrain_size and list(m.pretrain_size), None),
        ("pretrain_style", m.pretrain_style, "default"),
        ("pretrain_last_stride", m.pretrain_last_stride, 1),
        ("pretrain_seed", m.pretrain_seed, 0),
        ("pretrain_batch", m.pretrain_batch, 64),
        ("pretrain_amp", m.pretrain_amp, "off"),
    ):
        if value != default:
            raise ConfigError(
                f"model.{key}={value} applies only to model.pretrained=synthetic (this run "
                f"loads {m.pretrained!r}); remove it"
            )
    check_pretrained(m.pretrained, m.arch)


def build_model(cfg: Config, num_classes: int) -> DCLNet:
    """The network ``cfg.model`` describes, for ``num_classes`` training identities."""
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


def augment_config(cfg: Config) -> AugmentConfig:
    """The training augmentation ``cfg.augment`` describes."""
    return AugmentConfig(**dataclasses.asdict(cfg.augment))
