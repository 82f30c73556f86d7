"""Gallery search at scale: the exact backend against FAISS settings, on clustered embeddings.

Usage::

    # the docs/search.md tables: one thread, one run per gallery size
    OMP_NUM_THREADS=1 python benchmarks/bench_search.py --threads 1 --galleries 100000 \\
        --json docs/results/bench_search_100k.json
    OMP_NUM_THREADS=1 python benchmarks/bench_search.py --threads 1 --galleries 1000000 \\
        --json docs/results/bench_search_1m.json
    python benchmarks/bench_search.py --galleries 20000 --dim 256 --queries 200   # a quick look
    python benchmarks/bench_search.py --table docs/results/bench_search_*.json  # markdown

For each gallery size, and for the exact backend and each FAISS setting, the table gives
the build time (exact: nothing beyond writing the embeddings; FAISS: codebook training on a
sample plus adding the gallery in chunks, :func:`dclnet.inference.faiss_index.build`), the
bytes of the saved index, the latency of one query (p50/p95, one query per call, through
:meth:`dclnet.inference.index.GalleryIndex.topk` as ``dclnet search`` calls it) and
recall@1/@10 against the exact top-10: the mean over queries of |ANN top-k ∩ exact top-k| / k.
Exact latency is timed on at most ``--exact-latency-queries`` queries or ``--exact-budget``
seconds; a FAISS row times queries one by one for ``--ann-budget`` seconds, then ranks the
rest in one call (recall always covers every query).

The embeddings are synthetic 2048-d L2-normalised vectors that behave like a re-identification
gallery: many identities with 2-6 images each, identities grouped into 2,000 look-alike
groups (people dressed alike) in a 64-d subspace, per-image noise in that subspace and in all
2048 dimensions; the queries are new images of 1,000 gallery identities seen in the other
modality (a fixed shift plus fresh noise). The results file records how often the exact top-1
is the query's own identity (``exact_top1_same_identity``). The gallery is generated in blocks
of 65,536 rows (each from its own seed) straight into a ``.npy`` file under ``--workdir``,
searched memory-mapped, so a 1M x 2048 gallery (8 GB) never sits in memory.

Settings above their ``max_gallery`` are left out, with the reason in the results: ``Flat``
is exact and holds the whole gallery in RAM, HNSW's graph build grows faster than the
gallery, PQ64 is already far below the others' recall at 100k. ``--json OUT`` writes every
figure with the command, machine, versions, thread counts, load average and wall time
(:mod:`dclnet.bench.results`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dclnet.bench.results import command_line, load_average, search_table, write_record
from dclnet.inference import faiss_index
from dclnet.inference.index import GalleryIndex

BLOCK = 65_536  # rows generated per seed
RANK = 64  # dimension of the identity subspace
GROUPS = 2_000  # look-alike groups of identities
K = 10


@dataclass(frozen=True)
class Setting:
    """One FAISS configuration: a factory string and the search parameter values to try.

    Attributes:
        factory: FAISS index string.
        param: ``"nprobe"``, ``"ef_search"`` or ``None`` (nothing to tune).
        values: Values of ``param`` measured.
        max_gallery: Largest gallery it is run on (``None``: all).
        why_not_larger: Why larger galleries are left out.
    """

    factory: str
    param: str | None = None
    values: tuple[int, ...] = ()
    max_gallery: int | None = None
    why_not_larger: str = ""


SETTINGS = (
    Setting("Flat", max_gallery=100_000, why_not_larger="exact too, and all G x D in RAM"),
    Setting(
        "HNSW32",
        "ef_search",
        (32, 128),
        max_gallery=100_000,
        why_not_larger="its graph build grows faster than the gallery; kept out of a short run",
    ),
    Setting("IVF1024,SQ8", "nprobe", (32, 128)),
    Setting("IVF1024,SQ4", "nprobe", (128,)),
    Setting("IVF1024,PQ512x4fs", "nprobe", (32, 128)),
    Setting(
        "IVF1024,PQ64",
        "nprobe",
        (32, 128),
        max_gallery=100_000,
        why_not_larger="recall@10 < 0.7 already at 100k; kept out of a short run",
    ),
)


# -- clustered synthetic embeddings ----------------------------------------------------------


def _basis(dim: int, seed: int) -> np.ndarray:
    """``RANK x dim`` orthonormal rows: the identity subspace."""
    q, _ = np.linalg.qr(np.random.default_rng([seed, 1]).standard_normal((dim, RANK)))
    return q.T.astype(np.float32)


def _unit(x: np.ndarray) -> np.ndarray:
    x /= np.sqrt(np.einsum("ij,ij->i", x, x))[:, None]  # in place: no N x D temporary
    return x


def block_identities(block: int, dim: int, seed: int, basis: np.ndarray):
    """Identity label of each row of ``block`` and each identity's centre (``n_ids x dim``)."""
    rng = np.random.default_rng([seed, block, 0])
    sizes = rng.integers(2, 7, size=BLOCK // 2)  # images per identity
    n_ids = int(np.searchsorted(np.cumsum(sizes), BLOCK)) + 1
    labels = np.repeat(np.arange(n_ids), sizes[:n_ids])[:BLOCK]
    groups = np.random.default_rng([seed, 2]).standard_normal((GROUPS, RANK), np.float32)
    z = 0.9 * groups[rng.integers(0, GROUPS, n_ids)]  # n_ids x RANK
    z += 0.4 * rng.standard_normal((n_ids, RANK), np.float32)
    own = rng.standard_normal((n_ids, dim), np.float32) * (0.3 / np.sqrt(dim))
    return labels, _unit(z @ basis / np.sqrt(RANK) + own)


def _images(
    centres: np.ndarray, ids: np.ndarray, rng: np.random.Generator, basis: np.ndarray, out, tmp
) -> np.ndarray:
    """One image per entry of ``ids`` into ``out`` (``len(ids) x dim``, ``tmp`` alike).

    Subspace noise plus noise in every dimension around the identity's centre, unit length.
    Everything happens in the two buffers: fresh memory is slow to fault in on a small VM.
    """
    n, dim = out.shape
    rng.standard_normal(dtype=np.float32, out=out)
    out *= 0.6 / np.sqrt(dim)
    low = rng.standard_normal((n, RANK), np.float32) * np.float32(0.7 / np.sqrt(RANK))
    out += np.matmul(low, basis, out=tmp)
    out += np.take(centres, ids, axis=0, out=tmp)
    return _unit(out)


def write_gallery(path: Path, count: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Generate ``count`` gallery rows into a ``.npy`` file; return it memory-mapped, and
    each row's identity label."""
    basis = _basis(dim, seed)
    del_me = np.lib.format.open_memmap(path, "w+", np.float32, (count, dim))  # header
    offset = del_me.offset
    del del_me
    out, tmp = np.empty((BLOCK, dim), np.float32), np.empty((BLOCK, dim), np.float32)
    labels = np.empty(count, np.int64)
    with open(path, "r+b") as fh:
        fh.seek(offset)
        for b, start in enumerate(range(0, count, BLOCK)):
            n = min(count, start + BLOCK) - start
            ids, centres = block_identities(b, dim, seed, basis)
            rng = np.random.default_rng([seed, b, 1])
            rows = _images(centres, ids[:n], rng, basis, out[:n], tmp[:n])
            fh.write(memoryview(rows).cast("B"))
            labels[start : start + n] = ids[:n] + b * BLOCK
    return np.load(path, mmap_mode="r"), labels


def make_queries(
    gallery_count: int, count: int, dim: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` queries of distinct gallery identities in the other modality, and labels."""
    basis = _basis(dim, seed)
    rng = np.random.default_rng([seed, 3])
    rows = np.sort(rng.choice(gallery_count, count, replace=False))
    shift = np.random.default_rng([seed, 4]).standard_normal(dim).astype(np.float32)
    shift *= 0.3 / np.linalg.norm(shift)  # the modality gap
    out, labels = [], []
    for b in np.unique(rows // BLOCK):
        ids, centres = block_identities(int(b), dim, seed, basis)
        picked = ids[rows[rows // BLOCK == b] - b * BLOCK]
        buffers = np.empty((2, len(picked), dim), np.float32)
        out.append(_images(centres + shift, picked, rng, basis, *buffers))
        labels.append(picked + b * BLOCK)
    return np.concatenate(out), np.concatenate(labels)


# -- measurements ----------------------------------------------------------------------------


def recall(found: np.ndarray, exact: np.ndarray, k: int) -> float:
    """Mean over queries of ``|found[:, :k] ∩ exact[:, :k]| / k``."""
    hits = [len(set(f[:k].tolist()) & set(e[:k].tolist())) for f, e in zip(found, exact)]
    return float(np.mean(hits)) / k


def time_queries(
    index: GalleryIndex, queries: torch.Tensor, budget_s: float, **params: int
) -> tuple[np.ndarray, list[float]]:
    """Top-k ids of every query; one query per call (timed) until ``budget_s`` is spent,
    then the rest in one untimed call."""
    found, seconds = [], []
    for q in queries:
        start = time.perf_counter()
        _, ids = index.topk(q[None], K, **params)
        seconds.append(time.perf_counter() - start)
        found.append(ids.numpy())
        if sum(seconds) > budget_s:
            break
    if len(found) < len(queries):
        found.append(index.topk(queries[len(found) :], K, **params)[1].numpy())
    return np.concatenate(found), seconds


def latency_ms(seconds: list[float]) -> dict[str, float]:
    ms = np.array(seconds) * 1e3
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "timed_queries": len(ms),
    }


def run_gallery(args: argparse.Namespace, count: int) -> dict:
    """Every backend on one gallery size; rows of the table."""
    work = args.workdir / f"g{count}"
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    rows, labels = write_gallery(work / "embeddings.npy", count, args.dim, args.seed)
    q, q_labels = make_queries(count, args.queries, args.dim, args.seed)
    out = {"gallery": count, "generate_s": time.perf_counter() - start, "results": []}
    print(f"gallery {count:,} x {args.dim}: generated in {out['generate_s']:.0f} s", flush=True)
    exact = GalleryIndex(rows, [""] * count, "", "visible", "")  # paths unused here
    queries = torch.from_numpy(q)
    start = time.perf_counter()
    _, truth = exact.topk(queries, K)  # all queries at once: the reference
    truth = truth.numpy()
    out["exact_batch_s"] = time.perf_counter() - start
    out["exact_top1_same_identity"] = float(np.mean(labels[truth[:, 0]] == q_labels))
    seconds = time_queries(exact, queries[: args.exact_latency_queries], args.exact_budget)[1]
    row = {"backend": "exact", "setting": "", "build_s": 0.0, "bytes": rows.nbytes}
    out["results"].append({**row, **latency_ms(seconds), "recall@1": 1.0, "recall@10": 1.0})
    print_row(out["results"][-1])
    for setting in SETTINGS:
        if args.only and setting.factory not in args.only:
            continue
        if setting.max_gallery is not None and count > setting.max_gallery:
            out["results"].append(
                {"backend": "faiss", "setting": setting.factory, "left_out": setting.why_not_larger}
            )
            print(f"  {setting.factory}: left out ({setting.why_not_larger})", flush=True)
            continue
        out["results"] += run_setting(args, setting, rows, queries, truth, work)
    del exact, rows
    shutil.rmtree(work)
    return out


def run_setting(args, setting: Setting, rows, queries, truth, work: Path) -> list[dict]:
    start = time.perf_counter()
    ann, trained_on = faiss_index.build(rows, setting.factory, seed=args.seed)
    build_s = time.perf_counter() - start
    faiss_index.save(ann, work / "index.faiss")
    size = (work / "index.faiss").stat().st_size
    (work / "index.faiss").unlink()
    index = GalleryIndex(None, [""] * rows.shape[0], "", "visible", "", ann=ann)
    out = []
    for value in setting.values or (None,):
        params = {setting.param: value} if setting.param else {}
        found, seconds = time_queries(index, queries, args.ann_budget, **params)
        row = {
            "backend": "faiss",
            "setting": setting.factory + (f" {setting.param}={value}" if value else ""),
            "build_s": build_s,
            "trained_on": trained_on,
            "bytes": size,
            **latency_ms(seconds),
            "recall@1": recall(found, truth, 1),
            "recall@10": recall(found, truth, K),
        }
        out.append(row)
        print_row(row)
    return out


HEADER = (
    f"  {'backend':7} {'setting':26} {'build s':>8} {'index MB':>9} {'p50 ms':>8} "
    f"{'p95 ms':>8} {'R@1':>6} {'R@10':>6}"
)


def print_row(r: dict) -> None:
    print(
        f"  {r['backend']:7} {r['setting']:26} {r['build_s']:8.1f} {r['bytes'] / 2**20:9.1f} "
        f"{r['p50_ms']:8.2f} {r['p95_ms']:8.2f} {r['recall@1']:6.3f} {r['recall@10']:6.3f}"
        f"  ({r['timed_queries']} queries timed)",
        flush=True,
    )


def versions() -> dict[str, str]:
    faiss = faiss_index.import_faiss()
    return {"faiss": faiss.__version__, "numpy": np.__version__, "python": sys.version.split()[0]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--galleries", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=None, help="torch and FAISS threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--exact-budget", type=float, default=60.0, help="s of exact timing")
    parser.add_argument("--exact-latency-queries", type=int, default=100, help="at most")
    parser.add_argument("--ann-budget", type=float, default=180.0, help="s per FAISS row")
    parser.add_argument("--only", action="append", help="FAISS factory strings to run (all)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/dclnet-bench-search"))
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--table", type=Path, nargs="+", help="print results files as markdown")
    args = parser.parse_args(argv)
    if args.table:
        print(search_table([json.loads(path.read_text()) for path in args.table]))
        return
    faiss = faiss_index.import_faiss()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
        faiss.omp_set_num_threads(args.threads)
    started, load_start = time.perf_counter(), load_average()
    print(HEADER)
    galleries = [run_gallery(args, n) for n in args.galleries]
    seconds = time.perf_counter() - started
    record = {
        "dim": args.dim,
        "queries": args.queries,
        "k": K,
        "faiss_threads": faiss.omp_get_max_threads(),
        "versions": versions(),
        "galleries": galleries,
        "load_average": {"start": load_start, "end": load_average()},
    }
    print(f"wall time {seconds:.0f} s, load average {record['load_average']}")
    if args.json is not None:
        command = command_line("python benchmarks/bench_search.py", sys.argv[1:])
        write_record(args.json, command=command, seconds=seconds, **record)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
