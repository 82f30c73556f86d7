"""Typed model outputs shared by the network, the objective and inference."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class DCLNetOutput:
    """Outputs of :meth:`dclnet.models.dclnet.DCLNet.forward` for a batch of ``B`` images.

    In training the batch is ``[visible; infrared]`` (``B = 2N``, visible image ``n`` and
    infrared image ``n`` share an identity). Shapes below use the default ResNet-50 at
    288 x 144: ``C = 2048``, final map ``18 x 9``, low-level map ``256 x 72 x 36``.

    Attributes:
        global_feat: ``B x C`` GeM-pooled final feature f (before the BNNeck).
        bn_feat: ``B x C`` BNNeck feature f_bn; its L2-normalised form is the embedding.
        logits: ``B x num_classes`` identity logits.
        part_logits: ``B x num_classes`` part-branch logits (computed on detached features).
        final_map: ``B x C x h x w`` final map X (not detached).
        low_map: ``B x C_low x H_z x W_z`` low-level map Z, output of the modality-specific
            stages (not detached); the dense contrastive loss acts on it.
        pixel_logits: ``B x 8 x H_z x W_z`` PAP logits (2 fg/bg + 6 parts) on detached
            features, each image scored by its own modality's classifier.
    """

    global_feat: Tensor
    bn_feat: Tensor
    logits: Tensor
    part_logits: Tensor
    final_map: Tensor
    low_map: Tensor
    pixel_logits: Tensor


def pap_mask(pixel_logits: Tensor) -> Tensor:
    """PAP mask ``m = fg * (part + 1)`` from ``B x (2 + P) x H x W`` logits → ``B x H x W`` int64.

    Values: 0 = background, k = body part k (1..P, top to bottom).
    """
    foreground = pixel_logits[:, :2].argmax(dim=1)  # B x H x W, 1 = foreground
    part = pixel_logits[:, 2:].argmax(dim=1)  # B x H x W, 0..P-1
    return foreground * (part + 1)
