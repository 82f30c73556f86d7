"""Ranking query files against a gallery index, and the results it writes.

:func:`search` embeds query files with their modality's branch and ranks the index
(:class:`~dclnet.inference.index.GalleryIndex`, exact or FAISS) for each; the results go to
JSON / CSV atomically (:func:`write_results`) or to a readable summary (:func:`format_results`).
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dclnet.data.records import check_modality
from dclnet.errors import DataError
from dclnet.fileio import atomic_write
from dclnet.inference.api import Embedder
from dclnet.inference.index import GalleryIndex

logger = logging.getLogger(__name__)


@dataclass
class QueryResult:
    """Ranked gallery for one query.

    Attributes:
        query: The query image path.
        paths: Gallery paths (relative to the index root), best first.
        scores: Cosine similarities, best first (approximate with a compressed FAISS index).
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
    nprobe: int | None = None,
    ef_search: int | None = None,
) -> list[QueryResult]:
    """Embed query files with their modality's branch and rank the index for each.

    Queries are embedded with the index's flip setting, so both sides match. The index's
    backend ranks them (:meth:`GalleryIndex.topk`); an approximate backend may return fewer
    than ``topk`` results for a query.

    Raises:
        DclnetError: The index was built by another model.
        DataError: A query or a gallery vector is NaN or infinite.
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
    finite = torch.isfinite(emb).all(dim=1)
    if not finite.all():
        bad = names[int((~finite).nonzero()[0])]
        raise DataError(
            f"query {bad}: its embedding by {embedder.checkpoint or 'the model'} is NaN or "
            "infinite; the checkpoint (or the image) is broken"
        )
    scores, indices = index.topk(
        emb, topk, chunk_size=chunk_size, nprobe=nprobe, ef_search=ef_search
    )
    scores, indices = scores.cpu().tolist(), indices.cpu().tolist()
    return [
        QueryResult(
            q, [index.paths[g] for g in row if g >= 0], [v for v, g in zip(s, row) if g >= 0]
        )
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
    """Write JSON (see :func:`results_json`) and/or CSV rows ``query,rank,path,score``.

    Each file is replaced atomically (:func:`dclnet.fileio.atomic_write`): a reader sees the
    old or the new file, a full disk is one line naming it, and a link there is refused.
    """
    if json_path is not None:
        with atomic_write(json_path) as fh:
            fh.write(json.dumps(results_json(results, root), indent=1) + "\n")
    if csv_path is not None:
        with atomic_write(csv_path, newline="") as fh:
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
