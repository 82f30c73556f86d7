"""LLCM: raw layout → training records and per-trial query/gallery lists.

Layout of the release::

    ROOT/idx/train_vis.txt, ROOT/idx/train_nir.txt   "<relative path> <label>"
    ROOT/idx/test_id.txt                             one line of comma-separated ids
    ROOT/test_vis/cam{1..9}/NNNN/*                   visible test images
    ROOT/test_nir/cam{1,2,4..9}/NNNN/*               near-infrared test images

Training labels from both files are re-indexed jointly to ``0..n-1`` in ascending order of
the labels as written. A training image's camera is read from its path: a directory named
``cam<k>`` (as in the test folders), or else LLCM's file-name convention
``<pid>_c<kk>_s<...>_f<...>_<vis|nir>.jpg`` (the ``c<kk>`` token). When both are present they
must agree; when neither is, the index line is reported.

Protocol: the query is every test image of the query modality (ids ascending, cameras in the
listed order, names sorted); the gallery of trial ``t`` is ``random.Random(t)`` — the stream
of ``random.seed(t)`` — with one ``choice`` per (id, camera) of the other modality, ids
ascending, cameras in the listed order. Unlike the reference code, whose visible → infrared
path swaps the roles of query and gallery, the visible → infrared direction here queries with
all visible images against a sampled infrared gallery.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable
from pathlib import Path

from dclnet.data.records import INFRARED, MODALITIES, VISIBLE, Record
from dclnet.data.sources.common import (
    check_choice,
    check_trial_index,
    has_subdirectory,
    list_images,
    missing_people_error,
    person_folder,
    read_id_file,
    read_index_file,
    require_dirs,
)
from dclnet.errors import DataError

#: Test cameras of each modality, in the order the gallery loop visits them.
CAMS = {VISIBLE: (1, 2, 3, 4, 5, 6, 7, 8, 9), INFRARED: (1, 2, 4, 5, 6, 7, 8, 9)}
TEST_DIRS = {VISIBLE: "test_vis", INFRARED: "test_nir"}
TRAIN_FILES = {VISIBLE: "train_vis.txt", INFRARED: "train_nir.txt"}
_LAYOUT = "idx/{train_vis,train_nir,test_id}.txt, test_vis/ and test_nir/"

#: ``(modality, cam, pid) -> sorted image file names``; only folders with images.
Listing = dict[tuple[str, int, int], list[str]]

_CAM_DIR = re.compile(r"cam(\d+)")
_CAM_TOKEN = re.compile(r"(?:^|_)c(\d+)(?=_|$)")


def check_root(root: Path) -> Path:
    """Raise unless ``root`` holds an ``idx`` directory."""
    return require_dirs(root, ["idx"], "LLCM", _LAYOUT)


def camera_from_path(path: str) -> int | None:
    """Camera of an image path, or ``None`` when the path does not say.

    Raises:
        DataError: the ``cam<k>`` directory and the ``_c<kk>_`` file-name token disagree.
    """
    *folders, name = path.split("/")
    from_dirs = {int(m.group(1)) for f in folders if (m := _CAM_DIR.fullmatch(f))}
    from_name = {int(c) for c in _CAM_TOKEN.findall(name.rsplit(".", 1)[0])}
    found = from_dirs or from_name
    if len(found) > 1 or (from_dirs and from_name and from_dirs != from_name):
        raise DataError(f"{path}: conflicting camera numbers {sorted(from_dirs | from_name)}")
    return found.pop() if found else None


def train_records(root: Path) -> list[Record]:
    """Training records: visible then infrared, in file order, labels re-indexed jointly."""
    root = check_root(root)
    entries = {m: (root / "idx" / TRAIN_FILES[m]) for m in MODALITIES}
    read = {m: read_index_file(index, root) for m, index in entries.items()}
    labels = sorted({entry.label for rows in read.values() for entry in rows})
    label = {value: index for index, value in enumerate(labels)}
    records = []
    for modality in MODALITIES:
        for entry in read[modality]:
            try:
                cam = camera_from_path(entry.path)
            except DataError as error:
                raise DataError(f"{entries[modality]}:{entry.line}: {error}") from None
            if cam is None:
                raise DataError(
                    f"{entries[modality]}:{entry.line}: no camera in {entry.path!r}; expected a "
                    "'cam<k>' folder or a file name like 0001_c01_s..._f..._vis.jpg"
                )
            records.append(Record(entry.path, label[entry.label], cam, modality))
    return records


def read_test_ids(root: Path) -> list[int]:
    """Person ids of ``idx/test_id.txt`` in file order."""
    return read_id_file(check_root(root) / "idx" / "test_id.txt")


def record_path(modality: str, cam: int, pid: int, name: str) -> str:
    """Root-relative path of a test image."""
    return f"{TEST_DIRS[modality]}/cam{cam}/{person_folder(pid)}/{name}"


def list_llcm(root: Path, pids: Iterable[int]) -> Listing:
    """List the test folders of ``pids`` in both modalities (directory listings only).

    Raises:
        DataError: a test or camera directory is missing or holds no person folder, or a
            person id has no image anywhere.
    """
    root = check_root(root)
    ids = sorted(set(pids))
    listing: Listing = {}
    for modality, cams in CAMS.items():
        for cam in cams:
            cam_dir = root / TEST_DIRS[modality] / f"cam{cam}"
            if not cam_dir.is_dir():
                raise DataError(f"{cam_dir}: no such directory; expected the LLCM layout {_LAYOUT}")
            if not has_subdirectory(cam_dir):
                raise DataError(
                    f"{cam_dir}: camera directory is empty; expected person folders NNNN/"
                )
            for pid in ids:
                folder = cam_dir / person_folder(pid)
                if folder.is_dir():
                    names = list_images(folder)
                    if names:
                        listing[(modality, cam, pid)] = names
    found = {pid for _, _, pid in listing}
    missing = [pid for pid in ids if pid not in found]
    if missing:
        raise missing_people_error(root, missing, "test_vis/ or test_nir/cam<k>/{pid}/ with images")
    return listing


def query_records(listing: Listing, test_ids: Iterable[int], modality: str) -> list[Record]:
    """Every test image of ``modality`` (ids ascending, cameras in order, names sorted)."""
    check_choice("query modality", modality, MODALITIES)
    return [
        Record(record_path(modality, cam, pid, name), pid, cam, modality)
        for pid in sorted(set(test_ids))
        for cam in CAMS[modality]
        for name in listing.get((modality, cam, pid), ())
    ]


def gallery_records(
    listing: Listing, test_ids: Iterable[int], modality: str, trial: int
) -> list[Record]:
    """Gallery of ``trial``: one seeded ``choice`` per (id, camera) of ``modality``."""
    check_choice("gallery modality", modality, MODALITIES)
    trial = check_trial_index(trial)
    rng = random.Random(trial)  # same stream as random.seed(trial), without global state
    records = []
    for pid in sorted(set(test_ids)):
        for cam in CAMS[modality]:
            names = listing.get((modality, cam, pid))
            if names:
                name = rng.choice(names)
                records.append(Record(record_path(modality, cam, pid, name), pid, cam, modality))
    return records
