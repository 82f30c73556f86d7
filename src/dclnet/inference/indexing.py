"""Embedding a gallery folder into an index folder: one shot, or appended to.

:func:`write_index` embeds every image below a folder straight to a memory-mapped file, then
either keeps it (exact backend) or trains and fills a FAISS index from it in chunks (faiss
backend); :func:`append_index` embeds only the images an index does not hold yet. Both
replace the index folder atomically, holding the index's lock
(:func:`~dclnet.inference.index.index_lock`): concurrent appends run one after the other,
each extending the index the previous one wrote. :func:`build_index` embeds into memory, for
a search that saves nothing.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from dclnet.data.records import check_modality
from dclnet.errors import DataError, DclnetError
from dclnet.fileio import require_free_space
from dclnet.inference import faiss_index
from dclnet.inference.api import Embedder, check_flag
from dclnet.inference.index import GalleryIndex, list_images
from dclnet.inference.index_store import (
    BACKENDS,
    COPY_ROWS,
    atomic_index_dir,
    index_lock,
    load_index,
    truncate_rows,
    write_json_fsync,
)

logger = logging.getLogger(__name__)


def _embed_into(
    embedder: Embedder,
    root: Path,
    rel: list[str],
    modality: str,
    rows: np.ndarray,
    start: int,
    *,
    batch_size: int,
    flip: bool,
    workers: int,
    skip_corrupt: bool,
    progress: bool,
) -> list[str]:
    """Embed ``root / rel`` into ``rows[start:]``, top down; return the ``rel`` kept.

    Undecodable files skipped with ``skip_corrupt`` leave the last rows unused.

    Raises:
        DataError: An image's embedding is NaN or infinite (a broken checkpoint or image).
    """
    rel_of = {str(root / r): r for r in rel}
    kept: list[str] = []
    bar = tqdm(total=len(rel), desc=f"embedding {modality}", unit="img", disable=not progress)
    try:
        files = [root / r for r in rel]
        stream = embedder.embed_paths_streaming(
            files, modality, batch_size, flip=flip, workers=workers, skip_corrupt=skip_corrupt
        )
        for chunk, emb in stream:
            finite = torch.isfinite(emb).all(dim=1)  # B
            if not finite.all():
                bad = chunk[int((~finite).nonzero()[0])]
                raise DataError(
                    f"{bad}: its embedding by {embedder.checkpoint or 'the model'} is NaN or "
                    "infinite; the checkpoint (or the image) is broken"
                )
            at = start + len(kept)
            rows[at : at + len(chunk)] = emb.numpy()
            kept.extend(rel_of[str(p)] for p in chunk)
            bar.update(len(chunk))
    finally:
        bar.close()
    if len(kept) < len(rel):
        logger.warning("%s: skipped %d undecodable images", root, len(rel) - len(kept))
    return kept


def _open_rows(path: Path, count: int, dim: int) -> np.ndarray:
    """A new ``count x dim`` float32 ``.npy`` memmap, once the disk is known to hold it.

    A full disk under a memory map is a ``SIGBUS`` that kills the process without a word.
    """
    hint = "free some space or choose another --output"
    require_free_space(path.parent, count * dim * 4 + 4096, f"{count} embeddings", hint)
    return np.lib.format.open_memmap(path, "w+", np.float32, (count, dim))


def _info(embedder: Embedder) -> dict[str, Any]:
    return {"checkpoint": embedder.checkpoint, "preprocessing": embedder.preprocessing.as_dict()}


def build_index(
    embedder: Embedder,
    root: str | Path,
    modality: str,
    *,
    batch_size: int = 64,
    flip: bool = False,
    workers: int = 0,
    skip_corrupt: bool = False,
    progress: bool = True,
) -> GalleryIndex:
    """Embed every image below ``root`` into an in-memory exact index (see :func:`write_index`)."""
    check_modality(modality)
    flip = check_flag("flip", flip)
    root = Path(root)
    rel = list_images(root)
    rows = np.empty((len(rel), embedder.embed_dim), dtype=np.float32)
    options = dict(batch_size=batch_size, flip=flip, workers=workers, skip_corrupt=skip_corrupt)
    kept = _embed_into(embedder, root, rel, modality, rows, 0, progress=progress, **options)
    if not kept:
        raise DataError(f"{root}: no image could be decoded")
    resolved = str(root.resolve())
    return GalleryIndex(
        rows[: len(kept)], kept, resolved, modality, embedder.identity, flip, _info(embedder)
    )


def write_index(
    embedder: Embedder,
    root: str | Path,
    modality: str,
    output: str | Path,
    *,
    backend: str = "exact",
    factory: str | None = None,
    train_size: int | None = None,
    batch_size: int = 64,
    flip: bool = False,
    workers: int = 0,
    skip_corrupt: bool = False,
    progress: bool = True,
) -> GalleryIndex:
    """Embed every image below ``root`` straight into an index directory ``output``.

    Embeddings go to a memory-mapped file as they are computed, so neither the images nor
    the embeddings of a large gallery are held in memory. With ``backend="faiss"`` a FAISS
    index is then trained on a sample of that file, filled from it in chunks, and replaces
    it. ``output`` appears complete or not at all; an existing index there is replaced, any
    other existing path is refused.

    Args:
        backend: ``"exact"`` or ``"faiss"``.
        factory: FAISS index string (default :func:`faiss_index.default_factory`:
            ``"IVF1024,SQ8"``, or ``"Flat"`` below 40,960 images).
        train_size: FAISS: rows sampled for training (default: see
            :func:`faiss_index.default_train_size`).

    Returns:
        The written index, loaded (memory-mapped for the exact backend).
    """
    check_modality(modality)
    flip = check_flag("flip", flip)
    if backend not in BACKENDS:
        raise DclnetError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if factory is not None and backend != "faiss":
        raise DclnetError(f"--faiss {factory!r} needs --backend faiss")
    root = Path(root)
    rel = list_images(root)
    if backend == "faiss":  # fail on a missing extra or a bad string before embedding
        factory = factory or faiss_index.default_factory(len(rel))
        faiss_index.new_index(embedder.embed_dim, factory)
    with index_lock(output), atomic_index_dir(output) as tmp:
        npy = tmp / "embeddings.npy"
        rows = _open_rows(npy, len(rel), embedder.embed_dim)
        options = dict(batch_size=batch_size, flip=flip, workers=workers, skip_corrupt=skip_corrupt)
        kept = _embed_into(embedder, root, rel, modality, rows, 0, progress=progress, **options)
        if not kept:
            raise DataError(f"{root}: no image could be decoded")
        resolved = str(root.resolve())
        index = GalleryIndex(
            rows[: len(kept)], kept, resolved, modality, embedder.identity, flip, _info(embedder)
        )
        if backend == "faiss":
            index.ann, trained_on = faiss_index.build(
                index.embeddings, factory, train_size=train_size, progress=progress
            )
            index.info["faiss"] = faiss_index.build_info(index.ann, factory, trained_on)
            faiss_index.save(index.ann, tmp / faiss_index.FAISS_FILE)
            index.embeddings = None
            meta = index.meta_json()
            del index, rows
            npy.unlink()  # the FAISS index holds the vectors now
        else:
            meta = index.meta_json()
            del index
            rows.flush()
            if len(kept) < rows.shape[0]:  # undecodable files were skipped
                truncate_rows(rows, len(kept), npy)
            del rows  # close the memmap before the folder is moved
        write_json_fsync(tmp / "meta.json", meta)
    return load_index(output)


def append_index(
    embedder: Embedder,
    output: str | Path,
    images: str | Path | None = None,
    *,
    modality: str | None = None,
    batch_size: int = 64,
    workers: int = 0,
    skip_corrupt: bool = False,
    progress: bool = True,
) -> tuple[GalleryIndex, int]:
    """Add the images below ``images`` that ``output`` does not hold yet, without re-embedding.

    New images are embedded with the index's modality and flip setting and appended after
    the old ones (either backend: a FAISS index keeps its trained codebooks). The index is
    replaced atomically.

    Args:
        images: The index's gallery root or a folder inside it (default: the root).
        modality: If given, must be the index's modality.

    Returns:
        The updated index (loaded) and the number of images added.

    Raises:
        DclnetError: ``embedder`` is another model than the one that built the index, the
            modality differs, or ``images`` lies outside the gallery root.
    """
    with index_lock(output):  # the old index is read inside the lock: no append is lost
        return _append_locked(
            embedder,
            Path(output),
            images,
            modality=modality,
            options=dict(
                batch_size=batch_size,
                workers=workers,
                skip_corrupt=skip_corrupt,
                progress=progress,
            ),
        )


def _append_locked(
    embedder: Embedder,
    output: Path,
    images: str | Path | None,
    *,
    modality: str | None,
    options: dict[str, Any],
) -> tuple[GalleryIndex, int]:
    """:func:`append_index` with the index's lock held."""
    old = load_index(output, gpu=False)
    old.check_model(embedder, where=f"index {output}")
    if modality is not None and modality != old.modality:
        raise DclnetError(
            f"index {output} holds {old.modality} images; --modality {modality} cannot be "
            "appended to it"
        )
    root = Path(old.root)
    folder = Path(images).resolve() if images is not None else root
    if not folder.is_relative_to(root):
        raise DclnetError(
            f"{images} is outside the gallery root {root} of index {output}; append adds "
            "images below that root (build a new index for another folder)"
        )
    prefix = folder.relative_to(root).as_posix()
    below = list_images(folder)
    known = set(old.paths)
    new = [
        r for r in (below if prefix == "." else [f"{prefix}/{p}" for p in below]) if r not in known
    ]
    if not new:
        return old, 0
    options = {**options, "flip": old.flip}
    meta = old.meta_json()
    with atomic_index_dir(output) as tmp:
        kept = _append_rows(embedder, old, root, new, tmp, options)
        meta["paths"] = old.paths + kept
        meta["count"] = len(meta["paths"])
        write_json_fsync(tmp / "meta.json", meta)
    return load_index(output), len(kept)


