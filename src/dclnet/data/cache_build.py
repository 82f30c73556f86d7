"""Writing a cache directory: decoded images into ``images.npy``, then ``meta.json``.

:func:`write_cache` decodes every record (in order; with ``num_workers`` threads at most
``2 * num_workers`` images in flight) into a temporary ``.npy`` through a memory map, after
checking the disk has room for it (a full disk under a memory map is a ``SIGBUS``), leaves
unreadable images out when asked (compacting the array), and moves it into place; ``meta.json``
is written last, atomically, so that its presence means ``images.npy`` is complete.
:func:`locked` holds the directory's ``.lock`` so that concurrent processes build only once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import uuid
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from dclnet.data.cache_validity import IMAGES, META
from dclnet.data.imageio import load_image
from dclnet.errors import DataError
from dclnet.fileio import (
    atomic_write,
    disk_full_cause,
    disk_full_error,
    open_no_follow,
    require_free_space,
)

logger = logging.getLogger(__name__)

_LOCK = ".lock"
_COPY_ROWS = 256  # rows per chunk when compacting away skipped images
_SPACE_HINT = "free some space or set data.cache_dir (cache_dir=) to a folder on another disk"


def write_cache(
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
    (directory / META).unlink(missing_ok=True)  # from here on the old arrays are not trusted
    for stale in directory.glob(".*.tmp"):  # left by a crashed build; we hold the lock
        logger.info("removing stale temporary file %s", stale)
        stale.unlink(missing_ok=True)
    start = time.perf_counter()
    shape = (len(paths), *size, 3)
    require_free_space(directory, _npy_bytes(shape), f"{IMAGES} of {name}", _SPACE_HINT)
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
        os.replace(tmp, directory / IMAGES)
        tmp = None
    except OSError as exc:
        if disk_full_cause(exc) is not None:
            raise disk_full_error(directory, IMAGES) from exc
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
    _write_json_atomic(directory / META, meta)
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
    require_free_space(directory, _npy_bytes(shape), f"the compacted {IMAGES}", _SPACE_HINT)
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
def locked(directory: Path) -> Iterator[None]:
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
