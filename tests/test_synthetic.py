"""Tests of the built-in synthetic two-modality data set."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dclnet.data.records import INFRARED, VISIBLE
from dclnet.data.sources.synthetic import (
    SYSU_CAMERAS,
    make_synthetic,
    regdb_trial,
    save_sysu,
    write_regdb,
    write_sysu,
)
from dclnet.data.sources.synthetic_render import BOTTOM, PART_NAMES, TOP
from dclnet.errors import ConfigError, DataError

SMALL = {"height": 32, "width": 16}


@pytest.fixture(scope="module")
def small():
    return make_synthetic(12, seed=3, **SMALL)


def test_same_seed_same_set(small):
    again = make_synthetic(12, seed=3, **SMALL)
    np.testing.assert_array_equal(small.images, again.images)
    np.testing.assert_array_equal(small.parts, again.parts)
    assert small.records == again.records
    assert (small.train_ids, small.val_ids, small.test_ids) == (
        again.train_ids,
        again.val_ids,
        again.test_ids,
    )


def test_different_seed_differs(small):
    other = make_synthetic(12, seed=4, **SMALL)
    if other.images.shape == small.images.shape:
        assert np.abs(other.images.astype(int) - small.images).mean() > 10
    assert other.records != small.records or other.test_ids != small.test_ids


def test_shapes_records_and_modalities(small):
    n = len(small.records)
    assert small.images.shape == (n, 32, 16, 3) and small.images.dtype == np.uint8
    assert small.parts.shape == (n, 32, 16) and small.parts.dtype == np.uint8
    assert small.parts.max() < len(PART_NAMES)
    assert [r.path for r in small.records] == sorted(r.path for r in small.records)
    for r in small.records:
        cam, pid, _ = re.fullmatch(r"cam(\d)/(\d{4})/(\d{4})\.jpg", r.path).groups()
        assert (int(cam), int(pid)) == (r.cam, r.label)
        assert r.modality == SYSU_CAMERAS[r.cam][0]
        assert (r.modality == INFRARED) == (r.cam in (3, 6))


def test_infrared_has_no_colour_and_visible_does(small):
    ir = np.array([r.modality == INFRARED for r in small.records])
    images = small.images.astype(np.int16)
    assert ir.any() and (~ir).any()
    assert np.array_equal(images[ir, ..., 0], images[ir, ..., 1])
    assert np.array_equal(images[ir, ..., 1], images[ir, ..., 2])
    assert np.abs(images[~ir, ..., 0] - images[~ir, ..., 2]).mean() > 10


def test_every_person_in_both_modalities_and_splits(small):
    seen = {(r.label, r.modality) for r in small.records}
    ids = set(range(1, 13))
    for pid in ids:
        assert (pid, VISIBLE) in seen and (pid, INFRARED) in seen
    train, val, test = map(set, (small.train_ids, small.val_ids, small.test_ids))
    assert not (train & val or train & test or val & test)
    assert train | val | test == ids
    assert small.train_ids == sorted(small.train_ids) and small.test_ids == sorted(small.test_ids)


def test_default_split_and_missing_folders():
    ds = make_synthetic(64, height=16, width=8)
    assert (len(ds.train_ids), len(ds.val_ids), len(ds.test_ids)) == (40, 4, 20)
    listing = ds.listing()
    assert len(listing) < 64 * 6  # some (camera, person) folders are missing
    assert all(4 <= len(names) <= 6 for names in listing.values())


def test_listing_matches_records(small):
    listing = small.listing()
    assert sum(len(v) for v in listing.values()) == len(small.records)
    for (cam, pid), names in listing.items():
        assert names == sorted(names) and names[0] == "0001.jpg"
        for name in names:
            path = f"cam{cam}/{pid:04d}/{name}"
            i = [r.path for r in small.records].index(path)
            assert small.image(path) is small.images[i] or np.array_equal(
                small.image(path), small.images[i]
            )
    with pytest.raises(DataError, match="cam9/0001/0001.jpg"):
        small.image("cam9/0001/0001.jpg")


def _region_means(ds, part: int, cams: tuple[int, ...], ids: list[int]) -> np.ndarray:
    """Per person: mean luminance (visible) or intensity (infrared) of ``part`` pixels.

    NaN where the part is not seen (not worn, or occluded in every image).
    """
    out = []
    for pid in ids:
        rows = [i for i, r in enumerate(ds.records) if r.label == pid and r.cam in cams]
        mask = ds.parts[rows] == part
        gray = ds.images[rows].astype(np.float64).mean(-1)
        out.append(gray[mask].mean() if mask.any() else np.nan)
    return np.array(out)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    seen = ~np.isnan(a) & ~np.isnan(b)
    assert seen.sum() > 50
    return float(np.corrcoef(a[seen], b[seen])[0, 1])


def test_infrared_heat_is_unrelated_to_visible_colour():
    ds = make_synthetic(150, seed=1, height=48, width=24, images_per_camera=(1, 2))
    listing = ds.listing()
    for part in (TOP, BOTTOM):
        ids = list(range(1, 151))
        vis = _region_means(ds, part, (1, 2, 4, 5), ids)
        ir = _region_means(ds, part, (3, 6), ids)
        assert abs(_corr(vis, ir)) < 0.25
        # The measurement is sharp enough to see a property of the person: the same region
        # has a consistent heat in both infrared cameras.
        both = [p for p in ids if (3, p) in listing and (6, p) in listing]
        cam3, cam6 = (_region_means(ds, part, (c,), both) for c in (3, 6))
        assert _corr(cam3, cam6) > 0.6


def _pixels(images: np.ndarray) -> np.ndarray:
    n = len(images)
    x = images.astype(np.float32).mean(-1).reshape(n, 16, 2, 8, 2).mean((2, 4)).reshape(n, -1)
    x = (x - x.mean(1, keepdims=True)) / (x.std(1, keepdims=True) + 1e-6)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_raw_pixels_match_within_but_not_across_modalities():
    ds = make_synthetic(120, seed=0, height=32, width=16, num_test_ids=100, num_val_ids=0)
    test = set(ds.test_ids)
    labels = np.array([r.label for r in ds.records])
    cams = np.array([r.cam for r in ds.records])
    vis = np.array([r.label in test and r.modality == VISIBLE for r in ds.records])
    ir = np.array([r.label in test and r.modality == INFRARED for r in ds.records])
    feats = _pixels(ds.images)
    cross = feats[ir] @ feats[vis].T
    cross_r1 = (labels[vis][cross.argmax(1)] == labels[ir]).mean()
    within = feats[vis] @ feats[vis].T
    within[cams[vis][:, None] == cams[vis][None, :]] = -np.inf
    within_r1 = (labels[vis][within.argmax(1)] == labels[vis]).mean()
    chance = 1 / len(test)
    assert cross_r1 < 3 * chance
    assert within_r1 > 10 * chance


def test_write_sysu_layout(tmp_path):
    root = write_sysu(tmp_path / "sysu", num_ids=6, seed=2, **SMALL)
    ds = make_synthetic(6, seed=2, **SMALL)
    assert sorted(p.name for p in root.iterdir()) == [f"cam{c}" for c in range(1, 7)] + ["exp"]
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jpg"))
    assert files == [r.path for r in ds.records]
    exp = {p.name: p.read_text() for p in (root / "exp").iterdir()}
    assert set(exp) == {"train_id.txt", "val_id.txt", "test_id.txt"}
    assert exp["test_id.txt"].strip() == ",".join(map(str, ds.test_ids))
    assert exp["train_id.txt"].strip() == ",".join(map(str, ds.train_ids))
    assert exp["val_id.txt"].strip() == ",".join(map(str, ds.val_ids))
    for modality in (VISIBLE, INFRARED):
        i = next(i for i, r in enumerate(ds.records) if r.modality == modality)
        image = Image.open(root / ds.records[i].path)
        assert image.mode == "RGB" and image.size == (16, 32)
        pixels = np.asarray(image).astype(np.int16)
        assert np.abs(pixels - ds.images[i]).mean() < 4
        if modality == INFRARED:
            assert np.abs(np.diff(pixels, axis=-1)).max() <= 2


def test_write_regdb_layout(tmp_path):
    root = write_regdb(tmp_path / "regdb", num_ids=7, images_per_modality=2, **SMALL)
    assert sorted(p.name for p in root.iterdir()) == ["Thermal", "Visible", "idx"]
    assert len(list((root / "idx").iterdir())) == 40
    for t in range(1, 11):
        lists = {}
        for name in ("train_visible", "train_thermal", "test_visible", "test_thermal"):
            lines = (root / "idx" / f"{name}_{t}.txt").read_text().splitlines()
            lists[name] = [(p, int(label)) for p, label in (line.split(" ") for line in lines)]
        train_ids = {int(p.split("/")[1]) for p, _ in lists["train_visible"]}
        test_ids = {int(p.split("/")[1]) for p, _ in lists["test_visible"]}
        assert not train_ids & test_ids and train_ids | test_ids == set(range(1, 8))
        assert len(train_ids) == 3 and (sorted(train_ids), sorted(test_ids)) == regdb_trial(7, t)
        for name, pairs in lists.items():
            folder = "Visible" if name.endswith("visible") else "Thermal"
            assert all(p.startswith(folder + "/") and (root / p).is_file() for p, _ in pairs)
            if name.startswith("train"):
                assert sorted({label for _, label in pairs}) == [0, 1, 2]
                pids = sorted(train_ids)
                assert all(pids[label] == int(p.split("/")[1]) for p, label in pairs)
            else:
                assert all(label == int(p.split("/")[1]) for p, label in pairs)
            assert len(pairs) == 2 * (3 if name.startswith("train") else 4)
    splits = {tuple(regdb_trial(7, t)[0]) for t in range(1, 11)}
    assert len(splits) > 1
    thermal = np.asarray(Image.open(next((root / "Thermal").rglob("*.bmp"))))
    assert thermal.shape == (32, 16, 3) and np.array_equal(thermal[..., 0], thermal[..., 2])


@pytest.mark.parametrize("writer", [write_sysu, write_regdb])
def test_refuses_non_empty_directory(tmp_path: Path, writer):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match=re.escape(str(tmp_path))):
        writer(tmp_path, num_ids=4, **SMALL)
    writer(tmp_path, num_ids=4, overwrite=True, **SMALL)
    assert (tmp_path / "notes.txt").read_text() == "keep me"
    with pytest.raises(DataError, match="not a directory"):
        writer(tmp_path / "notes.txt", num_ids=4, **SMALL)


def test_overwrite_replaces_previous_set(tmp_path):
    write_sysu(tmp_path, num_ids=8, seed=0, **SMALL)
    write_sysu(tmp_path, num_ids=3, seed=0, overwrite=True, **SMALL)
    pids = {p.name for p in tmp_path.glob("cam*/*")}
    assert pids <= {"0001", "0002", "0003"}


def test_sysu_layout_needs_every_split(tmp_path):
    ds = make_synthetic(4, num_val_ids=0, **SMALL)
    with pytest.raises(ConfigError, match="num_val_ids"):
        save_sysu(ds, tmp_path)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"num_ids": 2}, "num_ids"),
        ({"images_per_camera": (3, 2)}, "images_per_camera"),
        ({"camera_presence": 1.5}, "camera_presence"),
        ({"num_ids": 4, "num_test_ids": 4}, "num_ids"),
    ],
)
def test_bad_arguments_name_the_field(kwargs, field):
    args = {"num_ids": 4, **SMALL, **kwargs}
    with pytest.raises(ConfigError, match=field):
        make_synthetic(args.pop("num_ids"), **args)
