"""Gallery index and top-k search: brute-force equality, chunking, ties, reuse, refusals."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
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
    write_truncated_jpeg,
)

from dclnet.errors import DataError, DclnetError, OutputError
from dclnet.fileio import dir_mode
from dclnet.inference.api import Embedder
from dclnet.inference.index import list_images, topk_search
from dclnet.inference.index_store import load_index, save_index
from dclnet.inference.indexing import build_index, write_index
from dclnet.inference.results import search

pytestmark = pytest.mark.timeout(90)


def brute_force(queries: torch.Tensor, gallery: torch.Tensor, k: int):
    """Full ``Q x G`` matrix, then a stable descending argsort (ties: lower index first)."""
    sim = (queries @ gallery.T).numpy()
    order = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sim, order, axis=1), order


# -- pure top-k ----------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size,query_chunk", [(5, 3), (17, 100), (1000, 1), (1, 2)])
def test_topk_equals_brute_force(chunk_size, query_chunk):
    gen = torch.Generator().manual_seed(0)
    queries = torch.nn.functional.normalize(torch.randn(7, 16, generator=gen), dim=1)
    gallery = torch.nn.functional.normalize(torch.randn(53, 16, generator=gen), dim=1)
    want_s, want_i = brute_force(queries, gallery, 10)
    for g in (gallery, gallery.numpy()):
        s, i = topk_search(queries, g, 10, chunk_size=chunk_size, query_chunk=query_chunk)
        assert s.shape == i.shape == (7, 10) and i.dtype == torch.int64
        np.testing.assert_array_equal(i.numpy(), want_i)
        np.testing.assert_allclose(s.numpy(), want_s, atol=1e-6)


def test_topk_ties_keep_gallery_order():
    gen = torch.Generator().manual_seed(1)
    # Small integers: every dot product is exact, and many are equal (within and across chunks).
    queries = torch.randint(0, 3, (6, 4), generator=gen).float()
    gallery = torch.randint(0, 3, (40, 4), generator=gen).float()
    gallery[30] = gallery[2]  # an exact duplicate far from its twin
    want_s, want_i = brute_force(queries, gallery, 40)
    assert (np.diff(want_s, axis=1) == 0).sum() > 50  # the case is really full of ties
    for chunk in (3, 7, 40):
        s, i = topk_search(queries, gallery, 40, chunk_size=chunk)
        np.testing.assert_array_equal(i.numpy(), want_i)
        np.testing.assert_array_equal(s.numpy(), want_s)


def test_topk_caps_k_and_checks_arguments():
    q, g = torch.eye(2, 3), torch.eye(3)
    s, i = topk_search(q, g, 10, chunk_size=2)
    assert i.tolist() == [[0, 1, 2], [1, 0, 2]] and s[:, 0].tolist() == [1.0, 1.0]
    with pytest.raises(DclnetError, match="top-k"):
        topk_search(q, g, 0)


# -- index and search with a model ---------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Checkpoint, a visible gallery folder and an infrared query folder (SYSU layout)."""
    base = tmp_path_factory.mktemp("search")
    return {
        "ckpt": make_checkpoint(base / "model.pt"),
        "other": make_checkpoint(base / "other.pt", seed=5),
        "gallery": write_sysu_images(base / "gallery", "visible"),
        "queries": write_sysu_images(base / "queries", "infrared", limit=4),
        "base": base,
    }


@pytest.fixture(scope="module")
def embedder(world):
    return Embedder.from_checkpoint(world["ckpt"], device="cpu")


