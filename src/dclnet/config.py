"""Run configuration: frozen dataclasses are the schema.

Resolution order: dataclass defaults → YAML file (``--config``) → dotted command-line
overrides (``optim.epochs=40``). Every key and value is validated with a one-line
:class:`~dclnet.errors.ConfigError` naming the bad key and the valid choices. Library
components never see a :class:`Config`; the engine unpacks it into plain keyword arguments.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dclnet.errors import ConfigError
from dclnet.fileio import atomic_write

logger = logging.getLogger(__name__)

DATASETS = ("synthetic", "sysu", "regdb", "llcm")
ARCHS = ("resnet18", "resnet34", "resnet50")
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
    pretrain_steps: int = 500  # pretrained=synthetic: pretraining steps (64 images each)
    pretrain_size: tuple[int, int] | None = None  # pretrained=synthetic: [H, W]; null = data size
    pretrain_ids: int = 512  # pretrained=synthetic: people in the pretraining population
    pretrain_style: str = "default"  # pretrained=synthetic: that population's look
    pretrain_lr: float = 1e-3  # pretrained=synthetic: Adam's peak learning rate


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
    "model.pretrain_local": (0, None),
    "model.pretrain_size": (16, None),
    "model.pretrain_ids": (3, None),
    "model.pretrain_lr": (0, None, "open-low"),
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


def check_device(value: str, name: str = "train.device") -> str:
    """Return ``value`` if it names a device (auto, cpu, cuda, cuda:N), else raise.

    The rule of ``train.device``, also used for ``--device`` of ``dclnet test`` and friends.
    """
    pattern, valid = _PATTERNS["train.device"]
    if not isinstance(value, str) or not re.fullmatch(pattern, value):
        raise ConfigError(f"{name} has invalid value {value!r}; valid: {valid}")
    return value


# Keys that earlier versions had and nothing reads any more. Old recipes and run folders still
# hold them, so they load: each such key is dropped with a warning saying why.
_REMOVED = {
    "data.synthetic_height": "the synthetic set is rendered at data.height x data.width",
    "data.synthetic_width": "the synthetic set is rendered at data.height x data.width",
}


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Check ``value`` against the field's type annotation, converting where lossless."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner[0])
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key!r} expects a list, got {value!r}")
        item_type = args[0]
        if len(args) == 2 and args[1] is not Ellipsis and len(value) != len(args):
            raise ConfigError(f"config key {key!r} expects {len(args)} values, got {value!r}")
        return tuple(_coerce(key, v, item_type) for v in value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads 3e-4 (no dot) as a string
            try:
                return float(value.strip())
            except ValueError:
                pass
    elif annotation is str:
        if isinstance(value, str):
            return value
        # YAML 1.1 reads a bare off/on as a bool: take it back for keys whose choices say so
        word = {False: "off", True: "on"}.get(value) if isinstance(value, bool) else None
        if word is not None and word in _CHOICES.get(key, ()):
            return word
    else:  # pragma: no cover - every schema type is handled above
        return value
    raise ConfigError(
        f"config key {key!r} expects {annotation.__name__}, got {value!r} ({type(value).__name__})"
    )


def _bound_text(low: Any, high: Any, kind: str) -> str:
    lo_op = "<" if kind in ("open-low", "open") else "<="
    hi_op = "<" if kind in ("open-high", "open") else "<="
    if high is None:
        return f"{'>' if lo_op == '<' else '>='} {low}"
    if lo_op == hi_op == "<=":
        return f"{low}..{high}"
    return f"{low} {lo_op} value {hi_op} {high}"


def _check_range(key: str, value: Any) -> None:
    low, high, *rest = _RANGES[key]
    kind = rest[0] if rest else ""
    too_low = value <= low if kind in ("open-low", "open") else value < low
    too_high = high is not None and (
        value >= high if kind in ("open-high", "open") else value > high
    )
    if too_low or too_high:
        raise ConfigError(
            f"config key {key!r} = {value!r} is out of range ({_bound_text(low, high, kind)})"
        )


def _check_value(key: str, value: Any) -> None:
    items = value if isinstance(value, tuple) else (value,)
    for item in items:
        if isinstance(item, float) and not math.isfinite(item):
            raise ConfigError(f"config key {key!r} = {item!r} must be a finite number")
    if key in _CHOICES and value not in _CHOICES[key]:
        valid = ", ".join(str(c) if c is not None else "null" for c in _CHOICES[key])
        raise ConfigError(f"config key {key!r} has invalid value {value!r}; valid: {valid}")
    if key in _RANGES and value is not None:
        for item in items:
            _check_range(key, item)
    if key in _ASCENDING and list(value) != sorted(value):
        raise ConfigError(f"config key {key!r} = {list(value)!r} must be in ascending order")
    if key in _PATTERNS and value is not None:
        pattern, valid = _PATTERNS[key]
        if not re.fullmatch(pattern, value):
            raise ConfigError(f"config key {key!r} has invalid value {value!r}; valid: {valid}")


def _build(cls: type, values: dict[str, Any], prefix: str, *, saved: bool = False) -> Any:
    """``cls`` from ``values``, validated; ``saved``: skip unknown keys, check types only."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        full = f"{prefix}{key}"
        if key not in names:
            if saved:
                continue
            if full in _REMOVED:
                logger.warning(
                    "ignoring config key %r: it is no longer used (%s)", full, _REMOVED[full]
                )
                continue
            raise ConfigError(f"unknown config key {full!r}; valid keys here: {', '.join(names)}")
        annotation = hints[key]
        if dataclasses.is_dataclass(annotation):
            if not isinstance(value, dict):
                raise ConfigError(f"config key {full!r} must be a mapping of its fields")
            kwargs[key] = _build(annotation, value, f"{full}.", saved=saved)
        else:
            kwargs[key] = _coerce(full, value, annotation)
            if not saved:
                _check_value(full, kwargs[key])
    return cls(**kwargs)


