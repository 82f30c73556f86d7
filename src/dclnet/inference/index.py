"""A saved gallery of embeddings, and top-k cross-modality search over it.

An index is a directory, written atomically::

    INDEX/embeddings.npy   G x D float32, row g is the image paths[g]
    INDEX/meta.json        format, gallery root, relative paths ('/' separators), modality,
                           flip, preprocessing, checkpoint path and identity

The checkpoint identity (:func:`dclnet.inference.api.checkpoint_identity`) is a hash of the
model's weights: a search with another model is refused, since its embeddings live in a
different space. Search never builds a ``Q x G`` matrix: the gallery is read (memory-mapped)
in chunks, and each chunk's ranking is merged into a running top-k.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from dclnet.data.records import check_modality
from dclnet.errors import DataError, DclnetError
from dclnet.inference.api import Embedder

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
INDEX_FORMAT = "dclnet-index"
INDEX_VERSION = 1


def list_images(root: str | Path) -> list[str]:
    """Image files below ``root`` (recursively), relative with '/' separators, sorted.

    Raises:
        DataError: ``root`` is not a directory or holds no image file.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root} is not a directory; pass a folder of images")
    found = sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
    )
    if not found:
        raise DataError(
            f"{root} holds no image files ({' '.join(IMAGE_EXTENSIONS)}, searched recursively)"
        )
    return found


def expand_inputs(items: Sequence[str | Path]) -> list[str]:
    """Files and folders → image file paths (folders listed with :func:`list_images`)."""
    out: list[str] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            out.extend(str(path / rel) for rel in list_images(path))
        elif path.is_file():
            out.append(str(item))
        else:
            raise DataError(f"{item} does not exist; pass image files or folders")
    return out


@dataclass
class GalleryIndex:
    """Gallery embeddings with what is needed to interpret and trust them.

    Attributes:
        embeddings: ``G x D`` float32 L2-normalised (possibly a read-only memmap).
        paths: ``G`` image paths relative to ``root``, '/' separators.
        root: Gallery folder.
        modality: Modality the gallery was embedded as.
        identity: Checkpoint identity of the model that embedded it.
        flip: Whether flip-averaged embeddings were used (queries should match).
        info: Further provenance (checkpoint path, preprocessing).
    """

    embeddings: np.ndarray
    paths: list[str]
    root: str
    modality: str
    identity: str
    flip: bool = False
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.paths)

    def meta_json(self) -> dict[str, Any]:
        """The JSON side of the index (everything except the embeddings)."""
        return {
            "format": INDEX_FORMAT,
            "format_version": INDEX_VERSION,
            "count": len(self.paths),
            "embed_dim": int(self.embeddings.shape[1]),
            "root": self.root,
            "modality": self.modality,
            "flip": self.flip,
            "checkpoint_identity": self.identity,
            **self.info,
            "paths": self.paths,
        }

    def check_model(self, embedder: Embedder, where: str = "the index") -> None:
        """Refuse a model other than the one that embedded the gallery (one-line error)."""
        if embedder.identity != self.identity:
            built = self.info.get("checkpoint", "another checkpoint")
            raise DclnetError(
                f"{where} was built with {built} (model {self.identity[:12]}), but "
                f"{embedder.checkpoint or 'this embedder'} is a different model "
                f"({embedder.identity[:12]}); rebuild the index with this checkpoint "
                "(dclnet index) or search with the checkpoint that built it"
            )


