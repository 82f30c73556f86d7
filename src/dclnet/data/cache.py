"""Records → resized uint8 arrays on disk (memory-mapped ``.npy``) + ``meta.json``.

Decoding and resizing tens of thousands of JPEGs every epoch is the classic bottleneck, so a
data set is decoded once per (root, size, reader version, name, record list) into one cache
directory ``<cache_dir>/<name>-<H>x<W>-<key>``::

    images.npy   N x H x W x 3 uint8, opened with mmap_mode="r"
    meta.json    key parts, records, the raw files' (size, mtime_ns), skipped files,
                 fingerprint; written last, so its presence means images.npy is complete
    .lock        advisory lock, so that concurrent processes (DDP ranks) build only once
                 (never opened through a symbolic link)

A later call reuses the directory when ``meta.json`` is complete and the fingerprint of the raw
files still matches; otherwise it rebuilds. The fingerprint is each file's size and
modification time (``verify="stat"``, the default: no file is read), or with
``verify="hash"`` the SHA-256 of each file's contents, for certainty when files may be
replaced by others of the same size with their modification time restored (every file is
read at every start; a cache built without hashes is rebuilt once).
Every file is written to a temporary name and moved into place with ``os.replace``; the old
``meta.json`` is deleted before a rebuild starts, so a crash at any point leaves a directory
that the next call rebuilds rather than trusts. The free space is checked before
``images.npy`` is written through its memory map (a full disk there would kill the process
with ``SIGBUS``).

This module holds the entry point (:func:`build_cache`), where the directories live and the
:class:`CachedSet` it returns; the validity checks are in :mod:`dclnet.data.cache_validity`,
the writing of a directory (and its lock) in :mod:`dclnet.data.cache_build`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dclnet.data.cache_build import locked, write_cache
from dclnet.data.cache_validity import (
    IMAGES,
    META_FORMAT,
    VERIFY,
    cache_key,
    content_fingerprint,
    fingerprint,
    load_valid,
    stat_files,
)
from dclnet.data.imageio import READER_VERSION
from dclnet.data.records import ImageSet, Record, check_modality
from dclnet.errors import DataError

__all__ = ["READER_VERSION", "VERIFY", "CachedSet", "build_cache", "default_cache_dir"]

logger = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/dclnet``, or ``~/.cache/dclnet`` when that is unset or relative."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "dclnet"


@dataclass
class CachedSet:
    """A cached data set: all records' images as one memory-mapped array, in record order.

    Attributes:
        images: ``N x H x W x 3`` uint8, memory-mapped read-only.
        labels: ``N`` int64 identities.
        cams: ``N`` int64 camera ids.
        paths: ``N`` paths relative to the data-set root.
        modalities: ``N`` modality names (``"visible"`` / ``"infrared"``).
        skipped: Paths of unreadable images left out (only with ``skip_corrupt=True``).
        directory: The cache directory.
    """

    images: np.ndarray
    labels: np.ndarray
    cams: np.ndarray
    paths: list[str]
    modalities: np.ndarray
    skipped: list[str]
    directory: Path

    def __len__(self) -> int:
        return len(self.paths)

    def image_set(self, modality: str) -> ImageSet:
        """The rows of one modality, in record order.

        Images stay memory-mapped when those rows are contiguous (records grouped by
        modality); otherwise they are copied into memory.
        """
        check_modality(modality)
        index = np.flatnonzero(self.modalities == modality)
        if len(index) and index[-1] - index[0] + 1 == len(index):
            images = self.images[int(index[0]) : int(index[-1]) + 1]
        else:
            if len(index):
                logger.info(
                    "%s rows of %s are interleaved with the other modality; copying %d images "
                    "into memory (group records by modality to keep them memory-mapped)",
                    modality,
                    self.directory,
                    len(index),
                )
            images = np.asarray(self.images[index])
        return ImageSet(
            images=images,
            labels=self.labels[index],
            cams=self.cams[index],
            paths=[self.paths[i] for i in index],
            modality=modality,
        )


def build_cache(
    root: Path,
    records: Sequence[Record],
    *,
    size: tuple[int, int] = (288, 144),
    cache_dir: Path | None = None,
    name: str = "images",
    skip_corrupt: bool = False,
    num_workers: int = 0,
    progress: bool = True,
    verify: str = "stat",
) -> CachedSet:
    """Decode and resize ``records`` once into a keyed on-disk cache, or reuse a valid one.

    Args:
        root: Data-set root; ``Record.path`` is relative to it.
        records: Images to cache; the arrays keep this order.
        size: ``(height, width)`` of the cached images (LANCZOS, antialiased).
        cache_dir: Parent folder of cache directories (default :func:`default_cache_dir`).
        name: Label for this list (e.g. ``"sysu-train"``), part of the key and folder name.
        skip_corrupt: Leave unreadable images out (listed in ``skipped``, in ``meta.json``
            and in a warning) instead of raising.
        num_workers: Decoding threads; 0 decodes in the calling thread. Images are still
            written in order, with at most ``2 * num_workers`` decoded images in flight.
        progress: Show a tqdm progress bar while building.
        verify: How an existing cache is checked against the raw files: ``"stat"`` (size
            and modification time) or ``"hash"`` (SHA-256 of the contents; reads every file).

    Returns:
        The cached set, images memory-mapped read-only.

    Raises:
        DataError: The root or an image is missing or unreadable (the latter only without
            ``skip_corrupt``), or the cache directory cannot be written.
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"data-set root not found {root}; pass the folder that holds the data set")
    size = _check_size(size)
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    if verify not in VERIFY:
        raise DataError(f"unknown cache verification {verify!r}; valid: {', '.join(VERIFY)}")
    if not records:
        raise DataError(f"no records to cache under {root}; check the data-set lists")
    key = cache_key(root, records, size, name)
    stats = stat_files(root, records, skip_corrupt)
    header = {  # everything meta.json must hold for the directory to be reused
        "format": META_FORMAT,
        "complete": True,
        "key": key,
        "fingerprint": fingerprint(records, stats),
        "records": [[r.path, int(r.label), int(r.cam), r.modality] for r in records],
        "files": stats,
    }
    if verify == "hash":
        header["content_sha256"] = content_fingerprint(root, records, stats)
    directory = _make_directory(cache_dir, key)
    with locked(directory):
        meta, images, reason = load_valid(directory, header)
        if meta is None:
            logger.info("building cache %s (%s)", directory, reason)
            meta = write_cache(
                directory,
                root,
                header,
                name=name,
                skip_corrupt=skip_corrupt,
                num_workers=num_workers,
                progress=progress,
            )
            images = np.load(directory / IMAGES, mmap_mode="r")
        else:
            logger.info("reusing cache %s (%d images)", directory, len(images))
    cached = _cached_set(directory, meta, images)
    _report_skipped(root, meta, skip_corrupt)
    return cached


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    ok = size is not None and len(size) == 2 and all(int(s) == s and s > 0 for s in size)
    if not ok:
        raise ValueError(f"size must be (height, width) with positive integers, got {size!r}")
    return int(size[0]), int(size[1])


