"""``dclnet cache list | clear``: what the on-disk caches hold, and removing them.

The cache directory (``--cache-dir``, default :func:`~dclnet.data.cache.default_cache_dir`)
holds one folder per cached image list (``<name>-<H>x<W>-<key>/`` with ``images.npy`` and
``meta.json``, see :mod:`dclnet.data.cache`) and ``pretrained/`` with synthetic-pretrained
backbone files (``*.pt``, see :mod:`dclnet.engine.synthetic_pretrain`). Each image folder and
each file in ``pretrained/`` is one *entry*, named by its path relative to the cache
directory (``sysu-train-288x144-0123456789abcdef``, ``pretrained/synthetic-...pt``).

Deleting is confined to what dclnet wrote: an image folder is recognised by its
``meta.json`` (the cache's own metadata) or, while being built, by its name
(``<name>-<H>x<W>-<16 hex digits>``), a pretrained entry by its ``.pt`` name; anything else
(``other``) is listed but never deleted, and a folder holding nothing dclnet wrote is refused
as "not a dclnet cache". Every entry is checked to lie directly inside the cache directory
after resolving, a symbolic link is removed as a link (never followed) and refused when it
points outside, and an image folder whose build lock is held by another process is skipped.
Without ``--yes``, ``clear`` only prints what it would delete.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import stat
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from dclnet.errors import DclnetError

PRETRAINED = "pretrained"
_META = "meta.json"
_LOCK = ".lock"
# Folder names cache.py gives image caches: <safe name>-<H>x<W>-<first 16 hex of the key hash>.
_IMAGE_FOLDER = re.compile(r"[A-Za-z0-9_.-]+-[0-9]+x[0-9]+-[0-9a-f]{16}")
# What dclnet writes into pretrained/: weight files and, while writing, hidden temp files.
_PRETRAINED_FILE = re.compile(r"[^/]+\.pt|\.[^/]+\.tmp")
DCLNET_KINDS = ("images", "incomplete", "pretrained")  # entries dclnet wrote (links aside)


@dataclass(frozen=True)
class CacheEntry:
    """One removable thing in the cache directory.

    Attributes:
        name: Path relative to the cache directory, ``/``-separated.
        path: Absolute path (not resolved: a link stays a link).
        kind: ``"images"`` (a folder with the cache's ``meta.json``), ``"incomplete"`` (a
            folder named like an image cache without one: being built, or left by a crash),
            ``"pretrained"`` (a ``.pt`` file in ``pretrained/``), ``"link"`` (a symbolic
            link) or ``"other"`` (not written by dclnet: never deleted).
        nbytes: Bytes on disk of the files inside (links not followed).
        modified: Latest modification time (seconds since the epoch) of the entry or any
            file inside it.
        details: What ``meta.json`` says: data-set list name, root, image size, image count;
            for a link, its target.
    """

    name: str
    path: Path
    kind: str
    nbytes: int
    modified: float
    details: str = ""


def resolve_cache_dir(cache_dir: Path | str | None) -> Path:
    """The cache directory, absolute and with links resolved (default: the standard one)."""
    from dclnet.data.cache import default_cache_dir

    base = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return base.resolve()


def _walk_size(path: Path) -> tuple[int, float]:
    """``(bytes, latest mtime)`` of ``path`` and everything below it, links not followed."""
    st = path.lstat()
    total, latest = st.st_size if not stat.S_ISDIR(st.st_mode) else 0, st.st_mtime
    if stat.S_ISDIR(st.st_mode):
        for top, dirs, files in os.walk(path, followlinks=False):
            for name in (*files, *dirs):
                try:
                    sub = os.lstat(os.path.join(top, name))
                except OSError:  # removed meanwhile
                    continue
                if not stat.S_ISDIR(sub.st_mode):
                    total += sub.st_size
                latest = max(latest, sub.st_mtime)
    return total, latest


def _meta_details(folder: Path) -> str | None:
    """``"<name> root=<root> size=<H>x<W> images=<n>"`` from ``meta.json``; None if absent.

    ``"meta.json unreadable"`` when the file is there but not what the cache writes.
    """
    meta_path = folder / _META
    if not meta_path.is_file() or meta_path.is_symlink():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        key = meta["key"]
        height, width = key["size"]
        return (
            f"{key['name']} root={key['root']} size={height}x{width} "
            f"images={meta.get('num_images', '?')}"
        )
    except (OSError, ValueError, KeyError, TypeError):
        return "meta.json unreadable"


def _entry(cache_dir: Path, path: Path) -> CacheEntry:
    name = path.relative_to(cache_dir).as_posix()
    if path.is_symlink():
        st = path.lstat()
        return CacheEntry(name, path, "link", st.st_size, st.st_mtime, f"-> {os.readlink(path)}")
    nbytes, modified = _walk_size(path)
    if name.startswith(f"{PRETRAINED}/"):
        if path.is_file() and _PRETRAINED_FILE.fullmatch(path.name):
            return CacheEntry(name, path, "pretrained", nbytes, modified)
        return CacheEntry(name, path, "other", nbytes, modified, "not a dclnet weights file")
    if path.is_dir():
        details = _meta_details(path)
        named = _IMAGE_FOLDER.fullmatch(path.name) is not None
        if details is None or (details == "meta.json unreadable" and not named):
            if named:
                return CacheEntry(name, path, "incomplete", nbytes, modified, "no meta.json")
            return CacheEntry(name, path, "other", nbytes, modified, "not written by dclnet")
        return CacheEntry(name, path, "images", nbytes, modified, details)
    return CacheEntry(name, path, "other", nbytes, modified, "not written by dclnet")


def list_entries(cache_dir: Path | str | None = None) -> list[CacheEntry]:
    """Every entry of the cache directory, sorted by name; empty when it does not exist."""
    root = resolve_cache_dir(cache_dir)
    if not root.is_dir():
        return []
    paths = []
    for child in sorted(root.iterdir()):
        if child.name == PRETRAINED and child.is_dir() and not child.is_symlink():
            paths.extend(sorted(child.iterdir()))
        else:
            paths.append(child)
    return [_entry(root, path) for path in paths]


def format_bytes(nbytes: int) -> str:
    """``1.5 MB`` style (powers of 1024, one decimal above bytes)."""
    value = float(nbytes)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_entry(entry: CacheEntry) -> str:
    """One line: name, kind, size (and bytes), last modified, details."""
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(entry.modified))
    size = f"{format_bytes(entry.nbytes)} ({entry.nbytes} bytes)"
    line = f"{entry.name}  {entry.kind}  {size}  modified {when}"
    return f"{line}  {entry.details}" if entry.details else line


def select_entries(
    entries: Sequence[CacheEntry], names: Sequence[str], everything: bool, cache_dir: Path
) -> list[CacheEntry]:
    """The entries that ``--all`` or ``names`` pick; ``pretrained`` picks all its files.

    Raises:
        DclnetError: neither or both of ``--all`` and names, or an unknown name.
    """
    if everything and names:
        raise DclnetError("give either --all or entry names, not both")
    if not everything and not names:
        raise DclnetError("give entry names (see `dclnet cache list`) or --all")
    if everything:
        return list(entries)
    by_name = {e.name: e for e in entries}
    picked: dict[str, CacheEntry] = {}
    for raw in names:
        name = raw.strip().rstrip("/").replace("\\", "/")
        if name == PRETRAINED:
            group = [e for e in entries if e.name.startswith(f"{PRETRAINED}/")]
            if not group:
                raise DclnetError(f"no pretrained files in {cache_dir}/{PRETRAINED}")
            picked.update((e.name, e) for e in group)
        elif name in by_name:
            picked[name] = by_name[name]
        else:
            raise DclnetError(
                f"unknown cache entry {raw!r} in {cache_dir}; `dclnet cache list` shows the names"
            )
    return sorted(picked.values(), key=lambda e: e.name)


def _inside(cache_dir: Path, path: Path) -> bool:
    try:
        path.relative_to(cache_dir)
    except ValueError:
        return False
    return path != cache_dir


def check_removable(cache_dir: Path, entry: CacheEntry) -> None:
    """Raise unless ``entry`` is dclnet's and removing it only touches ``cache_dir``."""
    if entry.kind == "other":
        raise DclnetError(
            f"{entry.path}: not written by dclnet (no cache metadata, not a cache name); not "
            "deleted (remove it yourself if you mean it)"
        )
    parent = entry.path.parent.resolve()  # a linked-away pretrained/ resolves elsewhere
    if parent not in (cache_dir, cache_dir / PRETRAINED) or entry.path.name in ("", ".", ".."):
        raise DclnetError(f"{entry.path}: not inside the cache directory {cache_dir}; not deleted")
    if entry.path.is_symlink():
        target = entry.path.resolve()
        if not _inside(cache_dir, target):
            raise DclnetError(
                f"{entry.path}: symbolic link to {target}, outside the cache directory "
                f"{cache_dir}; not deleted (remove the link yourself if you mean it)"
            )


