"""Batched training augmentation on image tensors, returning the erased-region mask.

Everything runs on whatever device the images are on, without a Python loop over images.
Random numbers are always drawn on the CPU (from ``generator`` or torch's default CPU
generator) in a fixed order and then moved to the images' device, so a given seed gives the
same augmentation on every device.

Training order (docs/method.md §2):

- visible: random grayscale → [pad + random crop] → horizontal flip → normalise → erase
- infrared: [pad + random crop] → horizontal flip → normalise → erase

Random erasing fills the rectangle with 0 *after* normalisation and reports it in a boolean
``N x H x W`` mask (True = erased) that the parsing labels and the dense loss exclude.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from dclnet.data.records import VISIBLE, check_modality
from dclnet.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601
CHANNEL_AUGS = ("none", "exchange")
ERASE_ATTEMPTS = 10


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation settings.

    Attributes:
        grayscale_p: Probability that a visible image is turned single-channel (never
            applied to infrared images, which already have three equal channels).
        flip_p: Probability of a horizontal flip.
        erase_p: Probability of random erasing.
        erase_area: Range of the erased area as a fraction of the image.
        erase_aspect: Range of the erased rectangle's height / width, sampled log-uniformly.
        pad_crop: Zero-pad every side by this many pixels, then crop back to the original
            size at a random offset (AGW recipe: 10). 0 turns it off.
        channel_aug: ``"none"``: the grayscale step uses the BT.601 luma. ``"exchange"``
            (CAJ's random channel exchange): when the grayscale step fires, the image is
            replaced by one of R, G, B or the luma, chosen uniformly, repeated over the
            three channels.
    """

    grayscale_p: float = 0.5
    flip_p: float = 0.5
    erase_p: float = 0.5
    erase_area: tuple[float, float] = (0.02, 0.33)
    erase_aspect: tuple[float, float] = (0.3, 3.3)
    pad_crop: int = 0
    channel_aug: str = "none"

    def __post_init__(self) -> None:
        # YAML gives lists; keep the frozen config hashable.
        object.__setattr__(self, "erase_area", tuple(self.erase_area))
        object.__setattr__(self, "erase_aspect", tuple(self.erase_aspect))
        for name in ("grayscale_p", "flip_p", "erase_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"augment.{name}={getattr(self, name)} must lie in [0, 1]")
        lo, hi = self.erase_area
        if not 0.0 < lo <= hi <= 1.0:
            raise ConfigError(
                f"augment.erase_area={self.erase_area} must be (min, max) with 0 < min <= max <= 1"
            )
        lo, hi = self.erase_aspect
        if not 0.0 < lo <= hi:
            raise ConfigError(
                f"augment.erase_aspect={self.erase_aspect} must be (min, max) with 0 < min <= max"
            )
        if self.pad_crop < 0:
            raise ConfigError(f"augment.pad_crop={self.pad_crop} must be >= 0 (0 turns it off)")
        if self.channel_aug not in CHANNEL_AUGS:
            raise ConfigError(
                f"augment.channel_aug={self.channel_aug!r} is not valid; choose one of "
                f"{', '.join(CHANNEL_AUGS)}"
            )


def to_float(images: Tensor) -> Tensor:
    """Images as ``N x 3 x H x W`` floats in [0, 1].

    Args:
        images: ``N x H x W x 3`` (the caches' layout) or ``N x 3 x H x W``. A tensor
            whose last dimension is 3 is read as channels-last. uint8 values are divided
            by 255 into float32; floating-point input is taken to be in [0, 1] already and
            keeps its dtype.

    Returns:
        ``N x 3 x H x W`` on the input's device.
    """
    if images.ndim != 4 or 3 not in (images.shape[-1], images.shape[1]):
        raise ValueError(
            f"expected N x H x W x 3 or N x 3 x H x W images, got shape {tuple(images.shape)}"
        )
    if images.shape[-1] == 3:
        images = images.permute(0, 3, 1, 2)
    if images.dtype == torch.uint8:
        return images.float().div_(255.0).contiguous()
    if not images.is_floating_point():
        raise ValueError(f"expected uint8 or floating-point images, got {images.dtype}")
    return images.contiguous()


def normalize(
    images: Tensor,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
) -> Tensor:
    """Per-channel ``(x - mean) / std`` of ``N x 3 x H x W`` images in [0, 1]."""
    mean_t = _channel_constants(mean, images)  # 1 x C x 1 x 1
    std_t = _channel_constants(std, images)
    return (images - mean_t) / std_t


def _channel_constants(values: tuple[float, ...], like: Tensor) -> Tensor:
    """``1 x C x 1 x 1`` constants with ``like``'s dtype, filled on ``like``'s device.

    One ``torch.full`` per value: nothing is copied from host memory (``torch.tensor(values,
    device=cuda)`` would be a blocking copy every step), and the values are rounded to the
    dtype exactly as ``torch.tensor(values, dtype=...)`` rounds them, so every result is
    bit-identical to a division by a tensor (a Python-scalar division would multiply by a
    rounded reciprocal on the CPU).
    """
    parts = [torch.full((1,), v, dtype=like.dtype, device=like.device) for v in values]
    return torch.cat(parts).view(1, -1, 1, 1)


def test_transform(images: Tensor) -> Tensor:
    """Evaluation preprocessing: ``N x H x W x 3`` uint8 → normalised ``N x 3 x H x W``.

    Resizing is done once by the cache, so only the normalisation is left.
    """
    return normalize(to_float(images))


test_transform.__test__ = False  # not a pytest test despite the name


def _single_channel(images: Tensor, apply: Tensor, channel: Tensor) -> Tensor:
    """Replace images where ``apply`` by channel ``channel`` (0-2 = R, G, B; 3 = luma).

    ``images``: N x 3 x H x W; ``apply``, ``channel``: N.
    """
    n, _, h, w = images.shape
    weights = _channel_constants(LUMA_WEIGHTS, images)  # 1 x 3 x 1 x 1, no host copy
    luma = (images * weights).sum(1, keepdim=True)  # N x 1 x H x W
    choices = torch.cat([images, luma], dim=1)  # N x 4 x H x W
    picked = choices.gather(1, channel.view(n, 1, 1, 1).expand(n, 1, h, w))  # N x 1 x H x W
    return torch.where(apply.view(n, 1, 1, 1), picked.expand(n, 3, h, w), images)


def _pad_crop(images: Tensor, pad: int, offsets: Tensor) -> Tensor:
    """Zero-pad by ``pad`` and crop ``H x W`` at per-image ``offsets`` (N x 2, row/col)."""
    n, c, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))  # N x C x (H + 2p) x (W + 2p)
    rows = offsets[:, :1] + torch.arange(h, device=images.device)  # N x H
    cols = offsets[:, 1:] + torch.arange(w, device=images.device)  # N x W
    padded = padded.gather(2, rows.view(n, 1, h, 1).expand(n, c, h, w + 2 * pad))
    return padded.gather(3, cols.view(n, 1, 1, w).expand(n, c, h, w))  # N x C x H x W


