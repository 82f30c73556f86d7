"""Protocol settings → per-trial query/gallery lists.

This module decides *which* images are queries and which form each trial's gallery, and
which camera-filter rule the metric applies (``"sysu"``, ``"regdb"``, ``"llcm"``); it computes
no features and no metrics. Building the lists only lists directories and reads text files.

* SYSU-MM01 (and the built-in synthetic set, which follows the SYSU-MM01 rules on an
  in-memory listing): one split per gallery trial ``0..trials-1``, all sharing one query.
* LLCM: the same, with the LLCM cameras and one seeded image per (id, camera).
* RegDB: one split for the index trial ``1..10``; query = the test list of the query
  modality, gallery = the test list of the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dclnet.data.records import INFRARED, VISIBLE, Record
from dclnet.data.sources import llcm, regdb, sysu
from dclnet.errors import ConfigError, DataError

DATASETS = ("sysu", "regdb", "llcm", "synthetic")
#: Valid search directions per data set; the first is the default.
DIRECTIONS = {
    "sysu": ("i2v", "v2i"),
    "synthetic": ("i2v", "v2i"),
    "llcm": ("i2v", "v2i"),
    "regdb": ("v2t", "t2v"),
}
#: Query modality of each direction.
QUERY_MODALITY = {"i2v": INFRARED, "v2i": VISIBLE, "v2t": VISIBLE, "t2v": INFRARED}
RULES = {"sysu": "sysu", "synthetic": "sysu", "llcm": "llcm", "regdb": "regdb"}
_SYSU_LIKE = ("sysu", "synthetic")


def _choose(name: str, value: object, choices: tuple, why: str = "") -> None:
    if value not in choices:
        listed = ", ".join(str(c) for c in choices)
        raise ConfigError(f"invalid protocol {name} {value!r}{why}; choose one of {listed}")


@dataclass(frozen=True)
class ProtocolSettings:
    """How query and gallery lists are built.

    Attributes:
        dataset: ``"sysu"``, ``"regdb"``, ``"llcm"`` or ``"synthetic"`` (SYSU-MM01 rules).
        mode: SYSU-MM01 search mode, ``"all"`` or ``"indoor"`` (other data sets: ``"all"``).
        shots: Gallery images per (id, camera): 1, or 10 for SYSU-MM01 multi-shot.
        sampler: SYSU-MM01 gallery sampler: ``"seeded"`` or ``"official"``.
        trials: Number of gallery trials ``0..trials-1`` (SYSU-MM01, LLCM, synthetic).
        trial: RegDB index trial ``1..10`` (required for RegDB, unused elsewhere).
        direction: ``"i2v"`` (infrared query, the default) or ``"v2i"``; for RegDB
            ``"v2t"`` (visible query, the default) or ``"t2v"``. ``None`` picks the default.
    """

    dataset: str
    mode: str = "all"
    shots: int = 1
    sampler: str = "seeded"
    trials: int = 10
    trial: int | None = None
    direction: str | None = None

    def __post_init__(self) -> None:
        _choose("dataset", self.dataset, DATASETS)
        sysu_like = self.dataset in _SYSU_LIKE
        only_sysu = f" for {self.dataset} (only sysu and synthetic have more)"
        _choose("mode", self.mode, tuple(sysu.MODE_CAMS) if sysu_like else ("all",), only_sysu)
        _choose("shots", self.shots, sysu.SHOTS if sysu_like else (1,), only_sysu)
        samplers = sysu.SAMPLERS if self.dataset == "sysu" else ("seeded",)
        no_mat = f" for {self.dataset} (only sysu ships rand_perm_cam.mat)"
        _choose("sampler", self.sampler, samplers, "" if self.dataset == "sysu" else no_mat)
        if not isinstance(self.trials, int) or isinstance(self.trials, bool) or self.trials < 1:
            raise ConfigError(f"invalid protocol trials {self.trials!r}; expected an integer >= 1")
        if self.dataset == "regdb":
            _choose("trial", self.trial, regdb.TRIALS, " for regdb")
        elif self.trial is not None:
            raise ConfigError(
                f"invalid protocol trial {self.trial!r}: 'trial' selects a RegDB split; "
                f"use 'trials' for the number of {self.dataset} gallery trials"
            )
        if self.direction is None:
            object.__setattr__(self, "direction", DIRECTIONS[self.dataset][0])
        _choose("direction", self.direction, DIRECTIONS[self.dataset], f" for {self.dataset}")

    @property
    def query_modality(self) -> str:
        """Modality of the query images."""
        return QUERY_MODALITY[self.direction]

    @property
    def gallery_modality(self) -> str:
        """Modality of the gallery images."""
        return VISIBLE if self.query_modality == INFRARED else INFRARED

    @property
    def rule(self) -> str:
        """Camera-filter rule of the metric (``"sysu"``, ``"regdb"`` or ``"llcm"``)."""
        return RULES[self.dataset]

    def as_dict(self) -> dict:
        """The settings that matter for this data set, for a results file's ``"protocol"``."""
        if self.dataset == "regdb":
            return {"dataset": self.dataset, "trial": self.trial, "direction": self.direction}
        if self.dataset == "llcm":
            return {"dataset": self.dataset, "trials": self.trials, "direction": self.direction}
        return {
            "dataset": self.dataset,
            "mode": self.mode,
            "shots": self.shots,
            "sampler": self.sampler,
            "trials": self.trials,
            "direction": self.direction,
        }