@contextlib.contextmanager
def _build_lock(folder: Path) -> Iterator[bool]:
    """Try the image cache's build lock without waiting; yield whether it was free."""
    lock = folder / _LOCK
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield True
        return
    if not lock.is_file() or lock.is_symlink():
        yield True
        return
    with open(lock, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def remove_entry(cache_dir: Path, entry: CacheEntry) -> bool:
    """Delete ``entry`` (a link as a link); False when an image build holds its lock."""
    check_removable(cache_dir, entry)
    path = entry.path
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
        return True
    with _build_lock(path) as free:
        if not free:
            return False
        shutil.rmtree(path)
    return True


# -- command line ----------------------------------------------------------------------------


def cmd_cache_list(args: argparse.Namespace) -> None:
    cache_dir = resolve_cache_dir(args.cache_dir)
    entries = list_entries(cache_dir)
    if not entries:
        state = "is empty" if cache_dir.is_dir() else "does not exist"
        print(f"cache directory {cache_dir} {state}")
        return
    for entry in entries:
        print(format_entry(entry))
    total = sum(e.nbytes for e in entries)
    print(f"{len(entries)} entries, {format_bytes(total)} ({total} bytes) in {cache_dir}")


def check_is_cache(cache_dir: Path, entries: Sequence[CacheEntry]) -> None:
    """Refuse a non-empty folder where dclnet wrote nothing (a mistyped ``--cache-dir``)."""
    if entries and not any(e.kind in DCLNET_KINDS for e in entries):
        names = ", ".join(e.name for e in entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise DclnetError(
            f"{cache_dir} is not a dclnet cache: none of its {len(entries)} entries ({names}) "
            "was written by dclnet; nothing deleted (pass --cache-dir the cache folder)"
        )


def cmd_cache_clear(args: argparse.Namespace) -> None:
    cache_dir = resolve_cache_dir(args.cache_dir)
    entries = list_entries(cache_dir)
    check_is_cache(cache_dir, entries)
    chosen = select_entries(entries, args.names, args.all, cache_dir)
    foreign = [e.name for e in chosen if e.kind == "other"] if args.all else []
    if args.all:  # --all: every entry dclnet wrote; the rest stays (and is named)
        chosen = [e for e in chosen if e.kind != "other"]
    if not chosen:
        print(f"nothing to delete in {cache_dir}")
        _report_foreign(foreign)
        return
    for entry in chosen:
        check_removable(cache_dir, entry)  # refuse before deleting anything
    total = sum(e.nbytes for e in chosen)
    if not args.yes:
        for entry in chosen:
            print(f"would delete {entry.name} ({format_bytes(entry.nbytes)})")
        print(
            f"{len(chosen)} entries, {format_bytes(total)} in {cache_dir}; "
            "pass --yes to delete them"
        )
        return
    freed, busy = 0, []
    for entry in chosen:
        if remove_entry(cache_dir, entry):
            print(f"deleted {entry.name} ({format_bytes(entry.nbytes)})")
            freed += entry.nbytes
        else:
            busy.append(entry.name)
            print(f"skipped {entry.name}: a process is building it (its .lock is held)")
    pretrained = cache_dir / PRETRAINED
    if pretrained.is_dir() and not pretrained.is_symlink() and not any(pretrained.iterdir()):
        pretrained.rmdir()
    print(f"freed {format_bytes(freed)} in {cache_dir}")
    _report_foreign(foreign)
    if busy:
        raise DclnetError(f"{len(busy)} entries in use were not deleted: {', '.join(busy)}")


def _report_foreign(names: Sequence[str]) -> None:
    if names:
        print(f"left {len(names)} entries dclnet did not write: {', '.join(names)}")


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``dclnet cache list | clear`` to ``dclnet``'s sub-commands."""
    p = sub.add_parser(
        "cache",
        help="list or delete cached images and pretrained weights",
        description="The cache holds decoded image arrays (one folder per data-set list and "
        "size) and synthetic-pretrained backbones (pretrained/*.pt). Everything in it is "
        "rebuilt on demand when missing.",
    )
    actions = p.add_subparsers(dest="cache_command", metavar="ACTION", required=True)
    help_dir = "cache directory (default: $XDG_CACHE_HOME/dclnet or ~/.cache/dclnet)"
    q = actions.add_parser("list", help="one line per cache entry, with its size")
    q.add_argument("--cache-dir", type=Path, default=None, help=help_dir)
    q.set_defaults(func=cmd_cache_list)
    q = actions.add_parser(
        "clear",
        help="delete cache entries (prints what it would delete unless --yes)",
        description="Delete the named entries (names from `dclnet cache list`; 'pretrained' "
        "means every pretrained file) or --all. Without --yes nothing is deleted.",
    )
    q.add_argument("names", nargs="*", metavar="NAME", help="entries to delete")
    q.add_argument("--all", action="store_true", help="every entry")
    q.add_argument("--yes", action="store_true", help="really delete")
    q.add_argument("--cache-dir", type=Path, default=None, help=help_dir)
    q.set_defaults(func=cmd_cache_clear)
    for action in actions.choices.values():  # --debug also after the action, as elsewhere
        action.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
        )