def _flip(images: Tensor, apply: Tensor) -> Tensor:
    return torch.where(apply.view(-1, 1, 1, 1), images.flip(-1), images)


def _erase_boxes(
    n: int, h: int, w: int, config: AugmentConfig, generator: torch.Generator | None
) -> Tensor:
    """Rectangles to erase, ``N x 4`` int64 (top, left, bottom, right), empty when none.

    Like torchvision's ``RandomErasing``: with probability ``erase_p`` try up to
    ``ERASE_ATTEMPTS`` rectangles of area ``U(erase_area) * H * W`` and log-uniform aspect
    (height / width) and keep the first that fits inside the image. All attempts of all
    images are drawn at once on the CPU.
    """
    fire = torch.rand(n, generator=generator, dtype=torch.float64) < config.erase_p  # N
    u = torch.rand(n, ERASE_ATTEMPTS, 4, generator=generator, dtype=torch.float64)
    (a_lo, a_hi), (r_lo, r_hi) = config.erase_area, config.erase_aspect
    area = (a_lo + (a_hi - a_lo) * u[..., 0]) * (h * w)  # N x A
    log_lo, log_hi = math.log(r_lo), math.log(r_hi)
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[..., 1])  # N x A
    eh = torch.sqrt(area * aspect).round().long()  # N x A
    ew = torch.sqrt(area / aspect).round().long()
    fits = (eh >= 1) & (ew >= 1) & (eh < h) & (ew < w)  # N x A
    top = (u[..., 2] * (h - eh + 1).clamp(min=1)).long()  # uniform in [0, h - eh]
    left = (u[..., 3] * (w - ew + 1).clamp(min=1)).long()
    first = fits.long().argmax(dim=1, keepdim=True)  # index of the first fitting attempt
    apply = (fire & fits.any(dim=1)).long()  # N; 0 collapses the box to nothing
    top, left = top.gather(1, first).squeeze(1), left.gather(1, first).squeeze(1)
    bottom = top + eh.gather(1, first).squeeze(1) * apply
    right = left + ew.gather(1, first).squeeze(1) * apply
    return torch.stack([top, left, bottom, right], dim=1)


