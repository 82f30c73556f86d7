"""Built-in synthetic two-modality person data set, in memory or written as SYSU-MM01 / RegDB /
LLCM.

The people are procedural (see :mod:`dclnet.data.sources.synthetic_render`): identities share
only body shape and texture layout across modalities, so matching an infrared image to a
visible one is a genuine cross-modality problem, while everything is deterministic given a seed.

The in-memory set mirrors SYSU-MM01: person ids are 1-based; cameras 1, 2, 4, 5 are visible
and 3, 6 infrared; a person may be missing from some cameras but always has at least one
visible and one infrared camera; each (camera, person) folder holds a few images.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from dclnet.data.records import INFRARED, VISIBLE, Record
from dclnet.data.sources.synthetic_render import (
    People,
    body_bands,
    render,
    sample_people,
    sample_views,
)
from dclnet.data.sources.synthetic_style import STYLES
from dclnet.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

# camera -> (modality, RGB tint, blur sigma in pixels at 128 x 64)
SYSU_CAMERAS = {
    1: (VISIBLE, (1.06, 1.0, 0.9), 0.5),
    2: (VISIBLE, (0.9, 0.98, 1.1), 0.8),
    3: (INFRARED, (1.0, 1.0, 1.0), 0.9),
    4: (VISIBLE, (1.0, 1.06, 0.93), 0.6),
    5: (VISIBLE, (1.1, 0.95, 1.0), 1.0),
    6: (INFRARED, (1.0, 1.0, 1.0), 1.2),
}
REGDB_CAMERAS = {1: (VISIBLE, (1.0, 1.0, 1.0), 0.6), 2: (INFRARED, (1.0, 1.0, 1.0), 1.0)}
# LLCM: nine cameras see by day (visible) and by night (near-infrared); infrared camera 3 has
# no images, as in the release. Render keys: camera k visible -> k, infrared -> 100 + k.
LLCM_VISIBLE_CAMS = (1, 2, 3, 4, 5, 6, 7, 8, 9)
LLCM_INFRARED_CAMS = (1, 2, 4, 5, 6, 7, 8, 9)
_LLCM_TINTS = (
    (1.06, 1.0, 0.9),
    (0.9, 0.98, 1.1),
    (1.0, 1.06, 0.93),
    (1.1, 0.95, 1.0),
    (0.95, 1.04, 1.02),
    (1.03, 0.97, 1.08),
    (0.92, 1.02, 0.96),
    (1.08, 1.03, 0.94),
    (0.97, 0.94, 1.06),
)
LLCM_CAMERAS = {
    **{c: (VISIBLE, _LLCM_TINTS[c - 1], 0.5 + 0.07 * c) for c in LLCM_VISIBLE_CAMS},
    **{100 + c: (INFRARED, (1.0, 1.0, 1.0), 0.8 + 0.06 * c) for c in LLCM_INFRARED_CAMS},
}
SYSU_VISIBLE_CAMS = (1, 2, 4, 5)
SYSU_INFRARED_CAMS = (3, 6)
CHUNK = 256  # images rendered at once; fixed so results do not depend on memory


@dataclass
class SyntheticSet:
    """A synthetic data set laid out like SYSU-MM01, held in memory.

    Attributes:
        images: ``N x H x W x 3`` uint8; infrared images have three equal channels.
        parts: ``N x H x W`` uint8 ground-truth part labels (values index
            :data:`~dclnet.data.sources.synthetic_render.PART_NAMES`, 0 = background or
            occluded), for checking body-part parsing.
        body_v: ``N x H`` float32 body coordinate of every pixel row (0 = top of the head,
            1 = soles of the person drawn in that image); :meth:`bands` turns it into body
            bands.
        records: ``N`` records, ``images[i]`` is ``records[i]``: path
            ``cam{c}/{pid:04d}/{idx:04d}.jpg`` (``idx`` from 1), label = person id, camera,
            modality. Sorted by path.
        train_ids: Training person ids, ascending.
        val_ids: Validation person ids (disjoint from training), ascending.
        test_ids: Test person ids, ascending.
    """

    images: np.ndarray
    parts: np.ndarray
    body_v: np.ndarray
    records: list[Record]
    train_ids: list[int]
    val_ids: list[int]
    test_ids: list[int]
    _index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._index = {r.path: i for i, r in enumerate(self.records)}

    def listing(self) -> dict[tuple[int, int], list[str]]:
        """``(cam, pid) -> sorted file names`` (e.g. ``"0001.jpg"``) of every existing folder."""
        out: dict[tuple[int, int], list[str]] = {}
        for r in self.records:
            out.setdefault((r.cam, r.label), []).append(r.path.rsplit("/", 1)[1])
        return {key: sorted(names) for key, names in sorted(out.items())}

    def bands(self, rows: np.ndarray | None = None, num_bands: int = 6) -> np.ndarray:
        """Body-band maps ``n x H x W`` uint8 (0 = not on the person, k = k-th sixth of the
        person's head-to-sole extent) of images ``rows`` (default: all)."""
        rows = np.arange(len(self.records)) if rows is None else np.asarray(rows)
        return body_bands(self.parts[rows], self.body_v[rows], num_bands)

    def image(self, path: str) -> np.ndarray:
        """The ``H x W x 3`` uint8 image of record ``path``."""
        if path not in self._index:
            raise DataError(f"{path}: no such synthetic image; use a path from .records")
        return self.images[self._index[path]]


def _check(name: str, ok: bool, need: str) -> None:
    if not ok:
        raise ConfigError(f"synthetic {name}: must be {need}")


def physical_memory() -> int | None:
    """Bytes of memory of this machine (``None`` where the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return None


def check_request(
    num_ids: int,
    seed: int,
    height: int,
    width: int,
    images_per_id: int,
    *,
    ids_name: str = "synthetic num_ids",
    seed_name: str = "synthetic seed",
) -> None:
    """Refuse a seed below 0 and a set that cannot fit in memory, before anything is allocated.

    The set is rendered in memory (images, part labels, body coordinates: about
    ``4 * H * W`` bytes per image); ``images_per_id`` is the most images one person gets.

    Raises:
        ConfigError: Naming ``seed_name`` / ``ids_name`` (a command's option, or the
            library's argument).
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"{seed_name}: must be an integer >= 0, got {seed!r}")
    if isinstance(num_ids, bool) or not isinstance(num_ids, (int, np.integer)):
        raise ConfigError(f"{ids_name}: must be an integer, got {num_ids!r}")
    need = int(num_ids) * images_per_id * (4 * height * width + 4 * height)
    have = physical_memory()
    if have is not None and need > have:
        raise ConfigError(
            f"{ids_name} {num_ids}: the synthetic set would take up to {need / 2**30:.1f} GiB "
            f"of memory ({num_ids} ids x {images_per_id} images of {height} x {width}), more "
            f"than this machine's {have / 2**30:.1f} GiB; use fewer identities"
        )


def _split_sizes(num_ids: int, num_val: int | None, num_test: int | None) -> tuple[int, int]:
    """Default 5/16 of the ids for test and 1/16 (at least 1) for validation (64 -> 40 / 4 / 20)."""
    num_test = max(1, round(num_ids * 5 / 16)) if num_test is None else num_test
    num_val = max(1, round(num_ids / 16)) if num_val is None else num_val
    _check("num_test_ids", num_test >= 1, "at least 1")
    _check("num_val_ids", num_val >= 0, "at least 0")
    _check("num_ids", num_ids - num_test - num_val >= 1, "larger than val + test ids")
    return num_val, num_test


def render_images(
    people: People,
    who: np.ndarray,
    cams: np.ndarray,
    cameras: dict[int, tuple[str, tuple[float, float, float], float]],
    height: int,
    width: int,
    seed: np.random.SeedSequence,
    style: str = "default",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render image ``i`` of person row ``who[i]`` seen by camera ``cams[i]``, in the look
    ``style`` (:mod:`~dclnet.data.sources.synthetic_style`).

    Returns:
        ``N x H x W x 3`` uint8 images, ``N x H x W`` uint8 part labels and ``N x H`` float32
        body coordinate of every pixel row.
    """
    view_seed, pixel_seed = seed.spawn(2)
    views = sample_views(np.random.default_rng(view_seed), len(who), style)
    pixel_rng = np.random.default_rng(pixel_seed)
    scale = height / 128  # camera blur is given at the native 128 x 64
    tint = np.array([cameras[c][1] for c in cams], dtype=np.float32).reshape(-1, 3)
    sigma = np.array([cameras[c][2] for c in cams], dtype=np.float32) * scale
    infrared = np.array([cameras[c][0] == INFRARED for c in cams], dtype=bool)
    images = np.empty((len(who), height, width, 3), dtype=np.uint8)
    parts = np.empty((len(who), height, width), dtype=np.uint8)
    body_v = np.empty((len(who), height), dtype=np.float32)
    for modality in (False, True):
        rows = np.flatnonzero(infrared == modality)
        for start in range(0, len(rows), CHUNK):
            sel = rows[start : start + CHUNK]
            images[sel], parts[sel], body_v[sel] = render(
                people,
                who[sel],
                {k: a[sel] for k, a in views.items()},
                tint[sel],
                sigma[sel],
                modality,
                height,
                width,
                pixel_rng,
            )
    return images, parts, body_v


def _sysu_structure(
    rng: np.random.Generator, num_ids: int, presence: float, per_camera: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, list[Record]]:
    """Which (camera, person) folders exist and how many images each holds, as records."""
    cams = np.array(sorted(SYSU_CAMERAS))
    present = rng.random((num_ids, len(cams))) < presence
    for group in (SYSU_VISIBLE_CAMS, SYSU_INFRARED_CAMS):
        cols = np.searchsorted(cams, group)
        empty = ~present[:, cols].any(1)
        present[np.flatnonzero(empty), cols[rng.integers(0, len(cols), empty.sum())]] = True
    counts = rng.integers(per_camera[0], per_camera[1] + 1, (num_ids, len(cams))) * present
    records, who, cam_of = [], [], []
    for j, cam in enumerate(cams):
        modality = SYSU_CAMERAS[cam][0]
        for row in np.flatnonzero(counts[:, j]):
            for k in range(1, counts[row, j] + 1):
                records.append(
                    Record(f"cam{cam}/{row + 1:04d}/{k:04d}.jpg", row + 1, cam, modality)
                )
                who.append(row)
                cam_of.append(cam)
    return np.array(who, dtype=np.int64), np.array(cam_of, dtype=np.int64), records


def make_synthetic(
    num_ids: int = 64,
    *,
    seed: int = 0,
    height: int = 128,
    width: int = 64,
    images_per_camera: tuple[int, int] = (4, 6),
    camera_presence: float = 0.8,
    num_val_ids: int | None = None,
    num_test_ids: int | None = None,
    style: str = "default",
) -> SyntheticSet:
    """Generate a SYSU-MM01-like synthetic set.

    Args:
        num_ids: Number of people (ids ``1..num_ids``).
        seed: Everything is a deterministic function of the arguments.
        height: Image height in pixels.
        width: Image width in pixels.
        images_per_camera: Inclusive range of images per existing (camera, person) folder.
        camera_presence: Probability that a person appears in a given camera (at least one
            visible and one infrared camera are always kept).
        num_val_ids: Validation ids; default ``max(1, round(num_ids / 16))``.
        num_test_ids: Test ids; default ``round(5 * num_ids / 16)``. The rest train.
        style: The look (:data:`~dclnet.data.sources.synthetic_style.STYLES`): ``default``
            (every built-in set's), ``wide`` (the synthetic pretraining's randomised look)
            or ``heldout`` (a look nothing is pretrained or tuned on). The structure (who is
            filmed by which camera, the splits) does not depend on it.

    Returns:
        The set; the default has 64 people: 40 train, 4 val, 20 test, about 1,600 images.
    """
    _check("num_ids", num_ids >= 3, "at least 3 (train, validation and test ids)")
    _check("height/width", height >= 16 and width >= 8, "at least 16 x 8 pixels")
    lo, hi = images_per_camera
    _check("images_per_camera", 1 <= lo <= hi, "a range (low, high) with 1 <= low <= high")
    _check("camera_presence", 0.0 <= camera_presence <= 1.0, "a probability in [0, 1]")
    check_request(num_ids, seed, height, width, len(SYSU_CAMERAS) * hi)
    _check("style", style in STYLES, f"one of {', '.join(STYLES)}")
    num_val, num_test = _split_sizes(num_ids, num_val_ids, num_test_ids)
    people_seed, layout_seed, image_seed = np.random.SeedSequence(seed).spawn(3)
    people = sample_people(np.random.default_rng(people_seed), num_ids, style)
    layout_rng = np.random.default_rng(layout_seed)
    order = layout_rng.permutation(num_ids) + 1
    test_ids = sorted(order[:num_test].tolist())
    val_ids = sorted(order[num_test : num_test + num_val].tolist())
    train_ids = sorted(order[num_test + num_val :].tolist())
    who, cams, records = _sysu_structure(layout_rng, num_ids, camera_presence, (lo, hi))
    images, parts, body_v = render_images(
        people, who, cams, SYSU_CAMERAS, height, width, image_seed, style
    )
    logger.info("synthetic set: %d ids, %d images of %d x %d", num_ids, len(records), height, width)
    return SyntheticSet(images, parts, body_v, records, train_ids, val_ids, test_ids)


def _prepare_out_dir(out_dir: Path, owned: tuple[str, ...], overwrite: bool) -> Path:
    """Create ``out_dir``; refuse a non-empty one unless ``overwrite`` (then clear ``owned``)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a directory; choose a directory path")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise DataError(
                f"{out}: directory is not empty; choose a new one or pass overwrite=True "
                "(--overwrite on the command line)"
            )
        for name in owned:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out


def save_sysu(dataset: SyntheticSet, out_dir: Path, *, overwrite: bool = False) -> Path:
    """Write ``dataset`` in the SYSU-MM01 raw layout.

    Layout: ``cam1..cam6/NNNN/MMMM.jpg`` (JPEG quality 95, no chroma subsampling; infrared as
    three equal channels) and ``exp/{train,val,test}_id.txt`` (one line of comma-separated
    ids). With ``overwrite``, existing ``cam*`` and ``exp`` entries are replaced; other files
    are left alone.

    Returns:
        The data-set root.
    """
    for name in ("train", "val", "test"):
        if not getattr(dataset, f"{name}_ids"):
            raise ConfigError(f"synthetic num_{name}_ids: must be at least 1 for the SYSU layout")
    owned = tuple(f"cam{c}" for c in SYSU_CAMERAS) + ("exp",)
    out = _prepare_out_dir(out_dir, owned, overwrite)
    for record, image in zip(dataset.records, dataset.images):
        path = out / record.path
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path, quality=95, subsampling=0)  # 4:4:4 chroma
    (out / "exp").mkdir()
    for name, ids in (("train", dataset.train_ids), ("val", dataset.val_ids)):
        (out / "exp" / f"{name}_id.txt").write_text(",".join(map(str, ids)) + "\n")
    (out / "exp" / "test_id.txt").write_text(",".join(map(str, dataset.test_ids)) + "\n")
    return out


