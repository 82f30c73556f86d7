"""Run configuration schema: frozen dataclasses, one per section, and the tables of valid values.

Each field is one config key ``section.name``; the comment on its line is what ``dclnet config
--keys`` shows (:mod:`dclnet.config_keys` reads it from this source). Valid values of a key
live in ``_CHOICES`` (a list), ``_RANGES`` (numeric bounds), ``_ASCENDING`` (sorted tuples) and
``_PATTERNS`` (a regex).

Loading and validating a config (defaults → YAML → overrides) is :mod:`dclnet.config_load`;
describing the keys is :mod:`dclnet.config_keys`. Their public names (``load_config``,
``to_dict``, ``format_keys``, ...) import from here too: those modules import the schema from
this one, so the names are resolved on first use rather than imported at the top.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

DATASETS = ("synthetic", "sysu", "regdb", "llcm")
ARCHS = ("resnet10", "resnet18", "resnet34", "resnet50")
METRIC_LOSSES = ("center_cluster", "triplet")
DCL_MASKS = ("pap", "stripes")
CAM_CLASSES = ("label", "predicted")
CENTER_PUSH = ("identities", "released")
PIXEL_INITS = ("default", "normal")
ERASE_RULES = ("majority", "top_left")  # top_left = released code (nearest-neighbour mask)
DCL_PRECISIONS = ("auto", "fp32", "tf32", "bf16")  # dense-loss products (losses.dense_contrastive)
OPTIMIZERS = ("adam", "sgd")
PRESETS = ("baseline", "dcl_stripes", "dcl_pap", "full")
VALIDATION = ("none", "sysu", "fraction")
AMP_DTYPES = ("auto", "bfloat16", "float16", "off")
COMPILE_SCOPES = ("step", "network")  # what train.compile=true compiles
VERIFY_CACHE = ("stat", "hash")
SYNTHETIC_STYLES = ("default", "wide", "heldout")  # = data.sources.synthetic_style.STYLES


@dataclass(frozen=True)
class DataConfig:
    """Which data set, where, and how batches are drawn."""

    dataset: str = "synthetic"  # one of DATASETS
    root: str | None = None  # raw data-set root (not needed for "synthetic")
    trial: int = 1  # RegDB index trial 1..10
    height: int = 288  # cached / network input height
    width: int = 144  # cached / network input width
    cache_dir: str | None = None  # default: $XDG_CACHE_HOME/dclnet or ~/.cache/dclnet
    skip_corrupt: bool = False  # drop (and list) undecodable images instead of failing
    verify_cache: str = "stat"  # one of VERIFY_CACHE: reuse a cache if size+mtime / contents match
    num_ids: int = 8  # P identities per batch
    num_instances: int = 4  # K images per identity and modality
    synthetic_ids: int = 64  # identities of the built-in synthetic set
    synthetic_seed: int = 0  # seed of the built-in synthetic set
    synthetic_style: str = "default"  # one of SYNTHETIC_STYLES: the synthetic set's look


@dataclass(frozen=True)
class AugmentSection:
    """Training augmentation (docs/method.md §2)."""

    grayscale_p: float = 0.5  # visible only
    flip_p: float = 0.5
    erase_p: float = 0.5
    erase_area: tuple[float, float] = (0.02, 0.33)
    erase_aspect: tuple[float, float] = (0.3, 3.3)
    pad_crop: int = 0  # AGW pad-and-crop; 0 = off
    channel_aug: str = "none"  # "none" or "exchange" (CAJ recipe)


@dataclass(frozen=True)
class ModelConfig:
    """Network arguments (docs/method.md §3)."""

    arch: str = "resnet50"  # one of ARCHS
    pretrained: str | None = "imagenet"  # "imagenet", "synthetic", a weights file, or null
    split: int = 2  # modality-specific stages: 1..4 (2 = stem + layer1)
    num_parts: int = 6
    gem_p: float = 3.0
    pixel_init: str = "default"  # one of PIXEL_INITS; "normal" = N(0, 0.001), released code
    layer3_stride: int = 2  # 1 = final map at 1/8 of the input (small CPU inputs); paper: 2
    pretrain_shift: int = 0  # pretrained=synthetic: move people up to this many px sideways
    pretrain_parts: float = 0.0  # pretrained=synthetic: weight of the per-cell part-mix task
    pretrain_local: float = 0.0  # pretrained=synthetic: weight of the per-cell identity task
    pretrain_steps: int = 500  # pretrained=synthetic: pretraining steps
    pretrain_batch: int = 64  # pretrained=synthetic: images per pretraining step
    pretrain_size: tuple[int, int] | None = None  # pretrained=synthetic: [H, W]; null = data size
    pretrain_ids: int = 512  # pretrained=synthetic: people in the pretraining population
    pretrain_style: str = "default"  # pretrained=synthetic: that population's look
    pretrain_lr: float = 1e-3  # pretrained=synthetic: Adam's peak learning rate
    pretrain_last_stride: int = 1  # pretrained=synthetic: layer4's stride while pretraining
    pretrain_seed: int = 0  # pretrained=synthetic: seed of its init, batches and augmentation
    pretrain_amp: str = "off"  # pretrained=synthetic: off, auto (bf16 where timed faster), bfloat16


@dataclass(frozen=True)
class LossConfig:
    """Loss terms and weights (docs/method.md §4-7). ``preset`` overrides the switches."""

    preset: str | None = None  # one of PRESETS; null = use the fields below
    id: float = 1.0
    metric: float = 1.0
    part_id: float = 1.0
    pap: float = 1.0
    dcl: float = 1.0
    metric_loss: str = "center_cluster"  # one of METRIC_LOSSES
    center_push: str = "identities"  # one of CENTER_PUSH; "released" = rows 0, P, 2P, ... only
    label_smoothing: float = 0.0
    dcl_masks: str = "pap"  # one of DCL_MASKS
    srm: bool = True
    cam_class: str = "label"  # one of CAM_CLASSES ("predicted" = global top-1, released code)
    cam_fold_bn: bool = False  # CAMs use the part BNNeck's gamma/sigma too (released: no)
    tau: float = 0.05
    continuity_weight: float = 0.5
    erase_rule: str = "majority"  # one of ERASE_RULES: when a low-map cell counts as erased
    dcl_precision: str = "auto"  # dense-loss products: auto (tf32 on CUDA sm80+), fp32, tf32, bf16


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser and schedule (docs/method.md §8)."""

    optimizer: str = "adam"  # one of OPTIMIZERS
    lr: float = 3.5e-3  # BNNecks and classifiers; the rest uses lr * backbone_lr_mult
    backbone_lr_mult: float = 0.1
    weight_decay: float = 5e-4
    momentum: float = 0.9  # SGD only (Nesterov)
    epochs: int = 40
    warmup_epochs: int = 5
    milestones: tuple[int, ...] = (15, 27)
    gamma: float = 0.1


