"""Nothing lost, nothing outside its folder (issue 20): one parametrised group per class.

Data lost or misreported (concurrent appends with real processes, ``cache clear`` of a folder
that is not a cache, a used ``--trial all`` folder, writes through planted links), reads that
escape their root (lists, ``meta.json``, rank pictures), silently wrong results (FAISS
parameters and factories, edited indexes, NaN checkpoints, duplicate YAML keys, float TIFFs,
FIFOs, unnormalised floats, non-bool flags) and crashes (huge synthetic sets, full disks,
odd Python inputs, negative seeds, leftover index folders). Command-line cases check the exit
status, one ``error:`` line naming the file or argument and no traceback.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _faults import full_disk, one_error_line, one_line
from _inference_fixtures import (
    HEIGHT,
    WIDTH,
    make_checkpoint,
    tiny_model,
    write_sysu_images,
)
from PIL import Image

from dclnet.cli import main
from dclnet.errors import ConfigError, DataError, DclnetError, OutputError

TINY = Path(__file__).resolve().parents[1] / "src" / "dclnet" / "configs" / "tiny.yaml"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("world")
    return {
        "ckpt": make_checkpoint(base / "model.pt"),
        "gallery": write_sysu_images(base / "gallery", "visible"),
        "queries": write_sysu_images(base / "queries", "infrared", limit=2),
        "base": base,
    }


@pytest.fixture(scope="module")
def embedder(world):
    from dclnet.inference.api import Embedder

    return Embedder.from_checkpoint(world["ckpt"], "cpu")


def _exact_index(embedder, world, folder: Path) -> Path:
    from dclnet.inference.indexing import write_index

    write_index(embedder, world["gallery"], "visible", folder, progress=False)
    return folder


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
    _exact_index(embedder, world, tmp_path / "idx")
    assert not any(p.exists() for p in stale) and other.is_dir()


# 2. cache clear deletes only what dclnet wrote ----------------------------------------------


def _real_cache(tmp_path: Path) -> Path:
    from dclnet.data.cache import build_cache
    from dclnet.data.records import Record

    root = tmp_path / "data"
    (root / "cam1").mkdir(parents=True)
    Image.fromarray(np.zeros((20, 10, 3), np.uint8)).save(root / "cam1" / "0.png")
    cache = tmp_path / "cache"
    build_cache(root, [Record("cam1/0.png", 1, 1, "visible")], size=(8, 4), cache_dir=cache,
                name="toy", progress=False)  # fmt: skip
    return cache


def _foreign(folder: Path) -> None:
    (folder / "src").mkdir(parents=True)
    (folder / "src" / "main.c").write_text("int main;")
    (folder / "thesis.tex").write_text("\\chapter{One}")


def test_clear_refuses_a_folder_that_is_not_a_cache(tmp_path, capsys):
    folder = tmp_path / "notacache"
    _foreign(folder)
    status = main(["cache", "clear", "--all", "--yes", "--cache-dir", str(folder)])
    one_error_line(capsys, status, f"{folder} is not a dclnet cache")
    assert (folder / "thesis.tex").is_file() and (folder / "src" / "main.c").is_file()


def test_clear_all_leaves_what_dclnet_did_not_write(tmp_path, capsys):
    cache = _real_cache(tmp_path)
    _foreign(cache)
    status = main(["cache", "clear", "thesis.tex", "--yes", "--cache-dir", str(cache)])
    one_error_line(capsys, status, f"{cache / 'thesis.tex'}: not written by dclnet")
    assert (cache / "thesis.tex").is_file()
    assert main(["cache", "clear", "--all", "--yes", "--cache-dir", str(cache)]) == 0
    out = capsys.readouterr().out
    assert sorted(p.name for p in cache.iterdir()) == ["src", "thesis.tex"]
    assert "left 2 entries dclnet did not write: src, thesis.tex" in out


# 3. --trial all into a used folder ----------------------------------------------------------


@pytest.fixture(scope="module")
def regdb_root(tmp_path_factory) -> Path:
    from dclnet.data.sources.synthetic import write_regdb

    root = tmp_path_factory.mktemp("regdb")
    return write_regdb(root, num_ids=8, height=32, width=16, images_per_modality=2)


def _finished_trials(out: Path) -> None:
    for t in range(1, 11):
        (out / f"trial{t}").mkdir(parents=True)
        result = {"protocol": {"dataset": "regdb"}, "mean": {"rank1": 99.0, "mAP": 99.0,
                  "mINP": 99.0, "rank5": 99.0, "rank10": 99.0, "rank20": 99.0}}  # fmt: skip
        (out / f"trial{t}" / "test_results.json").write_text(json.dumps(result))
    (out / "summary.json").write_text("{}")


def test_trial_all_refuses_a_used_folder(regdb_root, tmp_path, capsys):
    out = tmp_path / "run"
    _finished_trials(out)
    argv = ["train", "--dataset", "regdb", "--root", str(regdb_root), "--config", str(TINY)]
    status = main([*argv, "--trial", "all", "--output", str(out)])
    line = one_error_line(capsys, status, f"run folder {out} is not empty")
    assert "--resume" in line and "--overwrite" in line
    assert (out / "summary.json").read_text() == "{}"


# 4. Writes through planted links ------------------------------------------------------------


def _resumable_run(tmp_path: Path) -> Path:
    from dclnet.config import load_config, save_config
    from dclnet.engine.checkpoint import save_checkpoint
    from dclnet.engine.run_state import checkpoint_state

    cfg = load_config(TINY)
    run = tmp_path / "run"
    run.mkdir()
    save_config(cfg, run / "config.yaml")
    state = checkpoint_state(cfg, tiny_model(), type("D", (), {"num_classes": 5}))
    save_checkpoint(
        {**state, "epoch": 1, "optimizer": {}, "scheduler": {}, "rng": {}}, run / "last.pt"
    )
    return run


@pytest.mark.parametrize("name", ["log.txt", "metrics.jsonl"])
def test_resume_refuses_a_linked_run_file(name, tmp_path, capsys):
    run = _resumable_run(tmp_path)
    target = tmp_path / "precious.txt"
    target.write_text("mine\n")
    (run / name).symlink_to(target)
    status = main(["train", "--output", str(run), "--resume"])
    assert target.read_text() == "mine\n"  # nothing appended through the link
    one_error_line(capsys, status, f"{run / name}: is a symbolic link")


def test_a_linked_lock_creates_nothing_outside(tmp_path):
    from dclnet.engine.run_folder import claim_run_folder

    run = tmp_path / "run"
    run.mkdir()
    outside = tmp_path / "elsewhere" / "planted"
    outside.parent.mkdir()
    (run / ".lock").symlink_to(outside)
    with pytest.raises(DclnetError) as info:
        claim_run_folder(run, resume=False, overwrite=False)
    one_line(info.value, f"{run / '.lock'}: is a symbolic link")
    assert not outside.exists()


def test_a_linked_cache_lock_creates_nothing_outside(tmp_path):
    from dclnet.data.cache import build_cache
    from dclnet.data.records import Record

    cache = _real_cache(tmp_path)
    (folder,) = [p for p in cache.iterdir() if p.name.startswith("toy-")]
    outside = tmp_path / "elsewhere"
    (folder / ".lock").unlink()
    (folder / ".lock").symlink_to(outside)
    with pytest.raises(OutputError) as info:
        build_cache(tmp_path / "data", [Record("cam1/0.png", 1, 1, "visible")], size=(8, 4),
                    cache_dir=cache, name="toy", progress=False)  # fmt: skip
    one_line(info.value, f"{folder / '.lock'}: is a symbolic link")
    assert not outside.exists()


def test_run_log_fails_quietly_once_on_a_full_disk(tmp_path, capsys):
    from dclnet.engine.runlog import run_log_file

    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    log = logging.getLogger("dclnet.engine.test")
    with run_log_file(tmp_path) as path:
        (handler,) = [h for h in logging.getLogger("dclnet").handlers if h.name == str(path)]
        handler.stream = open("/dev/full", "w", encoding="utf-8")  # noqa: SIM115 - closed by it
        for i in range(3):
            log.info("epoch %d", i)
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Logging error" not in err
    lines = [ln for ln in err.splitlines() if "log.txt" in ln]
    assert len(lines) == 1 and "No space left on device" in lines[0], err
    assert "no longer written" in lines[0]


@pytest.mark.parametrize("option", ["--json", "--csv"])
def test_search_results_refuse_links(option, world, tmp_path, capsys):
    target = tmp_path / "precious.txt"
    target.write_text("mine\n")
    link = tmp_path / "out"
    link.symlink_to(target)
    argv = ["search", "--checkpoint", str(world["ckpt"]), "--gallery", str(world["gallery"])]
    argv += ["--query", str(world["queries"]), "--device", "cpu", option, str(link)]
    one_error_line(capsys, main(argv), f"{link}: is a symbolic link")
    assert target.read_text() == "mine\n"


@pytest.mark.parametrize("option", ["--json", "--csv"])
def test_search_results_on_a_full_disk(option, world, tmp_path, monkeypatch, capsys):
    out = tmp_path / "res" / "r.out"
    out.parent.mkdir()
    argv = ["search", "--checkpoint", str(world["ckpt"]), "--gallery", str(world["gallery"])]
    argv += ["--query", str(world["queries"]), "--device", "cpu", "--no-progress"]
    full_disk(monkeypatch)
    status = main([*argv, option, str(out)])
    one_error_line(capsys, status, f"{out.parent}: no space left on the device while writing r.out")
    assert list(out.parent.iterdir()) == []


def test_torchscript_export_on_a_full_disk(embedder, tmp_path, monkeypatch):
    from dclnet.inference.export import export_embedding

    full_disk(monkeypatch, room=4096)
    with pytest.raises(OutputError) as info:
        export_embedding(embedder, "visible", "torchscript", tmp_path / "m.pt")
    one_line(info.value, f"{tmp_path}: no space left on the device while writing m.pt")
    assert list(tmp_path.iterdir()) == []


# 5. Reads that escape their root ------------------------------------------------------------


def _escape_llcm(tmp_path: Path) -> tuple[Path, str]:
    from dclnet.data.sources.synthetic import write_llcm

    root = write_llcm(tmp_path / "llcm", num_ids=6, height=32, width=16)
    outside = tmp_path / "sysuS" / "cam1" / "0001" / "0001.jpg"
    outside.parent.mkdir(parents=True)
    Image.fromarray(np.zeros((32, 16, 3), np.uint8)).save(outside)
    index = root / "idx" / "train_vis.txt"
    lines = index.read_text().splitlines()
    index.write_text("\n".join([*lines, "../sysuS/cam1/0001/0001.jpg 1"]) + "\n")
    return root, f"{index}:{len(lines) + 1}: '../sysuS/cam1/0001/0001.jpg' lies outside"


def _escape_regdb(tmp_path: Path, regdb_root: Path) -> tuple[Path, str]:
    root = Path(shutil.copytree(regdb_root, tmp_path / "a" / "regdb"))
    outside = tmp_path / "outside_regdb" / "x.bmp"
    outside.parent.mkdir()
    Image.fromarray(np.zeros((32, 16, 3), np.uint8)).save(outside)
    index = root / "idx" / "test_visible_1.txt"
    lines = index.read_text().splitlines()
    index.write_text("\n".join([*lines, "../../outside_regdb/x.bmp 3"]) + "\n")
    return root, f"{index}:{len(lines) + 1}: '../../outside_regdb/x.bmp' lies outside"


@pytest.mark.parametrize("dataset", ["llcm train list", "regdb test list"])
def test_list_paths_outside_the_root_are_refused(dataset, regdb_root, tmp_path):
    from dclnet.data.sources import llcm, regdb

    if dataset.startswith("llcm"):
        root, needle = _escape_llcm(tmp_path)
        read = lambda: llcm.train_records(root)  # noqa: E731
    else:
        root, needle = _escape_regdb(tmp_path, regdb_root)
        read = lambda: regdb.test_records(root, 1, "visible")  # noqa: E731
    with pytest.raises(DataError) as info:
        read()
    one_line(info.value, needle)
    assert f"the root {root}" in str(info.value)


@pytest.mark.parametrize(
    "case, needle",
    [
        ("parent path", "'../../etc/passwd' lies outside the gallery root"),
        ("absolute path", "'/etc/passwd' lies outside the gallery root"),
        ("duplicated path", "is listed twice"),
        ("row x 1000", "has norm 1000"),
        ("zero row", "has norm 0"),
    ],
)
def test_edited_index_is_refused_at_load(case, needle, world, embedder, tmp_path, capsys):
    from dclnet.inference.index_store import load_index

    idx = _exact_index(embedder, world, tmp_path / "idx")
    meta = json.loads((idx / "meta.json").read_text())
    culprit = idx / "meta.json"
    if case == "parent path":
        meta["paths"][2] = "../../etc/passwd"
    elif case == "absolute path":
        meta["paths"][2] = "/etc/passwd"
    elif case == "duplicated path":
        meta["paths"][2] = meta["paths"][0]
    else:
        rows = np.load(idx / "embeddings.npy")
        rows[3] = rows[3] * 1000 if case == "row x 1000" else 0
        np.save(idx / "embeddings.npy", rows)
        culprit = idx / "embeddings.npy"
    (idx / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError) as info:
        load_index(idx)
    one_line(info.value, needle)
    assert str(culprit) in str(info.value) and "rebuild the index" in str(info.value)
    argv = ["search", "--checkpoint", str(world["ckpt"]), "--index", str(idx)]
    status = main([*argv, "--query", str(world["queries"]), "--device", "cpu"])
    one_error_line(capsys, status, needle)


@pytest.mark.parametrize("path", ["../../../../../../etc/passwd", "/etc/passwd"])
def test_rank_picture_refuses_paths_outside_the_gallery(path, world, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    query = next(world["queries"].rglob("*.jpg"))
    results = [{"query": str(query), "gallery_root": str(world["gallery"]),
                "results": [{"path": path, "score": 0.9}]}]  # fmt: skip
    (tmp_path / "r.json").write_text(json.dumps(results))
    argv = ["visualize", "ranks", "--results", str(tmp_path / "r.json")]
    status = main([*argv, "--output", str(tmp_path / "r.png")])
    one_error_line(capsys, status, f"{tmp_path / 'r.json'}: gallery path {path!r} lies outside")
    assert not (tmp_path / "r.png").exists()


# 6. FAISS: parameters and factories checked up front ----------------------------------------


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


# 7. Checkpoints, configs, images and the Python API ----------------------------------------


def test_diagnose_refuses_an_all_nan_checkpoint(tmp_path, capsys):
    model = tiny_model()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    path = make_checkpoint(tmp_path / "nan.pt", model=model)
    status = main(["diagnose", "--checkpoint", str(path), "--device", "cpu"])
    line = one_error_line(capsys, status, f"checkpoint {path}: ")
    assert "NaN or infinite" in line and "visible.conv1.weight" in line


@pytest.mark.parametrize(
    "text, needle",
    [
        ("data:\n  height: 64\n  height: 32\n", "key 'data.height' is given twice (lines 2 and 3)"),
        ("data:\n  height: 64\noptim:\n  epochs: 1\ndata:\n  width: 32\n",
         "key 'data' is given twice (lines 1 and 5)"),
    ],
)  # fmt: skip
def test_duplicate_yaml_keys_are_refused(text, needle, tmp_path, capsys):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    status = main(["config", "--config", str(path)])
    one_error_line(capsys, status, f"config file {path}: {needle}")


def test_float_tiff_is_refused_not_black(tmp_path):
    from dclnet.data.imageio import load_image

    path = tmp_path / "thermal.tif"
    Image.fromarray(np.linspace(0, 1, 64 * 32, dtype=np.float32).reshape(64, 32)).save(path)
    with pytest.raises(DataError) as info:
        load_image(path, (32, 16))
    one_line(info.value, f"cannot decode image {path}: 32-bit float pixels (mode F)")


def _special(case: str, where: Path) -> None:
    if case == "fifo":
        os.mkfifo(where)
    else:
        os.symlink("/dev/zero", where)


@pytest.mark.timeout(30)  # a FIFO opened for reading would block for ever
@pytest.mark.parametrize("case", ["fifo", "link to /dev/zero"])
def test_special_files_are_named(case, tmp_path):
    from dclnet.data.imageio import load_image
    from dclnet.data.sources.common import list_images

    folder = tmp_path / "0001"
    folder.mkdir()
    Image.fromarray(np.zeros((8, 4, 3), np.uint8)).save(folder / "0001.jpg")
    _special(case, folder / "0002.jpg")
    kind = "a FIFO" if case == "fifo" else "a character device"
    with pytest.raises(DataError) as info:
        list_images(folder)
    one_line(info.value, f"{folder / '0002.jpg'}: not a regular file ({kind}")
    with pytest.raises(DataError) as info:
        load_image(folder / "0002.jpg", None)
    one_line(info.value, f"{folder / '0002.jpg'}: not a regular file ({kind}")


def test_special_file_in_an_index_gallery_is_named(tmp_path):
    from dclnet.inference.index import list_images

    (tmp_path / "g").mkdir()
    Image.fromarray(np.zeros((8, 4, 3), np.uint8)).save(tmp_path / "g" / "a.jpg")
    os.mkfifo(tmp_path / "g" / "b.jpg")
    with pytest.raises(DataError) as info:
        list_images(tmp_path / "g")
    one_line(info.value, f"{tmp_path / 'g' / 'b.jpg'}: not a regular file (a FIFO)")


def _api_call(case: str, embedder):
    pixels = np.zeros((2, HEIGHT, WIDTH, 3), np.uint8)
    calls = {
        "0-255 floats": lambda: embedder.embed(torch.rand(2, 3, HEIGHT, WIDTH) * 255, "visible"),
        "meta tensor": lambda: embedder.embed(
            torch.empty(2, 3, HEIGHT, WIDTH, device="meta"), "visible"
        ),  # fmt: skip
        "meta uint8 tensor": lambda: embedder.embed(
            torch.empty(2, HEIGHT, WIDTH, 3, dtype=torch.uint8, device="meta"), "visible"
        ),
        "generator": lambda: embedder.embed((p for p in pixels), "visible"),
        "dict": lambda: embedder.embed({"a": pixels[0]}, "visible"),
        "batch_size=2.5": lambda: embedder.embed(pixels, "visible", batch_size=2.5),
        "batch_size=True": lambda: embedder.embed(pixels, "visible", batch_size=True),
        "flip='no'": lambda: embedder.embed(pixels, "visible", flip="no"),
        "return_masks=1": lambda: embedder.embed(pixels, "visible", return_masks=1),
        "streaming batch_size=2.5": lambda: list(
            embedder.embed_paths_streaming(["x.jpg"], "visible", 2.5)
        ),
        "streaming flip='no'": lambda: list(
            embedder.embed_paths_streaming(["x.jpg"], "visible", flip="no")
        ),
    }
    return calls[case]


API_CASES = [
    ("0-255 floats", DataError, "is not normalised"),
    ("meta tensor", DataError, "inputs: a tensor on the meta device holds no data"),
    ("meta uint8 tensor", DataError, "inputs: a tensor on the meta device holds no data"),
    ("generator", DataError, "inputs: got a generator"),
    ("dict", DataError, "inputs: got a dict"),
    ("batch_size=2.5", ConfigError, "batch_size must be an integer >= 1, got 2.5"),
    ("batch_size=True", ConfigError, "batch_size must be an integer >= 1, got True"),
    ("flip='no'", ConfigError, "flip must be True or False, got 'no'"),
    ("return_masks=1", ConfigError, "return_masks must be True or False, got 1"),
    ("streaming batch_size=2.5", ConfigError, "batch_size must be an integer >= 1, got 2.5"),
    ("streaming flip='no'", ConfigError, "flip must be True or False, got 'no'"),
]


@pytest.mark.parametrize("case, kind, needle", API_CASES, ids=[c[0] for c in API_CASES])
def test_python_api_refuses(case, kind, needle, embedder):
    with pytest.raises(kind) as info:
        _api_call(case, embedder)()
    one_line(info.value, needle)


def test_normalised_floats_still_embed(embedder):
    """The bound on float inputs leaves room for a resampling overshoot of normalised pixels."""
    pixels = np.random.default_rng(0).integers(0, 256, (2, HEIGHT, WIDTH, 3), dtype=np.uint8)
    normalised = embedder.prepare(pixels)
    np.testing.assert_allclose(
        embedder.embed(normalised, "visible"), embedder.embed(pixels, "visible"), atol=1e-6
    )
    overshoot = normalised * 1.2  # a sharpening resize overshoots by a few percent
    assert embedder.embed(overshoot, "visible").shape == (2, embedder.embed_dim)


def test_write_index_refuses_a_non_bool_flip(embedder, world, tmp_path):
    from dclnet.inference.indexing import write_index

    with pytest.raises(ConfigError) as info:
        write_index(embedder, world["gallery"], "visible", tmp_path / "i", flip="no")
    one_line(info.value, "flip must be True or False, got 'no'")
    assert not (tmp_path / "i").exists()


# 8. Crashes: huge requests, negative seeds ---------------------------------------------------


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["diagnose", "--synthetic-ids", "100000000"], "--synthetic-ids 100000000: the synthetic"),
        (["diagnose", "--synthetic-seed", "-1"], "--synthetic-seed must be >= 0, got -1"),
        (["synth", "sysu", "{tmp}/s", "--seed", "-1"], "--seed must be >= 0, got -1"),
        (["synth", "sysu", "{tmp}/s", "--ids", "100000000"], "synthetic num_ids 100000000: the"),
    ],
)
def test_synthetic_requests_checked_up_front(argv, needle, tmp_path, capsys):
    ckpt = make_checkpoint(tmp_path / "m.pt")
    argv = [a.format(tmp=tmp_path) for a in argv]
    if argv[0] == "diagnose":
        argv += ["--checkpoint", str(ckpt), "--device", "cpu"]
    one_error_line(capsys, main(argv), needle)
    assert not (tmp_path / "s").exists()


def test_synthetic_library_checks_its_arguments():
    from dclnet.data.sources.synthetic import make_synthetic

    with pytest.raises(ConfigError) as info:
        make_synthetic(8, seed=-1)
    one_line(info.value, "synthetic seed: must be an integer >= 0, got -1")
    with pytest.raises(ConfigError) as info:
        make_synthetic(100_000_000, height=64, width=32)
    one_line(info.value, "synthetic num_ids 100000000: the synthetic set would take")
