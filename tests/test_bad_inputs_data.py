"""Bad data on disk gets one clear error (issue 9): features files for
``evaluate-features``, id/index files and image folders, 16-bit images and
``data.verify_cache=hash``.

Command-line cases run ``dclnet.cli.main`` in-process and check the exit status, one
``error:`` line naming the file or key and no traceback; library cases check the error class
and a one-line message.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from _bad_input_data import evaluate_argv, good_features, protocol_paths
from _faults import one_error_line, one_line
from PIL import Image

from dclnet.cli import main
from dclnet.config import load_config
from dclnet.errors import DataError
from dclnet.evaluation.protocols import save_features_npz

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


REGDB_CASES = ["index file not UTF-8", "superscript label", "duplicated lines"]
BREAKERS = {"sysu": _break_sysu, "regdb": _break_regdb}


@pytest.mark.parametrize(
    "dataset, case", [("sysu", c) for c in SYSU_CASES] + [("regdb", c) for c in REGDB_CASES]
)
def test_broken_tree(dataset, case, request, tmp_path, capsys):
    """A SYSU-MM01 tree or RegDB index broken one way: one error line naming the place."""
    good = request.getfixturevalue(f"{dataset}_root")
    features = good_features(dataset, good, tmp_path / "f.npz")
    root = Path(shutil.copytree(good, tmp_path / dataset))
    needle = BREAKERS[dataset](case, root)
    status = main(evaluate_argv(dataset, root, features))
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


# 4. data.verify_cache=hash ------------------------------------------------------------------


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
