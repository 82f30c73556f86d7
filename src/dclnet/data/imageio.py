"""Decoding and resizing one image file into a uint8 array.

This is the only place that turns image bytes into pixels for the caches, so that a change to
decoding or resizing is one change here plus a bump of :data:`READER_VERSION` (which keys the
caches built by :mod:`dclnet.data.cache`, so that stale arrays are never reused).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from dclnet.errors import DataError

READER_VERSION = 1
"""Version of the decode + resize recipe; bump it whenever :func:`load_image` changes output."""

# Pillow >= 9.1 names filters under ``Image.Resampling``; older releases only on ``Image``.
_LANCZOS = getattr(Image, "Resampling", Image).LANCZOS

# What Pillow raises for a missing, unreadable, truncated or malformed file. Catching these
# (and not everything) keeps programming errors and interrupts out of the "corrupt file" path.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


def load_image(path: Path, size: tuple[int, int] | None) -> np.ndarray:
    """Decode an image file into RGB pixels, optionally resized with antialiasing.

    The file is fully decoded before use, so a truncated file is reported instead of being
    padded with grey (``ImageFile.LOAD_TRUNCATED_IMAGES`` is left untouched).

    Args:
        path: Image file (any format Pillow reads: JPEG, BMP, PNG, ...).
        size: Target ``(height, width)``; ``None`` keeps the original size. Resizing uses
            Pillow's LANCZOS filter, which antialiases when shrinking.

    Returns:
        ``H x W x 3`` uint8 array (writable, owning its memory).

    Raises:
        DataError: The file is missing, unreadable, truncated or not an image.
    """
    try:
        with Image.open(path) as im:
            im.load()
            rgb = im.convert("RGB")
        if size is not None:
            height, width = size
            if rgb.size != (width, height):
                rgb = rgb.resize((width, height), _LANCZOS)
        return np.array(rgb, dtype=np.uint8)  # a writable copy, not a view of PIL's buffer
    except _DECODE_ERRORS as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(
            f"cannot decode image {path}: {reason}; "
            "remove or replace the file, or pass skip_corrupt=True"
        ) from exc