@dataclass(frozen=True)
class TrainConfig:
    """Engine settings."""

    seed: int = 0
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", ...
    amp: str = "auto"  # one of AMP_DTYPES; "auto" = bf16 where supported on CUDA, else off
    channels_last: bool = False
    compile: bool = False  # torch.compile the step (what: train.compile_scope)
    compile_scope: str = "step"  # one of COMPILE_SCOPES: "step" adds augmentation + objective
    deterministic: bool = False  # CUDA: cuDNN deterministic algorithms, no benchmark (slower)
    eval_every: int = 0  # evaluate every N epochs (0 = only at the end)
    validation: str = "none"  # one of VALIDATION; selects best.pt without test data
    val_fraction: float = 0.1  # share of training identities held out for "fraction"
    tensorboard: bool = False
    log_every: int = 20  # steps between metrics-log lines
    workers: int = 2  # background batch-preparation threads
    sync_bn: bool = False  # SyncBatchNorm in distributed runs


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation protocol settings used at the end of training and by ``dclnet test``."""

    mode: str = "all"
    shots: int = 1
    sampler: str = "seeded"
    trials: int = 10
    direction: str | None = None  # null = the data set's default
    flip: bool = False  # average features with horizontally flipped images
    batch_size: int = 128


@dataclass(frozen=True)
class Config:
    """A whole run."""

    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentSection = field(default_factory=AugmentSection)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


_CHOICES = {
    "data.dataset": DATASETS,
    "data.verify_cache": VERIFY_CACHE,
    "data.synthetic_style": SYNTHETIC_STYLES,
    "model.pretrain_style": SYNTHETIC_STYLES,
    "model.pretrain_last_stride": (1, 2),
    "model.pretrain_amp": ("off", "auto", "bfloat16"),
    "model.arch": ARCHS,
    "loss.preset": PRESETS + (None,),
    "loss.metric_loss": METRIC_LOSSES,
    "loss.dcl_masks": DCL_MASKS,
    "loss.cam_class": CAM_CLASSES,
    "loss.center_push": CENTER_PUSH,
    "loss.erase_rule": ERASE_RULES,
    "loss.dcl_precision": DCL_PRECISIONS,
    "model.pixel_init": PIXEL_INITS,
    "optim.optimizer": OPTIMIZERS,
    "train.validation": VALIDATION,
    "train.amp": AMP_DTYPES,
    "train.compile_scope": COMPILE_SCOPES,
    "augment.channel_aug": ("none", "exchange"),
    "eval.mode": ("all", "indoor"),
    "eval.shots": (1, 10),
    "eval.sampler": ("seeded", "official"),
    "eval.direction": (None, "i2v", "v2i", "v2t", "t2v"),
}
# Inclusive (low, high) bounds; None = unbounded. A third element "open-low", "open-high" or
# "open" makes that bound strict. Tuple-valued keys are checked item by item.
_RANGES: dict[str, tuple] = {
    "data.trial": (1, 10),
    "data.height": (1, None),
    "data.width": (1, None),
    "data.num_ids": (2, None),
    "data.num_instances": (1, None),
    "data.synthetic_ids": (3, None),
    "data.synthetic_seed": (0, None),
    "augment.grayscale_p": (0, 1),
    "augment.flip_p": (0, 1),
    "augment.erase_p": (0, 1),
    "augment.erase_area": (0, 1, "open-low"),
    "augment.erase_aspect": (0, None, "open-low"),
    "augment.pad_crop": (0, None),
    "model.split": (1, 4),
    "model.num_parts": (1, None),
    "model.gem_p": (0, None, "open-low"),
    "model.layer3_stride": (1, 2),
    "model.pretrain_shift": (0, None),
    "model.pretrain_parts": (0, None),
    "model.pretrain_steps": (1, None),
    "model.pretrain_batch": (2, None),
    "model.pretrain_local": (0, None),
    "model.pretrain_size": (16, None),
    "model.pretrain_ids": (3, None),
    "model.pretrain_lr": (0, None, "open-low"),
    "model.pretrain_seed": (0, None),
    "loss.id": (0, None),
    "loss.metric": (0, None),
    "loss.part_id": (0, None),
    "loss.pap": (0, None),
    "loss.dcl": (0, None),
    "loss.label_smoothing": (0, 1, "open-high"),
    "loss.tau": (0, None, "open-low"),
    "loss.continuity_weight": (0, None),
    "optim.lr": (0, None, "open-low"),
    "optim.backbone_lr_mult": (0, None),
    "optim.weight_decay": (0, None),
    "optim.momentum": (0, 1, "open-high"),
    "optim.epochs": (1, None),
    "optim.warmup_epochs": (0, None),
    "optim.milestones": (1, None),
    "optim.gamma": (0, None, "open-low"),
    "train.seed": (0, None),
    "train.eval_every": (0, None),
    "train.val_fraction": (0, 1, "open"),
    "train.log_every": (1, None),
    "train.workers": (0, None),
    "eval.trials": (1, None),
    "eval.batch_size": (1, None),
}
# Tuple-valued keys whose items must not decrease: (min, max) pairs and milestone lists.
_ASCENDING = ("augment.erase_area", "augment.erase_aspect", "optim.milestones")
# Free-form strings that must match a pattern: key -> (regex, what the valid values are).
_PATTERNS = {
    "train.device": (r"auto|cpu|cuda(:[0-9]+)?", "auto, cpu, cuda or cuda:N"),
}


# Public names of the loading and describing modules, importable from here (PEP 562).
_EXPORTS = {
    **dict.fromkeys(
        (
            "check_device",
            "check_protocol",
            "check_saved",
            "from_dict",
            "load_config",
            "parse_override",
            "save_config",
            "saved_config",
            "to_dict",
        ),
        "dclnet.config_load",
    ),
    **dict.fromkeys(("KeyInfo", "describe_keys", "format_keys"), "dclnet.config_keys"),
}


def __getattr__(name: str) -> Any:
    """``dclnet.config.load_config`` and the other re-exported names, from their module."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
