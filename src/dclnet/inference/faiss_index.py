"""The FAISS backend of the gallery index: approximate nearest neighbours (optional extra).

A FAISS index folder holds ``meta.json`` (as an exact index) and ``index.faiss`` instead of
``embeddings.npy``. Vectors are L2-normalised embeddings compared by inner product
(``METRIC_INNER_PRODUCT``), so FAISS's scores are the cosine similarities the exact backend
computes (approximated by the index's encoding, e.g. PQ codes).

Factory strings are checked before any embedding: a part that changes the vectors (PCA,
padding, a dimension-reducing rotation) or numbers them itself (``IDMap``) is refused, since
scores would no longer be the cosines of the exact backend or ids no longer gallery rows.
Search parameters are checked against their range (``efSearch`` 1..2^20, ``nprobe`` 1..the
index's number of lists).

FAISS is imported on first use; without it every entry point raises one
:class:`~dclnet.errors.DclnetError` line saying ``pip install "dclnet[faiss]"``. A GPU build of
FAISS is used when it sees a GPU (k-means training, search) and is never required.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from dclnet.errors import DataError, DclnetError

logger = logging.getLogger(__name__)

FAISS_FILE = "index.faiss"
INSTALL_HINT = 'pip install "dclnet[faiss]"'
EXAMPLES = '"Flat", "HNSW32", "IVF1024,SQ8", "IVF1024,PQ512x4fs"'
RECOMMENDED = "IVF1024,SQ8"  # the setting docs/search.md recommends, from its measurements
NPROBE_FRACTION = 8  # default nprobe: nlist / 8 of the IVF lists visited per query
DEFAULT_EF_SEARCH = 128  # HNSW candidate list size unless --ef-search says otherwise
MAX_EF_SEARCH = 1 << 20  # HNSW candidate lists beyond this only cost memory (FAISS: an int)
MAX_NPROBE = 1 << 20  # IVF lists visited; also at most the index's own number of lists
MIN_TRAIN = 65_536  # training sample floor (PQ: 256 centroids per sub-quantizer)
TRAIN_PER_LIST = 40  # IVF: FAISS warns below 39 training vectors per list


def import_faiss() -> Any:
    """The ``faiss`` module, or a one-line error saying how to install it."""
    try:
        import faiss
    except ImportError:
        raise DclnetError(
            f"the FAISS backend needs the optional faiss package, which is not installed: "
            f"{INSTALL_HINT} (or use --backend exact)"
        ) from None
    return faiss


def _reason(exc: Exception) -> str:
    """FAISS's error text without its C++ location prefix, on one line."""
    text = " ".join(str(exc).split())
    return re.sub(r"^Error in .*? at \S+:\d+: (Error: )?", "", text)


def _gpu_count(faiss: Any) -> int:
    return faiss.get_num_gpus() if hasattr(faiss, "index_cpu_to_all_gpus") else 0


def default_factory(count: int) -> str:
    """:data:`RECOMMENDED`, or ``"Flat"`` for galleries too small to train its 1,024 lists."""
    return RECOMMENDED if count >= TRAIN_PER_LIST * 1024 else "Flat"