def _make_directory(cache_dir: Path | None, key: dict) -> Path:
    """Create ``<cache_dir>/<name>-<H>x<W>-<hash of key>`` and return it."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    safe_name = re.sub(r"[^A-Za-z0-9_.-]+", "_", key["name"]) or "images"
    parent = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    height, width = key["size"]
    directory = parent.expanduser().resolve() / f"{safe_name}-{height}x{width}-{digest}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(
            f"cannot create cache directory {directory}: {exc.strerror}; "
            "pass cache_dir= a writable folder"
        ) from exc
    return directory


def _cached_set(directory: Path, meta: dict, images: np.ndarray) -> CachedSet:
    skipped = set(meta["skipped_index"])
    rows = [r for i, r in enumerate(meta["records"]) if i not in skipped]
    return CachedSet(
        images=images,
        labels=np.array([r[1] for r in rows], dtype=np.int64),
        cams=np.array([r[2] for r in rows], dtype=np.int64),
        paths=[r[0] for r in rows],
        modalities=np.array([r[3] for r in rows], dtype=str),
        skipped=list(meta["skipped"]),
        directory=directory,
    )


def _report_skipped(root: Path, meta: dict, skip_corrupt: bool) -> None:
    if not meta["skipped"]:
        return
    if not skip_corrupt:  # a cache built with skip_corrupt=True must not shorten this run
        raise DataError(meta["skipped_reasons"][0])
    logger.warning(
        "skipped %d unreadable images under %s: %s",
        len(meta["skipped"]),
        root,
        ", ".join(meta["skipped"]),
    )