def write_sysu(
    out_dir: Path,
    *,
    num_ids: int = 64,
    seed: int = 0,
    height: int = 128,
    width: int = 64,
    images_per_camera: tuple[int, int] = (4, 6),
    overwrite: bool = False,
    style: str = "default",
) -> Path:
    """Generate a synthetic set (see :func:`make_synthetic`; ``style`` its look) and write it
    as SYSU-MM01.

    Returns:
        The data-set root ``out_dir``.
    """
    check_request(num_ids, seed, height, width, len(SYSU_CAMERAS) * max(images_per_camera))
    _check("style", style in STYLES, f"one of {', '.join(STYLES)}")
    owned = tuple(f"cam{c}" for c in SYSU_CAMERAS) + ("exp",)
    out = _prepare_out_dir(out_dir, owned, overwrite)  # fail before spending time rendering
    dataset = make_synthetic(
        num_ids,
        seed=seed,
        height=height,
        width=width,
        images_per_camera=images_per_camera,
        style=style,
    )
    return save_sysu(dataset, out, overwrite=True)


def regdb_trial(num_ids: int, trial: int, seed: int = 0) -> tuple[list[int], list[int]]:
    """Train and test person ids (ascending) of RegDB trial ``trial``: a seeded half split."""
    order = np.random.default_rng([seed, trial]).permutation(num_ids) + 1
    half = num_ids // 2
    return sorted(order[:half].tolist()), sorted(order[half:].tolist())


