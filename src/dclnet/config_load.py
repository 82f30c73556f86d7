"""Loading a run configuration: YAML, dotted overrides, validation, saving.

Resolution order: dataclass defaults → YAML file (``--config``) → dotted command-line
overrides (``optim.epochs=40``). Every key and value is validated against the schema
(:mod:`dclnet.config`: its dataclasses and the ``_CHOICES`` / ``_RANGES`` / ``_ASCENDING`` /
``_PATTERNS`` tables) with a one-line :class:`~dclnet.errors.ConfigError` naming the bad key
and the valid choices. Library components never see a :class:`Config`; the engine unpacks it
into plain keyword arguments. Import these names from :mod:`dclnet.config`, which re-exports
them.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from dclnet.config import _ASCENDING, _CHOICES, _PATTERNS, _RANGES, Config, EvalConfig
from dclnet.errors import ConfigError
from dclnet.fileio import atomic_write

logger = logging.getLogger(__name__)


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
