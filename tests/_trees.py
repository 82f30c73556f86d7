"""Tiny raw data-set trees for the reader tests.

The readers never decode images, so the "images" are a few arbitrary bytes; only the names
and the folder layout matter.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io

FAKE_IMAGE = b"\xff\xd8not-decoded\xff\xd9"

# SYSU-MM01 fixture: train ids 1-3, val id 4, test ids 5-8 (the test file lists them out of
# order and repeats none). Some (cam, pid) folders are missing, one is empty.
SYSU_TRAIN, SYSU_VAL, SYSU_TEST = (3, 1, 2), (4,), (8, 5, 7, 6)
SYSU_MISSING = {(4, 5), (2, 6), (3, 7), (5, 3), (6, 1)}
SYSU_EMPTY = {(1, 8)}


def sysu_count(cam: int, pid: int) -> int:
    """Images of (cam, pid) in the SYSU fixture (0 when the folder is missing or empty)."""
    if (cam, pid) in SYSU_MISSING or (cam, pid) in SYSU_EMPTY:
        return 0
    return 1 + (3 * cam + 5 * pid) % 13  # 1..13: some folders hold more than 10 images


def write_ids(path: Path, ids: tuple[int, ...]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(",".join(str(i) for i in ids) + "\n", encoding="utf-8")


def write_sysu_tree(root: Path) -> Path:
    """Write the SYSU fixture under ``root``; return ``root``."""
    for cam in range(1, 7):
        (root / f"cam{cam}").mkdir(parents=True)
        for pid in (*SYSU_TRAIN, *SYSU_VAL, *SYSU_TEST):
            if (cam, pid) in SYSU_MISSING:
                continue
            folder = root / f"cam{cam}" / f"{pid:04d}"
            folder.mkdir()
            # Written in reverse so that the listing order on disk is not already sorted.
            for number in range(sysu_count(cam, pid), 0, -1):
                (folder / f"{number:04d}.jpg").write_bytes(FAKE_IMAGE)
    (root / "cam1" / "0002" / "Thumbs.db").write_bytes(b"junk")
    (root / "cam1" / "0002" / ".hidden.jpg").write_bytes(b"junk")
    write_ids(root / "exp" / "train_id.txt", SYSU_TRAIN)
    write_ids(root / "exp" / "val_id.txt", SYSU_VAL)
    write_ids(root / "exp" / "test_id.txt", SYSU_TEST)
    return root


def write_rand_perm(
    root: Path, n_people: int = 9, trials: int = 10, seed: int = 0, layout: str = "matlab"
) -> dict[tuple[int, int], np.ndarray]:
    """Write ``exp/rand_perm_cam.mat`` as MATLAB would save a cell of cells.

    ``layout="matlab"`` gives the shapes SciPy reads back from the real file (a ``6 x 1`` cell
    of ``1 x N`` cells of ``trials x images`` doubles); ``"transposed"`` uses ``1 x 6`` and
    ``N x 1`` cells. Persons absent from a camera get an empty ``trials x 0`` array.

    Returns:
        ``(cam, pid) -> trials x images`` permutations (1-based image numbers).
    """
    rng = np.random.default_rng(seed)
    perms = {}
    outer = np.empty((6, 1) if layout == "matlab" else (1, 6), dtype=object)
    for cam in range(1, 7):
        inner = np.empty((1, n_people) if layout == "matlab" else (n_people, 1), dtype=object)
        for pid in range(1, n_people + 1):
            count = sysu_count(cam, pid)
            rows = np.stack([rng.permutation(count) + 1.0 for _ in range(trials)])
            perms[(cam, pid)] = rows
            inner.flat[pid - 1] = rows
        outer.flat[cam - 1] = inner
    scipy.io.savemat(root / "exp" / "rand_perm_cam.mat", {"rand_perm_cam": outer})
    return perms


# RegDB fixture: ids 1..8, 3 visible + 3 thermal images each; trial t splits them in half.
REGDB_IDS = tuple(range(1, 9))
REGDB_PER_ID = 3


def regdb_split(trial: int) -> tuple[list[int], list[int]]:
    """(train ids, test ids) of a RegDB fixture trial."""
    order = np.random.default_rng(trial).permutation(REGDB_IDS).tolist()
    half = len(order) // 2
    return sorted(order[:half]), sorted(order[half:])


def write_regdb_tree(root: Path, trials: tuple[int, ...] = (1, 2)) -> Path:
    """Write the RegDB fixture: image folders and ``idx/*_{t}.txt`` for ``trials``."""
    for folder, tag in (("Visible", "v"), ("Thermal", "t")):
        for pid in REGDB_IDS:
            (root / folder / str(pid)).mkdir(parents=True)
            for k in range(REGDB_PER_ID):
                (root / folder / str(pid) / f"{tag}_{pid}_{k}.bmp").write_bytes(FAKE_IMAGE)
    (root / "idx").mkdir()
    for trial in trials:
        train, test = regdb_split(trial)
        for folder, tag, word in (("Visible", "v", "visible"), ("Thermal", "t", "thermal")):
            for split, ids, labels in (("train", train, range(len(train))), ("test", test, test)):
                lines = [
                    f"{folder}/{pid}/{tag}_{pid}_{k}.bmp {label}"
                    for pid, label in zip(ids, labels)
                    for k in range(REGDB_PER_ID)
                ]
                index = root / "idx" / f"{split}_{word}_{trial}.txt"
                index.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


# LLCM fixture: train ids 10, 12, 15 (labels written as the ids, re-indexed by the reader);
# test ids 1-4. Visible cameras 1-9, infrared 1, 2, 4-9 (its cam3 folder exists, empty).
LLCM_TRAIN = (15, 10, 12)
LLCM_TEST = (3, 1, 4, 2)
LLCM_CAMS = {"visible": tuple(range(1, 10)), "infrared": (1, 2, 4, 5, 6, 7, 8, 9)}
LLCM_MISSING = {("visible", 3, 2), ("infrared", 5, 1), ("infrared", 9, 4), ("visible", 9, 3)}


def llcm_count(modality: str, cam: int, pid: int) -> int:
    """Images of a test (modality, cam, pid) folder in the LLCM fixture."""
    if (modality, cam, pid) in LLCM_MISSING:
        return 0
    return 1 + (cam + 2 * pid + (modality == "infrared")) % 4


def _llcm_name(pid: int, cam: int, k: int, tag: str) -> str:
    return f"{pid:04d}_c{cam:02d}_s{100000 + k}_f{1000 + k}_{tag}.jpg"


def write_llcm_tree(root: Path) -> Path:
    """Write the LLCM fixture under ``root``."""
    (root / "idx").mkdir(parents=True)
    for modality, tag, short in (("visible", "vis", "vis"), ("infrared", "nir", "nir")):
        lines = []
        for pid in LLCM_TRAIN:
            (root / short / f"{pid:04d}").mkdir(parents=True)
            for cam in (1, 4) if modality == "visible" else (2, 7):
                name = _llcm_name(pid, cam, pid, tag)
                (root / short / f"{pid:04d}" / name).write_bytes(FAKE_IMAGE)
                lines.append(f"{short}/{pid:04d}/{name} {pid}")
        (root / "idx" / f"train_{tag}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        base = root / f"test_{tag}"
        for cam in LLCM_CAMS[modality]:
            for pid in LLCM_TEST:
                count = llcm_count(modality, cam, pid)
                if not count:
                    continue
                folder = base / f"cam{cam}" / f"{pid:04d}"
                folder.mkdir(parents=True)
                for k in range(count):
                    (folder / _llcm_name(pid, cam, k, tag)).write_bytes(FAKE_IMAGE)
    (root / "test_nir" / "cam3").mkdir()
    write_ids(root / "idx" / "test_id.txt", LLCM_TEST)
    return root
