"""``dclnet diagnose`` as a command: load a checkpoint, resolve the device, measure, report.

The measurements themselves (:func:`~dclnet.evaluation.diagnose.diagnose_model`) and their
table (:func:`~dclnet.evaluation.diagnose.format_diagnosis`) live in the evaluation layer;
loading a run's model and choosing a device are the engine's, so the workflow lives here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from dclnet.data.sources.synthetic import SYSU_CAMERAS, check_request
from dclnet.engine.build import resolve_device
from dclnet.engine.runs import load_model
from dclnet.errors import CheckpointError, ConfigError
from dclnet.evaluation.diagnose import diagnose_model, format_diagnosis
from dclnet.evaluation.protocols import write_json


def check_finite_weights(checkpoint: Path, state: dict[str, Any]) -> None:
    """Refuse a checkpoint whose weights hold NaN or infinity (one line naming a tensor)."""
    bad = [
        name
        for name, value in state["model"].items()
        if value.is_floating_point() and not bool(torch.isfinite(value).all())
    ]
    if bad:
        raise CheckpointError(
            f"checkpoint {checkpoint}: weights hold NaN or infinite values ({len(bad)} of "
            f"{len(state['model'])} tensors, first {bad[0]}); a diverged run? diagnose a "
            "checkpoint from before it diverged"
        )


def run_diagnose(
    checkpoint: Path,
    *,
    synthetic_seed: int | None = None,
    synthetic_ids: int | None = None,
    json_path: Path | None = None,
    device: str = "auto",
    batch_size: int = 64,
) -> dict[str, Any]:
    """``dclnet diagnose``: load ``checkpoint``, measure, print the table, write JSON.

    Checked before any work: the seed (>= 0), the size of the synthetic set (it must fit in
    memory) and the checkpoint's weights (all finite: a NaN model has no masks to score).

    Returns:
        The result of :func:`~dclnet.evaluation.diagnose.diagnose_model` with ``checkpoint``.
    """
    if synthetic_seed is not None and synthetic_seed < 0:
        raise ConfigError(f"--synthetic-seed must be >= 0, got {synthetic_seed}")
    dev = resolve_device(device)
    model, state = load_model(checkpoint, dev)
    check_finite_weights(checkpoint, state)
    cfg = state.get("config", {})
    data_cfg, loss_cfg = cfg.get("data", {}), cfg.get("loss", {})
    pre = state.get("preprocessing", {})
    size = (int(pre.get("height", 288)), int(pre.get("width", 144)))
    trained = (int(data_cfg.get("synthetic_ids", 64)), int(data_cfg.get("synthetic_seed", 0)))
    ids = trained[0] if synthetic_ids is None else synthetic_ids
    seed = trained[1] if synthetic_seed is None else synthetic_seed
    names = {"ids_name": "--synthetic-ids", "seed_name": "--synthetic-seed"}
    check_request(ids, seed, *size, len(SYSU_CAMERAS) * 6, **names)  # make_synthetic's 4..6
    result = diagnose_model(
        model,
        size=size,
        synthetic_ids=ids,
        synthetic_seed=seed,
        device=dev,
        batch_size=batch_size,
        fold_bnneck=bool(loss_cfg.get("cam_fold_bn", False)),
        trained_on_set=data_cfg.get("dataset") == "synthetic" and (ids, seed) == trained,
    )
    result["checkpoint"] = str(checkpoint)
    print(format_diagnosis(result))
    if json_path is not None:
        write_json(result, json_path)
    return result
