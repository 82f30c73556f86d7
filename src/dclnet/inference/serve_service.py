"""What ``dclnet serve`` does behind its HTTP routes: decode, embed, rank, append, read files.

:class:`SearchService` holds the embedder and the loaded gallery index. Searches take a
reference to the current :class:`~dclnet.inference.index.GalleryIndex` once per batch; an
append builds the new index folder with the index's own atomic
:func:`~dclnet.inference.indexing.append_index` (which holds the index's write lock) and
then swaps that reference, so a search sees the old or the new index, never a torn one. An
index folder replaced by another process (``dclnet index --append``) is noticed before a
batch and loaded, under the write lock, in a background thread; the loaded index keeps
answering until the new one is read.

Every problem with a request is a :class:`RequestError` carrying its HTTP status and one line
naming the problem (the routes turn it into a JSON error); nothing here knows about HTTP
frameworks, so it is tested without a server.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from dclnet.data.records import MODALITIES
from dclnet.errors import DclnetError
from dclnet.fileio import atomic_write
from dclnet.inference import index as index_module
from dclnet.inference import indexing
from dclnet.inference.api import Embedder, resize_rgb
from dclnet.inference.index import IMAGE_EXTENSIONS, GalleryIndex
from dclnet.inference.index_store import load_index
from dclnet.inference.serve_batching import Query

logger = logging.getLogger(__name__)

UPLOADS = "uploads"  # folder below the gallery root that receives appended uploads
_CAMERA = re.compile(r"^cam(\d+)$", re.IGNORECASE)  # SYSU-MM01 / LLCM camera folders
_SAVE_AS = {"JPEG": ".jpg", "PNG": ".png", "BMP": ".bmp"}  # kept as uploaded; others -> PNG


class RequestError(DclnetError):
    """A bad request: one line for the client, with the HTTP status to answer.

    Attributes:
        status: 400 bad value, 403 outside the gallery, 404 missing, 409 conflict,
            413 too large, 415 wrong content type.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Limits:
    """What one request may ask for (``dclnet serve`` options).

    Attributes:
        max_body_bytes: Largest request body (``--max-body-mb``).
        max_pixels: Largest decoded image, width x height (decompression bombs).
        max_files: Most images in one request.
        max_topk: Largest ``topk``.
    """

    max_body_bytes: int = 32 * 1024 * 1024
    max_pixels: int = 25_000_000
    max_files: int = 64
    max_topk: int = 1000


