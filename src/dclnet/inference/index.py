"""A saved gallery of embeddings, and top-k cross-modality search over it.

The index folder on disk (its layout, the write lock, the checks on load) is
:mod:`dclnet.inference.index_store`; its public names are re-exported here.

The checkpoint identity (:func:`dclnet.inference.api.checkpoint_identity`) is a hash of the
model's weights: a search with another model, or adding another model's embeddings, is
refused, since its embeddings live in a different space. The exact backend never builds a
``Q x G`` matrix (:func:`~dclnet.inference.topk.topk_search` reads the gallery, memory-mapped,
in chunks). The faiss backend (:mod:`dclnet.inference.faiss_index`, an optional extra)
answers approximately, from compressed codes or a graph. Galleries are embedded into index
folders by :mod:`dclnet.inference.indexing`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dclnet.data.imageio import special_file_reason
from dclnet.errors import DataError, DclnetError
from dclnet.inference import faiss_index
from dclnet.inference.api import Embedder
from dclnet.inference.topk import NonFiniteError, check_finite_queries, topk_search

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
INDEX_FORMAT = "dclnet-index"
INDEX_VERSION = 2  # 2 added "backend" (exact | faiss); version 1 folders are exact

# Re-exported: topk_search, the pure ranking behind GalleryIndex.topk, and the public names of
# dclnet.inference.index_store (the index folder; imported at the end of this module), which
# scripts and tests import from here.
__all__ = [
    "BACKENDS",
    "COPY_ROWS",
    "NORM_TOLERANCE",
    "atomic_index_dir",
    "index_lock",
    "load_index",
    "lock_path",
    "save_index",
    "save_index_locked",
    "truncate_rows",
    "write_json_fsync",
    "topk_search",
]


def list_images(root: str | Path) -> list[str]:
    """Image files below ``root`` (recursively), relative with '/' separators, sorted.

    Raises:
        DataError: ``root`` is not a directory or holds no image file, or an image name
            is not a regular file (a FIFO, a device, a dangling link): leaving it out would
            silently shrink the gallery.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root} is not a directory; pass a folder of images")
    named = [p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS]
    for p in named:
        if not p.is_file() and not p.is_dir():
            raise DataError(f"{p}: {special_file_reason(p)}")
    found = sorted(p.relative_to(root).as_posix() for p in named if p.is_file())
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
        embeddings: Exact backend: ``G x D`` float32 L2-normalised (possibly a read-only
            memmap). ``None`` when a FAISS index holds the vectors.
        paths: ``G`` image paths relative to ``root``, '/' separators.
        root: Gallery folder.
        modality: Modality the gallery was embedded as.
        identity: Checkpoint identity of the model that embedded it.
        flip: Whether flip-averaged embeddings were used (queries should match).
        info: Further provenance (checkpoint path, preprocessing; ``faiss``: the factory
            string, training sample and saved search parameters).
        ann: FAISS backend: the ``faiss.Index`` whose id ``g`` is ``paths[g]``.
        location: The folder the index was loaded from (for messages), or ``""``.
    """

    embeddings: np.ndarray | None
    paths: list[str]
    root: str
    modality: str
    identity: str
    flip: bool = False
    info: dict[str, Any] = field(default_factory=dict)
    ann: Any = None
    location: str = ""

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def backend(self) -> str:
        """``"faiss"`` when a FAISS index holds the vectors, else ``"exact"``."""
        return "exact" if self.ann is None else "faiss"

    @property
    def embed_dim(self) -> int:
        """D, the size of an embedding."""
        return int(self.embeddings.shape[1] if self.ann is None else self.ann.d)

    @property
    def name(self) -> str:
        return f"index {self.location}" if self.location else "the index"

    def meta_json(self) -> dict[str, Any]:
        """The JSON side of the index (everything except the vectors)."""
        return {
            "format": INDEX_FORMAT,
            "format_version": INDEX_VERSION,
            "backend": self.backend,
            "count": len(self.paths),
            "embed_dim": self.embed_dim,
            "root": self.root,
            "modality": self.modality,
            "flip": self.flip,
            "checkpoint_identity": self.identity,
            **self.info,
            "paths": self.paths,
        }

    def check_model(self, embedder: Embedder, where: str | None = None) -> None:
        """Refuse a model other than the one that embedded the gallery (one-line error)."""
        where = where or self.name
        if embedder.identity != self.identity:
            built = self.info.get("checkpoint", "another checkpoint")
            raise DclnetError(
                f"{where} was built with {built} (model {self.identity[:12]}), but "
                f"{embedder.checkpoint or 'this embedder'} is a different model "
                f"({embedder.identity[:12]}); rebuild the index with this checkpoint "
                "(dclnet index) or use the checkpoint that built it"
            )
        if embedder.embed_dim != self.embed_dim:
            raise DataError(
                f"{where} holds {self.embed_dim}-d embeddings but {embedder.checkpoint} embeds "
                f"{embedder.embed_dim}-d; rebuild the index (dclnet index)"
            )

    def topk(
        self,
        queries: Tensor,
        k: int,
        *,
        chunk_size: int = 8192,
        nprobe: int | None = None,
        ef_search: int | None = None,
    ) -> tuple[Tensor, Tensor]:
        """The ``k`` best gallery rows per query with this index's backend.

        Args:
            queries: ``Q x D`` L2-normalised embeddings.
            k: Results per query (capped at ``G``).
            chunk_size: Exact backend: gallery rows scored at once.
            nprobe: FAISS IVF indexes: lists visited per query (default: saved in the index).
            ef_search: FAISS HNSW indexes: candidate list size (default: saved in the index).

        Returns:
            ``Q x k`` float32 scores and int64 gallery rows, best first; the faiss backend
            marks rows it did not find with ``-1``.

        Raises:
            DataError: A query, a gallery vector or a similarity is NaN or infinite.
        """
        try:
            if self.ann is None:
                if nprobe is not None or ef_search is not None:
                    raise DclnetError(
                        f"--nprobe / --ef-search apply to FAISS indexes; {self.name} is exact"
                    )
                return topk_search(queries, self.embeddings, k, chunk_size=chunk_size)
            return self._faiss_topk(queries, k, nprobe, ef_search)
        except NonFiniteError as exc:
            if exc.gallery_row is None:
                raise
            row = exc.gallery_row
            raise DataError(
                f"{self.name}: the vector of {self.paths[row]} (row {row}) {exc.what}; "
                "rebuild the index (dclnet index)"
            ) from None

    def _faiss_topk(
        self, queries: Tensor, k: int, nprobe: int | None, ef_search: int | None
    ) -> tuple[Tensor, Tensor]:
        if k < 1:
            raise DclnetError(f"top-k must be >= 1 (got k={k})")
        check_finite_queries(queries)
        saved = self.info.get("faiss", {})
        faiss_index.set_search_params(
            self.ann,
            nprobe if nprobe is not None else saved.get("nprobe"),
            ef_search if ef_search is not None else saved.get("efSearch"),
        )
        q = queries.detach().float().cpu().numpy()  # Q x D
        scores, ids = self.ann.search(np.ascontiguousarray(q), min(k, len(self)))
        bad = np.argwhere((ids >= 0) & ~np.isfinite(scores))
        if len(bad):
            raise NonFiniteError("has NaN or inf similarities", int(ids[tuple(bad[0])]))
        return torch.from_numpy(scores), torch.from_numpy(ids.astype(np.int64))


# At the end, not the top: index_store imports GalleryIndex from this module (at its own end),
# so either module can be imported first.
from dclnet.inference.index_store import (  # noqa: E402
    BACKENDS,
    COPY_ROWS,
    NORM_TOLERANCE,
    atomic_index_dir,
    index_lock,
    load_index,
    lock_path,
    save_index,
    save_index_locked,
    truncate_rows,
    write_json_fsync,
)
