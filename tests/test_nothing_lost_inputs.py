"""No read escapes its root and no odd input gives a silently wrong result or a crash (issue
20): list and ``meta.json`` paths outside the root, edited indexes, rank pictures; NaN
checkpoints, duplicate YAML keys, float TIFFs, FIFOs, odd Python inputs; huge synthetic
requests and negative seeds.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from _faults import one_error_line, one_line
from _inference_fixtures import (
    HEIGHT,
    WIDTH,
    exact_index,
    make_checkpoint,
    tiny_model,
)
from PIL import Image

from dclnet.cli import main
from dclnet.errors import ConfigError, DataError

# 1. Reads that escape their root ------------------------------------------------------------


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

    idx = exact_index(embedder, world, tmp_path / "idx")
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


# 2. Checkpoints, configs, images and the Python API ----------------------------------------


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


# 3. Crashes: huge requests, negative seeds ---------------------------------------------------


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