def write_regdb(
    out_dir: Path,
    *,
    num_ids: int = 40,
    seed: int = 0,
    height: int = 128,
    width: int = 64,
    images_per_modality: int = 10,
    trials: int = 10,
    overwrite: bool = False,
    style: str = "default",
) -> Path:
    """Generate synthetic people (in the look ``style``) and write them in the RegDB raw
    layout.

    Layout: ``Visible/<pid>/v_<pid>_<k>.bmp``, ``Thermal/<pid>/t_<pid>_<k>.bmp`` (pid from 1,
    ``k`` from 1, zero-padded) and ``idx/{train,test}_{visible,thermal}_{t}.txt`` for
    ``t = 1..trials``, lines ``"<relative path> <label>"``. Each trial splits the ids in half
    with a seeded permutation (:func:`regdb_trial`); train labels are re-indexed ``0..n-1`` in
    ascending id order, test labels are the person ids. With ``overwrite``, existing
    ``Visible``, ``Thermal`` and ``idx`` entries are replaced.

    Returns:
        The data-set root ``out_dir``.
    """
    _check("num_ids", num_ids >= 2, "at least 2")
    _check("images_per_modality", images_per_modality >= 1, "at least 1")
    _check("trials", trials >= 1, "at least 1")
    _check("height/width", height >= 16 and width >= 8, "at least 16 x 8 pixels")
    check_request(num_ids, seed, height, width, 2 * images_per_modality)
    people_seed, image_seed = np.random.SeedSequence([seed, 412]).spawn(2)
    _check("style", style in STYLES, f"one of {', '.join(STYLES)}")
    people = sample_people(np.random.default_rng(people_seed), num_ids, style)
    who = np.tile(np.repeat(np.arange(num_ids), images_per_modality), 2)
    cams = np.repeat([1, 2], num_ids * images_per_modality)
    out = _prepare_out_dir(out_dir, ("Visible", "Thermal", "idx"), overwrite)
    images, _, _ = render_images(people, who, cams, REGDB_CAMERAS, height, width, image_seed, style)
    paths: dict[str, dict[int, list[str]]] = {"visible": {}, "thermal": {}}
    for row, cam, image in zip(who, cams, images):
        folder, letter = ("Visible", "v") if cam == 1 else ("Thermal", "t")
        names = paths[folder.lower()].setdefault(int(row) + 1, [])
        rel = f"{folder}/{row + 1}/{letter}_{row + 1:04d}_{len(names) + 1:02d}.bmp"
        names.append(rel)
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(out / rel)
    (out / "idx").mkdir()
    for t in range(1, trials + 1):
        train, test = regdb_trial(num_ids, t, seed)
        for modality, by_id in paths.items():
            lines = [f"{p} {label}" for label, pid in enumerate(train) for p in by_id[pid]]
            (out / "idx" / f"train_{modality}_{t}.txt").write_text("\n".join(lines) + "\n")
            lines = [f"{p} {pid}" for pid in test for p in by_id[pid]]
            (out / "idx" / f"test_{modality}_{t}.txt").write_text("\n".join(lines) + "\n")
    return out


