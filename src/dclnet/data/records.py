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

    Attributes:
        images: ``N x H x W x 3`` uint8.
        labels: ``N`` int64 identities.
        cams: ``N`` int64 camera ids.
        paths: ``N`` paths relative to the data-set root (or synthetic names).
        modality: ``"visible"`` or ``"infrared"``.
    """

    images: np.ndarray
    labels: np.ndarray
    cams: np.ndarray
    paths: list[str]
    modality: str

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, index: np.ndarray) -> ImageSet:
        """Rows ``index`` of this set (images are copied into memory)."""
        index = np.asarray(index, dtype=np.int64)
        return ImageSet(
            images=np.asarray(self.images[index]),
            labels=self.labels[index],
            cams=self.cams[index],
            paths=[self.paths[i] for i in index],
            modality=self.modality,
        )


def check_modality(modality: str) -> str:
    """Return ``modality`` or raise a one-line error listing the valid names."""
    if modality not in MODALITIES:
        from dclnet.errors import DclnetError

        raise DclnetError(f"unknown modality {modality!r}; choose one of {', '.join(MODALITIES)}")
    return modality
