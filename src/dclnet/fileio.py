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
  hides the ``OSError`` behind its own error;
* a symbolic link at an output path is refused, never written through (a planted link must
  not make dclnet overwrite or append to its target).

Files that are appended to or locked (a run's ``log.txt``, lock files) are opened with
:func:`open_no_follow`; :func:`file_lock` is the one advisory lock (``flock``) the run folders
and the search indexes use.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from dclnet.errors import OutputError

_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)  # 0 where the platform lacks it (the check stays)
logger = logging.getLogger(__name__)


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


def refuse_link(path: str | Path) -> Path:
    """Raise unless ``path`` is not a symbolic link (dclnet never writes through links)."""
    path = Path(path)
    if path.is_symlink():
        raise OutputError(
            f"{path}: is a symbolic link (to {os.readlink(path)}); dclnet does not write "
            "through links: remove the link or give another path"
        )
    return path


def open_no_follow(path: str | Path, flags: int) -> int:
    """``os.open(path, flags)`` that refuses a symbolic link at ``path`` (one-line error).

    Args:
        path: The file.
        flags: ``os.O_*`` flags (``O_CREAT`` files get the umask's mode).

    Returns:
        The file descriptor.
    """
    path = refuse_link(path)
    try:
        return os.open(path, flags | _NOFOLLOW, 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # made a link between the check and the open
            refuse_link(path)
        raise


@contextlib.contextmanager
def file_lock(path: str | Path, *, blocking: bool = True) -> Iterator[bool]:
    """Hold an exclusive advisory lock (``flock``) on the file ``path`` for the block.

    The file is created if needed (never through a link) and deleted on release; a lock
    taken on a file that its previous holder just deleted counts as not taken (the inode
    check), so two holders never overlap. ``flock`` locks belong to the open file, so two
    threads of one process that each enter this block exclude each other too.

    Args:
        path: The lock file.
        blocking: Wait for the lock; else yield ``False`` at once when another holds it.

    Yields:
        Whether the lock is held (``True`` also where locks are unavailable: no ``fcntl``, a
        file system that refuses them; then nothing is guarded, as logged).
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on POSIX
        yield True
        return
    path = Path(path)
    while True:
        fd = open_no_follow(path, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            yield False
            return
        except OSError as exc:  # a file system without locks
            os.close(fd)
            logger.warning("cannot lock %s (%s); not guarding against a second writer", path, exc)
            yield True
            return
        try:
            same = os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # its holder deleted it meanwhile: lock the new file instead
    try:
        yield True
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)


def check_output_file(path: str | Path) -> Path:
    """Raise unless ``path`` can become a file: not a directory or a link, no file above it."""
    path = refuse_link(path)
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
    path: str | Path,
    mode: str = "w",
    *,
    fsync: bool = False,
    encoding: str | None = None,
    newline: str | None = None,
) -> Iterator[IO[Any]]:
    """An open file that replaces ``path`` atomically when the block succeeds.

    Args:
        path: The file to write.
        mode: ``"w"`` (text) or ``"wb"``.
        fsync: Flush the data to the disk before the rename (checkpoints, cache metadata).
        encoding: Text encoding (text mode only; default UTF-8).
        newline: Text mode: as for :func:`open` (``""`` for the :mod:`csv` module).
    """
    if "b" not in mode and encoding is None:
        encoding = "utf-8"
    extra = {"newline": newline} if newline is not None else {}
    with atomic_path(path) as tmp:
        with open(tmp, mode, encoding=encoding, **extra) as fh:
            yield fh
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
