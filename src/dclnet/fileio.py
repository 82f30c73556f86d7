"""Writing output files: path checks, atomic replacement with the umask's modes, full disks.

Every file dclnet writes goes through :func:`atomic_path` (or :func:`atomic_write` on top of
it), so that

* an output path naming a directory, or lying under a file, is one clear error
  (``runs/x.json: is a directory``) before anything is written;
* a reader never sees half a file: the data goes to a hidden ``.<name>.*.tmp`` next to the
  target and is renamed over it (run folders and caches remove such leftovers of a crash);
* the file gets the mode any other program would give it (``0o666 & ~umask``), not the
  ``0o600`` of :func:`tempfile.mkstemp`;
* a full disk is reported as one line naming the folder, also when the writer (``torch.save``)
  hides the ``OSError`` behind its own error.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from dclnet.errors import OutputError

_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def current_umask() -> int:
    """The process's umask, read without changing it where the system allows."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)  # no /proc (macOS, old kernels): the only portable way to read it
    os.umask(mask)
    return mask


def file_mode() -> int:
    """Mode of a new file under the current umask (``0o644`` for the usual ``022``)."""
    return 0o666 & ~current_umask()


def dir_mode() -> int:
    """Mode of a new directory under the current umask (``0o755`` for the usual ``022``)."""
    return 0o777 & ~current_umask()


def _check_parents(path: Path) -> None:
    for parent in path.parents:  # nearest first: the first that exists must be a folder
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(f"{path}: cannot be written, {parent} is a file")
            return


def check_output_file(path: str | Path) -> Path:
    """Raise unless ``path`` can become a file: not a directory, no file among its parents."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a directory; give a file name")
    _check_parents(path)
    return path


def check_output_dir(path: str | Path) -> Path:
    """Raise unless ``path`` is, or can become, a directory (no file in the way)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path}: is a file; give a folder")
    _check_parents(path)
    return path


def disk_full_cause(exc: BaseException) -> OSError | None:
    """The ``ENOSPC``/``EDQUOT`` error behind ``exc`` (itself, its cause or context), if any.

    ``torch.save`` reports a failed write as ``RuntimeError: ... unexpected pos``; the
    ``OSError`` of the file's ``write`` is its context.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _DISK_FULL:
            return current
        current = current.__cause__ or current.__context__
    return None


def _free_bytes(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def disk_full_error(folder: Path, what: str) -> OutputError:
    """The one-line error for a full disk while writing ``what`` into ``folder``."""
    free = _free_bytes(folder)
    left = f" ({free} bytes free)" if free is not None else ""
    return OutputError(
        f"{folder}: no space left on the device while writing {what}{left}; "
        "free some space or write elsewhere"
    )


def require_free_space(folder: Path, needed: int, what: str, hint: str) -> None:
    """Raise unless ``folder``'s file system has ``needed`` bytes free.

    Needed before writing through a memory map: a full disk there is a ``SIGBUS`` that kills
    the process without a message.
    """
    free = _free_bytes(folder)
    if free is not None and free < needed:
        raise OutputError(
            f"{folder}: {what} needs {needed} bytes but only {free} are free on its disk; {hint}"
        )


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path next to ``path`` that replaces it when the block succeeds.

    For writers that want a file name (``torch.onnx.export``, ``np.savez``); the temporary
    file already exists (empty, with the umask's mode). On any error it is removed and
    ``path`` is left as it was; a full disk becomes :class:`~dclnet.errors.OutputError`.
    """
    path = check_output_file(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        with contextlib.suppress(OSError):  # some file systems (SMB, FUSE) refuse modes
            os.chmod(tmp, file_mode())
        yield tmp
        os.replace(tmp, path)
    except Exception as exc:
        if disk_full_cause(exc) is not None:
            raise disk_full_error(path.parent, path.name) from exc
        raise
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_write(
    path: str | Path, mode: str = "w", *, fsync: bool = False, encoding: str | None = None
) -> Iterator[IO[Any]]:
    """An open file that replaces ``path`` atomically when the block succeeds.

    Args:
        path: The file to write.
        mode: ``"w"`` (text) or ``"wb"``.
        fsync: Flush the data to the disk before the rename (checkpoints, cache metadata).
        encoding: Text encoding (text mode only; default UTF-8).
    """
    if "b" not in mode and encoding is None:
        encoding = "utf-8"
    with atomic_path(path) as tmp:
        with open(tmp, mode, encoding=encoding) as fh:
            yield fh
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