def _embed_gallery(
    embedder: Embedder,
    root: str | Path,
    modality: str,
    allocate: Callable[[int, int], np.ndarray],
    *,
    batch_size: int,
    flip: bool,
    workers: int,
    skip_corrupt: bool,
    progress: bool,
) -> GalleryIndex:
    """Embed the images below ``root`` into ``allocate(G, D)``, filling it from the top.

    Undecodable files skipped with ``skip_corrupt`` leave the last rows unused.
    """
    check_modality(modality)
    root = Path(root)
    rel = list_images(root)
    rows = allocate(len(rel), embedder.embed_dim)
    rel_of = {str(root / r): r for r in rel}
    kept: list[str] = []
    bar = tqdm(total=len(rel), desc=f"embedding {modality}", unit="img", disable=not progress)
    try:
        files = [root / r for r in rel]
        stream = embedder.embed_paths_streaming(
            files, modality, batch_size, flip=flip, workers=workers, skip_corrupt=skip_corrupt
        )
        for chunk, emb in stream:
            rows[len(kept) : len(kept) + len(chunk)] = emb.numpy()
            kept.extend(rel_of[str(p)] for p in chunk)
            bar.update(len(chunk))
    finally:
        bar.close()
    if not kept:
        raise DataError(f"{root}: no image could be decoded")
    if len(kept) < len(rel):
        logger.warning("%s: skipped %d undecodable images", root, len(rel) - len(kept))
    info = {"checkpoint": embedder.checkpoint, "preprocessing": embedder.preprocessing.as_dict()}
    return GalleryIndex(rows, kept, str(root.resolve()), modality, embedder.identity, flip, info)


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
    """Embed every image below ``root`` into an in-memory index (see :func:`write_index`)."""
    index = _embed_gallery(
        embedder,
        root,
        modality,
        lambda n, d: np.empty((n, d), dtype=np.float32),
        batch_size=batch_size,
        flip=flip,
        workers=workers,
        skip_corrupt=skip_corrupt,
        progress=progress,
    )
    index.embeddings = index.embeddings[: len(index)]  # undecodable files leave unused rows
    return index


def write_index(
    embedder: Embedder,
    root: str | Path,
    modality: str,
    output: str | Path,
    *,
    batch_size: int = 64,
    flip: bool = False,
    workers: int = 0,
    skip_corrupt: bool = False,
    progress: bool = True,
) -> GalleryIndex:
    """Embed every image below ``root`` straight into an index directory ``output``.

    Embeddings go to a memory-mapped file as they are computed, so neither the images nor
    the embeddings of a large gallery are held in memory. ``output`` appears complete or not
    at all; an existing index there is replaced, any other existing path is refused.

    Returns:
        The written index, loaded memory-mapped.
    """
    with _atomic_index_dir(output) as tmp:
        npy = tmp / "embeddings.npy"
        index = _embed_gallery(
            embedder,
            root,
            modality,
            lambda n, d: np.lib.format.open_memmap(npy, "w+", np.float32, (n, d)),
            batch_size=batch_size,
            flip=flip,
            workers=workers,
            skip_corrupt=skip_corrupt,
            progress=progress,
        )
        meta = index.meta_json()
        rows = index.embeddings
        del index
        rows.flush()
        if meta["count"] < rows.shape[0]:  # undecodable files were skipped
            _truncate_rows(rows, meta["count"], npy)
        del rows  # close the memmap before the folder is moved
        _write_json_fsync(tmp / "meta.json", meta)
    return load_index(output)


def save_index(index: GalleryIndex, output: str | Path) -> None:
    """Write an in-memory index to the directory ``output`` (atomically, like write_index)."""
    with _atomic_index_dir(output) as tmp:
        with open(tmp / "embeddings.npy", "wb") as fh:
            np.save(fh, np.ascontiguousarray(index.embeddings, dtype=np.float32))
            fh.flush()
            os.fsync(fh.fileno())
        _write_json_fsync(tmp / "meta.json", index.meta_json())


@contextmanager
def _atomic_index_dir(output: str | Path) -> Iterator[Path]:
    """A temporary folder next to ``output`` that replaces it when the block succeeds."""
    output = Path(output)
    if output.exists() and not (output / "meta.json").is_file():
        raise DataError(f"{output} exists and is not a dclnet index; choose a new --output path")
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}.", suffix=".tmp"))
    try:
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


