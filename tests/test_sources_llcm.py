"""LLCM reader, gallery trials and protocol splits on a tiny tree in tmp_path."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from _trees import LLCM_CAMS, LLCM_TEST, LLCM_TRAIN, llcm_count, write_llcm_tree

from dclnet.cli import main
from dclnet.data.sources import llcm
from dclnet.data.sources.synthetic import write_llcm
from dclnet.data.splits import ProtocolSettings, build_splits, needed_paths
from dclnet.errors import ConfigError, DataError
from dclnet.evaluation.protocols import save_features_npz

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


# --- the synthetic LLCM writer, end to end ----------------------------------------------------


def _identity_features(labels, noise: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    feats = np.eye(64, dtype=np.float32)[np.asarray(labels) % 64]
    feats += noise * rng.standard_normal(feats.shape).astype(np.float32)
    return feats / np.linalg.norm(feats, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "LLCM"
    assert main(["synth", "llcm", str(root), "--ids", "9", "--seed", "3"]) == 0
    return root


def test_synthetic_llcm_train_records_match_files(synth_root: Path) -> None:
    records = llcm.train_records(synth_root)
    files = {
        m: sorted(synth_root.glob(f"{d}/*/*.jpg")) for m, d in (("vis", "vis"), ("nir", "nir"))
    }
    assert len(records) == len(files["vis"]) + len(files["nir"])
    assert {r.path for r in records} == {
        p.relative_to(synth_root).as_posix() for fs in files.values() for p in fs
    }
    train_ids = sorted({int(r.path.split("/")[1]) for r in records})
    test_ids = llcm.read_test_ids(synth_root)
    assert test_ids == sorted(test_ids) and len(test_ids) == 3  # round(9 / 3)
    assert sorted(train_ids + test_ids) == list(range(1, 10))
    assert sorted({r.label for r in records}) == list(range(len(train_ids)))
    for r in records:
        assert r.label == train_ids.index(int(r.path.split("/")[1]))
        assert r.cam in llcm.CAMS[r.modality] and f"_c{r.cam:02d}_" in r.path
    # each person: at least two cameras per modality
    for modality in ("visible", "infrared"):
        for pid in train_ids:
            cams = {r.cam for r in records if r.modality == modality and f"/{pid:04d}/" in r.path}
            assert len(cams) >= 2


@pytest.mark.parametrize(
    "direction, query_dir, gallery_dir",
    [("i2v", "test_nir", "test_vis"), ("v2i", "test_vis", "test_nir")],
)
def test_synthetic_llcm_protocol_and_evaluate_features(
    synth_root: Path, tmp_path: Path, direction: str, query_dir: str, gallery_dir: str
) -> None:
    settings = ProtocolSettings("llcm", trials=3, direction=direction)
    splits = build_splits(settings, synth_root)
    query_files = sorted(synth_root.glob(f"{query_dir}/cam*/*/*.jpg"))
    gallery_folders = [d for d in synth_root.glob(f"{gallery_dir}/cam*/*") if d.is_dir()]
    assert query_files and gallery_folders
    for split in splits:
        assert len(split.query) == len(query_files)
        assert {r.path for r in split.query} == {
            p.relative_to(synth_root).as_posix() for p in query_files
        }
        assert len(split.gallery) == len(gallery_folders)
    assert not (synth_root / "test_nir" / "cam3").exists()
    by_path = {r.path: r for s in splits for r in (*s.query, *s.gallery)}
    paths = needed_paths(splits)
    labels = [by_path[p].label for p in paths]
    base = ["evaluate-features", "--dataset", "llcm", "--root", str(synth_root), "--trials", "3"]
    base += ["--direction", direction]
    results = {}
    for name, noise in (("random", None), ("identity", 0.0)):
        if noise is None:
            rng = np.random.default_rng(0)
            feats = rng.standard_normal((len(paths), 32)).astype(np.float32)
        else:
            feats = _identity_features(labels, noise)
        save_features_npz(tmp_path / f"{name}.npz", paths, feats)
        out = tmp_path / f"{name}.json"
        assert main([*base, "--features", str(tmp_path / f"{name}.npz"), "--json", str(out)]) == 0
        results[name] = json.loads(out.read_text())
    for data in results.values():
        assert data["protocol"] == {"dataset": "llcm", "trials": 3, "direction": direction}
        assert len(data["trials"]) == 3
        assert all(0.0 <= data["mean"][k] <= 100.0 for k in data["mean"])
    assert results["identity"]["mean"]["rank1"] == pytest.approx(100.0)
    assert results["identity"]["mean"]["mAP"] == pytest.approx(100.0)
    assert results["random"]["mean"]["mAP"] < 100.0


def test_synthetic_llcm_is_deterministic_and_guards_its_folder(tmp_path: Path) -> None:
    kwargs = {"num_ids": 4, "height": 32, "width": 16, "camera_presence": 0.0}
    first = write_llcm(tmp_path / "a", seed=1, **kwargs)
    second = write_llcm(tmp_path / "b", seed=1, **kwargs)
    files = sorted(p.relative_to(first).as_posix() for p in first.rglob("*") if p.is_file())
    assert files == sorted(
        p.relative_to(second).as_posix() for p in second.rglob("*") if p.is_file()
    )
    assert all((first / f).read_bytes() == (second / f).read_bytes() for f in files)
    # camera_presence 0: exactly two cameras per modality and person, yet no empty test camera
    records = llcm.train_records(first)
    for label in {r.label for r in records}:
        for modality in ("visible", "infrared"):
            mine = [r for r in records if r.label == label and r.modality == modality]
            assert len({r.cam for r in mine}) == 2
    llcm.list_llcm(first, llcm.read_test_ids(first))  # raises on an empty camera folder
    (first / "notes.txt").write_text("mine")
    _raises(str(first), write_llcm, first)
    write_llcm(first, overwrite=True, seed=2, **kwargs)
    assert (first / "notes.txt").read_text() == "mine"
    with pytest.raises(ConfigError, match="num_test_ids"):
        write_llcm(tmp_path / "c", num_ids=4, num_test_ids=4)
