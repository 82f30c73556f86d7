"""Self-describing, atomically written checkpoints, loaded without executing code.

A checkpoint is a plain dict of tensors and Python primitives, so it loads with
``torch.load(weights_only=True)``: a file from an untrusted source cannot run code.
"""

from __future__ import annotations

import math
import pickle
import re
import typing
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import dclnet
from dclnet.config import check_saved
from dclnet.errors import CheckpointError, ConfigError
from dclnet.fileio import atomic_write

FORMAT = "dclnet-checkpoint"
FORMAT_VERSION = 1


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write ``state`` to ``path`` atomically (temp file in the same folder, then rename).

    ``format``, ``format_version`` and ``code_version`` are added to the saved dict.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "code_version": dclnet.__version__,
        **state,
    }
    with atomic_write(path, "wb", fsync=True) as fh:
        torch.save(payload, fh)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a dclnet checkpoint safely (``weights_only=True``) and check its format.

    Raises:
        CheckpointError: the file is missing, unreadable/corrupt, not a dclnet checkpoint,
            or holds objects other than tensors and primitives.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist{_missing_hint(path)}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt files
        text = " ".join(str(exc).split())
        if isinstance(exc, pickle.UnpicklingError) and "Weights only load failed" in text:
            found = re.search(r"GLOBAL (\S+)", text)
            what = f" (it holds the Python object {found.group(1)})" if found else ""
            raise CheckpointError(
                f"{path} is not a weights-only dclnet checkpoint{what}; dclnet never unpickles "
                "code, so it does not load this file"
            ) from None
        reason = f"{type(exc).__name__}: {text}"[:120]
        raise CheckpointError(
            f"cannot load checkpoint {path}: the file is corrupt or truncated ({reason})"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a dclnet checkpoint (no '{FORMAT}' marker)")
    check_fields(state, path)
    return state


def _missing_hint(path: Path) -> str:
    """What to pass instead of a missing ``best.pt`` whose run folder holds ``last.pt``."""
    last = path.with_name("last.pt")
    if path.name != "best.pt" or not last.is_file():
        return ""
    return (
        "; best.pt is written only with a validation split (train.validation), and this run "
        f"has last.pt: --checkpoint {last}"
    )


def _field_error(path: Path, key: str, expected: str, value: Any) -> CheckpointError:
    shown = type(value).__name__ if isinstance(value, (dict, list, tuple, Tensor)) else repr(value)
    return CheckpointError(
        f"checkpoint {path}: field {key!r} must be {expected}, got {shown[:60]}; "
        "the file is damaged or was not written by dclnet"
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_fields(state: dict[str, Any], path: str | Path) -> None:
    """Check the types of every field a checkpoint's readers use (one error naming it).

    Raises:
        CheckpointError: a field is missing, of the wrong type, or out of range.
    """
    path = Path(path)
    version = state.get("format_version", 0)
    if not _is_int(version) or version < 0:
        raise _field_error(path, "format_version", "an integer", version)
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {version}, newer than this dclnet "
            f"({FORMAT_VERSION}); upgrade dclnet"
        )
    for key in ("model", "model_args"):
        if key not in state:
            raise CheckpointError(f"checkpoint {path} lacks {key!r}; it is incomplete")
    model = state["model"]
    if not isinstance(model, dict):
        raise _field_error(path, "model", "a mapping of parameter names to tensors", model)
    for name, value in model.items():
        if not isinstance(name, str) or not isinstance(value, Tensor):
            raise _field_error(path, f"model[{name!r}]", "a tensor", value)
    _check_model_args(state["model_args"], path)
    for key in ("num_classes", "epoch"):
        if key in state and not (_is_int(state[key]) and state[key] >= 0):
            raise _field_error(path, key, "an integer >= 0", state[key])
    _check_preprocessing(state.get("preprocessing"), path)
    config = state.get("config")
    if config is not None:
        if not isinstance(config, dict):
            raise _field_error(path, "config", "a mapping of sections", config)
        for section, values in config.items():
            if not isinstance(values, dict):
                raise _field_error(path, f"config.{section}", "a mapping of keys", values)
        try:
            check_saved(config)
        except ConfigError as exc:
            raise CheckpointError(f"checkpoint {path}: field 'config': {exc}") from None


def _check_model_args(args: Any, path: Path) -> None:
    """``model_args`` against the keyword arguments of :class:`~dclnet.models.dclnet.DCLNet`."""
    from dclnet.models.dclnet import DCLNet

    if not isinstance(args, dict):
        raise _field_error(path, "model_args", "a mapping of DCLNet arguments", args)
    hints = typing.get_type_hints(DCLNet.__init__)
    for key, value in args.items():
        hint = hints.get(key) if isinstance(key, str) else None
        if hint is None:
            valid = ", ".join(k for k in hints if k != "return")
            raise CheckpointError(
                f"checkpoint {path}: model_args has unknown key {key!r} (DCLNet takes {valid}); "
                "it was written by another dclnet version or damaged"
            )
        if key == "pretrained":  # weights come from the checkpoint; the value is not used
            continue
        if hint is int and not _is_int(value):
            raise _field_error(path, f"model_args.{key}", "an integer", value)
        if hint is float and not _is_number(value):
            raise _field_error(path, f"model_args.{key}", "a number", value)
        if hint is str and not isinstance(value, str):
            raise _field_error(path, f"model_args.{key}", "a string", value)


def _check_preprocessing(pre: Any, path: Path) -> None:
    if pre is None:
        return
    if not isinstance(pre, dict):
        raise _field_error(path, "preprocessing", "a mapping (height, width, mean, std)", pre)
    for key in ("height", "width"):
        if key in pre and not (_is_int(pre[key]) and pre[key] >= 1):
            raise _field_error(path, f"preprocessing.{key}", "an integer >= 1", pre[key])
    for key in ("mean", "std"):
        if key not in pre:
            continue
        values = pre[key]
        ok = isinstance(values, (list, tuple)) and len(values) == 3
        ok = ok and all(_is_number(v) and math.isfinite(v) for v in values)
        if not ok or (key == "std" and min(values) <= 0):
            expected = "3 positive numbers" if key == "std" else "3 finite numbers"
            raise _field_error(path, f"preprocessing.{key}", expected, values)
