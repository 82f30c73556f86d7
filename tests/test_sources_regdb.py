"""RegDB reader and protocol split on a tiny tree in tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest
from _trees import REGDB_PER_ID, regdb_split, write_regdb_tree

from dclnet.data.sources import regdb
from dclnet.data.splits import ProtocolSettings, build_splits, needed_paths
from dclnet.errors import ConfigError, DataError


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return write_regdb_tree(tmp_path / "RegDB")


@pytest.mark.parametrize("trial", [1, 2])
def test_train_records_per_trial(root: Path, trial: int) -> None:
    train_ids, _ = regdb_split(trial)
    records = regdb.train_records(root, trial)
    assert len(records) == 2 * REGDB_PER_ID * len(train_ids)
    half = len(records) // 2
    visible, thermal = records[:half], records[half:]
    assert {(r.cam, r.modality) for r in visible} == {(1, "visible")}
    assert {(r.cam, r.modality) for r in thermal} == {(2, "infrared")}
    assert all(r.path.startswith("Visible/") for r in visible)
    assert all(r.path.startswith("Thermal/") for r in thermal)
    # labels as written: 0..n-1 in the fixture's train files, same label for the same person
    for records_of in (visible, thermal):
        by_person = {int(r.path.split("/")[1]): r.label for r in records_of}
        assert by_person == {pid: i for i, pid in enumerate(train_ids)}
    assert all((root / r.path).is_file() for r in records)


def test_test_records_keep_written_labels_and_trials_differ(root: Path) -> None:
    for trial in (1, 2):
        _, test_ids = regdb_split(trial)
        thermal = regdb.test_records(root, trial, "thermal")
        assert sorted({r.label for r in thermal}) == test_ids
        assert regdb.test_records(root, trial, "infrared") == thermal
    assert regdb_split(1)[1] != regdb_split(2)[1]


@pytest.mark.parametrize("direction, query_dir", [("v2t", "Visible/"), ("t2v", "Thermal/")])
def test_build_splits_directions(root: Path, direction: str, query_dir: str) -> None:
    settings = ProtocolSettings("regdb", trial=2, direction=direction)
    (split,) = build_splits(settings, root)
    assert split.rule == "regdb" and split.trial == 2
    assert all(r.path.startswith(query_dir) for r in split.query)
    assert not any(r.path.startswith(query_dir) for r in split.gallery)
    assert len(split.query) == len(split.gallery) == 4 * REGDB_PER_ID
    assert {r.label for r in split.query} == {r.label for r in split.gallery}
    assert len(needed_paths([split])) == 2 * 4 * REGDB_PER_ID
    assert settings.as_dict() == {"dataset": "regdb", "trial": 2, "direction": direction}


def test_default_direction_is_visible_to_thermal() -> None:
    assert ProtocolSettings("regdb", trial=1).direction == "v2t"


def test_index_paths_with_backslashes_and_blank_lines(root: Path) -> None:
    index = root / "idx" / "test_visible_1.txt"
    lines = index.read_text().splitlines()
    index.write_text("\n".join(["", lines[0].replace("/", "\\"), "", *lines[1:]]) + "\n")
    records = regdb.test_records(root, 1, "visible")
    assert len(records) == len(lines) and "\\" not in records[0].path


# --- errors --------------------------------------------------------------------------------


def _raises(match: str, call, *args) -> str:
    with pytest.raises(DataError) as caught:
        call(*args)
    message = str(caught.value)
    assert "\n" not in message and match in message, message
    return message


def test_error_wrong_root(tmp_path: Path) -> None:
    (tmp_path / "Visible").mkdir()
    message = _raises(str(tmp_path / "idx"), regdb.train_records, tmp_path, 1)
    assert "RegDB" in message


def test_error_missing_index_file(root: Path) -> None:
    _raises(str(root / "idx" / "train_visible_3.txt"), regdb.train_records, root, 3)


def test_error_malformed_line(root: Path) -> None:
    index = root / "idx" / "test_thermal_1.txt"
    lines = index.read_text().splitlines()
    lines[2] = "Thermal/1/t_1_0.bmp label"
    index.write_text("\n".join(lines) + "\n")
    _raises(f"{index}:3: malformed line", regdb.test_records, root, 1, "thermal")


def test_error_missing_image(root: Path) -> None:
    _, test_ids = regdb_split(1)
    image = root / "Visible" / str(test_ids[1]) / f"v_{test_ids[1]}_2.bmp"
    image.unlink()
    message = _raises(str(image), regdb.test_records, root, 1, "visible")
    assert f"{root / 'idx' / 'test_visible_1.txt'}:" in message


def test_error_unknown_modality_and_trial(root: Path) -> None:
    _raises("visible, thermal, infrared", regdb.test_records, root, 1, "rgb")
    _raises("1..10", regdb.train_records, root, 11)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({}, ["trial None", "1, 2, 3"]),
        ({"trial": 11}, ["trial 11", "10"]),
        ({"trial": 1, "direction": "i2v"}, ["direction", "v2t, t2v"]),
        ({"trial": 1, "sampler": "official"}, ["sampler", "seeded"]),
    ],
)
def test_settings_errors(kwargs: dict, words: list[str]) -> None:
    with pytest.raises(ConfigError) as caught:
        ProtocolSettings("regdb", **kwargs)
    assert all(word in str(caught.value) for word in words), str(caught.value)