def _append_rows(
    embedder: Embedder,
    old: GalleryIndex,
    root: Path,
    new: list[str],
    tmp: Path,
    options: dict[str, Any],
) -> list[str]:
    """Write ``old``'s vectors and the embeddings of ``new`` into ``tmp``; return those kept."""
    dim, count = old.embed_dim, len(old)
    if old.ann is None:
        npy = tmp / "embeddings.npy"
        rows = _open_rows(npy, count + len(new), dim)
        for s in range(0, count, COPY_ROWS):
            stop = min(count, s + COPY_ROWS)
            rows[s:stop] = old.embeddings[s:stop]
        kept = _embed_into(embedder, root, new, old.modality, rows, count, **options)
        rows.flush()
        if len(kept) < len(new):
            truncate_rows(rows, count + len(kept), npy)
        del rows
        old.embeddings = None  # close the old memmap before its folder is replaced
        return kept
    staging = tmp / "new.npy"  # the new embeddings, streamed to disk, then added in chunks
    rows = _open_rows(staging, len(new), dim)
    kept = _embed_into(embedder, root, new, old.modality, rows, 0, **options)
    faiss_index.add(old.ann, rows[: len(kept)], progress=options["progress"])
    del rows
    staging.unlink()
    faiss_index.save(old.ann, tmp / faiss_index.FAISS_FILE)
    return kept
