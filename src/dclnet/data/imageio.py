"""Decoding and resizing one image file into a uint8 array.

This is the only place that turns image bytes into pixels for the caches, so that a change to
decoding or resizing is one change here plus a bump of :data:`READER_VERSION` (which keys the
caches built by :mod:`dclnet.data.cache`, so that stale arrays are never reused).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
from PIL import Image

from dclnet.errors import DataError

READER_VERSION = 2
"""Version of the decode + resize recipe; bump it whenever :func:`load_image` changes output.

2: 16-bit greyscale images are scaled to 8 bits (version 1 clipped them to white).
"""

# Pillow >= 9.1 names filters under ``Image.Resampling``; older releases only on ``Image``.
_LANCZOS = getattr(Image, "Resampling", Image).LANCZOS

# What Pillow raises for a missing, unreadable, truncated or malformed file. Catching these
# (and not everything) keeps programming errors and interrupts out of the "corrupt file" path.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


# Integer greyscale modes wider than 8 bits: Pillow's convert("RGB") clips them at 255.
_WIDE_GREY_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_UINT16_MAX = 65535


def to_rgb(image: Image.Image, where: str = "image") -> Image.Image:
    """A PIL image as 8-bit RGB, with 16-bit greyscale scaled rather than clipped.

    Pillow clips 16-bit values (``I;16``, ``I;16B``, ``I``) at 255, which turns a thermal
    image nearly solid white. Here the 16-bit range ``0..65535`` maps linearly onto
    ``0..255`` (``round(x / 257)``), the same for every image, so brightness stays comparable
    between images. Mode ``I`` (32-bit, how Pillow opens some 16-bit PNG and TIFF files) is
    clipped to ``0..65535`` first.

    32-bit float images (mode ``F``, e.g. a float TIFF) are refused: their scale (0..1,
    0..255, degrees) is not in the file, and Pillow's conversion clips them (a 0..1 image
    becomes black).

    Raises:
        DataError: A mode ``F`` image (``where`` starts the message).
    """
    if image.mode == "F":
        raise DataError(
            f"{where}: 32-bit float pixels (mode F) have no fixed scale; save the image "
            "with 8- or 16-bit integer pixels"
        )
    if image.mode not in _WIDE_GREY_MODES:
        return image.convert("RGB")
    values = np.clip(np.asarray(image, dtype=np.float64), 0, _UINT16_MAX)
    grey = np.rint(values * (255.0 / _UINT16_MAX)).astype(np.uint8)  # H x W
    return Image.fromarray(grey).convert("RGB")


def unreadable_reason(path: Path, exc: BaseException) -> str:
    """Why ``path`` could not be read, in words (a dangling link says where it points)."""
    if isinstance(exc, FileNotFoundError) and Path(path).is_symlink():
        return f"dangling symbolic link (its target {os.readlink(path)} does not exist)"
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else text


def special_file_reason(path: Path) -> str:
    """Why ``path`` (not a regular file) is no image: ``not a regular file (a FIFO); ...``."""
    try:
        st = os.stat(path)
    except OSError as exc:
        return unreadable_reason(path, exc)
    kinds = (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a directory"),
    )
    kind = next((name for test, name in kinds if test(st.st_mode)), "not a file")
    via = f", linked to {os.readlink(path)}" if Path(path).is_symlink() else ""
    return f"not a regular file ({kind}{via}); replace it with the image file or remove it"


def _check_regular(path: Path) -> None:
    """Raise unless ``path`` is a regular file: opening a FIFO would block for ever, a device
    (``/dev/zero``) would be read without end."""
    try:
        regular = stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return  # missing or unreadable: Image.open says so
    if not regular:
        raise DataError(f"{path}: {special_file_reason(path)}")


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
        DataError: The file is missing, unreadable, truncated or not an image, is not a
            regular file (a FIFO, a device), or holds 32-bit float pixels.
    """
    _check_regular(path)
    try:
        with Image.open(path) as im:
            im.load()
            rgb = to_rgb(im, where=f"cannot decode image {path}")
        if size is not None:
            height, width = size
            if rgb.size != (width, height):
                rgb = rgb.resize((width, height), _LANCZOS)
        return np.array(rgb, dtype=np.uint8)  # a writable copy, not a view of PIL's buffer
    except _DECODE_ERRORS as exc:
        raise DataError(
            f"cannot decode image {path}: {unreadable_reason(path, exc)}; "
            "remove or replace the file, or pass skip_corrupt=True"
        ) from exc
