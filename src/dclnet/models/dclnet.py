"""DCLNet: two-stream ResNet, GeM + BNNeck identity head, part branch and PAP pixel head.

Layout (docs/method.md §3-4). A ResNet is read as five stages: stem (conv1, bn1, relu, maxpool),
layer1, ..., layer4. The first ``split`` stages exist once per modality, the rest are shared::

    visible  ─ visible.{conv1,bn1,layer1,...}  ─┐
                                                ├─ Z (low_map) ─ shared.{layer2,...} ─ X
    infrared ─ infrared.{conv1,bn1,layer1,...} ─┘

Submodules keep torchvision's names below their prefix: torchvision key ``k`` of a stage
below ``split`` lives at ``visible.k`` and ``infrared.k``, any other at ``shared.k``
(:meth:`DCLNet.load_backbone_state_dict` does this mapping). Heads on the final map X:

- GeM (p = 3) → ``global_feat`` → BNNeck (bias frozen at 0) → ``bn_feat`` → ``classifier``.
- Part branch on ``X.detach()``: GeM over ``num_parts`` horizontal stripes, concatenated
  stripe-major (``[stripe 0 | stripe 1 | ...]``, C channels each, so row c of the part
  classifier splits into per-stripe chunks ``weight[c].view(num_parts, C)``) →
  ``part_bnneck`` → ``part_classifier``.
- PAP head: per pixel of Z's grid, the detached outputs of all five stages bilinearly resized
  and concatenated, scored by a bias-free linear map per modality (``pixel_classifier.visible``
  / ``.infrared``) into ``2 + num_parts`` logits: channels 0-1 are (background, foreground),
  channels 2.. are parts 1..num_parts from top to bottom.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dclnet.data.records import INFRARED, MODALITIES, VISIBLE
from dclnet.errors import ConfigError
from dclnet.models.outputs import DCLNetOutput, pap_mask
from dclnet.models.pooling import GeM, StripeGeM
from dclnet.models.resnet import (
    STAGES,
    ResNetStages,
    build_resnet,
    check_state_dict,
    pretrained_state_dict,
    stage_of_key,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PIXEL_INITS = ("default", "normal")  # PAP pixel-classifier init ("normal": released code)


def _bnneck(dim: int) -> nn.BatchNorm1d:
    """BatchNorm1d with weight ~ N(1, 0.01) and a bias frozen at 0."""
    bn = nn.BatchNorm1d(dim)
    nn.init.normal_(bn.weight, 1.0, 0.01)
    nn.init.zeros_(bn.bias)
    bn.bias.requires_grad_(False)
    return bn


def _classifier(dim: int, num_classes: int) -> nn.Linear:
    """Bias-free linear classifier with weight ~ N(0, 0.001)."""
    linear = nn.Linear(dim, num_classes, bias=False)
    nn.init.normal_(linear.weight, 0.0, 0.001)
    return linear


class PixelClassifier(nn.Module):
    """PAP pixel classifier: one bias-free ``D -> K`` linear map per modality.

    The input is a list of feature maps (levels) at their own resolutions; the classifier scores
    their concatenation after bilinear resizing to a common grid. Resizing and the classifier are
    both linear, so each level's slice of the weight is applied as a 1 x 1 convolution at the
    level's native resolution and the K-channel results are resized and summed: the same numbers
    without materialising the ``B x D x H x W`` descriptor (D = 3904 for ResNet-50).

    Args:
        level_channels: Channels of each level, in concatenation order.
        num_logits: K.
    """

    def __init__(self, level_channels: tuple[int, ...], num_logits: int) -> None:
        super().__init__()
        self.level_channels = tuple(level_channels)
        dim = sum(self.level_channels)
        self.visible = nn.Linear(dim, num_logits, bias=False)
        self.infrared = nn.Linear(dim, num_logits, bias=False)

    def score(self, levels: list[Tensor], size: tuple[int, int], modality: str) -> Tensor:
        """Logits ``B x K x size`` of images of one modality from levels ``B x C_l x h_l x w_l``."""
        if len(levels) != len(self.level_channels):
            raise ValueError(f"expected {len(self.level_channels)} levels, got {len(levels)}")
        weight = getattr(self, modality).weight  # K x D
        total = None
        for level, w in zip(levels, weight.split(self.level_channels, dim=1)):
            out = F.conv2d(level, w[:, :, None, None])  # B x K x h_l x w_l
            if tuple(out.shape[-2:]) != tuple(size):
                out = F.interpolate(out, size=size, mode="bilinear", align_corners=False)
            total = out if total is None else total + out  # B x K x size
        return total

    def forward(self, levels: list[Tensor], size: tuple[int, int], n_visible: int) -> Tensor:
        """Logits for a ``[visible; infrared]`` batch; image b uses its own modality's map."""
        batch = levels[0].shape[0]
        halves = []
        if n_visible > 0:
            halves.append(self.score([x[:n_visible] for x in levels], size, VISIBLE))
        if n_visible < batch:
            halves.append(self.score([x[n_visible:] for x in levels], size, INFRARED))
        return torch.cat(halves) if len(halves) > 1 else halves[0]  # B x K x size


