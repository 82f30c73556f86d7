"""Data sets by name → training arrays and evaluation protocols.

Glue between the readers (:mod:`dclnet.data.sources`), the cache and the protocol lists:

- :func:`load_train_data`: the training images of both modalities as uint8 arrays
  (memory-mapped from the cache for data sets on disk), labels re-indexed ``0..n-1``, and an
  optional validation protocol on held-out *training* identities.
- :func:`load_eval_data`: the test protocol's per-trial splits plus the images of every path
  they need, each image cached once.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from dclnet.data.cache import build_cache
from dclnet.data.records import INFRARED, VISIBLE, ImageSet, Record
from dclnet.data.splits import EvalSplit, ProtocolSettings, build_splits, needed_paths
from dclnet.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

DATASETS = ("synthetic", "sysu", "regdb", "llcm")


@dataclass
class EvalData:
    """A protocol ready to run: splits, and the images of every path they use.

    Attributes:
        protocol: Settings recorded with the results.
        splits: Query/gallery records per trial.
        paths: Unique paths the splits need.
        images: ``len(paths) x H x W x 3`` uint8, aligned with ``paths``.
        modalities: Modality of each path (selects the network branch).
    """

    protocol: dict[str, Any]
    splits: list[EvalSplit]
    paths: list[str]
    images: np.ndarray
    modalities: list[str]


@dataclass
class TrainData:
    """Training images of both modalities, with a validation protocol when configured."""

    visible: ImageSet
    infrared: ImageSet
    num_classes: int
    validation: EvalData | None = None
    has_test: bool = True


def _check_dataset(dataset: str, root: str | Path | None) -> Path | None:
    if dataset not in DATASETS:
        raise ConfigError(f"unknown data set {dataset!r}; valid: {', '.join(DATASETS)}")
    if dataset == "synthetic":
        return None
    if root is None:
        raise ConfigError(
            f"data set {dataset!r} needs --root (data.root) pointing at its raw folder"
        )
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"data-set root {root} does not exist or is not a folder")
    return root


@lru_cache(maxsize=4)
def synthetic_set(num_ids: int, seed: int, height: int, width: int, style: str = "default"):
    """The built-in synthetic set rendered at ``height x width`` in the look ``style``
    (memoised per process)."""
    from dclnet.data.sources.synthetic import make_synthetic

    return make_synthetic(num_ids, seed=seed, height=height, width=width, style=style)


def _relabel(visible: ImageSet, infrared: ImageSet) -> tuple[ImageSet, ImageSet, int]:
    ids = np.union1d(visible.labels, infrared.labels)
    visible.labels = np.searchsorted(ids, visible.labels).astype(np.int64)
    infrared.labels = np.searchsorted(ids, infrared.labels).astype(np.int64)
    return visible, infrared, len(ids)


def _hold_out(visible: ImageSet, infrared: ImageSet, held: np.ndarray):
    """Split off the identities ``held``: (train visible, train infrared, validation).

    The training sets index the original arrays (:meth:`ImageSet.subset` with
    ``copy=False``), so a memory-mapped cache is not read into memory per process; only the
    held-out images are copied, into the validation protocol's array.
    """
    v_in, i_in = np.isin(visible.labels, held), np.isin(infrared.labels, held)
    query = infrared.subset(np.flatnonzero(i_in))
    gallery = visible.subset(np.flatnonzero(v_in))
    records_q = [
        Record(p, int(lb), int(c), INFRARED)
        for p, lb, c in zip(query.paths, query.labels, query.cams)
    ]
    records_g = [
        Record(p, int(lb), int(c), VISIBLE)
        for p, lb, c in zip(gallery.paths, gallery.labels, gallery.cams)
    ]
    validation = EvalData(
        protocol={
            "dataset": "validation",
            "identities": len(held),
            "query": "infrared",
            "gallery": "visible (all images)",
            "rule": "regdb",
        },
        splits=[EvalSplit(query=records_q, gallery=records_g, rule="regdb", trial=0)],
        paths=[*query.paths, *gallery.paths],
        images=np.concatenate([query.images, gallery.images]),
        modalities=[INFRARED] * len(query) + [VISIBLE] * len(gallery),
    )
    # The training sets stay views of the (memory-mapped) arrays: index arrays, no copy.
    keep_v, keep_i = np.flatnonzero(~v_in), np.flatnonzero(~i_in)
    return visible.subset(keep_v, copy=False), infrared.subset(keep_i, copy=False), validation


def _train_sets(
    dataset: str,
    root: Path | None,
    *,
    trial: int,
    size,
    cache_dir,
    skip_corrupt,
    synthetic_ids: int,
    synthetic_seed: int,
    progress: bool,
    synthetic_style: str = "default",
    verify_cache: str = "stat",
):
    """(visible, infrared, val_ids or None) with the data set's own labels."""
    if dataset == "synthetic":
        syn = synthetic_set(synthetic_ids, synthetic_seed, *size, synthetic_style)
        pids = set(syn.train_ids) | set(syn.val_ids)
        rows = [i for i, r in enumerate(syn.records) if r.label in pids]
        sets = []
        for modality in (VISIBLE, INFRARED):
            idx = np.array([i for i in rows if syn.records[i].modality == modality])
            sets.append(
                ImageSet(
                    images=syn.images[idx],
                    labels=np.array([syn.records[i].label for i in idx]),
                    cams=np.array([syn.records[i].cam for i in idx]),
                    paths=[syn.records[i].path for i in idx],
                    modality=modality,
                )
            )
        return sets[0], sets[1], np.array(sorted(syn.val_ids))
    if dataset == "sysu":
        from dclnet.data.sources import sysu

        records = sysu.train_records(root)
        val_pids = np.array(sysu.read_ids(root, "val"))
        # train_records re-indexes labels over train ∪ val in ascending pid order
        all_pids = np.array(sorted(set(sysu.read_ids(root, "train")) | set(val_pids.tolist())))
        val_ids = np.searchsorted(all_pids, val_pids)
        name = "sysu-train"
    elif dataset == "regdb":
        from dclnet.data.sources import regdb

        records, val_ids, name = regdb.train_records(root, trial), None, f"regdb-train-{trial}"
    else:
        from dclnet.data.sources import llcm

        records, val_ids, name = llcm.train_records(root), None, "llcm-train"
    cached = build_cache(
        root,
        records,
        size=size,
        cache_dir=_cache_dir(cache_dir),
        name=name,
        skip_corrupt=skip_corrupt,
        progress=progress,
        verify=verify_cache,
    )
    return cached.image_set(VISIBLE), cached.image_set(INFRARED), val_ids