def test_list_images(tmp_path):
    for name in ("b/2.JPG", "a/x/1.png", "c.bmp", "d.jpeg", "notes.txt", "e.gif"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    assert list_images(tmp_path) == ["a/x/1.png", "b/2.JPG", "c.bmp", "d.jpeg"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty holds no image files"):
        list_images(tmp_path / "empty")
    with pytest.raises(DataError, match="not a directory"):
        list_images(tmp_path / "c.bmp")


def test_index_folder_names_keep_their_old_import_path():
    """index_store's public names are re-exported by index (the same objects), and a fresh
    process may import index_store first (the order a top-level cycle would break)."""
    from dclnet.inference import index, index_store

    moved = ["BACKENDS", "COPY_ROWS", "NORM_TOLERANCE", "atomic_index_dir", "index_lock"]
    moved += ["load_index", "lock_path", "save_index", "save_index_locked", "truncate_rows"]
    moved += ["write_json_fsync"]
    for name in moved:
        assert getattr(index, name) is getattr(index_store, name), name
        assert name in index.__all__
    assert index_store.GalleryIndex is index.GalleryIndex
    code = (
        "import dclnet.inference.index_store as s, dclnet.inference.index as i;"
        "assert s.load_index is i.load_index and s.GalleryIndex is i.GalleryIndex"
    )
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(Path(__file__).parents[1] / "src"),
    }
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_index_contents(world, embedder, tmp_path):
    index = write_index(embedder, world["gallery"], "visible", tmp_path / "idx", progress=False)
    rel = list_images(world["gallery"])
    assert index.paths == rel and all(p.startswith("cam") and "\\" not in p for p in rel)
    assert index.modality == "visible" and index.identity == embedder.identity
    assert index.root == str(world["gallery"].resolve())
    want = embedder.embed([world["gallery"] / p for p in rel], "visible")
    np.testing.assert_allclose(index.embeddings, want.numpy(), atol=1e-5)
    assert isinstance(index.embeddings, np.memmap)
    meta = json.loads((tmp_path / "idx" / "meta.json").read_text())
    assert meta["checkpoint_identity"] == embedder.identity and meta["count"] == len(rel)
    # In-memory build and save give the same index; rewriting replaces it atomically.
    memory = build_index(embedder, world["gallery"], "visible", batch_size=7, progress=False)
    np.testing.assert_allclose(memory.embeddings, want.numpy(), atol=1e-5)
    save_index(memory, tmp_path / "idx")
    assert load_index(tmp_path / "idx").paths == rel
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]  # no temporary left over


def test_search_equals_brute_force_on_embeddings(world, embedder):
    index = build_index(embedder, world["gallery"], "visible", progress=False)
    queries = [str(world["queries"] / p) for p in list_images(world["queries"])]
    results = search(embedder, index, queries, "infrared", topk=6, chunk_size=4)
    q = embedder.embed(queries, "infrared")
    want_s, want_i = brute_force(q, torch.from_numpy(index.embeddings), 6)
    assert [r.query for r in results] == queries
    for r, ws, wi in zip(results, want_s, want_i):
        assert r.paths == [index.paths[g] for g in wi]
        np.testing.assert_allclose(r.scores, ws, atol=1e-5)


def test_saved_index_is_reused_without_reembedding(world, tmp_path, monkeypatch):
    idx = tmp_path / "idx"
    ckpt = str(world["ckpt"])
    assert (
        run_cli(
            [
                "index",
                "--checkpoint",
                ckpt,
                "--modality",
                "visible",
                "--images",
                str(world["gallery"]),
                "--output",
                str(idx),
                "--no-progress",
            ]
        )
        == 0
    )
    embedded: list[str] = []
    original = Embedder.embed_paths_streaming

    def recording(self, paths, *args, **kwargs):
        embedded.extend(str(p) for p in paths)
        return original(self, paths, *args, **kwargs)

    def refuse(*args, **kwargs):
        raise AssertionError("the gallery must not be embedded again")

    monkeypatch.setattr(Embedder, "embed_paths_streaming", recording)
    monkeypatch.setattr("dclnet.inference.indexing.build_index", refuse)
    monkeypatch.setattr("dclnet.inference.indexing.write_index", refuse)
    outputs = []
    for n in range(2):
        out = tmp_path / f"r{n}.json"
        argv = [
            "search",
            "--checkpoint",
            ckpt,
            "--index",
            str(idx),
            "--query",
            str(world["queries"]),
            "--topk",
            "5",
            "--json",
            str(out),
            "--chunk-size",
            "3",
        ]
        assert run_cli(argv) == 0
        outputs.append(json.loads(out.read_text()))
    queries = list_images(world["queries"])
    assert embedded == [str(world["queries"] / p) for p in queries] * 2  # only the queries
    assert outputs[0] == outputs[1]
    assert [len(e["results"]) for e in outputs[0]] == [5] * len(queries)


def test_cli_outputs_and_on_the_fly_gallery(world, tmp_path, capsys):
    ckpt = str(world["ckpt"])
    query = str(world["queries"] / list_images(world["queries"])[0])
    j, c = tmp_path / "r.json", tmp_path / "r.csv"
    argv = [
        "search",
        "--checkpoint",
        ckpt,
        "--gallery",
        str(world["gallery"]),
        "--gallery-modality",
        "visible",
        "--query",
        query,
        "--query-modality",
        "infrared",
        "--topk",
        "3",
        "--json",
        str(j),
        "--csv",
        str(c),
        "--no-progress",
    ]
    assert run_cli(argv) == 0
    printed = capsys.readouterr().out
    assert "1 infrared queries against" in printed and query in printed
    entries = json.loads(j.read_text())
    assert len(entries) == 1 and entries[0]["query"] == query
    scores = [r["score"] for r in entries[0]["results"]]
    assert scores == sorted(scores, reverse=True) and len(scores) == 3
    rows = list(csv.DictReader(c.open()))
    assert [r["rank"] for r in rows] == ["1", "2", "3"]
    assert [r["path"] for r in rows] == [r["path"] for r in entries[0]["results"]]
    assert all(r["query"] == query for r in rows)