def _llcm_presence(
    rng: np.random.Generator, num_ids: int, presence: float, cams: tuple[int, ...]
) -> np.ndarray:
    """``num_ids x len(cams)`` bool: who is seen by which camera; at least two cameras each."""
    present = rng.random((num_ids, len(cams))) < presence
    for row in np.flatnonzero(present.sum(1) < 2):
        missing = np.flatnonzero(~present[row])
        present[row, rng.choice(missing, 2 - present[row].sum(), replace=False)] = True
    return present


def write_llcm(
    out_dir: Path,
    *,
    num_ids: int = 30,
    seed: int = 0,
    height: int = 128,
    width: int = 64,
    images_per_camera: tuple[int, int] = (1, 3),
    camera_presence: float = 0.5,
    num_test_ids: int | None = None,
    overwrite: bool = False,
    style: str = "default",
) -> Path:
    """Generate synthetic people (in the look ``style``) and write them in the LLCM raw
    layout.

    Layout (what :mod:`dclnet.data.sources.llcm` reads): training images
    ``vis/<pid:04d>/<name>`` and ``nir/<pid:04d>/<name>`` listed in ``idx/train_vis.txt`` and
    ``idx/train_nir.txt`` (lines ``"<relative path> <pid>"``; the reader re-indexes), test
    images ``test_vis/cam<k>/<pid:04d>/<name>`` and ``test_nir/cam<k>/<pid:04d>/<name>``, and
    ``idx/test_id.txt`` (one line of comma-separated ids). File names follow LLCM's
    ``<pid:04d>_c<kk>_s<seq>_f<frame>_<vis|nir>.jpg``. Visible cameras are 1-9, near-infrared
    1, 2, 4-9 (the same number is the same camera by day and by night). Each person is seen
    by each camera of each modality with probability ``camera_presence``, by at least two
    cameras per modality, with ``images_per_camera`` images per (modality, camera) folder;
    every test camera folder holds at least one person. Ids ``1..num_ids``, a seeded
    ``num_test_ids`` (default ``max(1, round(num_ids / 3))``, as LLCM's 351 of 1,064) test,
    the rest train. With ``overwrite``, existing ``vis``, ``nir``, ``test_vis``, ``test_nir``
    and ``idx`` entries are replaced.

    Returns:
        The data-set root ``out_dir``.
    """
    _check("num_ids", num_ids >= 2, "at least 2 (train and test ids)")
    num_test = max(1, round(num_ids / 3)) if num_test_ids is None else num_test_ids
    _check("num_test_ids", 1 <= num_test < num_ids, "at least 1 and below num_ids")
    _check("height/width", height >= 16 and width >= 8, "at least 16 x 8 pixels")
    lo, hi = images_per_camera
    _check("images_per_camera", 1 <= lo <= hi, "a range (low, high) with 1 <= low <= high")
    _check("camera_presence", 0.0 <= camera_presence <= 1.0, "a probability in [0, 1]")
    check_request(num_ids, seed, height, width, len(LLCM_CAMERAS) * hi)
    owned = ("vis", "nir", "test_vis", "test_nir", "idx")
    out = _prepare_out_dir(out_dir, owned, overwrite)  # fail before spending time rendering
    _check("style", style in STYLES, f"one of {', '.join(STYLES)}")
    people_seed, layout_seed, image_seed = np.random.SeedSequence([seed, 1064]).spawn(3)
    people = sample_people(np.random.default_rng(people_seed), num_ids, style)
    rng = np.random.default_rng(layout_seed)
    order = rng.permutation(num_ids) + 1
    test_ids = sorted(order[:num_test].tolist())
    is_test = np.isin(np.arange(1, num_ids + 1), test_ids)
    rows: list[tuple[int, int, str, str]] = []  # (person row, render key, path, train list)
    for cams, tag, offset in ((LLCM_VISIBLE_CAMS, "vis", 0), (LLCM_INFRARED_CAMS, "nir", 100)):
        present = _llcm_presence(rng, num_ids, camera_presence, cams)
        test_rows = np.flatnonzero(is_test)
        for j in np.flatnonzero(~present[test_rows].any(0)):  # no empty test camera folder
            present[rng.choice(test_rows), j] = True
        counts = rng.integers(lo, hi + 1, present.shape) * present
        for row in range(num_ids):
            pid = row + 1
            for j, cam in enumerate(cams):
                for k in range(counts[row, j]):
                    name = f"{pid:04d}_c{cam:02d}_s{100000 + row}_f{k + 1:04d}_{tag}.jpg"
                    if is_test[row]:
                        rows.append(
                            (row, offset + cam, f"test_{tag}/cam{cam}/{pid:04d}/{name}", "")
                        )
                    else:
                        rows.append((row, offset + cam, f"{tag}/{pid:04d}/{name}", tag))
    who = np.array([r[0] for r in rows], dtype=np.int64)
    keys = np.array([r[1] for r in rows], dtype=np.int64)
    images, _, _ = render_images(people, who, keys, LLCM_CAMERAS, height, width, image_seed, style)
    train_lines: dict[str, list[str]] = {"vis": [], "nir": []}
    for (row, _, rel, train), image in zip(rows, images):
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(out / rel, quality=95, subsampling=0)
        if train:
            train_lines[train].append(f"{rel} {row + 1}")
    (out / "idx").mkdir()
    for tag, lines in train_lines.items():
        (out / "idx" / f"train_{tag}.txt").write_text("\n".join(lines) + "\n")
    (out / "idx" / "test_id.txt").write_text(",".join(map(str, test_ids)) + "\n")
    logger.info("synthetic LLCM: %d ids (%d test), %d images", num_ids, num_test, len(rows))
    return out
