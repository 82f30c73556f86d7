"""DCLNet objective: model outputs + targets -> named, weighted loss terms (docs/method.md §7).

``L = w_id L_id + w_metric L_metric + w_part_id L_part_id + w_pap L_pap + w_dcl L_dcl``.
A term whose weight is 0 is neither computed nor returned; the ablations of the paper are
presets of the weights and of the dense loss's masks (:data:`ABLATIONS`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from dclnet.errors import ConfigError
from dclnet.losses.dense_contrastive import dense_contrastive_loss
from dclnet.losses.identity import identity_loss
from dclnet.losses.metric import CENTER_PUSH, center_cluster_loss, triplet_loss
from dclnet.losses.parsing import (
    ERASE_RULES,
    downsample_erased,
    pap_loss,
    parsing_labels,
    predicted_masks,
    stripe_masks,
)
from dclnet.losses.rectify import rectify_masks
from dclnet.models.outputs import DCLNetOutput

METRIC_LOSSES = {"center_cluster": center_cluster_loss, "triplet": triplet_loss}
DCL_MASKS = ("pap", "stripes")
CAM_CLASSES = ("label", "predicted")


@dataclass(frozen=True)
class LossWeights:
    """Weight of each loss term; 0 switches the term off (it is then not computed)."""

    id: float = 1.0  # identity CE on the global logits
    metric: float = 1.0  # center-cluster or triplet loss on the global feature
    part_id: float = 1.0  # identity CE on the part-branch logits (trains the CAMs)
    pap: float = 1.0  # PAP pixel-classifier loss (lambda_pap)
    dcl: float = 1.0  # dense contrastive loss (lambda_dcl)


# Presets of the paper's ablations: keyword arguments of dclnet_objective.
ABLATIONS: dict[str, dict[str, Any]] = {
    "baseline": {
        "weights": LossWeights(part_id=0.0, pap=0.0, dcl=0.0),
        "dcl_masks": "pap",
        "srm": False,
    },
    "dcl_stripes": {
        "weights": LossWeights(part_id=0.0, pap=0.0),
        "dcl_masks": "stripes",
        "srm": False,
    },
    "dcl_pap": {"weights": LossWeights(), "dcl_masks": "pap", "srm": False},
    "full": {"weights": LossWeights(), "dcl_masks": "pap", "srm": True},
}


def _check_choice(name: str, value: str, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(sorted(choices))}, got {value!r}")


def _dcl_masks(
    out: DCLNetOutput, erased_z: Tensor | None, dcl_masks: str, srm: bool, num_parts: int
) -> Tensor:
    """``B x H_z x W_z`` int64 masks of the dense loss (no gradient)."""
    b, _, h, w = out.low_map.shape
    if dcl_masks == "stripes":
        return stripe_masks(b, (h, w), num_parts, erased=erased_z, device=out.low_map.device)
    masks = predicted_masks(out.pixel_logits.detach(), erased_z)
    return rectify_masks(out.low_map.detach(), masks, num_parts) if srm else masks


def dclnet_objective(
    out: DCLNetOutput,
    labels: Tensor,
    erased: Tensor | None,
    *,
    part_weight: Tensor | None = None,
    weights: LossWeights = LossWeights(),  # noqa: B008 (frozen, immutable)
    metric: str = "center_cluster",
    center_push: str = "identities",
    label_smoothing: float = 0.0,
    dcl_masks: str = "pap",
    srm: bool = True,
    cam_class: str = "label",
    tau: float = 0.05,
    continuity_weight: float = 0.5,
    num_parts: int = 6,
    erase_rule: str = "majority",
    chunk_size: int = 512,
    dcl_precision: str = "fp32",
) -> dict[str, Tensor]:
    """Weighted DCLNet loss terms for a ``[visible; infrared]`` batch of ``B = 2N`` images.

    Args:
        out: network outputs; image ``n`` and ``N + n`` are an aligned visible/infrared pair.
        labels: ``B`` int64 identity labels.
        erased: ``B x H x W`` bool image-resolution random-erasing mask, or None.
        part_weight: ``num_classes x (num_parts * C)`` part-classifier weight (for the CAMs;
            needed only when the PAP term is on).
        weights: per-term weights; 0 switches a term off.
        metric: ``"center_cluster"`` or ``"triplet"``.
        center_push: centres pushed by the center-cluster loss: ``"identities"`` (all) or
            ``"released"`` (those of rows 0, P, 2P, ..., as in the released code; see
            :func:`~dclnet.losses.metric.center_cluster_loss`). Ignored by the triplet loss.
        label_smoothing: label smoothing of the global identity loss.
        dcl_masks: ``"pap"`` (predicted PAP masks) or ``"stripes"`` (fixed stripes).
        srm: rectify PAP masks with SRM before the dense loss.
        cam_class: class of each image's CAM: ``"label"`` (ground truth) or ``"predicted"``
            (top-1 of the global identity classifier, as in the released code).
        tau: dense-loss temperature.
        continuity_weight: weight of the PAP continuity term.
        num_parts: number of body parts / stripes.
        erase_rule: when a low-map cell counts as erased: ``"majority"`` of its pixels, or
            ``"top_left"`` (its top-left pixel, the released code's nearest-neighbour rule).
        chunk_size: visible anchors per chunk of the dense loss.
        dcl_precision: operands of the dense loss's similarity and gradient products
            (``"fp32"``, ``"tf32"``, ``"bf16"``, ``"auto"``; see
            :func:`~dclnet.losses.dense_contrastive.dense_contrastive_loss`).

    Returns:
        The enabled weighted terms among ``id``, ``metric``, ``part_id``, ``pap``, ``dcl``,
        and ``total``, their sum.
    """
    _check_choice("metric", metric, METRIC_LOSSES)
    _check_choice("center_push", center_push, CENTER_PUSH)
    _check_choice("dcl_masks", dcl_masks, DCL_MASKS)
    _check_choice("cam_class", cam_class, CAM_CLASSES)
    _check_choice("erase_rule", erase_rule, ERASE_RULES)
    b = labels.shape[0]
    if b % 2:
        raise ValueError(f"batch must be [visible; infrared] with an even size, got {b}")
    grid = tuple(out.low_map.shape[-2:])
    erased_z = None if erased is None else downsample_erased(erased, grid, erase_rule)
    terms: dict[str, Tensor] = {}
    if weights.id:
        terms["id"] = weights.id * identity_loss(out.logits, labels, label_smoothing)
    if weights.metric:
        extra = {"push_rows": center_push} if metric == "center_cluster" else {}
        terms["metric"] = weights.metric * METRIC_LOSSES[metric](out.global_feat, labels, **extra)
    if weights.part_id:
        terms["part_id"] = weights.part_id * identity_loss(out.part_logits, labels)
    if weights.pap:
        if part_weight is None:
            raise ValueError("part_weight is required when the PAP loss is on")
        classes = labels if cam_class == "label" else out.logits.detach().argmax(dim=1)
        targets = parsing_labels(
            out.final_map.detach(), part_weight.detach(), classes, erased_z, grid, num_parts
        )
        terms["pap"] = weights.pap * pap_loss(out.pixel_logits, targets, continuity_weight)
    if weights.dcl:
        masks = _dcl_masks(out, erased_z, dcl_masks, srm, num_parts)  # B x H_z x W_z
        n = b // 2
        z = out.low_map
        dcl = dense_contrastive_loss(
            z[:n],
            z[n:],
            masks[:n],
            masks[n:],
            tau=tau,
            chunk_size=chunk_size,
            num_labels=num_parts + 1,
            precision=dcl_precision,
        )
        terms["dcl"] = weights.dcl * dcl
    total = sum(terms.values()) if terms else out.logits.sum() * 0.0
    terms["total"] = total
    return terms