def load_index(path: str | Path, mmap: bool = True) -> GalleryIndex:
    """Read an index directory (embeddings memory-mapped unless ``mmap=False``).

    Raises:
        DataError: Not an index, or its files disagree.
    """
    path = Path(path)
    meta_path = path / "meta.json"
    if not meta_path.is_file() or not (path / "embeddings.npy").is_file():
        raise DataError(
            f"{path} is not a dclnet index (no meta.json/embeddings.npy); build one "
            "with `dclnet index`"
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        embeddings = np.load(path / "embeddings.npy", mmap_mode="r" if mmap else None)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read the index ({exc}); rebuild it") from None
    if meta.get("format") != INDEX_FORMAT or meta.get("format_version", 0) > INDEX_VERSION:
        raise DataError(f"{path}: not a dclnet index of a supported version; rebuild it")
    paths = meta.get("paths", [])
    if embeddings.ndim != 2 or embeddings.shape[0] != len(paths):
        raise DataError(
            f"{path}: embeddings.npy has shape {embeddings.shape} but meta.json lists "
            f"{len(paths)} paths; rebuild the index"
        )
    info = {k: meta[k] for k in ("checkpoint", "preprocessing") if k in meta}
    return GalleryIndex(
        embeddings,
        paths,
        meta["root"],
        meta["modality"],
        meta["checkpoint_identity"],
        bool(meta.get("flip", False)),
        info,
    )


def _truncate_rows(rows: np.ndarray, n: int, path: Path) -> None:
    """Rewrite the ``.npy`` memmap ``rows`` at ``path`` keeping its first ``n`` rows."""
    short = path.with_name("short.npy")
    out = np.lib.format.open_memmap(short, mode="w+", dtype=rows.dtype, shape=(n, rows.shape[1]))
    for start in range(0, n, 65536):
        out[start : start + 65536] = rows[start : min(n, start + 65536)]
    out.flush()
    del out
    os.replace(short, path)


def _write_json_fsync(path: Path, value: Any) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(value, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())


# -- search ---------------------------------------------------------------------------------


def topk_search(
    queries: Tensor,
    gallery: np.ndarray | Tensor,
    k: int,
    *,
    chunk_size: int = 8192,
    query_chunk: int = 1024,
) -> tuple[Tensor, Tensor]:
    """The ``k`` most similar gallery rows per query, by dot product, best first.

    Equal scores keep gallery order (the lower index first), exactly as a stable sort of the
    full ``Q x G`` matrix would, but only ``query_chunk x chunk_size`` scores exist at once.

    Args:
        queries: ``Q x D`` embeddings (their device is used).
        gallery: ``G x D`` embeddings, a (memory-mapped) array or tensor, read chunk by chunk.
        k: Results per query (capped at ``G``).
        chunk_size: Gallery rows scored at once.
        query_chunk: Queries scored at once.

    Returns:
        ``Q x k`` float32 scores and ``Q x k`` int64 gallery indices.
    """
    num_gallery = gallery.shape[0]
    if k < 1 or chunk_size < 1 or query_chunk < 1:
        raise DclnetError(f"top-k and chunk sizes must be >= 1 (got k={k}, chunk={chunk_size})")
    k = min(k, num_gallery)
    device = queries.device
    queries = queries.float()
    best_s = torch.empty(queries.shape[0], 0, device=device)
    best_i = torch.empty(queries.shape[0], 0, dtype=torch.int64, device=device)
    for g0 in range(0, num_gallery, chunk_size):
        rows = gallery[g0 : g0 + chunk_size]
        if isinstance(rows, np.ndarray):  # a copy: memmaps are read-only
            rows = torch.from_numpy(np.array(rows, dtype=np.float32))
        g = rows.to(device, torch.float32)  # c x D
        parts_s, parts_i = [], []
        for q0 in range(0, queries.shape[0], query_chunk):
            sim = queries[q0 : q0 + query_chunk] @ g.T  # q x c
            s, i = sim.sort(dim=1, descending=True, stable=True)
            parts_s.append(s[:, :k])
            parts_i.append(i[:, :k] + g0)
        cand_s = torch.cat([best_s, torch.cat(parts_s)], dim=1)  # Q x (k' + k)
        cand_i = torch.cat([best_i, torch.cat(parts_i)], dim=1)
        # Earlier chunks come first, so a stable sort keeps ties in gallery order.
        order = cand_s.sort(dim=1, descending=True, stable=True).indices[:, :k]
        best_s, best_i = cand_s.gather(1, order), cand_i.gather(1, order)
    return best_s, best_i


@dataclass
class QueryResult:
    """Ranked gallery for one query.

    Attributes:
        query: The query image path.
        paths: Gallery paths (relative to the index root), best first.
        scores: Cosine similarities, best first.
    """

    query: str
    paths: list[str]
    scores: list[float]


def search(
    embedder: Embedder,
    index: GalleryIndex,
    queries: Sequence[str | Path],
    query_modality: str,
    *,
    topk: int = 10,
    batch_size: int = 64,
    workers: int = 0,
    chunk_size: int = 8192,
) -> list[QueryResult]:
    """Embed query files with their modality's branch and rank the index for each.

    Queries are embedded with the index's flip setting, so both sides match.

    Raises:
        DclnetError: The index was built by another model.
    """
    check_modality(query_modality)
    index.check_model(embedder)
    if query_modality == index.modality:
        logger.warning("query and gallery are both %s: a same-modality search", query_modality)
    chunks = list(
        embedder.embed_paths_streaming(
            list(queries), query_modality, batch_size, flip=index.flip, workers=workers
        )
    )
    names = [str(p) for c, _ in chunks for p in c]
    emb = torch.cat([e for _, e in chunks]).to(embedder.device)
    scores, indices = topk_search(emb, index.embeddings, topk, chunk_size=chunk_size)
    scores, indices = scores.cpu().tolist(), indices.cpu().tolist()
    return [
        QueryResult(q, [index.paths[g] for g in row], s)
        for q, row, s in zip(names, indices, scores)
    ]


def results_json(results: list[QueryResult], root: str) -> list[dict[str, Any]]:
    """One entry per query: ``{"query", "gallery_root", "results": [{"path", "score"}]}``."""
    return [
        {
            "query": r.query,
            "gallery_root": root,
            "results": [{"path": p, "score": s} for p, s in zip(r.paths, r.scores)],
        }
        for r in results
    ]


def write_results(
    results: list[QueryResult],
    root: str,
    *,
    json_path: Path | None = None,
    csv_path: Path | None = None,
) -> None:
    """Write JSON (see :func:`results_json`) and/or CSV rows ``query,rank,path,score``."""
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(results_json(results, root), indent=1) + "\n")
    if csv_path is not None:
        csv_path.parent.mkdir(parents=True, exist_ok=True)
        with open(csv_path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["query", "rank", "path", "score"])
            for r in results:
                for rank, (p, s) in enumerate(zip(r.paths, r.scores), start=1):
                    writer.writerow([r.query, rank, p, f"{s:.6f}"])


def format_results(results: list[QueryResult], *, max_queries: int = 10, shown: int = 5) -> str:
    """A readable summary: the first ``shown`` results of the first ``max_queries`` queries."""
    lines = []
    for r in results[:max_queries]:
        lines.append(f"query {r.query}")
        for rank, (p, s) in enumerate(zip(r.paths[:shown], r.scores[:shown]), start=1):
            lines.append(f"  {rank:>3}  {s:+.4f}  {p}")
        if len(r.paths) > shown:
            lines.append(f"  ... {len(r.paths) - shown} more")
    if len(results) > max_queries:
        lines.append(f"... {len(results) - max_queries} more queries (see --json / --csv)")
    return "\n".join(lines)
