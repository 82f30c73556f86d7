"""Features files and ``evaluate-features`` command lines for the bad-input tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dclnet.data.splits import ProtocolSettings, build_splits, needed_paths
from dclnet.evaluation.protocols import save_features_npz


def protocol_paths(dataset: str, root: Path) -> list[str]:
    settings = ProtocolSettings(dataset, trials=1) if dataset == "sysu" else None
    settings = settings or ProtocolSettings(dataset, trial=1)
    return needed_paths(build_splits(settings, root))


def evaluate_argv(dataset: str, root: Path, features: Path, *extra: str) -> list[str]:
    which = ["--trials", "1"] if dataset == "sysu" else ["--trial", "1"]
    argv = ["evaluate-features", "--dataset", dataset, "--root", str(root)]
    return [*argv, *which, "--features", str(features), *extra]


def good_features(dataset: str, root: Path, out: Path) -> Path:
    paths = protocol_paths(dataset, root)
    feats = np.random.default_rng(0).standard_normal((len(paths), 8)).astype(np.float32)
    save_features_npz(out, paths, feats)
    return out