def test_index_from_another_model_is_refused(world, embedder, tmp_path, capsys):
    write_index(embedder, world["gallery"], "visible", tmp_path / "idx", progress=False)
    argv = [
        "search",
        "--checkpoint",
        str(world["other"]),
        "--index",
        str(tmp_path / "idx"),
        "--query",
        str(world["queries"]),
    ]
    assert run_cli(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: index") and "different model" in err and err.count("\n") == 1
    other = Embedder.from_checkpoint(world["other"], device="cpu")
    with pytest.raises(DclnetError, match="different model"):
        search(other, load_index(tmp_path / "idx"), [world["gallery"] / "x.jpg"], "infrared")


def test_bad_inputs(world, embedder, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    ckpt = str(world["ckpt"])
    argv = [
        "index",
        "--checkpoint",
        ckpt,
        "--modality",
        "visible",
        "--images",
        str(tmp_path / "empty"),
        "--output",
        str(tmp_path / "idx"),
    ]
    assert run_cli(argv) == 2
    assert "holds no image files" in capsys.readouterr().err
    assert not (tmp_path / "idx").exists()
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="not a dclnet index"):
        write_index(embedder, world["gallery"], "visible", tmp_path / "taken")
    with pytest.raises(DataError, match="not a dclnet index"):
        load_index(tmp_path / "taken")
    with pytest.raises(DclnetError, match="unknown modality 'rgb'"):
        write_index(embedder, world["gallery"], "rgb", tmp_path / "idx")
    capsys.readouterr()
    assert run_cli(["search", "--checkpoint", ckpt, "--query", str(world["queries"])]) == 2
    assert "exactly one of --index" in capsys.readouterr().err
    missing = ["search", "--checkpoint", ckpt, "--index", str(tmp_path / "idx"), "--query", "no"]
    assert run_cli(missing) == 2
    assert "no does not exist" in capsys.readouterr().err


def test_corrupt_gallery_image(world, embedder, tmp_path):
    gallery = write_sysu_images(tmp_path / "g", "visible", limit=5)
    write_truncated_jpeg(gallery / "cam1" / "0009" / "0001.jpg")
    with pytest.raises(DataError, match="0009/0001.jpg"):
        write_index(embedder, gallery, "visible", tmp_path / "idx", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g"]  # nothing half-written
    index = write_index(
        embedder, gallery, "visible", tmp_path / "idx", skip_corrupt=True, progress=False
    )
    assert len(index) == 5 and "cam1/0009/0001.jpg" not in index.paths
    assert index.embeddings.shape == (5, 512)
    want = embedder.embed([gallery / p for p in index.paths], "visible")
    np.testing.assert_allclose(index.embeddings, want.numpy(), atol=1e-5)


# -- appending -----------------------------------------------------------------------------


def split_gallery(world, tmp_path):
    """A copy of the gallery without cam5 (``g``), and cam5 kept aside to add later."""
    gallery = tmp_path / "g"
    shutil.copytree(world["gallery"], gallery)
    shutil.move(gallery / "cam5", tmp_path / "cam5")
    return gallery, lambda: shutil.move(tmp_path / "cam5", gallery / "cam5")


def test_append_equals_one_shot_build(world, embedder, tmp_path, capsys):
    gallery, restore = split_gallery(world, tmp_path)
    write_index(embedder, gallery, "visible", tmp_path / "idx", progress=False)
    restore()
    embedded: list[str] = []
    original = Embedder.embed_paths_streaming

    def recording(self, paths, *args, **kwargs):
        embedded.extend(Path(p).relative_to(gallery).as_posix() for p in paths)
        return original(self, paths, *args, **kwargs)

    argv = ["index", "--checkpoint", str(world["ckpt"]), "--output", str(tmp_path / "idx")]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Embedder, "embed_paths_streaming", recording)
        assert run_cli([*argv, "--append", "--images", str(gallery / "cam5"), "--no-progress"]) == 0
    assert "appended 7 new visible images" in capsys.readouterr().out
    assert embedded and all(p.startswith("cam5/") for p in embedded)  # only the new images
    appended = load_index(tmp_path / "idx")
    one_shot = write_index(embedder, gallery, "visible", tmp_path / "full", progress=False)
    assert sorted(appended.paths) == one_shot.paths and appended.paths[-7:] == embedded
    assert_same_ranking(ranked(embedder, appended, world), ranked(embedder, one_shot, world))
    assert run_cli([*argv, "--append", "--no-progress"]) == 0  # nothing new below the root
    assert "appended 0 new" in capsys.readouterr().out
    assert len(load_index(tmp_path / "idx")) == len(one_shot)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full", "g", "idx"]


def test_append_refusals(world, embedder, tmp_path, capsys):
    write_index(embedder, world["gallery"], "visible", tmp_path / "idx", progress=False)
    base = ["index", "--output", str(tmp_path / "idx"), "--append", "--no-progress"]
    cases = [
        (["--checkpoint", str(world["other"])], "different model"),
        (["--checkpoint", str(world["ckpt"]), "--modality", "infrared"], "holds visible images"),
        (["--checkpoint", str(world["ckpt"]), "--images", str(tmp_path)], "outside the gallery"),
        (["--checkpoint", str(world["ckpt"]), "--backend", "exact"], "drop --backend"),
    ]
    for extra, message in cases:
        assert run_cli(base + extra) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert load_index(tmp_path / "idx").paths == list_images(world["gallery"])  # untouched


# -- malformed index folders (one line naming the file and the fix) -----------------------


def _break_meta(meta: dict, case: str):
    if case == "list":
        return [meta]
    if case.startswith("no-"):
        return {k: v for k, v in meta.items() if k != case[3:]}
    key, value = case.split("=", 1)
    return {**meta, key: json.loads(value)}


@pytest.mark.parametrize(
    "case,message",
    [
        ("list", "not a dclnet index meta file (a JSON list)"),
        ("no-paths", "lacks the key 'paths'"),
        ("no-root", "lacks the key 'root'"),
        ("no-checkpoint_identity", "lacks the key 'checkpoint_identity'"),
        ("no-embed_dim", "lacks the key 'embed_dim'"),
        ('format_version="1"', "'format_version' must be an integer"),
        ("format_version=99", "version 99 is not supported"),
        ("paths=[1, 2]", "'paths' must be a list of strings"),
        ('modality="rgb"', "'modality' must be one of"),
        ("count=3", "'count' != len(paths)"),
        ('backend="annoy"', "'backend' must be one of"),
        ("embed_dim=7", "embeddings.npy: holds float32 of shape"),
    ],
)
def test_malformed_meta_is_one_line(world, embedder, tmp_path, capsys, case, message):
    idx = tmp_path / "idx"
    write_index(embedder, world["gallery"], "visible", idx, progress=False)
    meta = json.loads((idx / "meta.json").read_text())
    (idx / "meta.json").write_text(json.dumps(_break_meta(meta, case)))
    with pytest.raises(DataError, match="rebuild the index") as info:
        load_index(idx)
    assert message in str(info.value) and "\n" not in str(info.value)
    argv = ["search", "--checkpoint", str(world["ckpt"]), "--index", str(idx)]
    assert run_cli([*argv, "--query", str(world["queries"])]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err


def test_embeddings_of_another_width(world, embedder, tmp_path):
    idx = tmp_path / "idx"
    index = write_index(embedder, world["gallery"], "visible", idx, progress=False)
    narrow = np.ascontiguousarray(index.embeddings[:, :256])
    narrow /= np.linalg.norm(narrow, axis=1, keepdims=True)  # stored rows are L2-normalised
    meta = json.loads((idx / "meta.json").read_text())
    del index
    np.save(idx / "embeddings.npy", narrow)  # the file and meta.json agree: 256-d
    (idx / "meta.json").write_text(json.dumps({**meta, "embed_dim": 256}))
    with pytest.raises(DataError, match="holds 256-d embeddings but .* embeds 512-d"):
        search(embedder, load_index(idx), [world["gallery"] / "x.jpg"], "infrared")
    np.save(idx / "embeddings.npy", narrow.astype(np.int32))
    with pytest.raises(DataError, match="holds int32 of shape"):
        load_index(idx)


# -- NaN and inf ---------------------------------------------------------------------------


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_gallery_is_refused(world, embedder, tmp_path, capsys, value):
    idx = tmp_path / "idx"
    index = write_index(embedder, world["gallery"], "visible", idx, progress=False)
    rows = np.array(index.embeddings)
    rows[5, :] = value
    del index
    np.save(idx / "embeddings.npy", rows)
    bad = list_images(world["gallery"])[5]
    with pytest.raises(DataError, match=f"{bad} \\(row 5\\) is NaN or infinite"):
        search(embedder, load_index(idx), [world["queries"] / "cam3/0001/0001.jpg"], "infrared")
    argv = ["search", "--checkpoint", str(world["ckpt"]), "--index", str(idx)]
    assert run_cli([*argv, "--query", str(world["queries"])]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and bad in err and "+nan" not in err


def test_overflowing_similarity_is_refused():
    gallery = np.full((3, 4), 1e38, dtype=np.float32)  # finite rows, but 4e38 > float32 max
    gallery[0] = 0.5
    with pytest.raises(DataError, match="gallery row 1 gives a similarity that overflows"):
        topk_search(torch.ones(1, 4), gallery, 2)


def _nan_embeddings(monkeypatch, nan_at: int):
    """Make the embedder return NaN for the ``nan_at``-th image of every call."""
    original = Embedder.embed_paths_streaming

    def patched(self, paths, *args, **kwargs):
        seen = 0
        for chunk, emb in original(self, paths, *args, **kwargs):
            if seen <= nan_at < seen + len(chunk):
                emb[nan_at - seen] = float("nan")
            seen += len(chunk)
            yield chunk, emb

    monkeypatch.setattr(Embedder, "embed_paths_streaming", patched)


def test_non_finite_queries_and_embeddings_are_refused(world, embedder, tmp_path, monkeypatch):
    index = build_index(embedder, world["gallery"], "visible", progress=False)
    queries = [world["queries"] / p for p in list_images(world["queries"])]
    _nan_embeddings(monkeypatch, 2)
    with pytest.raises(DataError, match=f"query {queries[2]}: its embedding .* is NaN"):
        search(embedder, index, queries, "infrared")
    with pytest.raises(DataError, match=r"is NaN or infinite; the checkpoint \(or the image\)"):
        write_index(embedder, world["gallery"], "visible", tmp_path / "idx", progress=False)
    assert list(tmp_path.iterdir()) == []  # nothing half-written
    with pytest.raises(DataError, match="a query embedding is NaN"):
        topk_search(torch.full((1, 4), float("nan")), np.eye(4, dtype=np.float32), 2)


def test_faiss_extra_missing_is_one_line(world, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` raises ImportError
    argv = ["index", "--checkpoint", str(world["ckpt"]), "--modality", "visible"]
    argv += ["--images", str(world["gallery"]), "--output", str(tmp_path / "idx")]
    assert run_cli([*argv, "--backend", "faiss"]) == 2
    err = capsys.readouterr().err
    assert 'pip install "dclnet[faiss]"' in err and err.count("\n") == 1
    assert not (tmp_path / "idx").exists()
    idx = tmp_path / "ann"  # a FAISS index folder, read without the extra
    idx.mkdir()
    meta = {
        "format": "dclnet-index",
        "format_version": 2,
        "backend": "faiss",
        "root": "/g",
        "modality": "visible",
        "checkpoint_identity": "x",
        "embed_dim": 4,
        "paths": ["a"],
    }
    (idx / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DclnetError, match=r'pip install "dclnet\[faiss\]"'):
        load_index(idx)


def test_exact_index_refuses_faiss_options(world, embedder, tmp_path, capsys):
    write_index(embedder, world["gallery"], "visible", tmp_path / "idx", progress=False)
    argv = ["search", "--checkpoint", str(world["ckpt"]), "--query", str(world["queries"])]
    assert run_cli([*argv, "--index", str(tmp_path / "idx"), "--nprobe", "4"]) == 2
    assert "apply to FAISS indexes" in capsys.readouterr().err
    assert run_cli([*argv, "--gallery", str(world["gallery"]), "--ef-search", "4"]) == 2
    assert "not --gallery" in capsys.readouterr().err
    with pytest.raises(DclnetError, match="needs --backend faiss"):
        write_index(embedder, world["gallery"], "visible", tmp_path / "x", factory="Flat")


def test_index_folder_mode_and_full_disk(world, embedder, tmp_path, monkeypatch):
    index = write_index(embedder, world["gallery"], "visible", tmp_path / "idx", progress=False)
    assert (tmp_path / "idx").stat().st_mode & 0o777 == dir_mode()  # not mkdtemp's 0700
    monkeypatch.setattr("dclnet.fileio._free_bytes", lambda folder: 1000)
    with pytest.raises(OutputError, match="28 embeddings needs .* only 1000 are free"):
        write_index(embedder, world["gallery"], "visible", tmp_path / "new", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]  # nothing half-written
    assert load_index(tmp_path / "idx").paths == index.paths
