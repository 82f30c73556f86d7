"""Protocol runner: features + per-trial splits → metrics per trial, mean/std, table, JSON.

This is the single code path behind ``dclnet evaluate-features`` and ``dclnet test``: both
hand it one feature row per image path and the splits of
:func:`dclnet.data.splits.build_splits`.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dclnet.data.splits import EvalSplit
from dclnet.errors import DataError
from dclnet.evaluation.metrics import evaluate_ranking

METRIC_KEYS = ("rank1", "rank5", "rank10", "rank20", "mAP", "mINP")


@dataclass
class TrialSummary:
    """Per-trial metrics (percent) with their mean and population std (ddof=0)."""

    trials: list[dict[str, float]]
    mean: dict[str, float] = field(init=False)
    std: dict[str, float] = field(init=False)

    def __post_init__(self) -> None:
        table = np.array([[t[k] for k in METRIC_KEYS] for t in self.trials], dtype=np.float64)
        self.mean = dict(zip(METRIC_KEYS, table.mean(axis=0).tolist()))
        self.std = dict(zip(METRIC_KEYS, table.std(axis=0).tolist()))

    def to_json(self) -> dict[str, Any]:
        return {"trials": self.trials, "mean": self.mean, "std": self.std}


@dataclass
class ProtocolResult:
    """Results of one protocol run; ``reranked`` is reported separately when requested."""

    protocol: dict[str, Any]
    plain: TrialSummary
    reranked: TrialSummary | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"protocol": self.protocol, **self.plain.to_json()}
        if self.reranked is not None:
            out["reranked"] = self.reranked.to_json()
        return out


def index_features(
    paths: Sequence[str], features: np.ndarray | torch.Tensor, needed: Sequence[str]
) -> tuple[torch.Tensor, dict[str, int]]:
    """Check a (paths, features) pair against the paths a protocol needs.

    Returns:
        The features as a float32 tensor and a map path → row.

    Raises:
        DataError: naming the first duplicate path, the first needed path that is missing,
            or the mismatching shapes.
    """
    feats = torch.as_tensor(np.asarray(features) if not torch.is_tensor(features) else features)
    if feats.ndim != 2:
        raise DataError(
            f"features must be a 2-D array (one row per path), got shape {tuple(feats.shape)}"
        )
    if feats.shape[0] != len(paths):
        raise DataError(
            f"features has {feats.shape[0]} rows but paths has {len(paths)} entries; "
            "they must match one to one"
        )
    if not torch.is_floating_point(feats):
        raise DataError(f"features must be a float array, got {feats.dtype}")
    row: dict[str, int] = {}
    for i, p in enumerate(paths):
        if p in row:
            raise DataError(f"duplicate path {p!r} in features (rows {row[p]} and {i})")
        row[p] = i
    for p in needed:
        if p not in row:
            raise DataError(
                f"the protocol needs {p!r} but the features file has no row for it "
                "(paths must be relative to ROOT with '/' separators)"
            )
    if not torch.isfinite(feats).all():
        bad = int(torch.nonzero(~torch.isfinite(feats).all(dim=1))[0, 0])
        raise DataError(f"features for {paths[bad]!r} contain NaN or infinity")
    return feats.float(), row


def _split_arrays(split: EvalSplit, row: dict[str, int], side: str):
    records = split.query if side == "query" else split.gallery
    rows = torch.tensor([row[r.path] for r in records], dtype=torch.long)
    labels = np.array([r.label for r in records], dtype=np.int64)
    cams = np.array([r.cam for r in records], dtype=np.int64)
    return rows, labels, cams


def evaluate_splits(
    paths: Sequence[str],
    features: np.ndarray | torch.Tensor,
    splits: Sequence[EvalSplit],
    protocol: dict[str, Any],
    *,
    rerank: bool = False,
    device: str | torch.device = "cpu",
) -> ProtocolResult:
    """Evaluate features under every split (trial) of a protocol.

    Similarity is the dot product of the given features (pass L2-normalised features for
    cosine similarity). Ties are broken by gallery order (stable sort).

    Args:
        paths: Image paths relative to the data-set root, one per feature row.
        features: ``len(paths) x D`` features.
        splits: Query/gallery lists per trial.
        protocol: Settings recorded in the result (``ProtocolSettings.as_dict()``).
        rerank: Also report k-reciprocal re-ranked results (separately).
        device: Where the similarity matrices are computed.
    """
    needed = sorted({r.path for s in splits for r in (*s.query, *s.gallery)})
    feats, row = index_features(paths, features, needed)
    feats = feats.to(device)
    plain, reranked = [], []
    for split in splits:
        q_rows, q_labels, q_cams = _split_arrays(split, row, "query")
        g_rows, g_labels, g_cams = _split_arrays(split, row, "gallery")
        q, g = feats[q_rows.to(device)], feats[g_rows.to(device)]
        sim = q @ g.T  # Q x G
        args = (q_labels, g_labels, q_cams, g_cams)
        plain.append(evaluate_ranking(sim, *args, rule=split.rule).as_percent())
        if rerank:
            from dclnet.evaluation.rerank import k_reciprocal_rerank

            dist = k_reciprocal_rerank(q, g)
            sim_rr = -torch.as_tensor(dist)
            reranked.append(evaluate_ranking(sim_rr, *args, rule=split.rule).as_percent())
    return ProtocolResult(
        protocol=dict(protocol),
        plain=TrialSummary(plain),
        reranked=TrialSummary(reranked) if rerank else None,
    )


def load_features_npz(path: str | Path) -> tuple[list[str], np.ndarray]:
    """Read ``paths`` and ``features`` arrays from an ``.npz`` file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"features file {path} does not exist")
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read features file {path}: {exc}") from None
    with data:
        missing = [k for k in ("paths", "features") if k not in data.files]
        if missing:
            raise DataError(
                f"features file {path} lacks array(s) {', '.join(missing)}; it must "
                f"hold 'paths' (strings) and 'features' (float, one row per path)"
            )
        paths, feats = data["paths"], data["features"]
    if paths.ndim != 1 or paths.dtype.kind not in "US":
        raise DataError(
            f"{path}: 'paths' must be a 1-D array of strings, got dtype {paths.dtype} "
            f"shape {paths.shape}"
        )
    return [str(p) for p in paths.tolist()], feats


