"""The FAISS backend: equal to exact where it should be, recall where it approximates,
append, refusals, and one-line errors. Skipped (with the reason) without the faiss extra."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _inference_fixtures import (
    assert_same_ranking,
    make_checkpoint,
    ranked,
    run_cli,
    write_sysu_images,
)

pytest.importorskip("faiss", reason='the faiss extra is not installed: pip install "dclnet[faiss]"')

from dclnet.errors import DataError, DclnetError  # noqa: E402
from dclnet.inference import faiss_index  # noqa: E402
from dclnet.inference.api import Embedder  # noqa: E402
from dclnet.inference.index import GalleryIndex, list_images  # noqa: E402
from dclnet.inference.index_store import load_index  # noqa: E402
from dclnet.inference.indexing import write_index  # noqa: E402
from dclnet.inference.topk import topk_search  # noqa: E402

pytestmark = pytest.mark.timeout(120)


def unit_rows(n: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def in_memory(ann, count: int, factory: str) -> GalleryIndex:
    info = {"faiss": faiss_index.build_info(ann, factory, 0)}
    return GalleryIndex(
        None, [f"img{g}.jpg" for g in range(count)], "/g", "visible", "", ann=ann, info=info
    )


# -- pure: FAISS against the exact top-k ---------------------------------------------------


def test_flat_equals_exact():
    gallery, queries = unit_rows(500, 64, 0), torch.from_numpy(unit_rows(20, 64, 1))
    ann, trained_on = faiss_index.build(gallery, "Flat", chunk=64)  # added in 8 chunks
    assert trained_on == 0 and ann.ntotal == 500
    want_s, want_i = topk_search(queries, gallery, 10)
    got_s, got_i = in_memory(ann, 500, "Flat").topk(queries, 10)
    np.testing.assert_array_equal(got_i.numpy(), want_i.numpy())
    np.testing.assert_allclose(got_s.numpy(), want_s.numpy(), atol=1e-5)


def _bench_search():
    """``benchmarks/bench_search.py``, for its clustered synthetic embeddings."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_search.py"
    spec = importlib.util.spec_from_file_location("bench_search", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(sys.modules[spec.name])
    return sys.modules[spec.name]


def test_recommended_setting_recall_on_clustered_100k(tmp_path):
    """The default (recommended) factory and nprobe: recall@10 >= 0.95 against exact.

    100,000 gallery images in the benchmark's identity-cluster model, at 128-d (not 2048-d)
    to keep the test to seconds; docs/search.md has the 2048-d figures.
    """
    bench = _bench_search()
    gallery, _ = bench.write_gallery(tmp_path / "g.npy", 100_000, 128, seed=1)
    queries, _ = bench.make_queries(100_000, 300, 128, seed=1)
    queries = torch.from_numpy(queries)
    _, truth = topk_search(queries, gallery, 10)
    ann, trained_on = faiss_index.build(gallery, faiss_index.RECOMMENDED)
    assert 0 < trained_on < 100_000  # trained on a sample
    _, found = in_memory(ann, 100_000, faiss_index.RECOMMENDED).topk(queries, 10)
    assert bench.recall(found.numpy(), truth.numpy(), 10) >= 0.95


def test_non_finite_vectors_are_refused():
    gallery = unit_rows(50, 16, 2)
    gallery[7] = np.nan
    with pytest.raises(DataError, match="gallery row 7 is NaN or infinite"):
        faiss_index.build(gallery, "Flat", chunk=5)
    gallery[7] = 1e38  # finite, but its similarities overflow (as from a crafted file)
    ann = faiss_index.new_index(16, "Flat")
    ann.add(gallery)  # behind dclnet's back
    index = in_memory(ann, 50, "Flat")
    with pytest.raises(DataError, match=r"img7.jpg \(row 7\) has NaN or inf similarities"):
        index.topk(torch.full((1, 16), 0.25), 5)
    with pytest.raises(DataError, match="a query embedding is NaN"):
        index.topk(torch.full((1, 16), float("nan")), 5)


# -- index folders built from images -------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("faiss")
    return {
        "ckpt": make_checkpoint(base / "model.pt"),
        "other": make_checkpoint(base / "other.pt", seed=5),
        "gallery": write_sysu_images(base / "gallery", "visible"),
        "queries": write_sysu_images(base / "queries", "infrared", limit=4),
    }


@pytest.fixture(scope="module")
def embedder(world):
    return Embedder.from_checkpoint(world["ckpt"], device="cpu")


def index_argv(world, output, *extra):
    argv = ["index", "--checkpoint", str(world["ckpt"]), "--output", str(output), "--no-progress"]
    return argv + list(extra)


def test_faiss_folder_is_picked_by_search(world, embedder, tmp_path, capsys):
    idx = tmp_path / "idx"
    argv = index_argv(world, idx, "--modality", "visible", "--images", str(world["gallery"]))
    assert run_cli([*argv, "--backend", "faiss"]) == 0  # 28 images: Flat by default
    assert "faiss Flat, trained on 0" in capsys.readouterr().out
    assert sorted(p.name for p in idx.iterdir()) == ["index.faiss", "meta.json"]
    meta = json.loads((idx / "meta.json").read_text())
    assert meta["backend"] == "faiss" and meta["faiss"]["factory"] == "Flat"
    assert meta["checkpoint_identity"] == embedder.identity and meta["count"] == 28
    index = load_index(idx)
    assert index.backend == "faiss" and index.embeddings is None and index.embed_dim == 512
    exact = write_index(embedder, world["gallery"], "visible", tmp_path / "exact", progress=False)
    assert_same_ranking(ranked(embedder, index, world), ranked(embedder, exact, world))
    out = tmp_path / "r.json"
    argv = ["search", "--checkpoint", str(world["ckpt"]), "--index", str(idx), "--topk", "3"]
    assert run_cli([*argv, "--query", str(world["queries"]), "--json", str(out)]) == 0
    assert "(faiss), top 3 each" in capsys.readouterr().out
    assert [len(e["results"]) for e in json.loads(out.read_text())] == [3] * 4


@pytest.mark.parametrize("factory,params", [("Flat", {}), ("IVF2,Flat", {"nprobe": 2})])
def test_append_equals_one_shot_build(world, embedder, tmp_path, capsys, factory, params):
    """IVF2 with nprobe=2 visits every list, so it must equal a one-shot build exactly."""
    gallery = tmp_path / "g"
    shutil.copytree(world["gallery"], gallery)
    shutil.move(gallery / "cam5", tmp_path / "cam5")
    argv = index_argv(world, tmp_path / "idx")
    built = ["--modality", "visible", "--images", str(gallery), "--backend", "faiss"]
    assert run_cli([*argv, *built, "--faiss", factory]) == 0
    shutil.move(tmp_path / "cam5", gallery / "cam5")
    assert run_cli([*argv, "--append"]) == 0  # default: everything new below the root
    assert "appended 7 new visible images" in capsys.readouterr().out
    appended = load_index(tmp_path / "idx")
    assert appended.backend == "faiss" and appended.paths[-7:] == [
        f"cam5/{p}" for p in list_images(gallery / "cam5")
    ]
    assert appended.info["faiss"]["trained_on"] == (0 if factory == "Flat" else 21)
    one_shot = write_index(
        embedder,
        gallery,
        "visible",
        tmp_path / "full",
        backend="faiss",
        factory=factory,
        progress=False,
    )
    exact = write_index(embedder, gallery, "visible", tmp_path / "exact", progress=False)
    got = ranked(embedder, appended, world, **params)
    assert_same_ranking(got, ranked(embedder, one_shot, world, **params))
    assert_same_ranking(got, ranked(embedder, exact, world))


def test_another_model_is_refused(world, embedder, tmp_path, capsys):
    idx = tmp_path / "idx"
    write_index(
        embedder, world["gallery"], "visible", idx, backend="faiss", factory="Flat", progress=False
    )
    before = (idx / "index.faiss").read_bytes()
    other = index_argv(world, idx, "--append")
    other[other.index(str(world["ckpt"]))] = str(world["other"])
    assert run_cli(other) == 2
    err = capsys.readouterr().err
    assert "different model" in err and err.count("\n") == 1
    assert (idx / "index.faiss").read_bytes() == before  # untouched
    argv = ["search", "--checkpoint", str(world["other"]), "--index", str(idx)]
    assert run_cli([*argv, "--query", str(world["queries"])]) == 2
    assert "different model" in capsys.readouterr().err


@pytest.mark.parametrize(
    "factory,message",
    [
        ("IVFxx,Bogus", "could not parse index string"),
        ("PQ5", "multiple of the number of subquantizers"),
        ("IVF64,Flat", "cannot be trained on 28 gallery vectors"),
    ],
)
def test_bad_factory_strings_are_one_line(world, tmp_path, capsys, factory, message):
    argv = index_argv(world, tmp_path / "idx", "--modality", "visible")
    assert (
        run_cli(
            [*argv, "--images", str(world["gallery"]), "--backend", "faiss", "--faiss", factory]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.startswith(f"error: --faiss {factory!r}") and message in err
    assert err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_search_options(world, embedder, tmp_path, capsys):
    idx = tmp_path / "hnsw"
    write_index(
        embedder,
        world["gallery"],
        "visible",
        idx,
        backend="faiss",
        factory="HNSW32",
        progress=False,
    )
    assert json.loads((idx / "meta.json").read_text())["faiss"]["efSearch"] == (
        faiss_index.DEFAULT_EF_SEARCH
    )
    argv = ["search", "--checkpoint", str(world["ckpt"]), "--index", str(idx)]
    argv += ["--query", str(world["queries"])]
    assert run_cli([*argv, "--ef-search", "8"]) == 0
    capsys.readouterr()
    assert run_cli([*argv, "--nprobe", "4"]) == 2
    assert "--nprobe applies to IVF indexes only" in capsys.readouterr().err
    assert run_cli([*argv, "--ef-search", "0"]) == 2
    assert "--ef-search must be >= 1" in capsys.readouterr().err


def test_files_that_disagree(world, embedder, tmp_path):
    idx = tmp_path / "idx"
    write_index(
        embedder, world["gallery"], "visible", idx, backend="faiss", factory="Flat", progress=False
    )
    meta = json.loads((idx / "meta.json").read_text())
    (idx / "meta.json").write_text(json.dumps({**meta, "paths": meta["paths"][:-1], "count": 27}))
    with pytest.raises(DataError, match="holds 28 x 512 vectors .* says 27 x 512"):
        load_index(idx)
    (idx / "index.faiss").write_bytes(b"not a faiss index")
    with pytest.raises(DataError, match="cannot read the FAISS index"):
        load_index(idx)
    (idx / "meta.json").write_text(
        json.dumps({**meta, "faiss": {"factory": "Flat", "nprobe": "9"}})
    )
    with pytest.raises(DataError, match="'faiss' must be an object like dclnet writes"):
        load_index(idx)
    with pytest.raises(DclnetError, match="unknown backend 'annoy'"):
        write_index(embedder, world["gallery"], "visible", tmp_path / "x", backend="annoy")
