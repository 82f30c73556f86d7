"""Plain image records, the currency between readers, caches and protocols."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

VISIBLE = "visible"
INFRARED = "infrared"
MODALITIES = (VISIBLE, INFRARED)


@dataclass(frozen=True)
class Record:
    """One image of a data set.

    Attributes:
        path: Path relative to the data-set root, with ``/`` separators.
        label: Identity. Training lists carry re-indexed labels ``0..n-1``; query and gallery
            lists carry the data set's own person id.
        cam: Camera id as the data set numbers it (SYSU-MM01: 1-6; RegDB: 1 visible,
            2 thermal; LLCM: 1-9).
        modality: ``"visible"`` or ``"infrared"``.
    """

    path: str
    label: int
    cam: int
    modality: str


@dataclass
class ImageSet:
    """Images of one modality held as arrays (in memory or memory-mapped).

    A set may be a *view* of a larger array (:meth:`subset` with ``copy=False``): ``images``
    is then the shared array (e.g. the cache's memory map, never copied) and ``rows`` says
    which of its rows image ``i`` is; read images through :meth:`take` or map indices with
    :meth:`source_rows`, never index ``images`` with set indices directly.

    Attributes:
        images: ``M x H x W x 3`` uint8; ``M = N`` unless ``rows`` is given.
        labels: ``N`` int64 identities.
        cams: ``N`` int64 camera ids.
        paths: ``N`` paths relative to the data-set root (or synthetic names).
        modality: ``"visible"`` or ``"infrared"``.
        rows: ``N`` int64 rows of ``images`` holding the set's images, or None (row ``i``).
    """

    images: np.ndarray
    labels: np.ndarray
    cams: np.ndarray
    paths: list[str]
    modality: str
    rows: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def source_rows(self, index: np.ndarray) -> np.ndarray:
        """Rows of ``images`` that hold the set's images ``index``."""
        return index if self.rows is None else self.rows[index]

    def take(self, index: np.ndarray) -> np.ndarray:
        """The images ``index`` of the set, ``len(index) x H x W x 3`` (read into memory)."""
        return np.asarray(self.images[self.source_rows(np.asarray(index, dtype=np.int64))])

    def subset(self, index: np.ndarray, *, copy: bool = True) -> ImageSet:
        """Rows ``index`` of this set.

        Args:
            index: set indices to keep, in the new order.
            copy: read the images into a new in-memory array (aligned with the new set);
                ``False``: a view that keeps sharing ``images`` (a memory map stays one) and
                records the rows in ``rows``.
        """
        index = np.asarray(index, dtype=np.int64)
        rows = self.source_rows(index)
        return ImageSet(
            images=np.asarray(self.images[rows]) if copy else self.images,
            labels=self.labels[index],
            cams=self.cams[index],
            paths=[self.paths[i] for i in index],
            modality=self.modality,
            rows=None if copy else rows,
        )


def check_modality(modality: str) -> str:
    """Return ``modality`` or raise a one-line error listing the valid names."""
    if modality not in MODALITIES:
        from dclnet.errors import DclnetError

        raise DclnetError(f"unknown modality {modality!r}; choose one of {', '.join(MODALITIES)}")
    return modality