def to_dict(config: Config) -> dict[str, Any]:
    """Plain nested dict (tuples as lists) suitable for YAML/JSON and checkpoints."""

    def plain(value: Any) -> Any:
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(config))


def from_dict(values: dict[str, Any]) -> Config:
    """Build and validate a :class:`Config` from a (partial) nested dict."""
    if not isinstance(values, dict):
        raise ConfigError("a config must be a mapping of sections (data, model, loss, ...)")
    return _build(Config, values, "")


def saved_config(values: Any) -> Config:
    """The :class:`Config` of a config read back from a checkpoint, types checked.

    Keys this dclnet does not know (a file of another version) are ignored and values are not
    range-checked, so that an older run's checkpoint stays usable; missing keys take their
    defaults.
    """
    if not isinstance(values, dict):
        raise ConfigError("a config must be a mapping of sections (data, model, loss, ...)")
    return _build(Config, values, "", saved=True)


def check_saved(values: Any) -> None:
    """Check the types of a config read back from a checkpoint (see :func:`saved_config`)."""
    saved_config(values)


def check_protocol(config: Config) -> Config:
    """Check the ``eval.*`` settings against ``data.dataset``; return ``config``.

    Done once a run's config is complete (recipe, overrides, then ``--dataset``), so that a
    setting the data set does not have (``eval.direction=v2t`` for SYSU-MM01) fails before
    training, not at the final test.
    """
    from dclnet.data.splits import ProtocolSettings

    dataset, defaults = config.data.dataset, EvalConfig()
    trial = config.data.trial if dataset == "regdb" else None
    for name in ("mode", "shots", "sampler", "direction"):
        value = getattr(config.eval, name)
        if value == getattr(defaults, name):  # the defaults hold for every data set
            continue
        try:
            ProtocolSettings(dataset=dataset, trial=trial, **{name: value})
        except ConfigError as exc:
            raise ConfigError(f"config key 'eval.{name}': {exc}") from None
    return config


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(text: str) -> dict[str, Any]:
    """``"optim.epochs=40"`` → ``{"optim": {"epochs": 40}}`` (value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    dotted, raw = text.split("=", 1)
    parts = dotted.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"override {text!r} must name section.key, e.g. optim.epochs=40")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from None
    return {parts[0]: {parts[1]: value}}


class _DuplicateKeyError(Exception):
    """A mapping of a YAML recipe gives one key twice (PyYAML would keep the last silently)."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping, naming its path."""

    def construct_document(self, node: yaml.Node) -> Any:
        self._check_keys(node, [])
        return super().construct_document(node)

    def _check_keys(self, node: yaml.Node, path: list[str]) -> None:
        if isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._check_keys(item, [*path, str(i)])
        if not isinstance(node, yaml.MappingNode):
            return
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = (
                self.construct_object(key_node, deep=True)
                if key_node.tag != "tag:yaml.org,2002:merge"
                else "<<"
            )
            line = key_node.start_mark.line + 1
            name = ".".join([*path, str(key)])
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise _DuplicateKeyError(
                    f"key {name!r} is given twice (lines {seen[key]} and {line})"
                )
            seen[key] = line
            self._check_keys(value_node, [*path, str(key)])


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults → YAML file → overrides, validated."""
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            loaded = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader) or {}
        except _DuplicateKeyError as exc:
            raise ConfigError(f"config file {path}: {exc}; keep one of them") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"config file {path} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at "
                f"offset {exc.start})"
            ) from None
        except yaml.YAMLError as exc:
            detail = str(exc).replace("\n", " ")
            raise ConfigError(f"config file {path} is not valid YAML: {detail}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping of sections")
        values = loaded
    for item in overrides or []:
        values = _merge(values, parse_override(item))
    return from_dict(values)


def save_config(config: Config, path: Path) -> None:
    """Write the resolved config as YAML, atomically (temp file in the same folder, then rename)."""
    text = yaml.safe_dump(to_dict(config), sort_keys=False)
    with atomic_write(path) as fh:
        fh.write(text)


@dataclass(frozen=True)
class KeyInfo:
    """One config key as ``dclnet config --keys`` lists it."""

    key: str  # "section.name"
    type: str  # the annotation as written in the source, e.g. "int" or "str | None"
    default: Any
    comment: str  # the trailing "# comment" of the field's line ("" if none)
    section_doc: str  # first line of the section dataclass's docstring


# ``name: annotation = default  # comment`` (one field per line, as in the sections above).
_FIELD_LINE = re.compile(r"^\s+(\w+):\s*([^=]+?)\s*=\s*(.*?)\s*(?:#\s*(.*))?$")


def describe_keys() -> list[KeyInfo]:
    """Every key of :class:`Config`: type, default and the comment on its source line.

    The comments come from the section dataclasses' source (``inspect.getsource``), so the
    listing is as current as the schema itself.
    """
    import inspect

    infos = []
    for section in dataclasses.fields(Config):
        cls = typing.get_type_hints(Config)[section.name]
        parsed = {}
        for line in inspect.getsource(cls).splitlines():
            match = _FIELD_LINE.match(line)
            if match:
                parsed[match.group(1)] = (match.group(2), match.group(4) or "")
        doc = (inspect.getdoc(cls) or "").splitlines()[0] if cls.__doc__ else ""
        defaults = cls()
        for f in dataclasses.fields(cls):
            annotation, comment = parsed.get(f.name, (str(f.type), ""))
            infos.append(
                KeyInfo(
                    f"{section.name}.{f.name}",
                    annotation,
                    getattr(defaults, f.name),
                    comment.strip(),
                    doc,
                )
            )
    return infos


def format_keys() -> str:
    """The text of ``dclnet config --keys``: one aligned line per key, grouped by section."""
    infos = describe_keys()

    def default_text(value: Any) -> str:
        if isinstance(value, tuple):
            return "[" + ", ".join(default_text(v) for v in value) + "]"
        if value is None:
            return "null"
        if isinstance(value, bool):
            return str(value).lower()
        return str(value)

    rows = []
    for info in infos:
        note = info.comment
        if info.key in _CHOICES:  # "one of ARCHS" -> "one of resnet18, resnet34, resnet50"
            valid = "one of " + ", ".join(default_text(c) for c in _CHOICES[info.key])
            note, named = re.subn(r"one of [A-Z_]+", valid, note)
            if not named:
                note = f"{note} ({valid})" if note else valid
        rows.append((info.key, info.type, default_text(info.default), note, info))
    width_key = max(len(r[0]) for r in rows)
    width_type = max(len(r[1]) for r in rows)
    width_default = max(len(r[2]) for r in rows)
    lines: list[str] = []
    section = None
    for key, type_, default, note, info in rows:
        if info.key.split(".")[0] != section:
            section = info.key.split(".")[0]
            lines += [""] if lines else []
            lines.append(f"# {section}: {info.section_doc}")
        line = f"{key:<{width_key}}  {type_:<{width_type}}  {default:<{width_default}}  {note}"
        lines.append(line.rstrip())
    return "\n".join(lines)
