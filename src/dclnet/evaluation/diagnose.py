"""``dclnet diagnose``: measure DCLNet's mechanisms against the synthetic set's pixel truth.

On the test identities of the built-in synthetic set (people the model never trained on), in
eval mode and without random erasing, every mask is compared with the true body on the
low-level map Z's grid (ground truth downsampled by majority vote):

- ``foreground_iou``: IoU of the mask's foreground (label > 0) with the person pixels, for the
  PAP masks, PAP + SRM, the CAM pseudo-labels that train PAP, and fixed stripes (all cells
  foreground: the floor a learned mask must beat);
- ``part_miou``: mean IoU of mask part k with the true body band k (k-th sixth of the
  person's head-to-sole extent);
- ``correspondence``: for visible/infrared images of one identity, the share of visible
  person cells whose most similar infrared cell on Z is on the person in the same band, and
  its chance level. This is what the dense contrastive loss optimises.

CAM pseudo-labels need a class: test identities have none in the classifier, so each image
uses the global identity classifier's top-1 class (the released code's rule). ``cam_labels_train``
scores them on training images with their true identity instead, and ``cam_train`` says where
the part CAMs put their weight there: per final-map column, against the person's share.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from dclnet.data.augment import test_transform
from dclnet.data.records import INFRARED, VISIBLE
from dclnet.evaluation.mechanisms import (
    correspondence,
    foreground_iou,
    identity_by_column,
    majority_downsample,
    part_miou,
)
from dclnet.losses.parsing import parsing_labels, part_cams, predicted_masks, stripe_masks
from dclnet.losses.rectify import rectify_masks
from dclnet.models.dclnet import DCLNet

logger = logging.getLogger(__name__)

MASKS = ("pap", "pap_srm", "cam_labels", "stripes")


@torch.no_grad()
def _masks_and_maps(
    model: DCLNet,
    images: np.ndarray,
    modality: str,
    classes: np.ndarray | None,
    *,
    device: torch.device,
    batch_size: int,
    fold_bnneck: bool,
    with_cams: bool = False,
    with_columns: bool = False,
) -> dict[str, Tensor]:
    """Z, the PAP / PAP+SRM / CAM-label masks of ``N x H x W x 3`` uint8 images (CPU tensors),
    with ``with_cams`` the per-stripe normalised part CAMs on the final map (``cams``,
    ``N x h x w``), with ``with_columns`` the final map average-pooled to the part stripes,
    columns kept (``columns``, ``N x C x P x w``).

    ``classes`` (``N``) picks each image's CAM class; ``None`` = global classifier top-1.
    """
    keys = ("z", "pap", "pap_srm", "cam_labels") + (("cams",) if with_cams else ())
    keys += ("columns",) if with_columns else ()
    out: dict[str, list[Tensor]] = {k: [] for k in keys}
    weight = model.cam_weight(fold_bnneck)
    for start in range(0, len(images), batch_size):
        x = test_transform(torch.from_numpy(images[start : start + batch_size])).to(device)
        res = model(x, None) if modality == VISIBLE else model(None, x)
        grid = tuple(res.low_map.shape[-2:])
        pap = predicted_masks(res.pixel_logits)
        if classes is None:
            cls = res.logits.argmax(dim=1)
        else:
            cls = torch.from_numpy(classes[start : start + batch_size]).to(device)
        cams = parsing_labels(res.final_map, weight, cls, None, grid, model.num_parts)
        out["z"].append(res.low_map.float().cpu())
        out["pap"].append(pap.cpu())
        out["pap_srm"].append(rectify_masks(res.low_map, pap, model.num_parts).cpu())
        out["cam_labels"].append(cams.cpu())
        if with_cams:
            out["cams"].append(part_cams(res.final_map, weight, cls, model.num_parts).cpu())
        if with_columns:
            size = (model.num_parts, res.final_map.shape[-1])
            out["columns"].append(F.adaptive_avg_pool2d(res.final_map.float(), size).cpu())
    return {k: torch.cat(v) for k, v in out.items()}


def _every_other(labels: np.ndarray) -> np.ndarray:
    """Bool mask of every other image of each label (the 1st, 3rd, … in order of appearance)."""
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    first = np.searchsorted(sorted_labels, sorted_labels)  # start of each image's label run
    mask = np.empty(len(labels), dtype=bool)
    mask[order] = (np.arange(len(labels)) - first) % 2 == 0
    return mask


def _pairs(labels: np.ndarray, rows_v: np.ndarray, rows_i: np.ndarray, per_id: int):
    """Visible/infrared row pairs of the same identity: the j-th image of each, j < per_id."""
    pv, pi = [], []
    for pid in np.unique(labels[rows_v]):
        v = rows_v[labels[rows_v] == pid]
        i = rows_i[labels[rows_i] == pid]
        k = min(len(v), len(i), per_id)
        pv += list(v[:k])
        pi += list(i[:k])
    return np.array(pv, dtype=np.int64), np.array(pi, dtype=np.int64)


def diagnose_model(
    model: DCLNet,
    *,
    size: tuple[int, int],
    synthetic_ids: int = 64,
    synthetic_seed: int = 0,
    device: str | torch.device = "cpu",
    batch_size: int = 64,
    pairs_per_id: int = 8,
    fold_bnneck: bool = False,
    trained_on_set: bool = False,
) -> dict[str, Any]:
    """Mechanism metrics of ``model`` (eval mode) on the synthetic set's test identities.

    Args:
        model: The network; put in eval mode here.
        size: ``(H, W)`` input size (the set is rendered at this size).
        synthetic_ids: Identities of the synthetic set (its test ids are used).
        synthetic_seed: Seed of the synthetic set.
        device: Where the model runs.
        batch_size: Images per forward.
        pairs_per_id: Most visible/infrared pairs per identity for ``correspondence``.
        fold_bnneck: Score CAMs with the part BNNeck's per-channel scale folded into the
            part-classifier weight (``loss.cam_fold_bn``).
        trained_on_set: The model was trained on this very set (same ids and seed): also
            score the CAM labels on its training images (``cam_labels_train``, else None).

    Returns:
        JSON-ready dict with ``foreground_iou``, ``part_miou``, ``correspondence``, ``grid``,
        ``cam_labels_train`` and what was measured (``images``, ``identities``, ``seed``).
    """
    from dclnet.data.datasets import synthetic_set

    device = torch.device(device)
    model = model.to(device).eval()
    syn = synthetic_set(synthetic_ids, synthetic_seed, *size)
    labels = np.array([r.label for r in syn.records])
    modality = np.array([r.modality for r in syn.records])
    test = np.isin(labels, syn.test_ids)
    rows = {m: np.flatnonzero(test & (modality == m)) for m in (VISIBLE, INFRARED)}
    kw = dict(device=device, batch_size=batch_size, fold_bnneck=fold_bnneck)
    res = {
        m: _masks_and_maps(model, syn.images[r], m, None, with_columns=True, **kw)
        for m, r in rows.items()
    }
    grid = tuple(res[VISIBLE]["z"].shape[-2:])
    parts = model.num_parts
    truth = {
        m: majority_downsample(torch.from_numpy(syn.bands(r, parts)), grid, parts + 1)
        for m, r in rows.items()
    }
    t_all = torch.cat([truth[VISIBLE], truth[INFRARED]])
    masks = {k: torch.cat([res[VISIBLE][k], res[INFRARED][k]]) for k in MASKS[:3]}
    masks["stripes"] = stripe_masks(len(t_all), grid, parts)
    fg = {k: foreground_iou(v, t_all) for k, v in masks.items()}
    miou = {k: part_miou(masks[k], t_all, parts) for k in ("pap", "pap_srm", "stripes")}
    # SRM given the true bands: what it does to a perfect mask with these Z features
    z_all = torch.cat([res[VISIBLE]["z"], res[INFRARED]["z"]])
    miou["truth_srm"] = part_miou(rectify_masks(z_all, t_all, parts), t_all, parts)
    # correspondence on pairs of the same identity
    pos = {m: {row: j for j, row in enumerate(r)} for m, r in rows.items()}
    pv, pi = _pairs(labels, rows[VISIBLE], rows[INFRARED], pairs_per_id)
    jv = torch.tensor([pos[VISIBLE][r] for r in pv], dtype=torch.int64)
    ji = torch.tensor([pos[INFRARED][r] for r in pi], dtype=torch.int64)
    corr = correspondence(
        res[VISIBLE]["z"][jv], res[INFRARED]["z"][ji], truth[VISIBLE][jv], truth[INFRARED][ji]
    )
    train = _cam_labels_train(model, syn, labels, modality, grid, kw) if trained_on_set else None
    both = np.concatenate([labels[rows[VISIBLE]], labels[rows[INFRARED]]])
    columns = identity_by_column(
        torch.cat([res[VISIBLE]["columns"], res[INFRARED]["columns"]]),
        torch.from_numpy(both),
        torch.from_numpy(_every_other(both)),
    )
    return {
        "foreground_iou": fg,
        "part_miou": miou,
        "correspondence": {
            "accuracy": corr["accuracy"],
            "chance": corr["chance"],
            "num_pairs": len(pv),
        },
        "grid": list(grid),
        "identity_by_column": columns,
        "cam_labels_train": train["foreground_iou"] if train else None,
        "cam_train": train,
        "synthetic": {
            "ids": synthetic_ids,
            "seed": synthetic_seed,
            "size": list(size),
            "test_identities": len(syn.test_ids),
            "images": int(test.sum()),
        },
    }


def _cam_labels_train(model, syn, labels, modality, grid, kw) -> dict[str, Any] | None:
    """The CAM labels on training images with their true training class.

    Training classes are the set's training ids, plus its validation ids when no validation
    split was held out (both ascending, as the trainer labels them). Returns None when the
    model's classifier matches neither (a model trained on another data set or seed), else
    ``foreground_iou`` of the labels and, on the final map, where the CAMs put their
    weight: ``cam_by_column`` (mean normalised part CAM of each column),
    ``foreground_by_column`` (mean share of person pixels in each column's cells) and
    ``correlation`` (per image, Pearson correlation of CAM and person share over the
    cells; mean over images).
    """
    classes = model.classifier.out_features
    train_ids = np.array(sorted(syn.train_ids + syn.val_ids))
    if classes != len(train_ids):
        train_ids = np.array(syn.train_ids)
        if classes != len(train_ids):
            return None
    parts = model.num_parts
    preds, truths, cams, person = [], [], [], []
    for m in (VISIBLE, INFRARED):
        rows = np.flatnonzero(np.isin(labels, train_ids) & (modality == m))
        classes = np.searchsorted(train_ids, labels[rows]).astype(np.int64)
        out = _masks_and_maps(model, syn.images[rows], m, classes, with_cams=True, **kw)
        preds.append(out["cam_labels"])
        cams.append(out["cams"])
        bands = torch.from_numpy(syn.bands(rows, parts))
        truths.append(majority_downsample(bands, grid, parts + 1))
        fg = (bands > 0).float()[:, None]  # N x 1 x H x W
        person.append(F.adaptive_avg_pool2d(fg, out["cams"].shape[-2:])[:, 0])  # N x h x w
    cam, share = torch.cat(cams), torch.cat(person)
    return {
        "foreground_iou": foreground_iou(torch.cat(preds), torch.cat(truths)),
        "cam_by_column": cam.mean(dim=(0, 1)).tolist(),
        "foreground_by_column": share.mean(dim=(0, 1)).tolist(),
        "correlation": _mean_correlation(cam.flatten(1), share.flatten(1)),
    }


def _mean_correlation(a: Tensor, b: Tensor) -> float:
    """Mean over rows of the Pearson correlation of ``a[i]`` and ``b[i]`` (``N x D`` each);
    rows where either side is constant count as 0."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    den = a.norm(dim=1) * b.norm(dim=1)
    r = torch.where(den > 0, (a * b).sum(dim=1) / den.clamp_min(1e-12), torch.zeros_like(den))
    return float(r.mean())


def format_diagnosis(result: dict[str, Any]) -> str:
    """The printed table of :func:`diagnose_model`'s result."""
    fg, miou, corr = result["foreground_iou"], result["part_miou"], result["correspondence"]
    h, w = result["grid"]
    syn = result["synthetic"]

    def cell(v: float | None) -> str:
        return f"{v:>11.3f}" if v is not None else f"{'-':>11s}"

    lines = [
        f"SYNTHETIC test identities ({syn['test_identities']} ids, {syn['images']} images, "
        f"seed {syn['seed']}), on Z's {h} x {w} grid:",
        f"{'':22s}" + "".join(f"{k:>11s}" for k in MASKS),
        f"{'foreground IoU':22s}" + "".join(cell(fg.get(k)) for k in MASKS),
        f"{'part mIoU (bands)':22s}" + "".join(cell(miou.get(k)) for k in MASKS),
        f"cross-modal correspondence on Z: accuracy {corr['accuracy']:.3f} "
        f"(chance {corr['chance']:.3f}, {corr['num_pairs']} pairs)",
    ]
    if miou.get("truth_srm") is not None:
        lines.append(
            f"SRM applied to the true band masks: part mIoU 1.000 -> {miou['truth_srm']:.3f}"
        )
    if result.get("identity_by_column") is not None:
        col = result["identity_by_column"]
        lines.append(
            "identity read from one final-map column (left to right): "
            + " ".join(f"{v:.2f}" for v in col["accuracy"])
            + f" (chance {col['chance']:.2f})"
        )
    if result.get("cam_labels_train") is not None:
        lines.append(
            f"CAM labels on training images (true class): foreground IoU "
            f"{result['cam_labels_train']:.3f}"
        )
        cam = result["cam_train"]
        lines += [
            "  where the part CAMs point (final-map columns, left to right):",
            "    mean normalised CAM  " + " ".join(f"{v:.2f}" for v in cam["cam_by_column"]),
            "    person share         " + " ".join(f"{v:.2f}" for v in cam["foreground_by_column"]),
            f"    CAM-person correlation over the cells, per image: {cam['correlation']:.3f}",
        ]
    return "\n".join(lines)
