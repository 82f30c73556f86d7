"""SYSU-MM01: raw layout → training records and per-trial query/gallery lists.

Layout as distributed::

    ROOT/cam1 … cam6/NNNN/MMMM.jpg   NNNN = 4-digit person id, MMMM = 4-digit image index
    ROOT/exp/{train,val,test}_id.txt one line of comma-separated person ids
    ROOT/exp/rand_perm_cam.mat       the data set's own gallery permutations (optional)

Protocol code works on a *listing* ``{(cam, pid): sorted file names}`` so that a tree on disk
and the in-memory synthetic set go through one code path. Only existing folders with at least
one image appear in a listing. Nothing here decodes an image.

Gallery samplers:

* ``seeded`` (default, the AGW-family rule): a ``random.Random(trial)`` instance — the same
  sequence as ``random.seed(trial)`` on the module — then for each test id ascending, for each
  gallery camera in order, if the (camera, id) folder exists: ``choice`` of its sorted file
  names (single-shot). Multi-shot, which the reference code never defined, is *our choice*:
  ``sample(sorted names, min(10, n))`` in the same loop order, kept in the order ``sample``
  returns.
* ``official``: ``exp/rand_perm_cam.mat``; for camera ``c``, person ``i`` (1-based) and trial
  ``t`` (0-based row) the first ``shots`` entries of row ``t`` are 1-based image numbers, i.e.
  files ``cam{c}/{i:04d}/{n:04d}.jpg``. As in the data set authors' MATLAB code, a person
  whose permutation array is empty has no gallery image in that camera, and a row shorter
  than ``shots`` gives what it has. Records come out in the same id-then-camera order as the
  seeded sampler.

Directions: infrared query → visible gallery (default, cameras [1, 2, 4, 5] all-search or
[1, 2] indoor); visible → infrared uses every image of the mode's visible cameras as query
and samples the gallery from cameras [3, 6] with the same loop (our choice, documented).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dclnet.data.records import INFRARED, MODALITIES, VISIBLE, Record
from dclnet.data.sources.common import (
    check_choice,
    check_trial_index,
    has_subdirectory,
    list_images,
    missing_people_error,
    person_folder,
    read_id_file,
    require_dirs,
    warn_shared_ids,
)
from dclnet.errors import DataError

VISIBLE_CAMS = (1, 2, 4, 5)
INFRARED_CAMS = (3, 6)
ALL_CAMS = (1, 2, 3, 4, 5, 6)
#: Visible cameras searched in each mode, in the order the gallery loop visits them.
MODE_CAMS = {"all": (1, 2, 4, 5), "indoor": (1, 2)}
SAMPLERS = ("seeded", "official")
SHOTS = (1, 10)
SPLITS = ("train", "val", "test")
RAND_PERM_FILE = "exp/rand_perm_cam.mat"
_LAYOUT = "cam1 … cam6/NNNN/*.jpg and exp/{train,val,test}_id.txt"

#: ``(cam, pid) -> sorted image file names``; only existing folders with at least one image.
Listing = dict[tuple[int, int], list[str]]


def record_path(cam: int, pid: int, name: str) -> str:
    """Root-relative path of an image: ``cam{cam}/{pid:04d}/{name}``."""
    return f"cam{cam}/{person_folder(pid)}/{name}"


def modality_of(cam: int) -> str:
    """Modality of a SYSU-MM01 camera (3 and 6 are infrared)."""
    return INFRARED if cam in INFRARED_CAMS else VISIBLE


def check_root(root: Path) -> Path:
    """Raise unless ``root`` holds ``cam1`` … ``cam6`` and ``exp``."""
    return require_dirs(root, [*(f"cam{c}" for c in ALL_CAMS), "exp"], "SYSU-MM01", _LAYOUT)


def read_ids(root: Path, split: str) -> list[int]:
    """Person ids of ``exp/{split}_id.txt`` in file order (``split``: train, val or test)."""
    check_choice("SYSU-MM01 split", split, SPLITS)
    root = check_root(root)
    return read_id_file(root / "exp" / f"{split}_id.txt")


def list_sysu(root: Path, pids: Iterable[int]) -> Listing:
    """List the image folders of ``pids`` in all six cameras (directory listings only).

    Raises:
        DataError: ``root`` is not a SYSU-MM01 root, a camera directory holds no person
            folder, or a person id has no image in any camera.
    """
    root = check_root(root)
    ids = sorted(set(pids))
    listing: Listing = {}
    for cam in ALL_CAMS:
        cam_dir = root / f"cam{cam}"
        if not has_subdirectory(cam_dir):
            raise DataError(f"{cam_dir}: camera directory is empty; expected person folders NNNN/")
        for pid in ids:
            folder = cam_dir / person_folder(pid)
            if folder.is_dir():
                names = list_images(folder)
                if names:
                    listing[(cam, pid)] = names
    found = {pid for _, pid in listing}
    missing = [pid for pid in ids if pid not in found]
    if missing:
        raise missing_people_error(root, missing, "cam1 … cam6/{pid}/ with images")
    return listing


def train_records_from_listing(listing: Listing, pids: Iterable[int]) -> list[Record]:
    """Training records of ``pids``: labels ``0..n-1`` in ascending id order.

    Order: visible records, then infrared; within each, ids ascending, cameras ascending,
    file names sorted.
    """
    ids = sorted(set(pids))
    label = {pid: index for index, pid in enumerate(ids)}
    records = []
    for modality, cams in ((VISIBLE, VISIBLE_CAMS), (INFRARED, INFRARED_CAMS)):
        for pid in ids:
            for cam in cams:
                for name in listing.get((cam, pid), ()):
                    records.append(Record(record_path(cam, pid, name), label[pid], cam, modality))
    return records


def train_records(root: Path) -> list[Record]:
    """Training records of SYSU-MM01: train ∪ val ids, labels re-indexed ``0..n-1``.

    Warns when ``exp/test_id.txt`` shares ids with the training lists.
    """
    pids = sorted(set(read_ids(root, "train")) | set(read_ids(root, "val")))
    test_file = Path(root) / "exp" / "test_id.txt"
    if test_file.is_file():
        where = f"{Path(root) / 'exp'} (train_id.txt, val_id.txt vs test_id.txt)"
        warn_shared_ids(pids, read_id_file(test_file), where)
    return train_records_from_listing(list_sysu(root, pids), pids)


def query_cams(modality: str, mode: str) -> tuple[int, ...]:
    """Query cameras: infrared → (3, 6) in both modes; visible → the mode's visible cameras."""
    check_choice("search mode", mode, tuple(MODE_CAMS))
    check_choice("query modality", modality, MODALITIES)
    return INFRARED_CAMS if modality == INFRARED else MODE_CAMS[mode]