def save_features_npz(path: str | Path, paths: Sequence[str], features: np.ndarray) -> None:
    """Write a features file in the format ``evaluate-features`` reads (atomically)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".npz")
    os.close(fd)
    try:
        np.savez(tmp, paths=np.asarray(list(paths), dtype=str), features=np.asarray(features))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def format_table(result: ProtocolResult) -> str:
    """The standard table: one row per trial, then mean and std (percent)."""
    settings = ", ".join(f"{k}={v}" for k, v in result.protocol.items() if v is not None)
    blocks = [("", result.plain)]
    if result.reranked is not None:
        blocks.append(("re-ranked (k-reciprocal) ", result.reranked))
    lines = []
    for title, summary in blocks:
        lines.append(f"{title}results ({settings})")
        header = f"{'trial':>6} " + " ".join(f"{k:>7}" for k in METRIC_KEYS)
        lines += [header, "-" * len(header)]
        for i, t in enumerate(summary.trials):
            lines.append(f"{i:>6} " + " ".join(f"{t[k]:7.2f}" for k in METRIC_KEYS))
        lines.append("-" * len(header))
        lines.append(f"{'mean':>6} " + " ".join(f"{summary.mean[k]:7.2f}" for k in METRIC_KEYS))
        lines.append(f"{'std':>6} " + " ".join(f"{summary.std[k]:7.2f}" for k in METRIC_KEYS))
        lines.append("")
    return "\n".join(lines).rstrip()


def write_json(data: dict[str, Any], path: str | Path) -> None:
    """Write JSON atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2)
    os.replace(tmp, path)
