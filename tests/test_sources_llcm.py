"""LLCM reader, gallery trials and protocol splits on a tiny tree in tmp_path."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from _trees import LLCM_CAMS, LLCM_TEST, LLCM_TRAIN, llcm_count, write_llcm_tree

from dclnet.data.sources import llcm
from dclnet.errors import DataError
from dclnet.evaluation.splits import ProtocolSettings, build_splits

TEST_DIR = {"visible": "test_vis", "infrared": "test_nir"}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return write_llcm_tree(tmp_path / "LLCM")


@pytest.fixture
def keep_global_random():
    state = random.getstate()
    yield
    random.setstate(state)


def plain_gallery(root: Path, modality: str, trial: int) -> list[str]:
    """The reference gallery rule written plainly with the global random module."""
    random.seed(trial)
    paths = []
    for pid in sorted(LLCM_TEST):
        for cam in LLCM_CAMS[modality]:
            folder = os.path.join(root, TEST_DIR[modality], f"cam{cam}", f"{pid:04d}")
            if os.path.isdir(folder):
                name = random.choice(sorted(os.listdir(folder)))
                paths.append(f"{TEST_DIR[modality]}/cam{cam}/{pid:04d}/{name}")
    return paths


def test_train_records_reindex_jointly_and_parse_cameras(root: Path) -> None:
    records = llcm.train_records(root)
    label_of = {pid: i for i, pid in enumerate(sorted(LLCM_TRAIN))}
    visible = [r for r in records if r.modality == "visible"]
    infrared = [r for r in records if r.modality == "infrared"]
    assert records == visible + infrared and len(visible) == len(infrared) == 2 * len(LLCM_TRAIN)
    for r in records:
        pid = int(r.path.split("/")[1])
        assert r.label == label_of[pid]
        assert f"_c{r.cam:02d}_" in r.path
    assert {r.cam for r in visible} == {1, 4} and {r.cam for r in infrared} == {2, 7}


@pytest.mark.parametrize(
    "path, cam",
    [
        ("nir/0001/0001_c04_s185535_f7010_nir.jpg", 4),
        ("test_vis/cam7/0003/anything.jpg", 7),
        ("test_vis/cam7/0003/0003_c07_s1_f1_vis.jpg", 7),
        ("vis/0001/0001.jpg", None),
    ],
)
def test_camera_from_path(path: str, cam: int | None) -> None:
    assert llcm.camera_from_path(path) == cam


@pytest.mark.parametrize("modality", ["visible", "infrared"])
def test_query_is_every_test_image(root: Path, modality: str) -> None:
    listing = llcm.list_llcm(root, LLCM_TEST)
    query = llcm.query_records(listing, LLCM_TEST, modality)
    expected_count = sum(llcm_count(modality, c, p) for c in LLCM_CAMS[modality] for p in LLCM_TEST)
    assert len(query) == expected_count
    assert [r.label for r in query] == sorted(r.label for r in query)
    assert {r.modality for r in query} == {modality}
    for r in query:
        assert r.path.startswith(f"{TEST_DIR[modality]}/cam{r.cam}/{r.label:04d}/")
        assert (root / r.path).is_file()


@pytest.mark.parametrize("modality", ["visible", "infrared"])
def test_gallery_trials_match_global_random(root: Path, modality: str, keep_global_random):
    listing = llcm.list_llcm(root, LLCM_TEST)
    galleries = set()
    for trial in range(10):
        gallery = llcm.gallery_records(listing, LLCM_TEST, modality, trial)
        assert [r.path for r in gallery] == plain_gallery(root, modality, trial)
        assert len({(r.cam, r.label) for r in gallery}) == len(gallery)
        galleries.add(tuple(r.path for r in gallery))
    assert len(galleries) > 1
    assert 3 not in {r.cam for r in llcm.gallery_records(listing, LLCM_TEST, "infrared", 0)}


@pytest.mark.parametrize(
    "direction, query_modality, gallery_modality",
    [("i2v", "infrared", "visible"), ("v2i", "visible", "infrared")],
)
def test_build_splits_both_directions(
    root: Path, direction: str, query_modality: str, gallery_modality: str, keep_global_random
) -> None:
    settings = ProtocolSettings("llcm", trials=3, direction=direction)
    splits = build_splits(settings, root)
    assert [s.trial for s in splits] == [0, 1, 2] and {s.rule for s in splits} == {"llcm"}
    for split in splits:
        # the right way round: all query-modality images against a sampled gallery
        assert {r.modality for r in split.query} == {query_modality}
        assert [r.path for r in split.gallery] == plain_gallery(root, gallery_modality, split.trial)
    assert settings.as_dict() == {"dataset": "llcm", "trials": 3, "direction": direction}


# --- errors --------------------------------------------------------------------------------


def _raises(match: str, call, *args) -> str:
    with pytest.raises(DataError) as caught:
        call(*args)
    message = str(caught.value)
    assert "\n" not in message and match in message, message
    return message


def test_error_wrong_root(tmp_path: Path) -> None:
    _raises(str(tmp_path / "idx"), llcm.train_records, tmp_path)
    _raises(str(tmp_path / "missing"), llcm.read_test_ids, tmp_path / "missing")


def test_error_missing_index_and_id_files(root: Path) -> None:
    (root / "idx" / "train_nir.txt").unlink()
    _raises(str(root / "idx" / "train_nir.txt"), llcm.train_records, root)
    (root / "idx" / "test_id.txt").unlink()
    _raises(str(root / "idx" / "test_id.txt"), build_splits, ProtocolSettings("llcm"), root)


def test_error_train_path_without_camera(root: Path) -> None:
    index = root / "idx" / "train_vis.txt"
    first = index.read_text().splitlines()[0]
    path, label = first.split()
    bare = root / "vis" / "plain.jpg"
    bare.write_bytes(b"x")
    index.write_text(f"{first}\nvis/plain.jpg {label}\n")
    message = _raises(f"{index}:2: no camera", llcm.train_records, root)
    assert "cam<k>" in message


def test_error_train_path_with_conflicting_cameras(root: Path) -> None:
    index = root / "idx" / "train_vis.txt"
    (root / "cam2").mkdir()
    name = "0015_c05_s1_f1_vis.jpg"
    (root / "cam2" / name).write_bytes(b"x")
    index.write_text(f"cam2/{name} 15\n")
    _raises(f"{index}:1: cam2/{name}: conflicting camera numbers [2, 5]", llcm.train_records, root)


def test_error_missing_train_image(root: Path) -> None:
    index = root / "idx" / "train_nir.txt"
    path = index.read_text().split()[0]
    (root / path).unlink()
    _raises(str(root / path), llcm.train_records, root)


def test_error_test_id_without_folder(root: Path) -> None:
    (root / "idx" / "test_id.txt").write_text("1,2,77\n")
    message = _raises("person id 77", build_splits, ProtocolSettings("llcm"), root)
    assert str(root) in message


def test_error_camera_directory_missing_or_empty(root: Path) -> None:
    shutil.rmtree(root / "test_nir" / "cam8")
    _raises(str(root / "test_nir" / "cam8"), llcm.list_llcm, root, LLCM_TEST)
    (root / "test_nir" / "cam8").mkdir()
    _raises(f"{root / 'test_nir' / 'cam8'}: camera directory is empty", llcm.list_llcm, root, [1])


def test_error_unknown_modality_and_trial(root: Path) -> None:
    listing = llcm.list_llcm(root, LLCM_TEST)
    _raises("visible, infrared", llcm.query_records, listing, LLCM_TEST, "nir")
    _raises("visible, infrared", llcm.gallery_records, listing, LLCM_TEST, "thermal", 0)
    _raises(">= 0", llcm.gallery_records, listing, LLCM_TEST, "visible", -1)


def test_gallery_trial_accepts_numpy_integers_only(root: Path) -> None:
    listing = llcm.list_llcm(root, LLCM_TEST)
    expected = llcm.gallery_records(listing, LLCM_TEST, "visible", 2)
    assert llcm.gallery_records(listing, LLCM_TEST, "visible", np.int64(2)) == expected
    _raises(">= 0", llcm.gallery_records, listing, LLCM_TEST, "visible", True)
    _raises(">= 0", llcm.gallery_records, listing, LLCM_TEST, "visible", 1.5)
