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
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import time
import uuid
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from dclnet.data.imageio import READER_VERSION, load_image, unreadable_reason
from dclnet.data.records import ImageSet, Record, check_modality
from dclnet.errors import DataError
from dclnet.fileio import (
    atomic_write,
    disk_full_cause,
    disk_full_error,
    open_no_follow,
    require_free_space,
)

__all__ = ["READER_VERSION", "VERIFY", "CachedSet", "build_cache", "default_cache_dir"]

logger = logging.getLogger(__name__)

META_FORMAT = 1  # layout of meta.json / images.npy; part of the validity check
_IMAGES = "images.npy"
_META = "meta.json"
_LOCK = ".lock"
_COPY_ROWS = 256  # rows per chunk when compacting away skipped images
_HASH_CHUNK = 1 << 20
VERIFY = ("stat", "hash")  # what decides that the raw files are unchanged (see above)
_SPACE_HINT = "free some space or set data.cache_dir (cache_dir=) to a folder on another disk"


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
    key = _cache_key(root, records, size, name)
    stats = _stat_files(root, records, skip_corrupt)
    header = {  # everything meta.json must hold for the directory to be reused
        "format": META_FORMAT,
        "complete": True,
        "key": key,
        "fingerprint": _fingerprint(records, stats),
        "records": [[r.path, int(r.label), int(r.cam), r.modality] for r in records],
        "files": stats,
    }
    if verify == "hash":
        header["content_sha256"] = _content_fingerprint(root, records, stats)
    directory = _make_directory(cache_dir, key)
    with _locked(directory):
        meta, images, reason = _load_valid(directory, header)
        if meta is None:
            logger.info("building cache %s (%s)", directory, reason)
            meta = _build(
                directory,
                root,
                header,
                name=name,
                skip_corrupt=skip_corrupt,
                num_workers=num_workers,
                progress=progress,
            )
            images = np.load(directory / _IMAGES, mmap_mode="r")
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


def _cache_key(root: Path, records: Sequence[Record], size: tuple[int, int], name: str) -> dict:
    """What determines the arrays' contents, apart from the raw files themselves."""
    digest = hashlib.sha256()
    for r in records:
        digest.update(json.dumps([r.path, int(r.label), int(r.cam), r.modality]).encode())
        digest.update(b"\n")
    return {
        "root": str(root),
        "size": list(size),
        "reader_version": READER_VERSION,
        "name": name,
        "records_sha256": digest.hexdigest(),
    }


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


def _stat_files(root: Path, records: Sequence[Record], skip_corrupt: bool) -> list[list[int]]:
    """``[size, mtime_ns]`` of every raw file; ``[-1, -1]`` for a missing one if skipping."""
    stats = []
    for r in records:
        try:
            st = os.stat(root / r.path)
            stats.append([st.st_size, st.st_mtime_ns])
        except OSError as exc:
            if not skip_corrupt:
                raise DataError(
                    f"cannot read image {root / r.path}: {unreadable_reason(root / r.path, exc)}; "
                    "check the data-set root and lists, or pass skip_corrupt=True"
                ) from exc
            stats.append([-1, -1])
    return stats


def _fingerprint(records: Sequence[Record], stats: list[list[int]]) -> str:
    digest = hashlib.sha256()
    for r, (nbytes, mtime) in zip(records, stats):
        digest.update(f"{r.path}\0{nbytes}\0{mtime}\n".encode())
    return digest.hexdigest()


def _content_fingerprint(root: Path, records: Sequence[Record], stats: list[list[int]]) -> str:
    """SHA-256 over every raw file's path and contents (``verify="hash"``)."""
    digest = hashlib.sha256()
    for r, (nbytes, _) in zip(records, stats):
        digest.update(f"{r.path}\0".encode())
        if nbytes < 0:  # missing, skipped with skip_corrupt
            digest.update(b"missing\n")
            continue
        try:
            with open(root / r.path, "rb") as handle:
                while chunk := handle.read(_HASH_CHUNK):
                    digest.update(chunk)
        except OSError as exc:
            raise DataError(f"cannot read image {root / r.path}: {exc.strerror}") from exc
        digest.update(b"\n")
    return digest.hexdigest()


