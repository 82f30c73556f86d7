"""Gallery indexes lose nothing and return no silently wrong results (issue 20): concurrent
appends with real processes under one lock, leftover temp folders, FAISS parameters and
factories checked up front.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _faults import one_error_line, one_line
from _inference_fixtures import exact_index

from dclnet.cli import main
from dclnet.errors import DataError

REPO = Path(__file__).resolve().parents[1]

# 1. Concurrent appends, one lock beside the index -------------------------------------------


def _spread(world, root: Path, folder: str, copies: int) -> int:
    """``copies`` x the gallery's images under ``root/folder``; the number of files."""
    images = sorted(world["gallery"].rglob("*.jpg"))
    n = 0
    for c in range(copies):
        for i, image in enumerate(images):
            target = root / folder / f"c{c}" / f"{i:03d}.jpg"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(image, target)
            n += 1
    return n


def _append_process(ckpt: Path, index: Path, images: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    argv = [sys.executable, "-m", "dclnet", "index", "--append", "--checkpoint", str(ckpt)]
    argv += ["--output", str(index), "--images", str(images), "--device", "cpu", "--no-progress"]
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


@pytest.mark.timeout(240)
def test_concurrent_appends_lose_no_rows(world, embedder, tmp_path):
    """Two real ``dclnet index --append`` processes on one index: both sets of rows arrive."""
    from dclnet.inference.index_store import load_index
    from dclnet.inference.indexing import write_index

    root = tmp_path / "gallery"
    base = _spread(world, root, "c", 1)
    write_index(embedder, root, "visible", tmp_path / "idx", progress=False)
    added = {name: _spread(world, root, name, 12) for name in ("a", "b")}
    procs = [_append_process(world["ckpt"], tmp_path / "idx", root / n) for n in added]
    outputs = [p.communicate(timeout=200)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    paths = load_index(tmp_path / "idx").paths
    counts = {name: sum(p.startswith(f"{name}/") for p in paths) for name in ("a", "b", "c")}
    assert counts == {**added, "c": base}, (counts, outputs)
    assert len(set(paths)) == len(paths)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_index_lock_is_exclusive_across_processes(tmp_path):
    """While ``index_lock`` is held, another process cannot take it (the lock a service shares)."""
    from dclnet.inference.index_store import index_lock

    (tmp_path / "idx").mkdir()
    probe = (
        "import fcntl, os, sys; from dclnet.inference.index import lock_path;"
        "fd = os.open(lock_path(sys.argv[1]), os.O_RDWR);"
        "sys.exit(0 if fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB) is None else 1)"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    with index_lock(tmp_path / "idx"):
        held = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "idx")], env=env)
    assert held.returncode != 0  # BlockingIOError: the other process could not take it


def test_leftover_index_temp_folders_are_cleaned(embedder, world, tmp_path):
    stale = [tmp_path / ".idx.k2j4h5g6.tmp", tmp_path / ".idx.abcdefgh.old"]
    for folder in stale:
        (folder / "index").mkdir(parents=True)
        (folder / "index" / "embeddings.npy").write_bytes(b"\0" * 100)
    other = tmp_path / ".idx2.k2j4h5g6.tmp"  # another index's: not ours to remove
    other.mkdir()
    exact_index(embedder, world, tmp_path / "idx")
    assert not any(p.exists() for p in stale) and other.is_dir()


# 2. FAISS: parameters and factories checked up front ----------------------------------------


@pytest.fixture(scope="module")
def faiss_indexes(world, embedder, tmp_path_factory):
    pytest.importorskip("faiss")
    from dclnet.inference.indexing import write_index

    base = tmp_path_factory.mktemp("faiss")
    made = {}
    for factory in ("HNSW32", "IVF2,Flat"):
        made[factory] = base / factory.replace(",", "_")
        write_index(embedder, world["gallery"], "visible", made[factory], backend="faiss",
                    factory=factory, progress=False)  # fmt: skip
    return made


@pytest.mark.parametrize(
    "factory, option, needle",
    [
        ("HNSW32", "--ef-search=99999999999", "--ef-search must be at most"),
        ("IVF2,Flat", "--nprobe=99999999999", "--nprobe must be at most 2 (this index has 2"),
        ("IVF2,Flat", "--nprobe=3", "--nprobe must be at most 2"),
    ],
)
def test_faiss_search_parameters_out_of_range(factory, option, needle, world, faiss_indexes,
                                              capsys):  # fmt: skip
    argv = ["search", "--checkpoint", str(world["ckpt"]), "--index", str(faiss_indexes[factory])]
    status = main([*argv, "--query", str(world["queries"]), "--device", "cpu", option])
    one_error_line(capsys, status, needle)


def test_faiss_saved_ef_search_out_of_range(world, faiss_indexes, tmp_path):
    from dclnet.inference.index_store import load_index

    idx = Path(shutil.copytree(faiss_indexes["HNSW32"], tmp_path / "idx"))
    meta = json.loads((idx / "meta.json").read_text())
    meta["faiss"]["efSearch"] = 2**31
    (idx / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError) as info:
        load_index(idx)
    one_line(info.value, f"{idx / 'meta.json'}: 'faiss' must be an object like dclnet writes")


@pytest.mark.parametrize(
    "factory, needle",
    [
        ("PCA32,Flat", "PCAMatrix changes the vectors"),
        ("PCAR32,IVF2,Flat", "PCAMatrix changes the vectors"),
        ("IDMap,Flat", "IndexIDMap numbers the vectors itself"),
        ("IDMap2,Flat", "IndexIDMap2 numbers the vectors itself"),
        ("Pad1024,Flat", "RemapDimensionsTransform changes the vectors"),
    ],
)
def test_faiss_factories_that_are_not_cosine_are_refused(factory, needle, world, tmp_path,
                                                         capsys):  # fmt: skip
    pytest.importorskip("faiss")
    argv = ["index", "--checkpoint", str(world["ckpt"]), "--output", str(tmp_path / "idx")]
    argv += ["--modality", "visible", "--images", str(world["gallery"]), "--backend", "faiss"]
    status = main([*argv, "--faiss", factory, "--device", "cpu"])
    line = one_error_line(capsys, status, f"--faiss {factory!r}")
    assert needle in line and "cosine" in line
    assert list(tmp_path.iterdir()) == []


def test_faiss_rotations_keep_cosines(world, embedder, tmp_path):
    pytest.importorskip("faiss")
    from dclnet.inference.indexing import write_index
    from dclnet.inference.results import search

    rr = write_index(embedder, world["gallery"], "visible", tmp_path / "rr", backend="faiss",
                     factory="RR512,Flat", progress=False)  # fmt: skip
    exact = write_index(embedder, world["gallery"], "visible", tmp_path / "x", progress=False)
    queries = sorted(world["queries"].rglob("*.jpg"))
    got, want = (search(embedder, i, queries, "infrared", topk=5) for i in (rr, exact))
    for a, b in zip(got, want):
        assert a.paths == b.paths
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)  # float32 rotation noise