class DCLNet(nn.Module):
    """Two-stream DCLNet for visible-infrared re-identification (docs/method.md §3-4, §9).

    Args:
        num_classes: Training identities.
        arch: Backbone, a key of :data:`dclnet.models.resnet.ARCHS`.
        pretrained: Backbone weights: ``None``/``"none"`` (random, warns), ``"imagenet"`` or a
            file path (see :func:`dclnet.models.resnet.pretrained_state_dict`). Both streams
            start from the same weights.
        split: Number of modality-specific stages, 1-4 (2 = stem + layer1).
        num_parts: Horizontal stripes of the part branch and body parts of the PAP head.
        gem_p: GeM exponent.
        last_stride: Stride of layer4 (1 keeps X at 1/16 of the input: 18 x 9 for 288 x 144).
        layer3_stride: Stride of layer3 (1, with ``last_stride=1``, keeps X at 1/8 of the
            input: enough rows for the part stripes of a small CPU-sized input).
        pixel_init: Initial weights of the PAP pixel classifiers: ``"default"`` (PyTorch's
            ``nn.Linear`` init) or ``"normal"`` (N(0, 0.001) like the other classifiers, as
            in the released code).

    Attributes:
        num_features: C, channels of X and size of the embedding.
        default_cfg: Preprocessing the model expects (input size, mean, std, ...).
    """

    def __init__(
        self,
        num_classes: int,
        *,
        arch: str = "resnet50",
        pretrained: str | Path | None = None,
        split: int = 2,
        num_parts: int = 6,
        gem_p: float = 3.0,
        last_stride: int = 1,
        layer3_stride: int = 2,
        pixel_init: str = "default",
    ) -> None:
        super().__init__()
        if pixel_init not in PIXEL_INITS:
            raise ConfigError(
                f"pixel_init must be one of {', '.join(PIXEL_INITS)}, got {pixel_init!r}"
            )
        if not 1 <= split <= 4:
            raise ConfigError(f"split must be 1-4 (modality-specific stages), got {split}")
        if num_classes < 1 or num_parts < 1:
            raise ConfigError(
                f"num_classes and num_parts must be >= 1, got {num_classes}, {num_parts}"
            )
        self.arch, self.split, self.num_parts = arch, split, num_parts
        self._args = dict(
            num_classes=num_classes,
            arch=arch,
            split=split,
            num_parts=num_parts,
            gem_p=gem_p,
            last_stride=last_stride,
            layer3_stride=layer3_stride,
            pixel_init=pixel_init,
        )
        resnet = build_resnet(arch, last_stride=last_stride, layer3_stride=layer3_stride)
        self.visible = ResNetStages(resnet, 0, split)
        self.infrared = copy.deepcopy(self.visible)
        self.shared = ResNetStages(resnet, split, len(STAGES))
        dim = resnet.stage_channels[-1]
        self.num_features = dim
        self.pool = GeM(gem_p)
        self.bnneck = _bnneck(dim)
        self.classifier = _classifier(dim, num_classes)
        self.stripe_pool = StripeGeM(num_parts, gem_p)
        self.part_bnneck = _bnneck(num_parts * dim)
        self.part_classifier = _classifier(num_parts * dim, num_classes)
        self.pixel_classifier = PixelClassifier(resnet.stage_channels, 2 + num_parts)
        if pixel_init == "normal":
            nn.init.normal_(self.pixel_classifier.visible.weight, 0.0, 0.001)
            nn.init.normal_(self.pixel_classifier.infrared.weight, 0.0, 0.001)
        self.default_cfg = {
            "input_size": (3, 288, 144),
            "mean": IMAGENET_MEAN,
            "std": IMAGENET_STD,
            "interpolation": "bilinear",
            "color": "RGB",
            "num_classes": num_classes,
            "embed_dim": dim,
        }
        state = pretrained_state_dict(pretrained, arch)
        if state is not None:
            self.load_backbone_state_dict(state, source=str(pretrained))

    # -- construction helpers ---------------------------------------------------------------

    def model_args(self) -> dict:
        """Constructor keyword arguments that rebuild this model (weights come separately).

        ``pretrained`` is ``None``: a checkpoint's state dict carries the weights. Rebuilding
        therefore emits :class:`dclnet.models.resnet.RandomInitWarning`, which a checkpoint
        loader may filter.
        """
        return {**self._args, "pretrained": None}

    def backbone_state_dict(self, modality: str = VISIBLE) -> dict[str, Tensor]:
        """Backbone weights of one stream (+ shared part) under torchvision's key names."""
        return {**self._stream(modality).state_dict(), **self.shared.state_dict()}

    def load_backbone_state_dict(self, state: dict[str, Tensor], *, source: str = "state dict"):
        """Load torchvision-named ResNet weights into both streams and the shared part.

        ``fc.*`` entries are ignored; everything else must match the backbone exactly.

        Raises:
            CheckpointError: A key is missing or unexpected, or a shape differs (one line).
        """
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        check_state_dict(state, self.backbone_state_dict(), source=source, arch=self.arch)
        low = {k: v for k, v in state.items() if stage_of_key(k) < self.split}
        high = {k: v for k, v in state.items() if stage_of_key(k) >= self.split}
        # strict=False only tolerates an absent num_batches_tracked; the check above is strict.
        self.visible.load_state_dict(low, strict=False)
        self.infrared.load_state_dict(low, strict=False)
        self.shared.load_state_dict(high, strict=False)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters split for the learning rates of docs/method.md §8 (released code).

        ``"head"``: BNNecks and identity / part classifiers (base rate); ``"backbone"``:
        everything else, PAP pixel classifiers included (0.1x). Frozen BNNeck biases are listed
        too (they never get a gradient, so optimisers leave them at 0).
        """
        head = [self.bnneck, self.classifier, self.part_bnneck, self.part_classifier]
        head_params = [p for m in head for p in m.parameters()]
        head_ids = {id(p) for p in head_params}
        rest = [p for p in self.parameters() if id(p) not in head_ids]
        return {"head": head_params, "backbone": rest}

    def cam_weight(self, fold_bnneck: bool = False) -> Tensor:
        """Part-classifier weight ``num_classes x (num_parts * C)`` that scores the CAMs.

        The part logits are ``W (gamma * (f - mu) / sigma)``: the part BNNeck rescales channel c
        by ``gamma_c / sigma_c`` before the classifier. The released code scores CAMs with W
        alone (default); ``fold_bnneck`` multiplies that scale in (running statistics), so a
        pixel's CAM is its exact contribution to the logit up to a per-stripe constant.
        Detached.
        """
        weight = self.part_classifier.weight.detach()
        if not fold_bnneck:
            return weight
        bn = self.part_bnneck
        scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)  # num_parts * C
        return weight * scale

    def _stream(self, modality: str) -> ResNetStages:
        if modality not in MODALITIES:
            raise ValueError(f"unknown modality {modality!r}; valid: {', '.join(MODALITIES)}")
        return self.visible if modality == VISIBLE else self.infrared

    # -- forward ----------------------------------------------------------------------------

    def forward_features(
        self, visible: Tensor | None = None, infrared: Tensor | None = None
    ) -> list[Tensor]:
        """Outputs of the five stages for the batch ``[visible; infrared]`` (whichever given).

        Returns:
            ``[stem, layer1, layer2, layer3, layer4]`` maps, each ``B x C_k x h_k x w_k``.
        """
        given = [(m, x) for m, x in ((VISIBLE, visible), (INFRARED, infrared)) if x is not None]
        if not given:
            raise ValueError("DCLNet needs visible and/or infrared images")
        if len(given) == 2 and visible.shape[1:] != infrared.shape[1:]:
            raise ValueError(
                f"visible {tuple(visible.shape)} and infrared {tuple(infrared.shape)} images "
                "must have the same channels and size"
            )
        per_modality = [self._stream(m).forward_stages(x) for m, x in given]
        low = [torch.cat(maps) for maps in zip(*per_modality)]  # split x (B x C_k x h_k x w_k)
        return low + self.shared.forward_stages(low[-1])

    def forward_head(self, stages: list[Tensor], n_visible: int) -> DCLNetOutput:
        """Heads on stage outputs whose first ``n_visible`` images are visible."""
        final = stages[-1]  # B x C x h x w
        low = stages[self.split - 1]  # B x C_low x H_z x W_z
        global_feat = self.pool(final)  # B x C
        bn_feat = self.bnneck(global_feat)  # B x C
        stripes = self.stripe_pool(final.detach())  # B x C x P
        part_feat = stripes.transpose(1, 2).flatten(1)  # B x PC, stripe-major
        pixel_logits = self.pixel_classifier(
            [s.detach() for s in stages], tuple(low.shape[-2:]), n_visible
        )  # B x (2 + P) x H_z x W_z
        return DCLNetOutput(
            global_feat=global_feat,
            bn_feat=bn_feat,
            logits=self.classifier(bn_feat),
            part_logits=self.part_classifier(self.part_bnneck(part_feat)),
            final_map=final,
            low_map=low,
            pixel_logits=pixel_logits,
        )

    def forward(
        self, visible: Tensor | None = None, infrared: Tensor | None = None
    ) -> DCLNetOutput:
        """All outputs for ``N_v`` visible and ``N_i`` infrared ``3 x H x W`` images.

        Outputs are over ``B = N_v + N_i`` images, visible first (same in eval mode).
        """
        n_visible = 0 if visible is None else visible.shape[0]
        return self.forward_head(self.forward_features(visible, infrared), n_visible)

    # -- inference --------------------------------------------------------------------------

    def embed(self, images: Tensor, modality: str, flip: bool = False) -> Tensor:
        """L2-normalised BNNeck embeddings ``N x C`` of ``N x 3 x H x W`` images of one modality.

        Meant for eval mode (BNNeck running statistics). ``flip`` averages the BNNeck features
        of the images and their horizontal mirrors before normalising.
        """
        stream = self._stream(modality)
        n = images.shape[0]
        if flip:
            images = torch.cat([images, images.flip(-1)])  # 2N x 3 x H x W
        feat = self.bnneck(self.pool(self.shared(stream(images))))  # (2)N x C
        if flip:
            feat = feat.view(2, n, -1).mean(dim=0)  # N x C
        return F.normalize(feat, dim=1)

    def predict_masks(self, images: Tensor, modality: str) -> Tensor:
        """PAP masks ``N x H_z x W_z`` int64 in ``0..num_parts`` (0 = background) on Z's grid."""
        stages = self._stream(modality).forward_stages(images)
        stages = stages + self.shared.forward_stages(stages[-1])
        size = tuple(stages[self.split - 1].shape[-2:])
        return pap_mask(self.pixel_classifier.score(stages, size, modality))
