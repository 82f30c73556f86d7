"""RegDB: raw layout → training and test records of one trial.

Layout::

    ROOT/Visible/<pid>/<file>.bmp
    ROOT/Thermal/<pid>/<file>.bmp
    ROOT/idx/{train,test}_{visible,thermal}_{t}.txt   "<relative path> <label>", t = 1..10

Each trial splits the 412 identities in half. Labels are kept as written (the train files
already hold ``0..205``; test files hold the person labels). Cameras: 1 for visible, 2 for
thermal. The paths listed must exist under ``ROOT``; their folders are listed, no image is
opened. Each image must be listed once per file: a repeated line is an error naming both
lines (de-duplicating would hide a damaged list; using it as is ranks the image twice).
"""

from __future__ import annotations

from pathlib import Path

from dclnet.data.records import INFRARED, VISIBLE, Record
from dclnet.data.sources.common import (
    check_choice,
    read_index_file,
    require_dirs,
    warn_shared_ids,
)
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


def person_folder(path: str) -> str:
    """The person folder of a root-relative image path (``Visible/<pid>/x.bmp`` → ``<pid>``)."""
    return path.rsplit("/", 2)[-2] if path.count("/") >= 1 else ""


def train_records(root: Path, trial: int) -> list[Record]:
    """Training records of ``trial`` (1..10): visible records, then thermal ones.

    Warns when a person folder of the training lists also appears in the trial's test lists
    (the training labels are re-indexed, so identities are compared by folder).
    """
    records = _records(root, "train", trial, "visible") + _records(root, "train", trial, "thermal")
    tests = [Path(root) / "idx" / f"test_{word}_{trial}.txt" for word in ("visible", "thermal")]
    if all(index.is_file() for index in tests):
        test = [e.path for index in tests for e in read_index_file(index, Path(root))]
        where = f"{Path(root) / 'idx'} (trial {trial}: train_* vs test_* person folders)"
        warn_shared_ids({person_folder(r.path) for r in records}, map(person_folder, test), where)
    return records


def test_records(root: Path, trial: int, modality: str) -> list[Record]:
    """Test records of ``trial`` (1..10) for ``modality`` (visible, thermal or infrared)."""
    return _records(root, "test", trial, modality)