def _load_valid(directory: Path, header: dict) -> tuple[dict | None, np.ndarray | None, str]:
    """``(meta, images, "")`` for a complete, current cache, else ``(None, None, why)``."""
    meta_path = directory / _META
    if not meta_path.exists():
        return None, None, "no complete cache yet"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return None, None, "meta.json is unreadable"
    if not isinstance(meta, dict) or not meta.get("complete"):
        return None, None, "meta.json is incomplete"
    if meta.get("format") != header["format"] or meta.get("key") != header["key"]:
        return None, None, "meta.json was written for another key or format"
    if "content_sha256" in header:  # verify="hash": the contents decide, not size + mtime
        if "content_sha256" not in meta:
            return None, None, "the cache was built without content hashes (verify_cache=hash)"
        if meta["content_sha256"] != header["content_sha256"]:
            return None, None, "raw file contents changed since the cache was built"
    elif meta.get("fingerprint") != header["fingerprint"]:
        return None, None, _describe_changes(meta, header["files"])
    try:
        images = np.load(directory / _IMAGES, mmap_mode="r")
    except (OSError, ValueError):
        return None, None, "images.npy is missing or truncated"
    expected = (meta["num_images"], *meta["key"]["size"], 3)
    if images.shape != expected or images.dtype != np.uint8:
        return None, None, f"images.npy has shape {images.shape}, expected {expected}"
    return meta, images, ""


def _describe_changes(meta: dict, stats: list[list[int]]) -> str:
    old = meta.get("files", [])
    changed = [i for i, (a, b) in enumerate(zip(old, stats)) if list(a) != list(b)]
    if len(old) != len(stats) or not changed:
        return "raw files changed since the cache was built"
    first = meta["records"][changed[0]][0]
    return (
        f"{len(changed)} of {len(stats)} raw files changed since the cache was built "
        f"(e.g. {first}: size/mtime {old[changed[0]]} -> {stats[changed[0]]})"
    )


def _build(
    directory: Path,
    root: Path,
    header: dict,
    *,
    name: str,
    skip_corrupt: bool,
    num_workers: int,
    progress: bool,
) -> dict:
    """Decode every record into a fresh ``images.npy``, then write ``meta.json``."""
    paths = [root / r[0] for r in header["records"]]
    size = tuple(header["key"]["size"])
    (directory / _META).unlink(missing_ok=True)  # from here on the old arrays are not trusted
    for stale in directory.glob(".*.tmp"):  # left by a crashed build; we hold the lock
        logger.info("removing stale temporary file %s", stale)
        stale.unlink(missing_ok=True)
    start = time.perf_counter()
    shape = (len(paths), *size, 3)
    require_free_space(directory, _npy_bytes(shape), f"{_IMAGES} of {name}", _SPACE_HINT)
    tmp: Path | None = _temp_path(directory, "images")
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        bar = tqdm(total=len(paths), desc=f"caching {name}", unit="img", disable=not progress)
        with bar:
            kept, failures = _fill(out, paths, size, skip_corrupt, num_workers, bar)
        out.flush()
        del out  # close the mapping before the file is copied or renamed
        if failures:
            tmp = _compact(tmp, directory, len(kept))
        _fsync(tmp)
        os.replace(tmp, directory / _IMAGES)
        tmp = None
    except OSError as exc:
        if disk_full_cause(exc) is not None:
            raise disk_full_error(directory, _IMAGES) from exc
        raise
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink()
    meta = {
        **header,
        "num_images": len(kept),
        "skipped": [header["records"][i][0] for i, _ in failures],
        "skipped_index": [i for i, _ in failures],
        "skipped_reasons": [reason for _, reason in failures],
    }
    _write_json_atomic(directory / _META, meta)
    seconds = time.perf_counter() - start
    logger.info("cached %d images in %s in %.1f s", len(kept), directory, seconds)
    return meta


