"""Bad inputs and faults, one parametrised group per class (issue 9).

Every command-line case runs ``dclnet.cli.main`` in-process and checks the exit status, that
the output is one ``error:`` line naming the file or key, and that no traceback appears.
Library cases check the error class and that its message is one line. The classes: features
files, id/index files and image folders, 16-bit images, the embedding API, output paths and
full disks, crafted checkpoints and resume overrides, ``data.verify_cache=hash``, file modes
under the umask, and ``--device`` / ``eval.*`` checked before any work.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import io
import logging
import os
import shutil
import typing
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from _faults import full_disk, one_error_line, one_line
from _inference_fixtures import HEIGHT, WIDTH, make_checkpoint, tiny_model
from PIL import Image

from dclnet import fileio
from dclnet.cli import main
from dclnet.config import Config, load_config
from dclnet.data.sources.synthetic import write_regdb, write_sysu
from dclnet.data.splits import ProtocolSettings, build_splits, needed_paths
from dclnet.errors import CheckpointError, ConfigError, DataError, OutputError, TrainingError
from dclnet.evaluation.protocols import save_features_npz

TINY = Path(__file__).resolve().parents[1] / "src" / "dclnet" / "configs" / "tiny.yaml"


# -- data sets on disk (shared, copied where a case changes them) ------------------------------


@pytest.fixture(scope="module")
def sysu_root(tmp_path_factory) -> Path:
    return write_sysu(tmp_path_factory.mktemp("sysu"), num_ids=12, height=32, width=16)


@pytest.fixture(scope="module")
def regdb_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("regdb")
    return write_regdb(root, num_ids=8, height=32, width=16, images_per_modality=3)


def protocol_paths(dataset: str, root: Path) -> list[str]:
    settings = ProtocolSettings(dataset, trials=1) if dataset == "sysu" else None
    settings = settings or ProtocolSettings(dataset, trial=1)
    return needed_paths(build_splits(settings, root))


def evaluate_argv(dataset: str, root: Path, features: Path, *extra: str) -> list[str]:
    which = ["--trials", "1"] if dataset == "sysu" else ["--trial", "1"]
    argv = ["evaluate-features", "--dataset", dataset, "--root", str(root)]
    return [*argv, *which, "--features", str(features), *extra]


def good_features(dataset: str, root: Path, out: Path) -> Path:
    paths = protocol_paths(dataset, root)
    feats = np.random.default_rng(0).standard_normal((len(paths), 8)).astype(np.float32)
    save_features_npz(out, paths, feats)
    return out


# 1. Features files for evaluate-features ------------------------------------------------------


def _npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def _write_case(case: str, path: Path, paths: list[str]) -> Path:
    n = len(paths)
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((n, 8))
    if case == "empty":
        path.write_bytes(b"")
    elif case == "truncated":
        good = io.BytesIO()
        np.savez(good, paths=np.array(paths), features=feats)
        path.write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    elif case == "plain npy":
        path = path.with_suffix(".npy")
        np.save(path, feats)
    elif case == "object arrays":
        _npz(path, paths=np.array(paths, dtype=object), features=feats.astype(object))
    elif case == "string features":
        _npz(path, paths=np.array(paths), features=np.full((n, 8), "x"))
    elif case == "integer features":
        _npz(path, paths=np.array(paths), features=np.ones((n, 8), dtype=np.int64))
    elif case == "zero width":
        _npz(path, paths=np.array(paths), features=np.zeros((n, 0), np.float32))
    elif case == "nan":
        feats[3, 2] = np.nan
        _npz(path, paths=np.array(paths), features=feats)
    elif case == "inf":
        feats[5, 0] = -np.inf
        _npz(path, paths=np.array(paths), features=feats.astype(np.float32))
    elif case == "float64 beyond float32":
        feats[3, 2] = 1e300
        _npz(path, paths=np.array(paths), features=feats)
    elif case == "damaged member":
        np.savez_compressed(path, paths=np.array(paths), features=feats)
        with zipfile.ZipFile(path) as zf:
            info = zf.getinfo("features.npy")
        data = bytearray(path.read_bytes())
        start = info.header_offset + 30 + len(info.filename) + len(info.extra)
        for i in range(start + 10, start + 40):
            data[i] ^= 0xFF
        path.write_bytes(bytes(data))
    return path


FEATURE_CASES = [
    ("empty", "the file is empty"),
    ("truncated", "cannot read it"),
    ("plain npy", "is a single .npy array, not an archive"),
    ("object arrays", "holds Python objects (dtype object), which dclnet never unpickles"),
    ("string features", "features must be a float array, got dtype <U1"),
    ("integer features", "features must be a float array, got dtype int64"),
    ("zero width", "features have zero width"),
    ("nan", "contain NaN or infinity"),
    ("inf", "contain NaN or infinity"),
    ("float64 beyond float32", "overflow float32"),
    ("damaged member", "array 'features' is damaged"),
]


@pytest.mark.parametrize("case, needle", FEATURE_CASES, ids=[c for c, _ in FEATURE_CASES])
def test_features_file(case, needle, sysu_root, tmp_path, capsys):
    path = _write_case(case, tmp_path / "f.npz", protocol_paths("sysu", sysu_root))
    status = main(evaluate_argv("sysu", sysu_root, path))
    line = one_error_line(capsys, status, needle)
    assert str(path) in line  # names the file


def test_features_whose_dot_products_overflow(sysu_root, tmp_path, capsys):
    paths = protocol_paths("sysu", sysu_root)
    path = tmp_path / "f.npz"
    save_features_npz(path, paths, np.full((len(paths), 8), 1e30, np.float32))  # finite
    status = main(evaluate_argv("sysu", sysu_root, path))
    line = one_error_line(capsys, status, "dot product of query 'cam")
    assert "overflows float32" in line and "L2-normalise" in line


def test_good_features_still_evaluate(sysu_root, tmp_path, capsys):
    assert (
        main(evaluate_argv("sysu", sysu_root, good_features("sysu", sysu_root, tmp_path / "f.npz")))
        == 0
    )
    assert "mean" in capsys.readouterr().out


# 2. Id/index files and image folders ---------------------------------------------------------


def _first_test_folder(root: Path) -> Path:
    pid = int((root / "exp" / "test_id.txt").read_text().split(",")[0])
    return next(
        root / f"cam{c}" / f"{pid:04d}"
        for c in (1, 2, 4, 5)
        if (root / f"cam{c}" / f"{pid:04d}").is_dir()
    )


def _break_sysu(case: str, root: Path) -> str:
    """Damage a copy of the SYSU tree; return the text the error must name."""
    ids = root / "exp" / "test_id.txt"
    if case == "id file not UTF-8":
        ids.write_bytes(ids.read_bytes().strip() + b",\xff\xfe7\n")
        return f"{ids}:1: byte 0xff"
    if case == "superscript digit":
        ids.write_text(ids.read_text().strip() + ",\u00b2\n", encoding="utf-8")
        return f"{ids}:1: '\u00b2' is not a person id"
    folder = _first_test_folder(root)
    if case == "file name not UTF-8":
        shutil.copy(next(folder.iterdir()), folder / os.fsdecode(b"bad\xff.jpg"))
        return f"{folder}: file name b'bad\\xff.jpg' is not valid UTF-8"
    if case == "self-referencing link":
        os.symlink("loop.jpg", folder / "loop.jpg")
        return f"{folder / 'loop.jpg'}: broken symbolic link"
    assert case == "dangling link"
    os.symlink("gone.jpg", folder / "0099.jpg")
    return f"{folder / '0099.jpg'}: broken symbolic link (to 'gone.jpg')"


SYSU_CASES = [
    "id file not UTF-8",
    "superscript digit",
    "file name not UTF-8",
    "self-referencing link",
    "dangling link",
]


@pytest.mark.parametrize("case", SYSU_CASES)
def test_sysu_tree(case, sysu_root, tmp_path, capsys):
    features = good_features("sysu", sysu_root, tmp_path / "f.npz")
    root = Path(shutil.copytree(sysu_root, tmp_path / "sysu"))
    needle = _break_sysu(case, root)
    status = main(evaluate_argv("sysu", root, features))
    one_error_line(capsys, status, needle)


def _break_regdb(case: str, root: Path) -> str:
    index = root / "idx" / "test_thermal_1.txt"
    lines = index.read_text().splitlines()
    if case == "index file not UTF-8":
        index.write_bytes(index.read_bytes() + b"Thermal/1/\xff.bmp 1\n")
        return f"{index}:{len(lines) + 1}: byte 0xff at column 11 is not UTF-8"
    if case == "superscript label":
        index.write_text("\n".join([*lines, lines[0].rsplit(" ", 1)[0] + " \u00b2"]) + "\n")
        return f"{index}:{len(lines) + 1}: malformed line"
    assert case == "duplicated lines"  # used as is, rank-5 dropped from 55.0 to 26.7
    index.write_text("\n".join(lines + lines[:3]) + "\n")
    first = lines[0].rsplit(" ", 1)[0]
    return f"{index}:{len(lines) + 1}: {first} is listed again (first on line 1)"


@pytest.mark.parametrize("case", ["index file not UTF-8", "superscript label", "duplicated lines"])
def test_regdb_lists(case, regdb_root, tmp_path, capsys):
    features = good_features("regdb", regdb_root, tmp_path / "f.npz")
    root = Path(shutil.copytree(regdb_root, tmp_path / "regdb"))
    needle = _break_regdb(case, root)
    status = main(evaluate_argv("regdb", root, features))
    one_error_line(capsys, status, needle)


def test_test_ids_among_training_ids_warn_once(sysu_root, regdb_root, tmp_path, caplog):
    from dclnet.data.sources import regdb, sysu

    root = Path(shutil.copytree(sysu_root, tmp_path / "sysu"))
    test_ids = (root / "exp" / "test_id.txt").read_text().strip().split(",")
    train = root / "exp" / "train_id.txt"
    train.write_text(train.read_text().strip() + f",{test_ids[0]},{test_ids[1]}\n")
    with caplog.at_level(logging.WARNING, logger="dclnet"):
        sysu.train_records(root)
    (record,) = caplog.records
    assert f"2 test identities are also training identities ({test_ids[0]}, {test_ids[1]})" in (
        record.getMessage()
    )
    caplog.clear()
    root = Path(shutil.copytree(regdb_root, tmp_path / "regdb"))
    test_line = (root / "idx" / "test_visible_1.txt").read_text().splitlines()[0]
    with (root / "idx" / "train_visible_1.txt").open("a") as fh:
        fh.write(test_line.rsplit(" ", 1)[0] + " 0\n")
    with caplog.at_level(logging.WARNING, logger="dclnet"):
        regdb.train_records(root, 1)
    (record,) = caplog.records
    assert "1 test identities are also training identities" in record.getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dclnet"):
        regdb.train_records(regdb_root, 1)  # the untouched lists: disjoint
    assert caplog.records == []


def test_dangling_link_in_an_index_list_is_reported_or_listed(regdb_root, tmp_path, caplog):
    from dclnet.data.cache import build_cache
    from dclnet.data.sources import regdb

    root = Path(shutil.copytree(regdb_root, tmp_path / "regdb"))
    first = root / regdb.train_records(root, 1)[0].path
    first.unlink()
    os.symlink("gone.bmp", first)
    records = regdb.train_records(root, 1)
    kwargs = dict(size=(32, 16), cache_dir=tmp_path / "cache", progress=False)
    with pytest.raises(DataError) as info:
        build_cache(root, records, **kwargs)
    one_line(info.value, f"{first}")
    with caplog.at_level(logging.WARNING, logger="dclnet"):
        cached = build_cache(root, records, skip_corrupt=True, **kwargs)
    assert cached.skipped == [records[0].path] and len(cached) == len(records) - 1
    assert records[0].path in caplog.text  # listed, not silently dropped


# 3. 16-bit images -----------------------------------------------------------------------------


def _gradient16(path: Path, mode: str) -> Path:
    values = np.linspace(0, 65535, 64).round().astype(np.uint16)[None, :].repeat(8, axis=0)
    if mode == "I;16":
        Image.fromarray(values).save(path.with_suffix(".png"))
        return path.with_suffix(".png")
    if mode == "I;16B":
        Image.frombytes("I;16B", (64, 8), values.astype(">u2").tobytes()).save(path)
        return path
    Image.fromarray(values.astype(np.int32)).save(path)  # mode "I", 32-bit TIFF
    return path


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I"])
def test_16_bit_image_keeps_its_gradient(mode, tmp_path):
    from dclnet.data.imageio import load_image
    from dclnet.inference.api import resize_rgb

    path = _gradient16(tmp_path / "g.tif", mode)
    with Image.open(path) as im:
        assert im.mode == mode
        from_api = resize_rgb(im, (8, 64))
    pixels = load_image(path, None)
    row = pixels[0, :, 0].astype(int)
    assert row[0] == 0 and row[-1] == 255  # scaled, not clipped to white
    assert np.all(np.diff(row) >= 0) and len(np.unique(row)) == 64  # still a gradient
    assert np.array_equal(pixels[..., 0], pixels[..., 2])  # grey
    np.testing.assert_array_equal(from_api, pixels)


# 4. The embedding API -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def embedder(tmp_path_factory):
    from dclnet.inference.api import Embedder

    return Embedder.from_checkpoint(make_checkpoint(tmp_path_factory.mktemp("ck") / "m.pt"), "cpu")


def _api_input(case: str):
    if case == "nan tensor":
        x = torch.zeros(3, 3, HEIGHT, WIDTH)
        x[2, 1, 5, 5] = float("nan")
        return x
    if case == "inf tensor":
        x = torch.zeros(2, 3, HEIGHT, WIDTH)
        x[0] = float("inf")
        return x
    if case == "zero images (array)":
        return np.zeros((0, 80, 40, 3), np.uint8)
    if case == "zero images (tensor)":
        return torch.zeros(0, 3, HEIGHT, WIDTH)
    if case == "zero-height array":
        return np.zeros((2, 0, 40, 3), np.uint8)
    if case == "zero-size image in a list":
        return [np.zeros((64, 32, 3), np.uint8), np.zeros((0, 0, 3), np.uint8)]
    assert case == "zero-size PIL image"
    return [Image.new("RGB", (0, 0))]


API_CASES = [
    ("nan tensor", "NaN or infinity in image 2"),
    ("inf tensor", "NaN or infinity in image 0"),
    ("zero images (array)", "no images given"),
    ("zero images (tensor)", "no images given"),
    ("zero-height array", "input 0: ndarray of shape (0, 40, 3)"),
    ("zero-size image in a list", "input 1: ndarray of shape (0, 0, 3)"),
    ("zero-size PIL image", "input 0: PIL image of size (0, 0) has no pixels"),
]


@pytest.mark.parametrize("case, needle", API_CASES, ids=[c for c, _ in API_CASES])
def test_embed_refuses(case, needle, embedder):
    with pytest.raises(DataError) as info:
        embedder.embed(_api_input(case), "visible", batch_size=2)
    one_line(info.value, needle)


def test_embed_refuses_nan_embeddings_of_nan_weights(tmp_path):
    from dclnet.inference.api import Embedder

    model = tiny_model()
    with torch.no_grad():
        model.bnneck.weight.fill_(float("nan"))
    path = make_checkpoint(tmp_path / "nan.pt", model=model)
    embedder = Embedder.from_checkpoint(path, "cpu")
    with pytest.raises(CheckpointError) as info:
        embedder.embed(np.zeros((2, HEIGHT, WIDTH, 3), np.uint8), "infrared")
    one_line(info.value, f"{path}: the embedding of input 0 is NaN")


# 5. Output paths and full disks -------------------------------------------------------------


@pytest.fixture
def places(tmp_path) -> SimpleNamespace:
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("mine")
    return SimpleNamespace(dir=tmp_path / "adir", file=tmp_path / "afile")


def _output_argv(option: str, target: Path, tmp_path: Path, sysu_root: Path) -> list[str]:
    missing = str(tmp_path / "no.pt")  # the path is refused before anything is loaded
    search = ["search", "--checkpoint", missing, "--gallery", "g", "--query", "q"]
    return {
        "evaluate --json": evaluate_argv("sysu", sysu_root, tmp_path / "no.npz", "--json"),
        "search --csv": [*search, "--csv"],
        "search --json": [*search, "--json"],
        "train --output": ["train", "--config", str(TINY), "--output"],
        "export --output": ["export", "--checkpoint", missing, "--modality", "visible"]
        + ["--format", "onnx", "--output"],
        "visualize --output": ["visualize", "curves", "--run", str(tmp_path), "--output"],
    }[option] + [str(target)]


OUTPUT_CASES = [  # (option, where, needle): where = dir, file, or under (a path below a file)
    ("evaluate --json", "dir", "{dir}: is a directory; give a file name"),
    ("evaluate --json", "under", "{file}/out: cannot be written, {file} is a file"),
    ("search --csv", "dir", "{dir}: is a directory"),
    ("search --json", "under", "{file}/out: cannot be written, {file} is a file"),
    ("train --output", "file", "{file}: is a file; give a folder"),
    ("train --output", "under", "{file}/out: cannot be written, {file} is a file"),
    ("export --output", "dir", "{dir}: is a directory"),
    ("visualize --output", "under", "{file}/out: cannot be written"),
]


@pytest.mark.parametrize(
    "option, where, needle", OUTPUT_CASES, ids=[f"{c[0]} {c[1]}" for c in OUTPUT_CASES]
)
def test_output_path(option, where, needle, places, sysu_root, tmp_path, capsys):
    target = {"dir": places.dir, "file": places.file, "under": places.file / "out"}[where]
    status = main(_output_argv(option, target, tmp_path, sysu_root))
    one_error_line(capsys, status, needle.format(dir=places.dir, file=places.file))
    assert places.file.read_text() == "mine" and list(places.dir.iterdir()) == []


def _left_files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def test_full_disk_while_saving_a_checkpoint(tmp_path, monkeypatch):
    from dclnet.engine.checkpoint import load_checkpoint, save_checkpoint

    path = make_checkpoint(tmp_path / "last.pt")
    before = path.read_bytes()
    full_disk(monkeypatch, room=4096)  # torch reports this as "unexpected pos"
    with pytest.raises(OutputError) as info:
        save_checkpoint({"model": {"w": torch.zeros(100_000)}, "model_args": {}}, path)
    one_line(info.value, f"{tmp_path}: no space left on the device while writing last.pt")
    assert path.read_bytes() == before and _left_files(tmp_path) == {"last.pt"}
    monkeypatch.undo()
    load_checkpoint(path)  # the previous checkpoint is intact


def test_full_disk_on_the_command_line(sysu_root, tmp_path, monkeypatch, capsys):
    features = good_features("sysu", sysu_root, tmp_path / "f.npz")
    full_disk(monkeypatch)
    status = main(evaluate_argv("sysu", sysu_root, features, "--json", str(tmp_path / "r.json")))
    needle = f"{tmp_path}: no space left on the device while writing r.json"
    one_error_line(capsys, status, needle)  # (the table went to stdout before the write)
    assert _left_files(tmp_path) == {"f.npz"}


def test_cache_checks_free_space_before_its_memory_map(sysu_root, tmp_path, monkeypatch):
    from dclnet.data.cache import build_cache
    from dclnet.data.sources import sysu

    records = sysu.train_records(sysu_root)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(
        fileio.shutil,
        "disk_usage",
        lambda p: usage._replace(free=1000),  # a nearly full disk
    )
    with pytest.raises(OutputError) as info:
        build_cache(sysu_root, records, size=(32, 16), cache_dir=tmp_path / "c", progress=False)
    needed = len(records) * 32 * 16 * 3 + 4096
    one_line(info.value, f"images.npy of images needs {needed} bytes but only 1000 are free")
    (folder,) = (tmp_path / "c").iterdir()
    assert str(info.value).startswith(f"{folder}: ") and "data.cache_dir" in str(info.value)
    assert _left_files(folder) == {".lock"}  # no array, no meta.json: nothing half-built


def test_full_disk_while_writing_cache_metadata(sysu_root, tmp_path, monkeypatch):
    from dclnet.data import cache as cache_mod
    from dclnet.data.sources import sysu

    records = sysu.train_records(sysu_root)[:5]
    full_disk(monkeypatch)
    with pytest.raises(OutputError) as info:
        cache_mod.build_cache(sysu_root, records, size=(32, 16), cache_dir=tmp_path, progress=False)
    one_line(info.value, "no space left on the device while writing meta.json")
    monkeypatch.undo()  # the next run rebuilds: no meta.json was left to trust
    (folder,) = tmp_path.iterdir()
    assert "meta.json" not in _left_files(folder)
    assert (
        len(
            cache_mod.build_cache(
                sysu_root, records, size=(32, 16), cache_dir=tmp_path, progress=False
            )
        )
        == 5
    )


# 6. Crafted checkpoints, resume overrides ---------------------------------------------------


@pytest.fixture(scope="module")
def good_state(tmp_path_factory) -> dict:
    return torch.load(make_checkpoint(tmp_path_factory.mktemp("ck") / "m.pt"), weights_only=True)


class _Code:
    def __reduce__(self):
        return (print, ("this must never run",))


def _crafted(state: dict, case: str) -> dict:
    state = dict(state)
    first = next(iter(state["model"]))
    changes = {
        "format_version str": {"format_version": "2"},
        "format_version list": {"format_version": [1]},
        "model_args list": {"model_args": [1, 2]},
        "model_args split str": {"model_args": {**state["model_args"], "split": "two"}},
        "model_args unknown arch": {"model_args": {**state["model_args"], "arch": "resnet9"}},
        "model list": {"model": [1]},
        "model value int": {"model": {**state["model"], first: 3}},
        "preprocessing list": {"preprocessing": [1]},
        "preprocessing height 0": {"preprocessing": {**state["preprocessing"], "height": 0}},
        "preprocessing std negative": {
            "preprocessing": {**state["preprocessing"], "std": [1, -1, 1]}
        },
        "config list": {"config": [1]},
        "config section list": {"config": {**state["config"], "data": [1]}},
        "config value type": {"config": {**state["config"], "data": {"synthetic_ids": "many"}}},
        "num_classes str": {"num_classes": "5"},
    }[case]
    state.update(changes)
    return state


CHECKPOINT_CASES = [
    ("format_version str", "field 'format_version' must be an integer, got '2'"),
    ("format_version list", "field 'format_version' must be an integer, got list"),
    ("model_args list", "field 'model_args' must be a mapping"),
    ("model_args split str", "field 'model_args.split' must be an integer, got 'two'"),
    ("model_args unknown arch", "field 'model_args' does not build a DCLNet (unknown backbone"),
    ("model list", "field 'model' must be a mapping of parameter names to tensors"),
    ("model value int", "field \"model['visible.conv1.weight']\" must be a tensor, got 3"),
    ("preprocessing list", "field 'preprocessing' must be a mapping"),
    ("preprocessing height 0", "field 'preprocessing.height' must be an integer >= 1, got 0"),
    ("preprocessing std negative", "field 'preprocessing.std' must be 3 positive numbers"),
    ("config list", "field 'config' must be a mapping of sections"),
    ("config section list", "field 'config.data' must be a mapping of keys"),
    ("config value type", "field 'config': config key 'data.synthetic_ids' expects int"),
    ("num_classes str", "field 'num_classes' must be an integer >= 0, got '5'"),
]


@pytest.mark.parametrize("command", ["test", "diagnose"])
@pytest.mark.parametrize("case, needle", CHECKPOINT_CASES, ids=[c for c, _ in CHECKPOINT_CASES])
def test_crafted_checkpoint(case, needle, command, good_state, sysu_root, tmp_path, capsys):
    path = tmp_path / "crafted.pt"
    torch.save(_crafted(good_state, case), path)
    argv = {
        "test": ["test", "--checkpoint", str(path), "--dataset", "sysu", "--root", str(sysu_root)],
        "diagnose": ["diagnose", "--checkpoint", str(path)],
    }[command]
    status = main([*argv, "--device", "cpu"])
    one_error_line(capsys, status, f"checkpoint {path}: {needle}")


@pytest.mark.parametrize("case", ["pickled code", "truncated", "empty"])
def test_unloadable_checkpoint(case, good_state, tmp_path, capsys):
    path = tmp_path / "bad.pt"
    if case == "pickled code":
        torch.save({"format": "dclnet-checkpoint", "payload": _Code()}, path)
        needle = f"{path} is not a weights-only dclnet checkpoint (it holds the Python object "
    else:
        torch.save(good_state, path)
        path.write_bytes(b"" if case == "empty" else path.read_bytes()[:2000])
        needle = f"cannot load checkpoint {path}: the file is corrupt or truncated"
    status = main(["diagnose", "--checkpoint", str(path), "--device", "cpu"])
    line = one_error_line(capsys, status, needle)
    out = capsys.readouterr().out
    assert "this must never run" not in out and "weights_only=False" not in line
    if case == "pickled code":
        assert line.endswith("dclnet never unpickles code, so it does not load this file")


def _run_folder(tmp_path: Path) -> Path:
    """A run folder as a finished epoch leaves it (config.yaml, last.pt) for the TINY recipe."""
    from dclnet.config import save_config
    from dclnet.engine.checkpoint import save_checkpoint
    from dclnet.engine.run_state import checkpoint_state

    cfg = load_config(TINY)
    run = tmp_path / "run"
    run.mkdir()
    save_config(cfg, run / "config.yaml")
    model = tiny_model()
    state = checkpoint_state(cfg, model, SimpleNamespace(num_classes=5))
    save_checkpoint(
        {**state, "epoch": 1, "optimizer": {}, "scheduler": {}, "rng": {}}, run / "last.pt"
    )
    return run


@pytest.mark.parametrize(
    "override, needle",
    [
        ("model.arch=resnet34", "--resume cannot change model.arch ('resnet18' in "),
        ("model.split=3", "--resume cannot change model.split (2 in "),
        ("loss.preset=baseline", "--resume cannot change loss.preset (None in "),
        ("loss.pap=0", "--resume cannot switch loss.pap off (1.0 in "),
        ("data.height=96", "--resume cannot change data.height (64 in "),
        ("optim.optimizer=sgd", "--resume cannot change optim.optimizer ('adam' in "),
    ],
)
def test_resume_cannot_change(override, needle, tmp_path, capsys):
    run = _run_folder(tmp_path)
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    status = main(["train", "--output", str(run), "--resume", override])
    line = one_error_line(capsys, status, needle)
    assert str(run / "last.pt") in line and "start a new run" in line
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before  # no work began


def test_resume_may_change_the_rest():
    from dclnet.config import to_dict
    from dclnet.engine.run_folder import check_resume_config

    saved = to_dict(load_config(TINY))
    changed = to_dict(load_config(TINY, ["optim.epochs=9", "optim.lr=1e-3", "loss.pap=0.5"]))
    check_resume_config(saved, changed, Path("last.pt"))
    older = {k: v for k, v in saved.items() if k != "model"}  # a checkpoint without the key
    check_resume_config(older, to_dict(load_config(TINY, ["model.split=3"])), Path("last.pt"))
    with pytest.raises(TrainingError):
        check_resume_config(saved, to_dict(load_config(TINY, ["model.split=3"])), Path("x"))


# 7. data.verify_cache=hash ------------------------------------------------------------------


def test_verify_cache_hash_sees_a_same_size_replacement_with_restored_mtime(tmp_path):
    from dclnet.data.cache import build_cache
    from dclnet.data.records import Record

    root = tmp_path / "data"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (32, 16, 3), dtype=np.uint8)).save(root / f"{i}.bmp")
    records = [Record(f"{i}.bmp", i, 1, "visible") for i in range(3)]
    kwargs = dict(size=(32, 16), cache_dir=tmp_path / "cache", progress=False)
    first = np.array(build_cache(root, records, **kwargs).images)
    victim = root / "1.bmp"
    st = victim.stat()
    Image.fromarray(np.full((32, 16, 3), 7, np.uint8)).save(victim)  # same size (BMP)
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert victim.stat().st_size == st.st_size
    stale = np.array(build_cache(root, records, **kwargs).images)
    np.testing.assert_array_equal(stale, first)  # documented limit of the default
    fresh = np.array(build_cache(root, records, verify="hash", **kwargs).images)
    assert (fresh[1] == 7).all() and np.array_equal(fresh[[0, 2]], first[[0, 2]])
    again = build_cache(root, records, verify="hash", **kwargs)  # reused: contents unchanged
    np.testing.assert_array_equal(np.array(again.images), fresh)


def test_verify_cache_is_a_config_key(capsys):
    assert load_config(None, ["data.verify_cache=hash"]).data.verify_cache == "hash"
    status = main(["config", "data.verify_cache=sha"])
    one_error_line(capsys, status, "config key 'data.verify_cache' has invalid value 'sha'")


# 8. Files written by dclnet respect the umask -----------------------------------------------


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield
    os.umask(old)


def test_written_files_follow_the_umask(umask_027, tmp_path, sysu_root):
    from dclnet.config import save_config
    from dclnet.data.cache import build_cache
    from dclnet.data.sources import sysu
    from dclnet.engine.checkpoint import save_checkpoint
    from dclnet.evaluation.protocols import write_json

    assert fileio.current_umask() == 0o027
    save_config(Config(), tmp_path / "config.yaml")
    write_json({"a": 1}, tmp_path / "r.json")
    save_features_npz(tmp_path / "f.npz", ["a"], np.zeros((1, 2), np.float32))
    save_checkpoint({"model": {}, "model_args": {}}, tmp_path / "last.pt")
    cache = build_cache(
        sysu_root,
        sysu.train_records(sysu_root)[:3],
        size=(8, 8),
        cache_dir=tmp_path / "c",
        progress=False,
    )
    files = ["config.yaml", "r.json", "f.npz", "last.pt"]
    if importlib.util.find_spec("matplotlib") is not None:  # the viz extra
        from dclnet.inference.visualize import new_figure, save_figure

        save_figure(new_figure(1, 1), tmp_path / "fig.png")
        files.append("fig.png")
    modes = {name: oct(os.stat(tmp_path / name).st_mode & 0o777) for name in files}
    for name in ("meta.json", "images.npy"):
        modes[name] = oct(os.stat(cache.directory / name).st_mode & 0o777)
    assert set(modes.values()) == {"0o640"}, modes
    assert oct(os.stat(cache.directory).st_mode & 0o777) == "0o750"
    assert fileio.file_mode() == 0o640 and fileio.dir_mode() == 0o750


# 9. --device and eval.* before any work -----------------------------------------------------


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["test", "--dataset", "sysu", "--device", "gpu"], "--device has invalid value 'gpu'"),
        (["test", "--dataset", "sysu", "--device", "cuda:x"], "--device has invalid value"),
        (["diagnose", "--device", "GPU0"], "--device has invalid value 'GPU0'"),
        (["search", "--gallery", "g", "--query", "q", "--device", "tpu"], "valid: auto, cpu"),
        (["test", "--dataset", "sysu", "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    ],
    ids=["test gpu", "test cuda:x", "diagnose GPU0", "search tpu", "test batch 0"],
)
def test_command_options_checked_first(argv, needle, tmp_path, capsys):
    argv = [argv[0], "--checkpoint", str(tmp_path / "missing.pt"), *argv[1:]]
    status = main(argv)
    one_error_line(capsys, status, needle)


def test_device_index_beyond_the_machine():
    from dclnet.engine.build import resolve_device

    with pytest.raises(ConfigError) as info:
        resolve_device(f"cuda:{max(torch.cuda.device_count(), 1) + 7}", "--device")
    one_line(info.value, "--device='cuda:")


@pytest.mark.parametrize(
    "override, needle",
    [
        ("eval.direction=v2t", "config key 'eval.direction': invalid protocol direction 'v2t'"),
        ("eval.mode=indoor", "config key 'eval.mode': invalid protocol mode 'indoor' for regdb"),
        ("eval.shots=10", "config key 'eval.shots': invalid protocol shots 10 for llcm"),
        ("eval.sampler=official", "config key 'eval.sampler': invalid protocol sampler"),
        ("eval.batch_size=0", "config key 'eval.batch_size' = 0 is out of range"),
        ("eval.trials=0", "config key 'eval.trials' = 0 is out of range"),
    ],
)
def test_eval_settings_fail_before_training(override, needle, tmp_path, capsys):
    dataset = {"eval.direction": "sysu", "eval.mode": "regdb", "eval.shots": "llcm"}.get(
        override.split("=")[0], "regdb"
    )
    (tmp_path / "data").mkdir()  # empty: loading it would fail with another message
    argv = ["train", "--config", str(TINY), "--dataset", dataset, "--root", str(tmp_path / "data")]
    status = main([*argv, "--output", str(tmp_path / "run"), override])
    one_error_line(capsys, status, needle)
    assert not (tmp_path / "run").exists()  # refused before the run folder was claimed


def test_every_eval_field_is_validated():
    from dclnet import config as config_mod
    from dclnet.config import EvalConfig

    hints = typing.get_type_hints(EvalConfig)
    unchecked = [
        f.name
        for f in dataclasses.fields(EvalConfig)
        if hints[f.name] is not bool
        and f"eval.{f.name}" not in config_mod._RANGES
        and f"eval.{f.name}" not in config_mod._CHOICES
    ]
    assert unchecked == []