def _box_mask(boxes: Tensor, h: int, w: int) -> Tensor:
    """``N x H x W`` bool, True inside each image's [top, bottom) x [left, right)."""
    rows = torch.arange(h, device=boxes.device).view(1, h, 1)
    cols = torch.arange(w, device=boxes.device).view(1, 1, w)
    top, left, bottom, right = (b.view(-1, 1, 1) for b in boxes.unbind(1))
    return (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)


class AugmentDraws(NamedTuple):
    """One batch's random augmentation parameters, drawn on the CPU (see :func:`draw`).

    ``gray``: N bool, grayscale / channel step fires; ``channel``: N int64 in 0-3 (R, G, B,
    luma); ``offsets``: N x 2 int64 crop offsets; ``flip``: N bool; ``boxes``: N x 4 int64
    erase rectangles (top, left, bottom, right).
    """

    gray: Tensor
    channel: Tensor
    offsets: Tensor
    flip: Tensor
    boxes: Tensor

    def to(self, device: torch.device) -> AugmentDraws:
        """The draws on ``device``, copied without blocking."""
        return AugmentDraws(*(t.to(device, non_blocking=True) for t in self))


def draw(
    n: int, h: int, w: int, config: AugmentConfig, generator: torch.Generator | None = None
) -> AugmentDraws:
    """Every random number of :func:`augment_batch` for ``n`` images of ``h x w``, on the CPU.

    Every draw happens on every call, in this order, so one seed gives one result whatever
    the probabilities or the modality.
    """
    if generator is not None and generator.device.type != "cpu":
        raise ValueError(f"the generator must live on the CPU, got {generator.device}")
    gray = torch.rand(n, generator=generator) < config.grayscale_p
    channel = torch.randint(0, 4, (n,), generator=generator)
    offsets = torch.randint(0, 2 * config.pad_crop + 1, (n, 2), generator=generator)
    flip = torch.rand(n, generator=generator) < config.flip_p
    boxes = _erase_boxes(n, h, w, config, generator)
    if config.channel_aug == "none":
        channel = torch.full_like(channel, 3)  # luma only
    return AugmentDraws(gray, channel, offsets, flip, boxes)


def apply_augment(
    images: Tensor, modality: str, config: AugmentConfig, draws: AugmentDraws
) -> tuple[Tensor, Tensor]:
    """The deterministic part of :func:`augment_batch`: ``draws`` applied to ``images``.

    Pure tensor code on the images' device (``draws`` must be there too), with no random
    numbers and no host data: what ``train.compile`` compiles.

    Args:
        images: ``N x H x W x 3`` uint8 (or any layout :func:`to_float` accepts).
        modality: ``"visible"`` or ``"infrared"``.
        config: Augmentation settings (``pad_crop`` is read here).
        draws: :func:`draw` of this batch, on the images' device.

    Returns:
        ``(images, erased)`` as :func:`augment_batch`.
    """
    x = to_float(images)  # N x 3 x H x W
    h, w = x.shape[-2:]
    if modality == VISIBLE:
        x = _single_channel(x, draws.gray, draws.channel)
    if config.pad_crop > 0:
        x = _pad_crop(x, config.pad_crop, draws.offsets)
    x = normalize(_flip(x, draws.flip))
    erased = _box_mask(draws.boxes, h, w)  # N x H x W
    return x.masked_fill(erased.unsqueeze(1), 0.0), erased


def image_size(images: Tensor) -> tuple[int, int, int]:
    """``(N, H, W)`` of images in either layout :func:`to_float` accepts."""
    if images.ndim != 4 or 3 not in (images.shape[-1], images.shape[1]):
        raise ValueError(
            f"expected N x H x W x 3 or N x 3 x H x W images, got shape {tuple(images.shape)}"
        )
    if images.shape[-1] == 3:
        return images.shape[0], images.shape[1], images.shape[2]
    return images.shape[0], images.shape[2], images.shape[3]


def augment_batch(
    images: Tensor,
    modality: str,
    config: AugmentConfig,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Augment one modality's training batch.

    Args:
        images: ``N x H x W x 3`` uint8 (or any layout :func:`to_float` accepts), on any
            device.
        modality: ``"visible"`` or ``"infrared"``; only visible images get the grayscale /
            channel step.
        config: Augmentation settings.
        generator: CPU generator for reproducible draws; torch's default CPU generator
            when None.

    Returns:
        ``(images, erased)``: ``N x 3 x H x W`` normalised floats with erased pixels at 0,
        and the ``N x H x W`` bool mask of exactly those erased pixels.
    """
    check_modality(modality)
    draws = draw(*image_size(images), config, generator)
    return apply_augment(images, modality, config, draws.to(images.device))
