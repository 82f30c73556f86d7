"""Protocol runner: features + per-trial splits → metrics per trial, mean/std, table, JSON.

This is the single code path behind ``dclnet evaluate-features`` and ``dclnet test``: both
hand it one feature row per image path and the splits of
:func:`dclnet.data.splits.build_splits`.
"""

from __future__ import annotations

import json
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dclnet.data.splits import EvalSplit
from dclnet.errors import DataError
from dclnet.evaluation.metrics import evaluate_ranking
from dclnet.fileio import atomic_write

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


def check_features(
    paths: Sequence[str], features: np.ndarray | torch.Tensor, where: str = "features"
) -> torch.Tensor:
    """Check features against their paths; return them as an ``N x D`` float32 tensor.

    Float only, 2-D, ``D >= 1``, one row per path, and finite both as given and after the cast
    to float32 (a float64 value beyond 3.4e38 would become infinity).

    Raises:
        DataError: one line starting with ``where`` (the file, for a features file).
    """
    if torch.is_tensor(features):
        feats = features
        if not torch.is_floating_point(feats):
            raise DataError(f"{where}: features must be a float array, got {feats.dtype}")
    else:
        array = np.asarray(features)
        if array.dtype.kind != "f":
            raise DataError(f"{where}: features must be a float array, got dtype {array.dtype}")
        if array.dtype.itemsize > 8:  # long double: torch has no such type
            array = array.astype(np.float64)
        feats = torch.from_numpy(np.ascontiguousarray(array))
    shape = tuple(feats.shape)
    if feats.ndim != 2:
        raise DataError(f"{where}: features must be 2-D (one row per path), got shape {shape}")
    if shape[1] == 0:
        raise DataError(f"{where}: features have zero width (shape {shape}); need D >= 1 columns")
    if shape[0] != len(paths):
        raise DataError(
            f"{where}: features has {shape[0]} rows but paths has {len(paths)} entries; "
            "they must match one to one"
        )
    _check_finite(feats, paths, where, "contain NaN or infinity")
    out = feats.float()
    _check_finite(out, paths, where, "overflow float32 (|x| > 3.4e38); rescale or L2-normalise")
    return out


def _check_finite(feats: torch.Tensor, paths: Sequence[str], where: str, problem: str) -> None:
    bad = ~torch.isfinite(feats).all(dim=1)  # N
    if bad.any():
        row = int(torch.nonzero(bad)[0, 0])
        more = int(bad.sum()) - 1
        also = f" (and {more} more rows)" if more else ""
        raise DataError(f"{where}: features for {paths[row]!r}{also} {problem}")


def index_features(
    paths: Sequence[str], features: np.ndarray | torch.Tensor, needed: Sequence[str]
) -> tuple[torch.Tensor, dict[str, int]]:
    """Check a (paths, features) pair against the paths a protocol needs.

    Returns:
        The features as a float32 tensor (see :func:`check_features`) and a map path → row.

    Raises:
        DataError: naming the first duplicate path, the first needed path that is missing,
            the mismatching shapes or the first row that is not finite.
    """
    feats = check_features(paths, features)
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
    return feats, row


def _check_similarities(sim: torch.Tensor, split: EvalSplit, what: str) -> None:
    """Raise if a query-gallery score overflowed (finite features, too large a dot product)."""
    bad = ~torch.isfinite(sim)  # Q x G
    if bad.any():
        q, g = (int(i) for i in torch.nonzero(bad)[0])
        raise DataError(
            f"the {what} of query {split.query[q].path!r} and gallery {split.gallery[g].path!r} "
            "overflows float32 (the features are too large); L2-normalise the features"
        )


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
        _check_similarities(sim, split, "dot product")
        args = (q_labels, g_labels, q_cams, g_cams)
        plain.append(evaluate_ranking(sim, *args, rule=split.rule).as_percent())
        if rerank:
            from dclnet.evaluation.rerank import k_reciprocal_rerank

            dist = k_reciprocal_rerank(q, g)
            sim_rr = -torch.as_tensor(dist)
            _check_similarities(sim_rr, split, "re-ranking distance")
            reranked.append(evaluate_ranking(sim_rr, *args, rule=split.rule).as_percent())
    return ProtocolResult(
        protocol=dict(protocol),
        plain=TrialSummary(plain),
        reranked=TrialSummary(reranked) if rerank else None,
    )


_NPZ_EXPECTED = (
    "an .npz archive (numpy.savez) holding 'paths' (strings) and 'features' (float, one row "
    "per path)"
)


def load_features_npz(path: str | Path) -> tuple[list[str], np.ndarray]:
    """Read and check ``paths`` and ``features`` from an ``.npz`` file.

    Nothing is unpickled (``allow_pickle=False``): an archive of object arrays is refused.

    Returns:
        The paths and the features as an ``N x D`` float32 array (see :func:`check_features`).

    Raises:
        DataError: one line naming the file and what is wrong with it.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"features file {path} does not exist")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty; expected {_NPZ_EXPECTED}")
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(
            f"{path}: cannot read it ({_reason(exc)}); expected {_NPZ_EXPECTED}"
        ) from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: is a single .npy array, not an archive; expected {_NPZ_EXPECTED}")
    with data:
        missing = [k for k in ("paths", "features") if k not in data.files]
        if missing:
            raise DataError(
                f"features file {path} lacks array(s) {', '.join(missing)}; it must "
                f"hold 'paths' (strings) and 'features' (float, one row per path)"
            )
        paths, feats = _npz_member(data, "paths", path), _npz_member(data, "features", path)
    if paths.ndim != 1 or paths.dtype.kind not in "US":
        raise DataError(
            f"{path}: 'paths' must be a 1-D array of strings, got dtype {paths.dtype} "
            f"shape {paths.shape}"
        )
    if paths.dtype.kind == "S":  # bytes: numpy.savez of bytes paths
        try:
            paths = np.char.decode(paths, "utf-8")
        except UnicodeDecodeError:
            raise DataError(f"{path}: 'paths' holds bytes that are not UTF-8 text") from None
    names = [str(p) for p in paths.tolist()]
    return names, check_features(names, feats, where=str(path)).numpy()


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())[:100]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _npz_member(data: np.lib.npyio.NpzFile, name: str, path: Path) -> np.ndarray:
    try:
        return data[name]
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise DataError(
                f"{path}: array {name!r} holds Python objects (dtype object), which dclnet never "
                "unpickles; save strings and floats"
            ) from None
        raise DataError(f"{path}: array {name!r} is damaged ({_reason(exc)})") from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataError(
            f"{path}: array {name!r} is damaged or truncated ({_reason(exc)})"
        ) from None


def save_features_npz(path: str | Path, paths: Sequence[str], features: np.ndarray) -> None:
    """Write a features file in the format ``evaluate-features`` reads (atomically)."""
    with atomic_write(path, "wb") as fh:
        np.savez(fh, paths=np.asarray(list(paths), dtype=str), features=np.asarray(features))


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
    """Write JSON atomically (temp file + rename), refusing a directory or a path under a file."""
    text = json.dumps(data, indent=2)
    with atomic_write(path) as fh:
        fh.write(text)