def default_nprobe(nlist: int) -> int:
    """IVF lists visited per query unless ``--nprobe`` says otherwise."""
    return max(1, nlist // NPROBE_FRACTION)


def new_index(dim: int, factory: str) -> Any:
    """An empty inner-product FAISS index from a factory string (``"IVF1024,SQ8"``).

    Raises:
        DclnetError: FAISS is missing, or ``factory`` is not a valid string for ``dim``.
    """
    faiss = import_faiss()
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise DclnetError(
            f"--faiss {factory!r} is not a valid FAISS index string for {dim}-d embeddings "
            f"({_reason(exc)}); examples: {EXAMPLES}"
        ) from None
    _check_cosine(faiss, index, factory)
    for part in (faiss.try_extract_index_ivf(index), _inner(index)):
        part = faiss.downcast_index(part) if part is not None else None
        if hasattr(part, "do_polysemous_training"):  # slow, and only for Hamming filtering
            part.do_polysemous_training = False
    ivf = faiss.try_extract_index_ivf(index)
    nprobe = default_nprobe(ivf.nlist) if ivf is not None else None
    set_search_params(index, nprobe, DEFAULT_EF_SEARCH, strict=False)
    return index


# Pre-transforms that keep inner products (orthogonal, square) or only L2-normalise.
_KEEPS_COSINE = ("OPQMatrix", "RandomRotationMatrix", "NormalizationTransform")


def _cosine_problem(faiss: Any, index: Any) -> str | None:
    """Why ``index`` would not return cosine similarities of gallery rows, or ``None``."""
    index = faiss.downcast_index(index)
    name = type(index).__name__
    if "IDMap" in name:
        return f"{name} numbers the vectors itself (dclnet's ids are gallery rows); drop 'IDMap'"
    if index.metric_type != faiss.METRIC_INNER_PRODUCT:
        return f"{name} does not compare by inner product"
    if isinstance(index, faiss.IndexPreTransform):
        for i in range(index.chain.size()):
            vt = faiss.downcast_VectorTransform(index.chain.at(i))
            kind = type(vt).__name__
            if kind not in _KEEPS_COSINE or vt.d_in != vt.d_out:
                return (
                    f"{kind} changes the vectors ({vt.d_in}-d -> {vt.d_out}-d, not a rotation), "
                    "so scores would not be their cosine similarities"
                )
        return _cosine_problem(faiss, index.index)
    if isinstance(index, faiss.IndexRefine):
        return _cosine_problem(faiss, index.base_index) or _cosine_problem(
            faiss, index.refine_index
        )
    return None


def _check_cosine(faiss: Any, index: Any, factory: str) -> None:
    """Refuse a factory whose index would not score by cosine or not keep dclnet's ids."""
    problem = _cosine_problem(faiss, index)
    if problem is not None:
        raise DclnetError(
            f"--faiss {factory!r} cannot serve cosine search of gallery rows: {problem}; "
            f"use a string without it (rotations OPQ/RR keep cosines), e.g. {EXAMPLES}"
        )


def default_train_size(index: Any, count: int) -> int:
    """Rows to train on: 0 for indexes that need no training, else a sample of the gallery."""
    if index.is_trained:
        return 0
    faiss = import_faiss()
    ivf = faiss.try_extract_index_ivf(index)
    per_lists = TRAIN_PER_LIST * ivf.nlist if ivf is not None else 0
    return min(count, max(MIN_TRAIN, per_lists))


def _sample_rows(rows: np.ndarray, n: int, seed: int, chunk: int) -> np.ndarray:
    """``n`` distinct rows in ascending order (so a memmap is read front to back)."""
    picked = np.sort(np.random.default_rng(seed).choice(rows.shape[0], n, replace=False))
    out = np.empty((n, rows.shape[1]), dtype=np.float32)
    for s in range(0, n, chunk):
        out[s : s + chunk] = rows[picked[s : s + chunk]]
    return out


def train(index: Any, rows: np.ndarray, factory: str, *, size: int, seed: int = 0) -> None:
    """Train ``index``'s codebooks (IVF centroids, PQ/SQ codes) on ``size`` sampled rows."""
    if index.is_trained:
        return
    faiss = import_faiss()
    sample = _sample_rows(rows, size, seed, 65_536)  # size x D
    ivf = faiss.try_extract_index_ivf(index)
    gpu_kmeans = None  # k-means on the GPU when there is one; the codes stay on the CPU
    if ivf is not None and _gpu_count(faiss) > 0:
        gpu_kmeans = faiss.index_cpu_to_all_gpus(faiss.IndexFlatL2(index.d))
        ivf.clustering_index = gpu_kmeans  # FAISS keeps a raw pointer: hold gpu_kmeans
    try:
        index.train(sample)
    except RuntimeError as exc:
        raise DclnetError(
            f"--faiss {factory!r} cannot be trained on {size} gallery vectors ({_reason(exc)}); "
            "use fewer IVF lists, a larger gallery, or Flat / HNSW32 (no training)"
        ) from None
    finally:
        if gpu_kmeans is not None:
            ivf.clustering_index = None


def add(index: Any, rows: np.ndarray, *, chunk: int = 65_536, progress: bool = False) -> None:
    """Append ``rows`` (``N x D``, any array, e.g. a memmap) chunk by chunk.

    Raises:
        DataError: A row holds NaN or inf (FAISS would store it and never return it).
    """
    bar = tqdm(total=rows.shape[0], desc="adding to FAISS", unit="vec", disable=not progress)
    with bar:
        for start in range(0, rows.shape[0], chunk):
            block = np.ascontiguousarray(rows[start : start + chunk], dtype=np.float32)
            finite = np.isfinite(block).all(axis=1)
            if not finite.all():
                row = start + int(np.argmin(finite))
                raise DataError(f"gallery row {row} is NaN or infinite; it cannot be indexed")
            index.add(block)
            bar.update(block.shape[0])


def build(
    rows: np.ndarray,
    factory: str,
    *,
    train_size: int | None = None,
    seed: int = 0,
    chunk: int = 65_536,
    progress: bool = False,
) -> tuple[Any, int]:
    """A FAISS index over ``rows`` (``N x D``, L2-normalised): trained on a sample, then filled.

    Args:
        rows: Gallery embeddings; read in ``chunk`` rows at a time, so a memmap stays on disk.
        factory: FAISS index string, e.g. ``"IVF1024,SQ8"``, ``"HNSW32"``, ``"Flat"``.
        train_size: Rows sampled for training (default :func:`default_train_size`).
        seed: Sampling seed.
        chunk: Rows added at once.
        progress: Show a progress bar while adding.

    Returns:
        The index (on the CPU) and the number of rows it was trained on (0: no training).
    """
    index = new_index(rows.shape[1], factory)
    size = default_train_size(index, rows.shape[0]) if train_size is None else train_size
    if index.is_trained:
        size = 0
    elif not 1 <= size <= rows.shape[0]:
        raise DclnetError(f"--train-size must be in 1..{rows.shape[0]} (got {size})")
    train(index, rows, factory, size=size, seed=seed)
    add(index, rows, chunk=chunk, progress=progress)
    return index, size


def build_info(index: Any, factory: str, trained_on: int) -> dict[str, Any]:
    """What ``meta.json`` records about a FAISS index (``"faiss"`` key)."""
    faiss = import_faiss()
    return {
        "factory": factory,
        "structure": describe(index),
        "trained_on": trained_on,
        "faiss_version": faiss.__version__,
        **search_params(index),
    }


def set_search_params(
    index: Any, nprobe: int | None, ef_search: int | None, *, strict: bool = True
) -> None:
    """Set IVF ``nprobe`` and/or HNSW ``efSearch`` (``None``: leave as saved).

    Raises:
        DclnetError: A value out of range (``efSearch`` above :data:`MAX_EF_SEARCH`,
            ``nprobe`` above the index's lists), or, with ``strict``, a parameter the index
            does not have (nprobe on HNSW).
    """
    faiss = import_faiss()
    space = getattr(faiss, "GpuParameterSpace", faiss.ParameterSpace)()
    settings = (("nprobe", "--nprobe", nprobe), ("efSearch", "--ef-search", ef_search))
    for name, flag, value in settings:
        if value is None:
            continue
        if value < 1:
            raise DclnetError(f"{flag} must be >= 1 (got {value})")
        _check_upper(faiss, index, name, flag, value)
        try:
            space.set_index_parameter(index, name, value)
        except RuntimeError:
            if strict:
                kind = "IVF" if name == "nprobe" else "HNSW"
                raise DclnetError(
                    f"{flag} applies to {kind} indexes only; this FAISS index is {describe(index)}"
                ) from None


def _check_upper(faiss: Any, index: Any, name: str, flag: str, value: int) -> None:
    """Refuse ``efSearch`` / ``nprobe`` values beyond what the index can use."""
    if name == "efSearch" and value > MAX_EF_SEARCH:
        raise DclnetError(
            f"{flag} must be at most {MAX_EF_SEARCH} (got {value}): a longer candidate list "
            "only costs memory (FAISS stores it as a C int)"
        )
    if name == "nprobe":
        ivf = faiss.try_extract_index_ivf(index)
        top = int(ivf.nlist) if ivf is not None else MAX_NPROBE
        if value > top:
            lists = f" (this index has {top} lists)" if ivf is not None else ""
            raise DclnetError(
                f"{flag} must be at most {top}{lists}, got {value}; --nprobe {top} already "
                "visits every list"
            )


def search_params(index: Any) -> dict[str, int]:
    """The saved ``nprobe`` / ``efSearch`` of an index (whichever it has)."""
    faiss = import_faiss()
    out = {}
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        out["nprobe"] = int(ivf.nprobe)
    hnsw = _hnsw(index)
    if hnsw is not None:
        out["efSearch"] = int(hnsw.hnsw.efSearch)
    return out


def _inner(index: Any) -> Any:
    """``index`` without its pre-transforms (OPQ, PCA), downcast to its own class."""
    faiss = import_faiss()
    inner = faiss.downcast_index(index)
    while isinstance(inner, faiss.IndexPreTransform):
        inner = faiss.downcast_index(inner.index)
    return inner


def _hnsw(index: Any) -> Any:
    inner = _inner(index)
    return inner if isinstance(inner, import_faiss().IndexHNSW) else None


def describe(index: Any) -> str:
    """A short name of the index's structure (``IndexIVFScalarQuantizer``)."""
    faiss = import_faiss()
    return type(faiss.downcast_index(index)).__name__


def searchable(index: Any) -> Any:
    """``index`` on the GPU when a GPU build of FAISS sees one and supports it, else itself."""
    faiss = import_faiss()
    if _gpu_count(faiss) == 0:
        return index
    try:
        return faiss.index_cpu_to_all_gpus(index)
    except RuntimeError as exc:  # e.g. HNSW has no GPU version
        logger.info("FAISS index stays on the CPU (%s)", _reason(exc))
        return index


def save(index: Any, path: Path) -> None:
    """Write ``index`` (a CPU index) to ``path`` and flush it to disk."""
    faiss = import_faiss()
    faiss.write_index(index, str(path))
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load(path: Path, *, dim: int, count: int) -> Any:
    """Read ``index.faiss`` and check it against the index's ``meta.json``.

    Raises:
        DataError: Unreadable, or its size, width or metric disagree with the meta.
    """
    faiss = import_faiss()
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as exc:
        raise DataError(
            f"{path}: cannot read the FAISS index ({_reason(exc)}); rebuild it"
        ) from None
    if index.d != dim or index.ntotal != count or index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise DataError(
            f"{path}: holds {index.ntotal} x {index.d} vectors (metric {index.metric_type}) but "
            f"meta.json says {count} x {dim} by inner product; rebuild the index"
        )
    return index
