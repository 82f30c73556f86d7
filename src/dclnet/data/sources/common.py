"""Helpers shared by the raw-layout readers: id files, index files and directory listings.

Everything here lists directories or reads small text files; nothing decodes an image. Every
problem is raised as a one-line :class:`~dclnet.errors.DataError` naming the path and what
was expected there.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from dclnet.data.imageio import special_file_reason
from dclnet.errors import DataError

#: File-name suffixes that count as images when a folder is listed (case-insensitive).
#: Anything else (``Thumbs.db``, ``.DS_Store``, notes) is ignored rather than handed to the
#: image decoder, which is where the reference code would fail on it.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")

_T = TypeVar("_T")
logger = logging.getLogger(__name__)


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


def read_text_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 text file (a leading byte-order mark is allowed).

    Raises:
        DataError: the file is not UTF-8, naming the line and the offending byte.
    """
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig").splitlines()
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise DataError(
            f"{path}:{line}: byte {data[exc.start]:#04x} at column {column} is not UTF-8 text; "
            "save the file as UTF-8 (or plain ASCII)"
        ) from None


def is_ascii_int(text: str, *, signed: bool = False) -> bool:
    """Whether ``text`` is a decimal integer in ASCII digits (``str.isdigit`` also accepts
    ``²`` and other digits that ``int`` rejects or reads differently)."""
    return re.fullmatch(r"-?[0-9]+" if signed else r"[0-9]+", text) is not None


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
    for number, line in enumerate(read_text_lines(path), start=1):
        for token in re.split(r"[,\s]+", line.strip()):
            if not token:
                continue
            if not is_ascii_int(token):
                raise DataError(
                    f"{path}:{number}: {token!r} is not a person id; expected {expected}"
                )
            ids.append(int(token))
    if not ids:
        raise DataError(f"{path}: no person ids; expected {expected}")
    return ids


def escapes_root(relative: str) -> bool:
    """Whether a ``/``-separated path meant to be relative to a root points outside it.

    Absolute paths and paths whose ``..`` components climb above the root do; the check is
    on the text (symbolic links inside the root are followed as usual: a data set may be
    linked in from another disk).
    """
    path = relative.replace("\\", "/")
    if path.startswith("/"):
        return True
    depth = 0
    for part in path.split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        elif part not in ("", "."):
            depth += 1
    return False


def _clean_relative(raw: str) -> str:
    path = raw.replace("\\", "/")
    while path.startswith("./"):
        path = path[2:]
    return path


def read_index_file(path: Path, root: Path) -> list[IndexEntry]:
    """Read an index file of ``"<relative path> <label>"`` lines and check the paths exist.

    The label is the last white-space separated field, so paths with spaces survive. Blank
    lines are skipped. Existence is checked by listing each image's folder once (no image is
    opened). An image listed twice is an error, not silently used twice or de-duplicated: the
    protocols list each image once, and a repeated line (a bad merge or edit) changes the
    results, e.g. a RegDB gallery with repeated images ranks them twice; the file needs a look.

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
    first_line: dict[str, int] = {}
    for number, line in enumerate(read_text_lines(path), start=1):
        if not line.strip():
            continue
        fields = line.strip().rsplit(None, 1)
        if len(fields) != 2 or not is_ascii_int(fields[1], signed=True):
            raise DataError(
                f"{path}:{number}: malformed line {line.strip()!r}; expected '<path> <label>'"
            )
        relative = _clean_relative(fields[0])
        if relative.startswith("/"):
            raise DataError(
                f"{path}:{number}: {fields[0]!r} is absolute; expected a path relative to {root}"
            )
        if escapes_root(relative):
            raise DataError(
                f"{path}:{number}: {fields[0]!r} lies outside the root {root} (its '..' climb "
                "above it); list only images below the root"
            )
        if relative in first_line:
            raise DataError(
                f"{path}:{number}: {relative} is listed again (first on line "
                f"{first_line[relative]}); each image must be listed once: remove the repeat"
            )
        first_line[relative] = number
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


def _image_entry_state(entry: os.DirEntry) -> str:
    """``"image"``, ``"broken"`` (an image name on a dangling link or a link loop),
    ``"special"`` (an image name on a FIFO, device or socket) or ``""``."""
    if entry.name.startswith(".") or not entry.name.lower().endswith(IMAGE_SUFFIXES):
        return ""
    try:
        if entry.is_file():
            return "image"
        if entry.is_symlink() and not os.path.exists(entry.path):
            return "broken"
        return "" if entry.is_dir() else "special"
    except OSError:  # a symbolic-link loop cannot be followed
        return "broken"


def list_images(directory: Path) -> list[str]:
    """Sorted names of the image files directly inside ``directory`` (hidden files skipped).

    Raises:
        DataError: an image name is a broken symbolic link (dangling, or a loop) or not a
            regular file (a FIFO, a link to ``/dev/zero``): leaving it out would silently
            change the protocol lists; or an image's file name is not valid UTF-8 (it could
            not be written to a list, cache or results file).
    """
    with os.scandir(directory) as scan:
        states = {entry.name: _image_entry_state(entry) for entry in scan}
    broken = sorted(name for name, state in states.items() if state == "broken")
    if broken:
        link = Path(directory) / broken[0]
        more = f" (and {len(broken) - 1} more)" if len(broken) > 1 else ""
        raise DataError(
            f"{link}{more}: broken symbolic link (to {os.readlink(link)!r}); restore its "
            "target or remove it"
        )
    special = sorted(name for name, state in states.items() if state == "special")
    if special:
        path = Path(directory) / special[0]
        more = f" (and {len(special) - 1} more)" if len(special) > 1 else ""
        raise DataError(f"{path}{more}: {special_file_reason(path)}")
    names = [name for name, state in states.items() if state == "image"]
    for name in names:
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raw = os.fsencode(name)
            raise DataError(
                f"{directory}: file name {raw!r} is not valid UTF-8; rename the file"
            ) from None
    return sorted(names)


def has_subdirectory(directory: Path) -> bool:
    """Whether ``directory`` contains at least one (non-hidden) sub-directory."""
    with os.scandir(directory) as scan:
        return any(_is_folder(entry) and not entry.name.startswith(".") for entry in scan)


def _is_folder(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:  # a symbolic-link loop
        return False


def person_folder(pid: int) -> str:
    """Folder name of a person id in SYSU-MM01 and LLCM: four digits, zero-padded."""
    return f"{pid:04d}"


def warn_shared_ids(
    train_ids: Iterable[int | str], test_ids: Iterable[int | str], where: str
) -> None:
    """Warn (once per call) when test identities are also training identities.

    Training on test people makes every test result optimistic; the lists say which is which,
    so an overlap is a mistake in them (or a deliberate experiment, hence not an error).
    """
    shared = sorted(set(train_ids) & set(test_ids))
    if shared:
        shown = ", ".join(map(str, shared[:10])) + (", ..." if len(shared) > 10 else "")
        logger.warning(
            "%d test identities are also training identities (%s) in %s: test results will be "
            "optimistic; check the train and test lists",
            len(shared),
            shown,
            where,
        )


def missing_people_error(root: Path, missing: Sequence[int], where: str) -> DataError:
    """One-line error for person ids that have no image folder anywhere under ``root``."""
    first = missing[0]
    more = f" (and {len(missing) - 1} more ids)" if len(missing) > 1 else ""
    return DataError(
        f"{root}: person id {first}{more} has no image folder in any camera; expected "
        f"{where.format(pid=person_folder(first))}"
    )
