"""Helpers shared by the raw-layout readers: id files, index files and directory listings.

Everything here lists directories or reads small text files; nothing decodes an image. Every
problem is raised as a one-line :class:`~dclnet.errors.DataError` naming the path and what
was expected there.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from dclnet.errors import DataError

#: File-name suffixes that count as images when a folder is listed (case-insensitive).
#: Anything else (``Thumbs.db``, ``.DS_Store``, notes) is ignored rather than handed to the
#: image decoder, which is where the reference code would fail on it.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")

_T = TypeVar("_T")


@dataclass(frozen=True)
class IndexEntry:
    """One line of an index file ``"<relative path> <label>"``.

    Attributes:
        path: Path relative to the data-set root, with ``/`` separators.
        label: Label as written in the file.
        line: 1-based line number, for error messages.
    """

    path: str
    label: int
    line: int


def check_choice(name: str, value: _T, choices: Sequence[_T]) -> _T:
    """Return ``value`` if it is one of ``choices``, else raise an error listing them."""
    if value not in choices:
        listed = ", ".join(str(c) for c in choices)
        raise DataError(f"unknown {name} {value!r}; choose one of {listed}")
    return value


def check_trial_index(trial: object) -> int:
    """Return a gallery trial (the seed / permutation row) as an ``int >= 0``, else raise."""
    if isinstance(trial, bool) or not isinstance(trial, (int, np.integer)) or trial < 0:
        raise DataError(f"invalid gallery trial {trial!r}; expected an integer >= 0")
    return int(trial)


def require_dirs(root: Path, names: Iterable[str], dataset: str, expected: str) -> Path:
    """Check that ``root`` is a directory holding the sub-directories ``names``.

    Args:
        root: Claimed data-set root.
        names: Sub-directories that must exist inside it.
        dataset: Data-set name for the message (``"SYSU-MM01"``).
        expected: Short description of the expected layout for the message.

    Returns:
        ``root`` as a :class:`Path`.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such directory; expected the {dataset} root ({expected})")
    for name in names:
        if not (root / name).is_dir():
            raise DataError(
                f"{root} is not a {dataset} root: {root / name} is missing; expected {expected}"
            )
    return root


def read_id_file(path: Path) -> list[int]:
    """Read person ids separated by commas (and/or white space), in file order.

    SYSU-MM01's ``exp/*_id.txt`` and LLCM's ``idx/test_id.txt`` hold one line such as
    ``1,2,4,5``.
    """
    path = Path(path)
    expected = "comma-separated person ids such as 1,2,4"
    if not path.is_file():
        raise DataError(f"{path}: file not found; expected {expected}")
    ids: list[int] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        for token in re.split(r"[,\s]+", line.strip()):
            if not token:
                continue
            if not token.isdigit():
                raise DataError(
                    f"{path}:{number}: {token!r} is not a person id; expected {expected}"
                )
            ids.append(int(token))
    if not ids:
        raise DataError(f"{path}: no person ids; expected {expected}")
    return ids


def _clean_relative(raw: str) -> str:
    path = raw.replace("\\", "/")
    while path.startswith("./"):
        path = path[2:]
    return path


def read_index_file(path: Path, root: Path) -> list[IndexEntry]:
    """Read an index file of ``"<relative path> <label>"`` lines and check the paths exist.

    The label is the last white-space separated field, so paths with spaces survive. Blank
    lines are skipped. Existence is checked by listing each image's folder once (no image is
    opened).

    Args:
        path: The index file.
        root: Data-set root that the paths are relative to.
    """
    path, root = Path(path), Path(root)
    if not path.is_file():
        raise DataError(
            f"{path}: file not found; expected lines '<path relative to {root}> <label>'"
        )
    entries: list[IndexEntry] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.strip().rsplit(None, 1)
        if len(fields) != 2 or not re.fullmatch(r"-?\d+", fields[1]):
            raise DataError(
                f"{path}:{number}: malformed line {line.strip()!r}; expected '<path> <label>'"
            )
        relative = _clean_relative(fields[0])
        if relative.startswith("/"):
            raise DataError(
                f"{path}:{number}: {fields[0]!r} is absolute; expected a path relative to {root}"
            )
        entries.append(IndexEntry(relative, int(fields[1]), number))
    if not entries:
        raise DataError(f"{path}: no entries; expected lines '<path relative to {root}> <label>'")
    _check_entries_exist(path, root, entries)
    return entries


def _check_entries_exist(index: Path, root: Path, entries: list[IndexEntry]) -> None:
    listed: dict[str, set[str]] = {}
    for entry in entries:
        folder, _, name = entry.path.rpartition("/")
        if folder not in listed:
            directory = root / folder
            listed[folder] = set(os.listdir(directory)) if directory.is_dir() else set()
        if name not in listed[folder]:
            missing = sum(1 for e in entries if not (root / e.path).is_file())
            raise DataError(
                f"{index}:{entry.line}: {root / entry.path} does not exist ({missing} of "
                f"{len(entries)} listed images missing); paths must be relative to {root}"
            )


def list_images(directory: Path) -> list[str]:
    """Sorted names of the image files directly inside ``directory`` (hidden files skipped)."""
    with os.scandir(directory) as scan:
        names = [
            entry.name
            for entry in scan
            if entry.is_file()
            and not entry.name.startswith(".")
            and entry.name.lower().endswith(IMAGE_SUFFIXES)
        ]
    return sorted(names)


def has_subdirectory(directory: Path) -> bool:
    """Whether ``directory`` contains at least one (non-hidden) sub-directory."""
    with os.scandir(directory) as scan:
        return any(entry.is_dir() and not entry.name.startswith(".") for entry in scan)


def person_folder(pid: int) -> str:
    """Folder name of a person id in SYSU-MM01 and LLCM: four digits, zero-padded."""
    return f"{pid:04d}"


def missing_people_error(root: Path, missing: Sequence[int], where: str) -> DataError:
    """One-line error for person ids that have no image folder anywhere under ``root``."""
    first = missing[0]
    more = f" (and {len(missing) - 1} more ids)" if len(missing) > 1 else ""
    return DataError(
        f"{root}: person id {first}{more} has no image folder in any camera; expected "
        f"{where.format(pid=person_folder(first))}"
    )