def _cache_dir(cache_dir: str | Path | None) -> Path | None:
    return Path(cache_dir).expanduser() if cache_dir is not None else None


def load_train_data(
    dataset: str,
    root: str | Path | None = None,
    *,
    trial: int = 1,
    size: tuple[int, int] = (288, 144),
    cache_dir: str | Path | None = None,
    skip_corrupt: bool = False,
    verify_cache: str = "stat",
    synthetic_ids: int = 64,
    synthetic_seed: int = 0,
    synthetic_style: str = "default",
    validation: str = "none",
    val_fraction: float = 0.1,
    seed: int = 0,
    progress: bool = True,
) -> TrainData:
    """Training arrays of ``dataset`` (``"synthetic"``, ``"sysu"``, ``"regdb"``, ``"llcm"``).

    Args:
        verify_cache: How a cache is checked against the raw files: ``"stat"`` (size and
            modification time) or ``"hash"`` (file contents), see :mod:`dclnet.data.cache`.
        validation: ``"none"``; ``"sysu"``: hold out the data set's own validation
            identities (SYSU-MM01's ``exp/val_id.txt``; the synthetic set's val ids);
            ``"fraction"``: hold out ``val_fraction`` of the training identities (seeded).
            Held-out identities are removed from training and form a protocol of infrared
            queries against all their visible images, used to select ``best.pt`` — never the
            test set.
    """
    root_path = _check_dataset(dataset, root)
    visible, infrared, val_ids = _train_sets(
        dataset,
        root_path,
        trial=trial,
        size=size,
        cache_dir=cache_dir,
        skip_corrupt=skip_corrupt,
        synthetic_ids=synthetic_ids,
        synthetic_seed=synthetic_seed,
        synthetic_style=synthetic_style,
        progress=progress,
        verify_cache=verify_cache,
    )
    visible, infrared, _ = _relabel(visible, infrared)
    held = None
    if validation == "sysu":
        if val_ids is None:
            raise ConfigError(
                f"train.validation='sysu' needs a data set with its own validation "
                f"ids (sysu, synthetic); {dataset!r} has none — use 'fraction'"
            )
        held = np.asarray(val_ids)
    elif validation == "fraction":
        if not 0.0 < val_fraction < 1.0:
            raise ConfigError(f"train.val_fraction={val_fraction} must lie in (0, 1)")
        ids = np.union1d(visible.labels, infrared.labels)
        count = max(2, round(val_fraction * len(ids)))
        held = np.sort(np.random.default_rng(seed).choice(ids, size=count, replace=False))
    elif validation != "none":
        raise ConfigError(f"unknown train.validation {validation!r}; valid: none, sysu, fraction")
    val_data = None
    if held is not None:
        visible, infrared, val_data = _hold_out(visible, infrared, held)
        visible, infrared, _ = _relabel(visible, infrared)
        logger.info("holding out %d training identities for validation", len(held))
    num_classes = int(max(visible.labels.max(), infrared.labels.max()) + 1)
    return TrainData(visible, infrared, num_classes, val_data)