def gallery_cams(modality: str, mode: str) -> tuple[int, ...]:
    """Gallery cameras, in loop order: visible → the mode's cameras; infrared → (3, 6)."""
    check_choice("search mode", mode, tuple(MODE_CAMS))
    check_choice("gallery modality", modality, MODALITIES)
    return MODE_CAMS[mode] if modality == VISIBLE else INFRARED_CAMS


def query_records(
    listing: Listing, test_ids: Iterable[int], *, modality: str = INFRARED, mode: str = "all"
) -> list[Record]:
    """Every image of the query cameras of the test ids (ids ascending, then cameras).

    Labels are the data set's own person ids.
    """
    cams = query_cams(modality, mode)
    return [
        Record(record_path(cam, pid, name), pid, cam, modality)
        for pid in sorted(set(test_ids))
        for cam in cams
        for name in listing.get((cam, pid), ())
    ]


def seeded_picks(
    listing: Listing, ids: Sequence[int], cams: Sequence[int], trial: int, shots: int
) -> list[tuple[int, int, str]]:
    """``(cam, pid, name)`` picked by the seeded rule (see the module docstring)."""
    rng = random.Random(trial)  # same stream as random.seed(trial), without global state
    picks = []
    for pid in ids:
        for cam in cams:
            names = listing.get((cam, pid))
            if not names:
                continue
            if shots == 1:
                chosen = [rng.choice(names)]
            else:
                chosen = rng.sample(names, min(shots, len(names)))
            picks.extend((cam, pid, name) for name in chosen)
    return picks


@dataclass(frozen=True)
class RandPerm:
    """The data set's ``exp/rand_perm_cam.mat``.

    Attributes:
        path: The file it was read from.
        cameras: ``camera -> per-person arrays``; entry ``i - 1`` belongs to person ``i`` and
            has shape ``trials x images`` (possibly empty) of 1-based image numbers.
    """

    path: Path
    cameras: dict[int, tuple[np.ndarray, ...]]


def _unwrap(value: object) -> np.ndarray:
    """Strip singleton object-array wrappers that SciPy puts around MATLAB cells."""
    array = np.asarray(value)
    while array.dtype == object and array.size == 1 and isinstance(array.flat[0], np.ndarray):
        array = array.flat[0]
    return array


