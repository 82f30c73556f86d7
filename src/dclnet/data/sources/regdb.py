"""RegDB: raw layout → training and test records of one trial.

Layout::

    ROOT/Visible/<pid>/<file>.bmp
    ROOT/Thermal/<pid>/<file>.bmp
    ROOT/idx/{train,test}_{visible,thermal}_{t}.txt   "<relative path> <label>", t = 1..10

Each trial splits the 412 identities in half. Labels are kept as written (the train files
already hold ``0..205``; test files hold the person labels). Cameras: 1 for visible, 2 for
thermal. The paths listed must exist under ``ROOT``; their folders are listed, no image is
opened.
"""

from __future__ import annotations

from pathlib import Path

from dclnet.data.records import INFRARED, VISIBLE, Record
from dclnet.data.sources.common import check_choice, read_index_file, require_dirs
from dclnet.errors import DataError

TRIALS = tuple(range(1, 11))
#: Accepted modality names → (file-name word, record modality, camera).
MODALITY_NAMES = {
    "visible": ("visible", VISIBLE, 1),
    "thermal": ("thermal", INFRARED, 2),
    "infrared": ("thermal", INFRARED, 2),
}
_LAYOUT = "idx/{train,test}_{visible,thermal}_{t}.txt with paths relative to the root"


def check_root(root: Path) -> Path:
    """Raise unless ``root`` holds an ``idx`` directory."""
    return require_dirs(root, ["idx"], "RegDB", _LAYOUT)


def check_trial(trial: int) -> int:
    """Return ``trial`` if it is one of RegDB's splits 1..10."""
    if trial not in TRIALS:
        raise DataError(f"unknown RegDB trial {trial!r}; choose one of 1..10")
    return trial


def _records(root: Path, split: str, trial: int, modality: str) -> list[Record]:
    check_choice("RegDB modality", modality, tuple(MODALITY_NAMES))
    word, record_modality, cam = MODALITY_NAMES[modality]
    root = check_root(root)
    index = root / "idx" / f"{split}_{word}_{check_trial(trial)}.txt"
    return [
        Record(entry.path, entry.label, cam, record_modality)
        for entry in read_index_file(index, root)
    ]


def train_records(root: Path, trial: int) -> list[Record]:
    """Training records of ``trial`` (1..10): visible records, then thermal ones."""
    return _records(root, "train", trial, "visible") + _records(root, "train", trial, "thermal")


def test_records(root: Path, trial: int, modality: str) -> list[Record]:
    """Test records of ``trial`` (1..10) for ``modality`` (visible, thermal or infrared)."""
    return _records(root, "test", trial, modality)