def load_eval_data(
    dataset: str,
    root: str | Path | None = None,
    *,
    trial: int = 1,
    size: tuple[int, int] = (288, 144),
    cache_dir: str | Path | None = None,
    skip_corrupt: bool = False,
    verify_cache: str = "stat",
    synthetic_ids: int = 64,
    synthetic_seed: int = 0,
    synthetic_style: str = "default",
    mode: str = "all",
    shots: int = 1,
    sampler: str = "seeded",
    trials: int = 10,
    direction: str | None = None,
    progress: bool = True,
) -> EvalData:
    """The test protocol of ``dataset`` with the images it needs (cached once each).

    With ``skip_corrupt`` an unreadable image is left out of every query and gallery it was
    in (the cache lists and warns about it) and ``protocol["skipped_images"]`` counts them:
    such a result is not the exact protocol. Without it an unreadable image is an error.
    """
    root_path = _check_dataset(dataset, root)
    settings = ProtocolSettings(
        dataset=dataset,
        mode=mode,
        shots=shots,
        sampler=sampler,
        trials=trials,
        trial=trial if dataset == "regdb" else None,
        direction=direction,
    )
    if dataset == "synthetic":
        syn = synthetic_set(synthetic_ids, synthetic_seed, *size, synthetic_style)
        splits = build_splits(settings, listing=syn.listing(), test_ids=syn.test_ids)
    else:
        splits = build_splits(settings, root_path)
    paths = needed_paths(splits)
    by_path = {r.path: r for s in splits for r in (*s.query, *s.gallery)}
    records = [by_path[p] for p in paths]
    skipped: set[str] = set()
    if dataset == "synthetic":
        row = {r.path: i for i, r in enumerate(syn.records)}
        images = syn.images[[row[p] for p in paths]]
    else:
        cached = build_cache(
            root_path,
            records,
            size=size,
            cache_dir=_cache_dir(cache_dir),
            name=f"{dataset}-test",
            skip_corrupt=skip_corrupt,
            progress=progress,
            verify=verify_cache,
        )
        images, skipped = cached.images, set(cached.skipped)
    protocol = settings.as_dict()
    if skipped:
        splits = _without(splits, skipped)
        records = [r for r in records if r.path not in skipped]
        paths = [r.path for r in records]  # the cache's rows: record order, skipped left out
        protocol["skipped_images"] = len(skipped)
    return EvalData(
        protocol=protocol,
        splits=splits,
        paths=paths,
        images=images,
        modalities=[r.modality for r in records],
    )


def _without(splits: list[EvalSplit], gone: set[str]) -> list[EvalSplit]:
    """``splits`` with the images ``gone`` left out of every query and gallery."""
    out = []
    for split in splits:
        query = [r for r in split.query if r.path not in gone]
        gallery = [r for r in split.gallery if r.path not in gone]
        if not query or not gallery:
            side = "query" if not query else "gallery"
            raise DataError(
                f"every {side} image of trial {split.trial} is unreadable; "
                "data.skip_corrupt cannot leave them all out"
            )
        out.append(dataclasses.replace(split, query=query, gallery=gallery))
    return out