def load_rand_perm(root: Path) -> RandPerm:
    """Read ``ROOT/exp/rand_perm_cam.mat`` (a MATLAB cell of per-person cells).

    SciPy loads a cell array as an object array (typically ``6 x 1`` of ``1 x N``); the exact
    singleton nesting is not relied upon.
    """
    import scipy.io  # imported here: only the official sampler needs it

    path = Path(root) / RAND_PERM_FILE
    if not path.is_file():
        raise DataError(
            f"{path}: not found; the official sampler needs the data set's rand_perm_cam.mat "
            "in exp/ (or use sampler 'seeded')"
        )
    try:
        content = scipy.io.loadmat(path)
    except Exception as error:  # SciPy raises several types for a corrupt file
        raise DataError(f"{path}: not a readable MATLAB file ({error})") from error
    keys = [key for key in content if not key.startswith("__")]
    key = "rand_perm_cam" if "rand_perm_cam" in content else (keys[0] if len(keys) == 1 else None)
    if key is None:
        raise DataError(f"{path}: no variable 'rand_perm_cam' (found {', '.join(keys) or 'none'})")
    outer = _unwrap(content[key])
    expected = "expected a cell array holding a cell of per-person arrays for each of 6 cameras"
    if outer.dtype != object or outer.size < len(ALL_CAMS):
        raise DataError(f"{path}: '{key}' has shape {outer.shape} ({outer.dtype}); {expected}")
    cameras = {}
    for cam, cell in zip(ALL_CAMS, outer.reshape(-1)):
        people = _unwrap(cell)
        if people.dtype != object:
            raise DataError(f"{path}: camera {cam} is {people.dtype}, not a cell array; {expected}")
        arrays = tuple(_unwrap(person) for person in people.reshape(-1))
        for number, array in enumerate(arrays, start=1):
            if array.dtype == object or array.ndim > 2:
                raise DataError(
                    f"{path}: camera {cam} person {number} has shape {array.shape} "
                    f"({array.dtype}); expected a numeric trials x images array"
                )
        cameras[cam] = tuple(np.atleast_2d(array) for array in arrays)
    return RandPerm(path, cameras)


def official_picks(
    perm: RandPerm,
    listing: Listing,
    ids: Sequence[int],
    cams: Sequence[int],
    trial: int,
    shots: int,
) -> list[tuple[int, int, str]]:
    """``(cam, pid, name)`` given by the official permutations (see the module docstring)."""
    root = perm.path.parent.parent
    picks = []
    for pid in ids:
        for cam in cams:
            people = perm.cameras[cam]
            if pid > len(people):
                raise DataError(
                    f"{perm.path}: camera {cam} lists {len(people)} persons; "
                    f"person {pid} has no entry"
                )
            rows = people[pid - 1]
            if rows.size == 0:
                continue
            if trial >= rows.shape[0]:
                raise DataError(
                    f"{perm.path}: trial {trial} requested but camera {cam} person {pid} has "
                    f"{rows.shape[0]} trials; choose a trial in 0..{rows.shape[0] - 1}"
                )
            present = set(listing.get((cam, pid), ()))
            for value in rows[trial, :shots]:
                if not (np.isfinite(value) and value == int(value) and value >= 1):
                    raise DataError(
                        f"{perm.path}: camera {cam} person {pid} trial {trial} holds {value}; "
                        "expected 1-based image numbers"
                    )
                name = f"{int(value):04d}.jpg"
                if name not in present:
                    raise DataError(
                        f"{root / record_path(cam, pid, name)}: image number {int(value)} of "
                        f"{perm.path.name} (camera {cam}, person {pid}, trial {trial}) has no file"
                    )
                picks.append((cam, pid, name))
    return picks


def gallery_records(
    listing: Listing,
    test_ids: Iterable[int],
    *,
    mode: str = "all",
    trial: int = 0,
    shots: int = 1,
    sampler: str = "seeded",
    modality: str = VISIBLE,
    root: Path | None = None,
    rand_perm: RandPerm | None = None,
) -> list[Record]:
    """Gallery of one trial (see the module docstring for both samplers).

    Args:
        listing: Listing of the test ids (:func:`list_sysu`).
        test_ids: Test person ids (any order; duplicates ignored).
        mode: ``"all"`` or ``"indoor"``.
        trial: Trial index ``>= 0`` (the seed, or the row of the official permutations).
        shots: 1 (single-shot) or 10 (multi-shot).
        sampler: ``"seeded"`` or ``"official"``.
        modality: Gallery modality: ``"visible"`` (default search direction) or
            ``"infrared"`` (visible → infrared search).
        root: Data-set root; the official sampler reads ``exp/rand_perm_cam.mat`` from it.
        rand_perm: Already-loaded permutations (:func:`load_rand_perm`), to read the file
            once for all trials.
    """
    cams = gallery_cams(modality, mode)
    check_choice("number of shots", shots, SHOTS)
    check_choice("gallery sampler", sampler, SAMPLERS)
    trial = check_trial_index(trial)
    ids = sorted(set(test_ids))
    if sampler == "seeded":
        picks = seeded_picks(listing, ids, cams, trial, shots)
    else:
        if rand_perm is None:
            if root is None:
                raise DataError(
                    f"the official sampler reads ROOT/{RAND_PERM_FILE}: give the SYSU-MM01 "
                    "root, or use sampler 'seeded'"
                )
            rand_perm = load_rand_perm(root)
        picks = official_picks(rand_perm, listing, ids, cams, trial, shots)
    return [Record(record_path(cam, pid, name), pid, cam, modality) for cam, pid, name in picks]