def _fill(
    out: np.ndarray,
    paths: list[Path],
    size: tuple[int, int],
    skip_corrupt: bool,
    num_workers: int,
    bar: tqdm,
) -> tuple[list[int], list[tuple[int, str]]]:
    """Write decoded images to consecutive rows of ``out``; return kept and failed indices."""
    kept: list[int] = []
    failures: list[tuple[int, str]] = []
    decoded = contextlib.closing(_decode_in_order(paths, size, num_workers))
    with decoded as images:  # on an error, stop the decoding threads now, not at gc
        for i, image in enumerate(images):
            if isinstance(image, DataError):
                if not skip_corrupt:
                    raise image
                failures.append((i, str(image)))
            else:
                out[len(kept)] = image
                kept.append(i)
            bar.update()
    return kept, failures


def _decode_in_order(
    paths: list[Path], size: tuple[int, int], num_workers: int
) -> Iterator[np.ndarray | DataError]:
    """Decoded images (or their DataError) in order, at most ``2 * num_workers`` in flight."""

    def decode(path: Path) -> np.ndarray | DataError:
        try:
            return load_image(path, size)
        except DataError as exc:
            return exc

    if num_workers == 0:
        for path in paths:
            yield decode(path)
        return
    pending: deque[Future] = deque()
    with ThreadPoolExecutor(max_workers=num_workers) as pool:
        try:
            for path in paths:
                if len(pending) >= 2 * num_workers:
                    yield pending.popleft().result()
                pending.append(pool.submit(decode, path))
            while pending:
                yield pending.popleft().result()
        finally:  # the consumer stopped early (error or crash): do not decode the rest
            for future in pending:
                future.cancel()


def _compact(tmp: Path, directory: Path, rows: int) -> Path:
    """Copy the first ``rows`` rows of ``tmp`` into a new, shorter ``.npy``; return its path."""
    if rows == 0:
        raise DataError(f"no readable images to cache in {directory}; check the data-set files")
    source = np.load(tmp, mmap_mode="r")
    shape = (rows, *source.shape[1:])
    require_free_space(directory, _npy_bytes(shape), f"the compacted {_IMAGES}", _SPACE_HINT)
    target_path = _temp_path(directory, "images")
    try:
        target = np.lib.format.open_memmap(target_path, mode="w+", dtype=np.uint8, shape=shape)
        for start in range(0, rows, _COPY_ROWS):
            stop = min(start + _COPY_ROWS, rows)
            target[start:stop] = source[start:stop]
        target.flush()
        del target, source
    except BaseException:
        target_path.unlink(missing_ok=True)
        raise
    tmp.unlink()
    return target_path


def _npy_bytes(shape: tuple[int, ...]) -> int:
    """Size of a uint8 ``.npy`` of ``shape``, with a generous allowance for its header."""
    return int(np.prod(shape, dtype=np.int64)) + 4096


def _temp_path(directory: Path, stem: str) -> Path:
    # Hidden and ending in ".tmp", so that a later build can find and remove leftovers.
    return directory / f".{stem}.{uuid.uuid4().hex}.tmp"


def _fsync(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _write_json_atomic(path: Path, data: Any) -> None:
    with atomic_write(path, fsync=True) as handle:
        json.dump(data, handle)
    with contextlib.suppress(OSError):  # make the renames durable; not possible everywhere
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``directory`` (a no-op where flock is missing)."""
    try:
        import fcntl
    except ImportError:  # Windows: concurrent builds still end in a complete cache
        yield
        return
    fd = open_no_follow(directory / _LOCK, os.O_RDWR | os.O_CREAT)  # never through a link
    with os.fdopen(fd, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
            locked = True
        except OSError:  # some network file systems refuse locks
            logger.debug("cannot lock %s; building without a lock", directory)
            locked = False
        try:
            yield
        finally:
            if locked:
                fcntl.flock(handle, fcntl.LOCK_UN)


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
