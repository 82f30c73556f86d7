"""The index folder on disk: its layout, atomic writes, the write lock and the checks on load.

An index is a directory, written atomically, with one of two backends::

    INDEX/meta.json        format, backend, gallery root, relative paths ('/' separators),
                           modality, flip, preprocessing, checkpoint path and identity
    INDEX/embeddings.npy   exact backend: G x D float32, row g is the image paths[g]
    INDEX/index.faiss      faiss backend: a FAISS index whose id g is the image paths[g]

Every writer of an index folder holds :func:`index_lock` (the file ``.INDEX.lock`` beside
``INDEX``), so that two appends, or an append and a rebuild, one after the other rather than
both from the same old index (which would lose the rows of one of them). A loaded index is
checked: paths unique and below the gallery root, exact-backend rows finite with norm 1.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from dclnet.data.records import MODALITIES
from dclnet.data.sources.common import escapes_root
from dclnet.errors import DataError
from dclnet.fileio import dir_mode, file_lock, refuse_link
from dclnet.inference import faiss_index

logger = logging.getLogger(__name__)

BACKENDS = ("exact", "faiss")
COPY_ROWS = 16_384  # rows copied at once (128 MB at 2048-d)
# |norm - 1| allowed for a stored row: float32 F.normalize is off by ~1e-7; even a float16
# normalisation stays below 1e-3, while an edited row (x 1000, zeros) is far outside.
NORM_TOLERANCE = 1e-3


def lock_path(folder: str | Path) -> Path:
    """The lock file of the index folder ``folder``: ``.<name>.lock`` beside it."""
    folder = Path(folder)
    return folder.parent / f".{folder.name}.lock"


@contextmanager
def index_lock(folder: str | Path) -> Iterator[None]:
    """Hold the index folder's write lock (waiting for it) for the block.

    Every writer of ``folder`` holds it: :func:`save_index`,
    :func:`~dclnet.inference.indexing.write_index` and
    :func:`~dclnet.inference.indexing.append_index` take it themselves, and the reading of
    the old index that an append extends happens inside it, so concurrent appends add their
    rows one after the other and none is lost. A long-running process (a search service)
    that appends or rebuilds must take it too, around its read-modify-write::

        with index_lock(path):
            index = load_index(path)  # read inside the lock, never before it
            ...  # change it
            save_index_locked(index, path)

    It is an advisory ``flock`` on ``.<name>.lock`` beside the folder (the folder itself is
    replaced atomically, so it cannot carry the lock); the file is never opened through a
    symbolic link and is deleted when released. The lock is not re-entrant: do not call a
    function that takes it while holding it (use :func:`save_index_locked`).
    """
    path = lock_path(folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(path, blocking=False) as free:
        if free:
            yield
            return
    logger.info("waiting for %s: another process is writing index %s", path, folder)
    with file_lock(path):
        yield


def save_index(index: GalleryIndex, output: str | Path) -> None:
    """Write an in-memory index to the directory ``output`` (atomically, like write_index).

    Takes :func:`index_lock`; a caller already holding it uses :func:`save_index_locked`.
    """
    with index_lock(output):
        save_index_locked(index, output)


def save_index_locked(index: GalleryIndex, output: str | Path) -> None:
    """:func:`save_index` for a caller that holds :func:`index_lock` of ``output``."""
    with atomic_index_dir(output) as tmp:
        if index.ann is None:
            with open(tmp / "embeddings.npy", "wb") as fh:
                np.save(fh, np.ascontiguousarray(index.embeddings, dtype=np.float32))
                fh.flush()
                os.fsync(fh.fileno())
        else:
            faiss_index.save(index.ann, tmp / faiss_index.FAISS_FILE)
        write_json_fsync(tmp / "meta.json", index.meta_json())


def _remove_leftovers(output: Path) -> None:
    """Delete the hidden temporary folders that killed writes of ``output`` left beside it.

    Only names :func:`tempfile.mkdtemp` gave them here (``.<name>.<8 chars>.tmp|.old``), so
    another index's (``.<name>2.*``) or anyone else's files are never touched. Called with
    :func:`index_lock` held, so no live writer's folder is among them.
    """
    pattern = re.compile(rf"\.{re.escape(output.name)}\.[a-z0-9_]{{8}}\.(tmp|old)")
    for stale in output.parent.iterdir():
        if pattern.fullmatch(stale.name) and stale.is_dir() and not stale.is_symlink():
            logger.info("removing %s, left by an index write that did not finish", stale)
            shutil.rmtree(stale, ignore_errors=True)


@contextmanager
def atomic_index_dir(output: str | Path) -> Iterator[Path]:
    """A temporary folder next to ``output`` that replaces it when the block succeeds.

    The caller holds :func:`index_lock` of ``output``; leftovers of earlier killed writes
    are removed first.
    """
    output = Path(output)
    if output.exists() and not (output / "meta.json").is_file():
        raise DataError(f"{output} exists and is not a dclnet index; choose a new --output path")
    refuse_link(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(output)
    tmp = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}.", suffix=".tmp"))
    try:
        os.chmod(tmp, dir_mode())  # mkdtemp's 0700 would become the index folder's mode
        yield tmp
        if output.exists():  # swap out the old index, then delete it
            old = Path(
                tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}.", suffix=".old")
            )
            os.replace(output, old / "index")
            os.replace(tmp, output)
            shutil.rmtree(old)
        else:
            os.replace(tmp, output)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


# -- reading ---------------------------------------------------------------------------------

# key -> (type, description) of what meta.json must hold; "count", "flip" and "backend" are
# optional (version 1 folders lack "backend").
_META_KEYS: dict[str, tuple[type | tuple[type, ...], str]] = {
    "format_version": (int, "an integer"),
    "root": (str, "a string"),
    "modality": (str, "a string"),
    "checkpoint_identity": (str, "a string"),
    "embed_dim": (int, "an integer"),
    "paths": (list, "a list of strings"),
}


def _read_meta(path: Path) -> dict[str, Any]:
    """``path/meta.json``, checked key by key (one-line errors naming the file and the fix)."""
    meta_path = path / "meta.json"
    fix = "rebuild the index with `dclnet index`"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{meta_path}: cannot read it ({exc}); {fix}") from None
    if not isinstance(meta, dict) or meta.get("format") != INDEX_FORMAT:
        kind = f"a JSON {type(meta).__name__}" if not isinstance(meta, dict) else "another format"
        raise DataError(f"{meta_path}: not a dclnet index meta file ({kind}); {fix}")
    for key, (kind, words) in _META_KEYS.items():
        if key not in meta:
            raise DataError(f"{meta_path} lacks the key {key!r}; {fix}")
        value = meta[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise DataError(f"{meta_path}: {key!r} must be {words}, not {value!r:.40}; {fix}")
    if not 1 <= meta["format_version"] <= INDEX_VERSION:
        raise DataError(
            f"{meta_path}: index format version {meta['format_version']} is not supported "
            f"(this dclnet reads 1..{INDEX_VERSION}); {fix}"
        )
    checks = (
        (meta["modality"] in MODALITIES, f"'modality' must be one of {', '.join(MODALITIES)}"),
        (all(isinstance(p, str) for p in meta["paths"]), "'paths' must be a list of strings"),
        (meta.get("backend", "exact") in BACKENDS, f"'backend' must be one of {BACKENDS}"),
        (meta.get("count", len(meta["paths"])) == len(meta["paths"]), "'count' != len(paths)"),
        (isinstance(meta.get("flip", False), bool), "'flip' must be true or false"),
        (_faiss_meta_ok(meta.get("faiss", {})), "'faiss' must be an object like dclnet writes"),
    )
    for ok, problem in checks:
        if not ok:
            raise DataError(f"{meta_path}: {problem}; {fix}")
    _check_paths(meta_path, meta["paths"], fix)
    return meta


def _check_paths(meta_path: Path, paths: list[str], fix: str) -> None:
    """Each path once, relative and below the gallery root (a result is read as root/path)."""
    outside = next((p for p in paths if escapes_root(p)), None)
    if outside is not None:
        raise DataError(
            f"{meta_path}: path {outside!r} lies outside the gallery root (absolute, or its "
            f"'..' climb above it); {fix}"
        )
    if len(set(paths)) != len(paths):
        first: dict[str, int] = {}
        for row, p in enumerate(paths):
            if p in first:
                raise DataError(
                    f"{meta_path}: path {p!r} is listed twice (rows {first[p]} and {row}); {fix}"
                )
            first[p] = row


def _faiss_meta_ok(value: Any) -> bool:
    """``{"factory": str, "nprobe": int, "efSearch": int, ...}`` (the last two optional)."""
    if not isinstance(value, dict) or not isinstance(value.get("factory", ""), str):
        return False
    limits = {"nprobe": faiss_index.MAX_NPROBE, "efSearch": faiss_index.MAX_EF_SEARCH}
    params = [(value[k], limits[k]) for k in limits if k in value]
    return all(
        isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= top for v, top in params
    )


def load_index(path: str | Path, mmap: bool = True, *, gpu: bool = True) -> GalleryIndex:
    """Read an index directory; its backend is whatever built it.

    Args:
        path: Index folder.
        mmap: Exact backend: memory-map the embeddings (else read them into memory).
        gpu: FAISS backend: search on the GPU when a GPU build of FAISS sees one.

    Raises:
        DataError: Not an index, or its files are malformed or disagree.
    """
    path = Path(path)
    if not (path / "meta.json").is_file():
        raise DataError(
            f"{path} is not a dclnet index (no meta.json); build one with `dclnet index`"
        )
    meta = _read_meta(path)
    info = {k: meta[k] for k in ("checkpoint", "preprocessing", "faiss") if k in meta}
    index = GalleryIndex(
        None,
        meta["paths"],
        meta["root"],
        meta["modality"],
        meta["checkpoint_identity"],
        meta.get("flip", False),
        info,
        location=str(path),
    )
    if meta.get("backend", "exact") == "faiss":
        ann = faiss_index.load(
            path / faiss_index.FAISS_FILE, dim=meta["embed_dim"], count=len(index)
        )
        index.ann = faiss_index.searchable(ann) if gpu else ann
    else:
        index.embeddings = _load_embeddings(path / "embeddings.npy", meta, mmap)
    return index


def _load_embeddings(npy: Path, meta: dict[str, Any], mmap: bool) -> np.ndarray:
    try:
        embeddings = np.load(npy, mmap_mode="r" if mmap else None)
    except (OSError, ValueError) as exc:
        raise DataError(f"{npy}: cannot read the embeddings ({exc}); rebuild the index") from None
    want = (len(meta["paths"]), meta["embed_dim"])
    if (
        not isinstance(embeddings, np.ndarray)
        or embeddings.shape != want
        or not np.issubdtype(embeddings.dtype, np.floating)
    ):
        raise DataError(
            f"{npy}: holds {getattr(embeddings, 'dtype', '?')} of shape "
            f"{getattr(embeddings, 'shape', '?')} but meta.json says {want[0]} paths x "
            f"{want[1]}-d float32; rebuild the index"
        )
    _check_rows(npy, embeddings, meta["paths"])
    return embeddings


def _check_rows(npy: Path, rows: np.ndarray, paths: list[str]) -> None:
    """Every row finite and of norm 1 (L2-normalised, as written), read in chunks.

    An edited or damaged row would otherwise rank with a score that is no cosine (a row
    x 1000 first with +947, a zero row at 0 for every query). One pass over the file.
    """
    for start in range(0, rows.shape[0], COPY_ROWS):
        block = np.asarray(rows[start : start + COPY_ROWS])
        norms = np.sqrt(np.square(block, dtype=np.float64).sum(axis=1))  # chunk
        bad = ~(np.abs(norms - 1.0) <= NORM_TOLERANCE)  # NaN counts as bad
        if bad.any():
            row = start + int(np.argmax(bad))
            norm = norms[row - start]
            what = (
                "is NaN or infinite"
                if not np.isfinite(block[row - start]).all()
                else f"has norm {norm:.4g}, not 1 (stored embeddings are L2-normalised)"
            )
            raise DataError(
                f"{npy}: the vector of {paths[row]} (row {row}) {what}; rebuild the index "
                "(dclnet index)"
            )


def truncate_rows(rows: np.ndarray, n: int, path: Path) -> None:
    """Rewrite the ``.npy`` memmap ``rows`` at ``path`` keeping its first ``n`` rows."""
    short = path.with_name("short.npy")
    out = np.lib.format.open_memmap(short, mode="w+", dtype=rows.dtype, shape=(n, rows.shape[1]))
    for start in range(0, n, COPY_ROWS):
        out[start : start + COPY_ROWS] = rows[start : min(n, start + COPY_ROWS)]
    out.flush()
    del out
    os.replace(short, path)


def write_json_fsync(path: Path, value: Any) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(value, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())


# At the end, not the top: dclnet.inference.index re-exports this module's names at its own
# end, so either module can be imported first.
from dclnet.inference.index import INDEX_FORMAT, INDEX_VERSION, GalleryIndex  # noqa: E402
