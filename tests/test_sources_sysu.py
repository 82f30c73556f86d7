"""SYSU-MM01 reader, gallery samplers and protocol splits on a tiny tree in tmp_path."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from _trees import (
    SYSU_EMPTY,
    SYSU_MISSING,
    SYSU_TEST,
    SYSU_TRAIN,
    SYSU_VAL,
    sysu_count,
    write_rand_perm,
    write_sysu_tree,
)

from dclnet.data.sources import sysu
from dclnet.data.splits import EvalSplit, ProtocolSettings, build_splits, needed_paths
from dclnet.errors import ConfigError, DataError


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return write_sysu_tree(tmp_path / "SYSU-MM01")


@pytest.fixture
def listing(root: Path) -> sysu.Listing:
    return sysu.list_sysu(root, SYSU_TEST)


@pytest.fixture
def keep_global_random():
    state = random.getstate()
    yield
    random.setstate(state)


def plain_gallery(root: Path, cams: tuple[int, ...], trial: int, shots: int = 1) -> list[str]:
    """The AGW-family gallery rule written plainly with the global random module."""
    random.seed(trial)
    paths = []
    for pid in sorted(SYSU_TEST):
        for cam in cams:
            folder = os.path.join(root, f"cam{cam}", f"{pid:04d}")
            if not os.path.isdir(folder):
                continue
            files = sorted(f for f in os.listdir(folder) if f.endswith(".jpg"))
            if not files:  # the reference code would crash on an empty folder
                continue
            if shots == 1:
                chosen = [random.choice(files)]
            else:
                chosen = random.sample(files, min(shots, len(files)))
            paths += [f"cam{cam}/{pid:04d}/{name}" for name in chosen]
    return paths


# --- listing and training records ----------------------------------------------------------


def test_read_ids_keeps_file_order(root: Path) -> None:
    assert sysu.read_ids(root, "train") == list(SYSU_TRAIN)
    assert sysu.read_ids(root, "test") == list(SYSU_TEST)


def test_listing_skips_missing_empty_and_non_image_entries(listing: sysu.Listing) -> None:
    for cam in range(1, 7):
        for pid in SYSU_TEST:
            count = sysu_count(cam, pid)
            if (cam, pid) in SYSU_MISSING or (cam, pid) in SYSU_EMPTY:
                assert (cam, pid) not in listing
            else:
                assert listing[(cam, pid)] == [f"{n:04d}.jpg" for n in range(1, count + 1)]


def test_train_records_labels_cams_and_order(root: Path) -> None:
    records = sysu.train_records(root)
    pids = sorted(SYSU_TRAIN + SYSU_VAL)
    expected = []
    for modality, cams in (("visible", (1, 2, 4, 5)), ("infrared", (3, 6))):
        for label, pid in enumerate(pids):
            for cam in cams:
                for n in range(1, sysu_count(cam, pid) + 1):
                    expected.append((f"cam{cam}/{pid:04d}/{n:04d}.jpg", label, cam, modality))
    got = [(r.path, r.label, r.cam, r.modality) for r in records]
    assert got == expected
    assert {r.label for r in records} == set(range(len(pids)))
    assert not any("Thumbs" in r.path or "hidden" in r.path for r in records)
    assert all((root / r.path).is_file() for r in records)


def test_query_is_every_infrared_image_in_both_modes(listing: sysu.Listing) -> None:
    expected = [
        (f"cam{cam}/{pid:04d}/{n:04d}.jpg", pid, cam)
        for pid in sorted(SYSU_TEST)
        for cam in (3, 6)
        for n in range(1, sysu_count(cam, pid) + 1)
    ]
    for mode in ("all", "indoor"):
        query = sysu.query_records(listing, SYSU_TEST, mode=mode)
        assert [(r.path, r.label, r.cam) for r in query] == expected
        assert {r.modality for r in query} == {"infrared"}


# --- seeded sampler ------------------------------------------------------------------------


@pytest.mark.parametrize("mode, cams", [("all", (1, 2, 4, 5)), ("indoor", (1, 2))])
def test_seeded_gallery_matches_global_random_for_ten_trials(
    root: Path, listing: sysu.Listing, mode: str, cams: tuple[int, ...], keep_global_random
) -> None:
    galleries = []
    for trial in range(10):
        gallery = sysu.gallery_records(listing, SYSU_TEST, mode=mode, trial=trial)
        assert [r.path for r in gallery] == plain_gallery(root, cams, trial)
        assert {r.cam for r in gallery} <= set(cams)
        assert all(r.modality == "visible" and r.path.startswith(f"cam{r.cam}/") for r in gallery)
        assert all(r.label == int(r.path.split("/")[1]) for r in gallery)
        # one image per existing (cam, id) folder
        expected = sum(1 for pid in SYSU_TEST for cam in cams if (cam, pid) in listing)
        assert len(gallery) == expected
        galleries.append([r.path for r in gallery])
    assert len({tuple(g) for g in galleries}) > 1  # trials differ


def test_multi_shot_gallery(root: Path, listing: sysu.Listing, keep_global_random) -> None:
    for trial in (0, 3):
        gallery = sysu.gallery_records(listing, SYSU_TEST, trial=trial, shots=10)
        assert [r.path for r in gallery] == plain_gallery(root, (1, 2, 4, 5), trial, shots=10)
        per_folder: dict[tuple[int, int], list[str]] = {}
        for r in gallery:
            per_folder.setdefault((r.cam, r.label), []).append(r.path)
        for (cam, pid), paths in per_folder.items():
            assert len(paths) == len(set(paths)) == min(10, sysu_count(cam, pid))
    assert any(sysu_count(c, p) > 10 for c, p in per_folder)  # the cap is exercised


def test_visible_to_infrared_direction(root: Path, listing: sysu.Listing, keep_global_random):
    query = sysu.query_records(listing, SYSU_TEST, modality="visible", mode="indoor")
    assert {r.cam for r in query} == {1, 2} and {r.modality for r in query} == {"visible"}
    assert len(query) == sum(sysu_count(c, p) for p in SYSU_TEST for c in (1, 2))
    gallery = sysu.gallery_records(listing, SYSU_TEST, modality="infrared", trial=2)
    assert [r.path for r in gallery] == plain_gallery(root, (3, 6), 2)
    assert {r.modality for r in gallery} == {"infrared"}


# --- official sampler ----------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["matlab", "transposed"])
@pytest.mark.parametrize("shots", [1, 10])
def test_official_sampler_reads_rand_perm_cam(root: Path, listing, layout: str, shots: int):
    perms = write_rand_perm(root, layout=layout)
    loaded = scipy.io.loadmat(root / "exp" / "rand_perm_cam.mat")["rand_perm_cam"]
    assert loaded.dtype == object  # the cell-array structure the loader must accept
    for trial in (0, 9):
        gallery = sysu.gallery_records(
            listing, SYSU_TEST, trial=trial, shots=shots, sampler="official", root=root
        )
        expected = [
            f"cam{cam}/{pid:04d}/{int(n):04d}.jpg"
            for pid in sorted(SYSU_TEST)
            for cam in (1, 2, 4, 5)
            for n in perms[(cam, pid)][trial, :shots]
        ]
        assert [r.path for r in gallery] == expected
        assert all((root / r.path).is_file() for r in gallery)


def test_official_sampler_infrared_gallery_and_preloaded(root: Path, listing) -> None:
    perms = write_rand_perm(root)
    rand_perm = sysu.load_rand_perm(root)
    gallery = sysu.gallery_records(
        listing, SYSU_TEST, trial=4, sampler="official", modality="infrared", rand_perm=rand_perm
    )
    expected = [
        f"cam{cam}/{pid:04d}/{int(perms[(cam, pid)][4, 0]):04d}.jpg"
        for pid in sorted(SYSU_TEST)
        for cam in (3, 6)
        if perms[(cam, pid)].size
    ]
    assert [r.path for r in gallery] == expected


# --- protocol splits -----------------------------------------------------------------------


def test_build_splits_sysu_from_root(root: Path, listing, keep_global_random) -> None:
    settings = ProtocolSettings("sysu", mode="indoor", trials=3)
    splits = build_splits(settings, root)
    assert [s.trial for s in splits] == [0, 1, 2] and {s.rule for s in splits} == {"sysu"}
    assert splits[0].query == sysu.query_records(listing, SYSU_TEST)
    for split in splits:
        assert [r.path for r in split.gallery] == plain_gallery(root, (1, 2), split.trial)
    paths = needed_paths(splits)
    assert paths == sorted(set(paths))
    assert set(paths) == {r.path for s in splits for r in s.query + s.gallery}


def test_build_splits_from_listing_v2i(listing) -> None:
    settings = ProtocolSettings("synthetic", direction="v2i", trials=2)
    splits = build_splits(settings, listing=listing, test_ids=list(SYSU_TEST))
    assert all(isinstance(s, EvalSplit) and s.rule == "sysu" for s in splits)
    assert {r.modality for r in splits[0].query} == {"visible"}
    assert {r.cam for r in splits[1].gallery} <= {3, 6}


def test_build_splits_official_sampler(root: Path) -> None:
    perms = write_rand_perm(root)
    splits = build_splits(ProtocolSettings("sysu", sampler="official", shots=10), root)
    assert len(splits) == 10
    first = splits[7].gallery[0]
    assert first.path == f"cam1/0005/{int(perms[(1, 5)][7, 0]):04d}.jpg"


def test_protocol_settings_defaults_and_dict() -> None:
    settings = ProtocolSettings("sysu")
    assert settings.direction == "i2v" and settings.query_modality == "infrared"
    assert settings.as_dict() == {
        "dataset": "sysu",
        "mode": "all",
        "shots": 1,
        "sampler": "seeded",
        "trials": 10,
        "direction": "i2v",
    }
    assert ProtocolSettings(**settings.as_dict()) == settings


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"dataset": "market"}, ["dataset", "sysu, regdb, llcm, synthetic"]),
        ({"dataset": "sysu", "mode": "outdoor"}, ["mode", "all, indoor"]),
        ({"dataset": "sysu", "shots": 5}, ["shots", "1, 10"]),
        ({"dataset": "sysu", "sampler": "mpanet"}, ["sampler", "seeded, official"]),
        ({"dataset": "sysu", "direction": "v2t"}, ["direction", "i2v, v2i"]),
        ({"dataset": "sysu", "trials": 0}, ["trials", ">= 1"]),
        ({"dataset": "sysu", "trial": 1}, ["trial", "RegDB"]),
        ({"dataset": "synthetic", "sampler": "official"}, ["sampler", "seeded"]),
        ({"dataset": "llcm", "mode": "indoor"}, ["mode", "all"]),
        ({"dataset": "regdb", "shots": 10}, ["shots", "1"]),
    ],
)
def test_protocol_settings_errors(kwargs: dict, words: list[str]) -> None:
    with pytest.raises(ConfigError) as caught:
        ProtocolSettings(**kwargs)
    message = str(caught.value)
    assert "\n" not in message and all(word in message for word in words)


# --- errors --------------------------------------------------------------------------------


def _raises(match: str, call, *args, **kwargs) -> str:
    with pytest.raises(DataError) as caught:
        call(*args, **kwargs)
    message = str(caught.value)
    assert "\n" not in message
    assert match in message, message
    return message


def test_error_wrong_root(tmp_path: Path) -> None:
    _raises(str(tmp_path / "nowhere"), sysu.train_records, tmp_path / "nowhere")
    (tmp_path / "other").mkdir()
    message = _raises(str(tmp_path / "other" / "cam1"), sysu.train_records, tmp_path / "other")
    assert "SYSU-MM01" in message


def test_error_missing_id_file(root: Path) -> None:
    (root / "exp" / "val_id.txt").unlink()
    _raises(str(root / "exp" / "val_id.txt"), sysu.train_records, root)


def test_error_malformed_id_file(root: Path) -> None:
    (root / "exp" / "test_id.txt").write_text("5,6,\nseven,8\n")
    _raises(f"{root / 'exp' / 'test_id.txt'}:2: 'seven'", sysu.read_ids, root, "test")
    _raises("train, val, test", sysu.read_ids, root, "query")


def test_error_id_without_folder(root: Path) -> None:
    (root / "exp" / "test_id.txt").write_text("5,6,42\n")
    message = _raises("person id 42", build_splits, ProtocolSettings("sysu"), root)
    assert str(root) in message and "0042" in message


def test_error_empty_camera_directory(root: Path) -> None:
    shutil.rmtree(root / "cam5")
    (root / "cam5").mkdir()
    _raises(f"{root / 'cam5'}: camera directory is empty", sysu.list_sysu, root, SYSU_TEST)


def test_error_unknown_choices(listing) -> None:
    _raises("all, indoor", sysu.gallery_records, listing, SYSU_TEST, mode="outdoor")
    _raises("seeded, official", sysu.gallery_records, listing, SYSU_TEST, sampler="x")
    _raises("1, 10", sysu.gallery_records, listing, SYSU_TEST, shots=3)
    _raises("visible, infrared", sysu.query_records, listing, SYSU_TEST, modality="rgb")


def test_error_missing_rand_perm_names_seeded(root: Path, listing) -> None:
    message = _raises(
        str(root / "exp" / "rand_perm_cam.mat"),
        sysu.gallery_records,
        listing,
        SYSU_TEST,
        sampler="official",
        root=root,
    )
    assert "'seeded'" in message
    _raises("'seeded'", sysu.gallery_records, listing, SYSU_TEST, sampler="official")


def test_error_official_number_without_file(root: Path, listing) -> None:
    perms = write_rand_perm(root)
    name = f"{int(perms[(2, 5)][0, 0]):04d}.jpg"
    (root / "cam2" / "0005" / name).unlink()
    listing = sysu.list_sysu(root, SYSU_TEST)
    message = _raises(
        str(root / "cam2" / "0005" / name),
        sysu.gallery_records,
        listing,
        SYSU_TEST,
        sampler="official",
        root=root,
    )
    assert "has no file" in message


def test_error_official_trial_and_structure(root: Path, listing) -> None:
    write_rand_perm(root, trials=3)
    _raises(
        "0..2", sysu.gallery_records, listing, SYSU_TEST, trial=5, sampler="official", root=root
    )
    path = root / "exp" / "rand_perm_cam.mat"
    scipy.io.savemat(path, {"rand_perm_cam": np.arange(6.0)})
    _raises(str(path), sysu.load_rand_perm, root)
    path.write_bytes(b"not a mat file")
    _raises(f"{path}: not a readable MATLAB file", sysu.load_rand_perm, root)
