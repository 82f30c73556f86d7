"""Self-describing, atomically written checkpoints, loaded without executing code.

A checkpoint is a plain dict of tensors and Python primitives, so it loads with
``torch.load(weights_only=True)``: a file from an untrusted source cannot run code.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

import dclnet
from dclnet.errors import CheckpointError

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
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a dclnet checkpoint safely (``weights_only=True``) and check its format.

    Raises:
        CheckpointError: the file is missing, unreadable/corrupt, not a dclnet checkpoint,
            or holds objects other than tensors and primitives.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"cannot load checkpoint {path}: {reason[:200]} (corrupt, truncated, or not a "
            "weights-only dclnet checkpoint)"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a dclnet checkpoint (no '{FORMAT}' marker)")
    if state.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {state['format_version']}, newer than this dclnet "
            f"({FORMAT_VERSION}); upgrade dclnet"
        )
    for key in ("model", "model_args"):
        if key not in state:
            raise CheckpointError(f"checkpoint {path} lacks {key!r}; it is incomplete")
    return state
