"""Whether a cache directory may be reused: its key, the raw files' fingerprints, meta.json.

A cache directory (:mod:`dclnet.data.cache`) is reused only when its ``meta.json`` is
complete and was written for the same key (root, size, reader version, name, record list) and
format, and the raw files are unchanged: the same size and modification time of each file
(``verify="stat"``), or with ``verify="hash"`` the same SHA-256 over their contents.
:func:`load_valid` checks all of that and opens ``images.npy``; otherwise it says why the
directory must be rebuilt (e.g. which raw file changed).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dclnet.data.imageio import READER_VERSION, unreadable_reason
from dclnet.data.records import Record
from dclnet.errors import DataError

META_FORMAT = 1  # layout of meta.json / images.npy; part of the validity check
IMAGES = "images.npy"
META = "meta.json"
_HASH_CHUNK = 1 << 20
VERIFY = ("stat", "hash")  # what decides that the raw files are unchanged (see above)


def cache_key(root: Path, records: Sequence[Record], size: tuple[int, int], name: str) -> dict:
    """What determines the arrays' contents, apart from the raw files themselves."""
    digest = hashlib.sha256()
    for r in records:
        digest.update(json.dumps([r.path, int(r.label), int(r.cam), r.modality]).encode())
        digest.update(b"\n")
    return {
        "root": str(root),
        "size": list(size),
        "reader_version": READER_VERSION,
        "name": name,
        "records_sha256": digest.hexdigest(),
    }


def stat_files(root: Path, records: Sequence[Record], skip_corrupt: bool) -> list[list[int]]:
    """``[size, mtime_ns]`` of every raw file; ``[-1, -1]`` for a missing one if skipping."""
    stats = []
    for r in records:
        try:
            st = os.stat(root / r.path)
            stats.append([st.st_size, st.st_mtime_ns])
        except OSError as exc:
            if not skip_corrupt:
                raise DataError(
                    f"cannot read image {root / r.path}: {unreadable_reason(root / r.path, exc)}; "
                    "check the data-set root and lists, or pass skip_corrupt=True"
                ) from exc
            stats.append([-1, -1])
    return stats


def fingerprint(records: Sequence[Record], stats: list[list[int]]) -> str:
    digest = hashlib.sha256()
    for r, (nbytes, mtime) in zip(records, stats):
        digest.update(f"{r.path}\0{nbytes}\0{mtime}\n".encode())
    return digest.hexdigest()


def content_fingerprint(root: Path, records: Sequence[Record], stats: list[list[int]]) -> str:
    """SHA-256 over every raw file's path and contents (``verify="hash"``)."""
    digest = hashlib.sha256()
    for r, (nbytes, _) in zip(records, stats):
        digest.update(f"{r.path}\0".encode())
        if nbytes < 0:  # missing, skipped with skip_corrupt
            digest.update(b"missing\n")
            continue
        try:
            with open(root / r.path, "rb") as handle:
                while chunk := handle.read(_HASH_CHUNK):
                    digest.update(chunk)
        except OSError as exc:
            raise DataError(f"cannot read image {root / r.path}: {exc.strerror}") from exc
        digest.update(b"\n")
    return digest.hexdigest()


def load_valid(directory: Path, header: dict) -> tuple[dict | None, np.ndarray | None, str]:
    """``(meta, images, "")`` for a complete, current cache, else ``(None, None, why)``."""
    meta_path = directory / META
    if not meta_path.exists():
        return None, None, "no complete cache yet"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return None, None, "meta.json is unreadable"
    if not isinstance(meta, dict) or not meta.get("complete"):
        return None, None, "meta.json is incomplete"
    if meta.get("format") != header["format"] or meta.get("key") != header["key"]:
        return None, None, "meta.json was written for another key or format"
    if "content_sha256" in header:  # verify="hash": the contents decide, not size + mtime
        if "content_sha256" not in meta:
            return None, None, "the cache was built without content hashes (verify_cache=hash)"
        if meta["content_sha256"] != header["content_sha256"]:
            return None, None, "raw file contents changed since the cache was built"
    elif meta.get("fingerprint") != header["fingerprint"]:
        return None, None, _describe_changes(meta, header["files"])
    try:
        images = np.load(directory / IMAGES, mmap_mode="r")
    except (OSError, ValueError):
        return None, None, "images.npy is missing or truncated"
    expected = (meta["num_images"], *meta["key"]["size"], 3)
    if images.shape != expected or images.dtype != np.uint8:
        return None, None, f"images.npy has shape {images.shape}, expected {expected}"
    return meta, images, ""


def _describe_changes(meta: dict, stats: list[list[int]]) -> str:
    old = meta.get("files", [])
    changed = [i for i, (a, b) in enumerate(zip(old, stats)) if list(a) != list(b)]
    if len(old) != len(stats) or not changed:
        return "raw files changed since the cache was built"
    first = meta["records"][changed[0]][0]
    return (
        f"{len(changed)} of {len(stats)} raw files changed since the cache was built "
        f"(e.g. {first}: size/mtime {old[changed[0]]} -> {stats[changed[0]]})"
    )