@dataclass(frozen=True)
class EvalSplit:
    """Query and gallery of one trial.

    Attributes:
        query: Query records (labels are the data set's person ids).
        gallery: Gallery records.
        rule: Camera-filter rule for :func:`dclnet.evaluation.metrics.evaluate_ranking`.
        trial: Gallery trial (``0..``) or, for RegDB, the index trial (``1..10``).
    """

    query: list[Record]
    gallery: list[Record]
    rule: str
    trial: int


def _require_nonempty(records: list[Record], what: str, where: object) -> list[Record]:
    if not records:
        raise DataError(f"{where}: no {what} images for the test ids; check the data-set layout")
    return records


def _sysu_splits(
    settings: ProtocolSettings,
    root: Path | None,
    listing: sysu.Listing | None,
    test_ids: list[int] | None,
) -> list[EvalSplit]:
    if listing is None:
        if settings.dataset == "synthetic" or root is None:
            raise DataError(
                f"the {settings.dataset} protocol needs a root or a listing and test ids"
            )
        test_ids = sysu.read_ids(root, "test") if test_ids is None else test_ids
        listing = sysu.list_sysu(root, test_ids)
    elif test_ids is None:
        raise DataError("a listing needs its test ids (test_ids=...)")
    where = root if root is not None else f"{settings.dataset} listing"
    query = sysu.query_records(
        listing, test_ids, modality=settings.query_modality, mode=settings.mode
    )
    _require_nonempty(query, f"{settings.query_modality} query", where)
    rand_perm = None
    if settings.sampler == "official":
        if root is None:
            raise DataError(
                "the official sampler needs the SYSU-MM01 root; or use sampler 'seeded'"
            )
        rand_perm = sysu.load_rand_perm(root)
    splits = []
    for trial in range(settings.trials):
        gallery = sysu.gallery_records(
            listing,
            test_ids,
            mode=settings.mode,
            trial=trial,
            shots=settings.shots,
            sampler=settings.sampler,
            modality=settings.gallery_modality,
            rand_perm=rand_perm,
        )
        _require_nonempty(gallery, f"{settings.gallery_modality} gallery", where)
        splits.append(EvalSplit(query, gallery, settings.rule, trial))
    return splits


def _llcm_splits(settings: ProtocolSettings, root: Path) -> list[EvalSplit]:
    test_ids = llcm.read_test_ids(root)
    listing = llcm.list_llcm(root, test_ids)
    query = llcm.query_records(listing, test_ids, settings.query_modality)
    _require_nonempty(query, f"{settings.query_modality} query", root)
    splits = []
    for trial in range(settings.trials):
        gallery = llcm.gallery_records(listing, test_ids, settings.gallery_modality, trial)
        _require_nonempty(gallery, f"{settings.gallery_modality} gallery", root)
        splits.append(EvalSplit(query, gallery, settings.rule, trial))
    return splits


def _regdb_splits(settings: ProtocolSettings, root: Path) -> list[EvalSplit]:
    query = regdb.test_records(root, settings.trial, settings.query_modality)
    gallery = regdb.test_records(root, settings.trial, settings.gallery_modality)
    return [EvalSplit(query, gallery, settings.rule, settings.trial)]


def build_splits(
    settings: ProtocolSettings,
    root: Path | None = None,
    *,
    listing: sysu.Listing | None = None,
    test_ids: list[int] | None = None,
) -> list[EvalSplit]:
    """Query and gallery lists of every trial of a protocol.

    Args:
        settings: The protocol.
        root: Data-set root (required for RegDB, LLCM and the official SYSU-MM01 sampler).
        listing: SYSU-MM01-style listing ``{(cam, pid): sorted names}`` used instead of
            listing ``root`` (the synthetic set passes its in-memory listing here).
        test_ids: Test person ids; with ``listing``, required; with a SYSU-MM01 ``root``,
            they default to ``exp/test_id.txt``.

    Returns:
        One split per gallery trial (SYSU-MM01, synthetic, LLCM) or one split (RegDB).
    """
    if settings.dataset in _SYSU_LIKE:
        return _sysu_splits(settings, None if root is None else Path(root), listing, test_ids)
    if root is None:
        raise DataError(f"the {settings.dataset} protocol needs the data-set root")
    if settings.dataset == "llcm":
        return _llcm_splits(settings, Path(root))
    return _regdb_splits(settings, Path(root))


def needed_paths(splits: list[EvalSplit]) -> list[str]:
    """Sorted unique paths across the query and every gallery, so each image is embedded once."""
    return sorted({r.path for split in splits for r in (*split.query, *split.gallery)})