def decode_upload(data: bytes, name: str, size: tuple[int, int], max_pixels: int) -> np.ndarray:
    """Uploaded bytes → ``H x W x 3`` uint8 RGB at ``size``, as ``dclnet search`` decodes files.

    The same steps as :func:`dclnet.data.imageio.load_image` (full decode, 16-bit grey
    scaled, LANCZOS resize), with the image's header checked against ``max_pixels`` before
    any pixel is decoded.

    Raises:
        RequestError: 400 empty, not an image, truncated or corrupt; 413 too many pixels.
    """
    if not data:
        raise RequestError(400, f"upload {name!r} is empty (0 bytes); send an image file")
    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
            if width * height > max_pixels:
                raise _too_many_pixels(name, f"{width} x {height}", max_pixels)
            im.load()
            return resize_rgb(im, size)
    except Image.DecompressionBombError as exc:  # Pillow's own ceiling, at open
        raise _too_many_pixels(name, _dims_of(str(exc)), max_pixels) from None
    except UnidentifiedImageError:
        raise RequestError(
            400,
            f"upload {name!r} is not an image Pillow can read ({len(data)} bytes); "
            "send a JPEG, PNG or BMP file",
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RequestError(
            400, f"upload {name!r} cannot be decoded ({reason}); is it truncated or corrupt?"
        ) from None


def _dims_of(text: str) -> str:
    found = re.search(r"\((\d+) pixels\)", text)
    return f"{int(found.group(1)):,} pixels" if found else "too many pixels"


def _too_many_pixels(name: str, dims: str, limit: int) -> RequestError:
    return RequestError(
        413,
        f"upload {name!r} is {dims}, above the limit of {limit:,} pixels (--max-pixels); "
        "send a person crop",
    )


def check_modality(value: str | None) -> str:
    """The ``modality`` form field, or a 400 naming the valid values."""
    if value not in MODALITIES:
        raise RequestError(
            400,
            f"modality must be one of {', '.join(MODALITIES)} (form field 'modality'), "
            f"got {value!r}",
        )
    return value


def check_topk(value: str | int | None, limit: int, default: int = 10) -> int:
    """The ``topk`` form field as an int in ``1..limit``, or a 400."""
    if value is None or value == "":
        return default
    try:
        k = int(value)
    except (TypeError, ValueError):
        raise RequestError(400, f"topk must be an integer, got {value!r:.40}") from None
    if not 1 <= k <= limit:
        raise RequestError(400, f"topk must be in 1..{limit} (--max-topk), got {k}")
    return k


def index_lock(folder: Path) -> contextlib.AbstractContextManager:
    """The index module's write lock on ``folder`` (a no-op where that module has none)."""
    for module in (index_module, indexing):
        lock = getattr(module, "index_lock", None)
        if lock is not None:
            return lock(folder)
    return contextlib.nullcontext()


def _signature(folder: Path) -> tuple[int, int] | None:
    """Identity of the index folder's current ``meta.json`` (changes when it is replaced)."""
    try:
        st = os.stat(folder / "meta.json")
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


class SearchService:
    """The model, the gallery index and what requests do with them.

    Args:
        embedder: The checkpoint's embedder (its identity must match the index).
        index_dir: Index folder from ``dclnet index``.
        gallery_root: Folder the index's paths are relative to (default: the index's root).
        labels: ``path -> identity`` (``None`` when unknown), e.g.
            :func:`dclnet.inference.visualize.label_reader`.
        limits: Per-request limits.
    """

    def __init__(
        self,
        embedder: Embedder,
        index_dir: str | Path,
        *,
        gallery_root: str | Path | None = None,
        labels: Callable[[str], str | None] | None = None,
        limits: Limits = Limits(),
    ) -> None:
        self.embedder = embedder
        self.index_dir = Path(index_dir)
        self.limits = limits
        self.labels = labels or (lambda path: None)
        self._append_lock = threading.Lock()  # one append (or reload) at a time here
        self._reloader: threading.Thread | None = None
        self._signature = _signature(self.index_dir)
        self.index = self._load()
        root = gallery_root if gallery_root is not None else self.index.root
        self.gallery_root = Path(root).resolve()

    # -- the index -------------------------------------------------------------------------

    def _load(self) -> GalleryIndex:
        """Read the index folder with its write lock held (no writer is mid-replace).

        Where the lock file cannot be made (a read-only folder: nobody appends there), the
        index is read without it.
        """
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(index_lock(self.index_dir))
            except OSError as exc:
                logger.info("reading %s without its lock (%s)", self.index_dir, exc)
            signature = _signature(self.index_dir)
            index = load_index(self.index_dir)
        index.check_model(self.embedder, where=f"index {self.index_dir}")
        self._signature = signature
        return index

    def current_index(self) -> GalleryIndex:
        """The index to search now.

        When another process replaced the folder, it is loaded in a background thread
        (which may wait for that writer's lock) and swapped in when read; until then the
        loaded index keeps answering, so a search never waits for a writer.
        """
        if _signature(self.index_dir) != self._signature and self._reloader is None:
            if not self._append_lock.locked():  # our own append swaps the index itself
                self._reloader = threading.Thread(target=self._reload, daemon=True)
                self._reloader.start()
        return self.index

    def _reload(self) -> None:
        try:
            with self._append_lock:
                if _signature(self.index_dir) != self._signature:
                    self.index = self._load()
                    logger.info("reloaded %s (%d images)", self.index_dir, len(self.index))
        except DclnetError as exc:  # kept the loaded index; tried again at the next change
            logger.warning("kept the loaded index: %s", exc)
            self._signature = _signature(self.index_dir)
        finally:
            self._reloader = None

    def describe(self, index: GalleryIndex | None = None) -> dict[str, Any]:
        """Model and index identity (of ``index``, default the current one)."""
        index = index if index is not None else self.index
        return {
            "model": self.embedder.identity,
            "checkpoint": self.embedder.checkpoint,
            "index": str(self.index_dir),
            "backend": index.backend,
            "gallery_modality": index.modality,
            "gallery_size": len(index),
            "flip": index.flip,
        }

    # -- search ----------------------------------------------------------------------------

    def decode(self, data: bytes, name: str) -> np.ndarray:
        """An upload at the model's input size (see :func:`decode_upload`)."""
        size = self.embedder.preprocessing.size
        return decode_upload(data, name, size, self.limits.max_pixels)

    @torch.no_grad()
    def run_batch(self, queries: Sequence[Query]) -> list[dict[str, Any]]:
        """Embed a batch (one forward per modality present) and rank it in one index call.

        Returns:
            Per query ``{"results": [...], "mask": H_z x W_z list or None, "index": ...}``,
            the last being :meth:`describe` of the index that ranked it.
        """
        index = self.current_index()  # one index for the whole batch
        emb = torch.empty(len(queries), index.embed_dim)
        masks: list[list[list[int]] | None] = [None] * len(queries)
        for modality in MODALITIES:
            rows = [i for i, q in enumerate(queries) if q.modality == modality]
            if not rows:
                continue
            pixels = np.stack([queries[i].pixels for i in rows])  # B x H x W x 3
            emb[rows] = self.embedder.embed(pixels, modality, batch_size=len(rows), flip=index.flip)
            wanted = [i for i in rows if queries[i].mask]
            if wanted:
                images = self.embedder.prepare(np.stack([queries[i].pixels for i in wanted]))
                found = self.embedder.model.predict_masks(images, modality).cpu()
                for i, m in zip(wanted, found):
                    masks[i] = m.tolist()
        k = max(q.topk for q in queries)
        scores, rows = index.topk(emb.to(self.embedder.device), k)
        scores, rows = scores.cpu().tolist(), rows.cpu().tolist()
        info = self.describe(index)
        return [
            {"results": self._entries(index, r[: q.topk], s[: q.topk]), "mask": m, "index": info}
            for q, r, s, m in zip(queries, rows, scores, masks)
        ]

    def _entries(self, index: GalleryIndex, rows: list[int], scores: list[float]) -> list[dict]:
        out = []
        for g, score in zip(rows, scores):
            if g < 0:  # FAISS found fewer than k
                continue
            path = index.paths[g]
            entry: dict[str, Any] = {"rank": len(out) + 1, "path": path, "score": score}
            identity = self.labels(path)
            if identity is not None:
                entry["identity"] = identity
            camera = camera_of(path)
            if camera is not None:
                entry["camera"] = camera
            out.append(entry)
        return out

    # -- gallery files ---------------------------------------------------------------------

    def gallery_file(self, path: str) -> Path:
        """The gallery image at ``path`` (relative), refusing anything outside the root.

        Raises:
            RequestError: 403 outside the gallery root (``..``, absolute, a link out),
                404 not an image file there.
        """
        target = (self.gallery_root / path).resolve()
        if not target.is_relative_to(self.gallery_root) or Path(path).is_absolute():
            raise RequestError(403, f"gallery path {path!r} is outside the gallery root")
        if target.suffix.lower() not in IMAGE_EXTENSIONS or not target.is_file():
            raise RequestError(404, f"no gallery image {path!r} below the gallery root")
        return target

    # -- appending -------------------------------------------------------------------------

    def append_uploads(self, files: Sequence[tuple[str, bytes]]) -> dict[str, Any]:
        """Save uploaded images below ``ROOT/uploads/<stamp>/`` and append them to the index.

        Every file is decoded first; one bad file refuses the whole request (400/413).
        """
        if not files:
            raise RequestError(
                400,
                "POST /index/append needs image files (field 'image') "
                "or a 'folder' below the gallery root",
            )
        for name, data in files:
            self.decode(data, name)
        root = self._append_root()
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
        folder = root / UPLOADS / f"{stamp}-{uuid.uuid4().hex[:8]}"
        folder.mkdir(parents=True)
        for i, (name, data) in enumerate(files):
            with Image.open(io.BytesIO(data)) as im:
                fmt = im.format
                suffix = _SAVE_AS.get(fmt or "", ".png")
                stem = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(name).stem)[:60] or "image"
                with atomic_write(folder / f"{i:04d}-{stem}{suffix}", "wb") as fh:
                    if fmt in _SAVE_AS:
                        fh.write(data)
                    else:
                        im.save(fh, "PNG")
        return self._append(folder)

    def append_folder(self, folder: str) -> dict[str, Any]:
        """Append the images below ``folder`` (relative to the gallery root, or absolute)."""
        root = self._append_root()
        target = (root / folder).resolve()
        if not target.is_relative_to(root):
            raise RequestError(403, f"folder {folder!r} is outside the gallery root {root}")
        if not target.is_dir():
            raise RequestError(404, f"folder {folder!r} is not a directory below {root}")
        return self._append(target)

    def _append_root(self) -> Path:
        root = Path(self.index.root).resolve()
        if not root.is_dir():
            raise RequestError(
                409,
                f"the index's gallery root {root} is not a folder on this machine; "
                "appends add images below it",
            )
        return root

    def _append(self, folder: Path) -> dict[str, Any]:
        """:func:`~dclnet.inference.indexing.append_index`, then the swap of the reference.

        ``append_index`` takes the index's write lock itself (it is not re-entrant, so it is
        not held here) and returns the new index as loaded inside it.
        """
        with self._append_lock:
            new, added = indexing.append_index(
                self.embedder, self.index_dir, folder, progress=False
            )
            self.index, self._signature = new, _signature(self.index_dir)
        rel = folder.relative_to(Path(new.root).resolve()).as_posix()
        logger.info("appended %d images below %s; %d in the index", added, rel, len(new))
        return {"added": added, "folder": rel, "gallery_size": len(new)}


def camera_of(path: str) -> str | None:
    """The camera of a SYSU-MM01 / LLCM path (a ``camN`` folder), else ``None``."""
    for part in Path(path).parts[:-1]:
        if _CAMERA.match(part):
            return part.lower()
    return None
