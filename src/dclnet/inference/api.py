"""Embedding images with a trained checkpoint: one call to load, one call to embed.

>>> embedder = Embedder.from_checkpoint("runs/sysu/best.pt")
>>> gallery = embedder.embed(["a.jpg", "b.jpg"], "visible")  # 2 x D, L2-normalised
>>> query = embedder.embed([pil_image], "infrared")
>>> scores = query @ gallery.T  # cosine similarities

Every input kind goes through the same preprocessing as the training caches: decode to RGB,
resize to the checkpoint's ``(height, width)`` with Pillow's LANCZOS filter (the filter of
:func:`dclnet.data.imageio.load_image`), then ``(x / 255 - mean) / std`` with the
checkpoint's mean and std. Only already-normalised float tensors skip the first two steps, so
they must already have the checkpoint's size; a float tensor far outside the normalised range
(0..255 values) is refused rather than embedded as if normalised. Arguments are checked:
``batch_size`` an integer >= 1, ``flip`` a bool, inputs a list, array or tensor (not a
generator, dict or meta tensor), each refused in one line naming it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from dclnet.data.augment import IMAGENET_MEAN, IMAGENET_STD, normalize
from dclnet.data.imageio import load_image, to_rgb
from dclnet.data.records import check_modality
from dclnet.errors import CheckpointError, ConfigError, DataError
from dclnet.models.resnet import RandomInitWarning

logger = logging.getLogger(__name__)

# Pillow >= 9.1 names filters under ``Image.Resampling``; the same filter as the caches use.
_LANCZOS = getattr(Image, "Resampling", Image).LANCZOS

ImageInput = str | Path | Image.Image | np.ndarray
Inputs = Sequence[ImageInput] | np.ndarray | Tensor


@dataclass(frozen=True)
class Preprocessing:
    """What an input image goes through before the network (from the checkpoint).

    Attributes:
        height: Input height in pixels.
        width: Input width in pixels.
        mean: Per-channel RGB mean of the normalisation (images scaled to [0, 1]).
        std: Per-channel RGB standard deviation.
    """

    height: int
    width: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @classmethod
    def from_checkpoint(cls, state: dict[str, Any]) -> Preprocessing:
        """Read ``state["preprocessing"]`` (older checkpoints: the data config's size)."""
        pre = state.get("preprocessing") or {}
        data = (state.get("config") or {}).get("data", {})
        try:
            return cls(
                height=int(pre.get("height", data.get("height", 288))),
                width=int(pre.get("width", data.get("width", 144))),
                mean=tuple(float(v) for v in pre.get("mean", IMAGENET_MEAN)),
                std=tuple(float(v) for v in pre.get("std", IMAGENET_STD)),
            )
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint 'preprocessing' is malformed: {exc}") from None

    @property
    def size(self) -> tuple[int, int]:
        """``(height, width)``."""
        return self.height, self.width

    def as_dict(self) -> dict[str, Any]:
        return {
            "height": self.height,
            "width": self.width,
            "mean": list(self.mean),
            "std": list(self.std),
        }


def checkpoint_identity(state: dict[str, Any]) -> str:
    """SHA-256 (hex) of a checkpoint's model: its ``model_args`` and every weight tensor.

    Two checkpoints with the same weights (``best.pt`` and a model-only copy of it, say) have
    the same identity; optimiser state, config and file layout do not enter it.
    """
    digest = hashlib.sha256()
    args = dict(state["model_args"])
    args.pop("pretrained", None)
    digest.update(json.dumps(args, sort_keys=True, default=str).encode())
    for key in sorted(state["model"]):
        value = state["model"][key].detach().cpu().contiguous()
        digest.update(f"{key}|{value.dtype}|{tuple(value.shape)}".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def resolve_device(name: str | torch.device) -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; otherwise the named device.

    The rule of ``train.device`` (auto, cpu, cuda, cuda:N), with messages naming ``--device``.
    """
    if isinstance(name, torch.device):
        return name
    from dclnet.engine.build import resolve_device as resolve

    return resolve(name, "--device")


def resize_rgb(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """A PIL image as ``H x W x 3`` uint8 RGB at ``size = (height, width)``, LANCZOS-resized.

    16-bit greyscale is scaled to 8 bits as the caches do (:func:`~dclnet.data.imageio.to_rgb`).
    """
    rgb = to_rgb(image)
    height, width = size
    if rgb.size != (width, height):
        rgb = rgb.resize((width, height), _LANCZOS)
    return np.array(rgb, dtype=np.uint8)


def _describe(item: Any) -> str:
    if isinstance(item, (np.ndarray, Tensor)):
        return f"{type(item).__name__} of shape {tuple(item.shape)} and dtype {item.dtype}"
    return type(item).__name__


def to_uint8(item: ImageInput, size: tuple[int, int], where: str = "input") -> np.ndarray:
    """One image (file path, PIL image or ``H x W x 3`` uint8 array) → resized uint8 pixels.

    Raises:
        DataError: Unreadable file, or an array/object that is not an RGB uint8 image.
    """
    if isinstance(item, (str, Path)):
        return load_image(Path(item), size)
    if isinstance(item, Image.Image):
        if 0 in item.size:
            raise DataError(f"{where}: PIL image of size {item.size} has no pixels")
        return resize_rgb(item, size)
    if isinstance(item, np.ndarray) and item.dtype == np.uint8 and item.ndim == 3:
        if item.shape[-1] == 3:
            if item.size == 0:
                raise DataError(f"{where}: {_describe(item)} has no pixels")
            return resize_rgb(Image.fromarray(np.ascontiguousarray(item)), size)
    raise DataError(
        f"{where}: expected a file path, a PIL image or an H x W x 3 uint8 array, got "
        f"{_describe(item)}"
    )


def check_flag(name: str, value: Any) -> bool:
    """``value`` if it is a bool, else a one-line error naming ``name`` (``'no'`` is truthy)."""
    if not isinstance(value, (bool, np.bool_)):
        raise ConfigError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def check_batch_size(value: Any) -> int:
    """``value`` if it is an integer >= 1 (not a bool, not 2.5), else a one-line error."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"batch_size must be an integer >= 1, got {value!r}")
    return int(value)


def check_inputs(inputs: Any) -> None:
    """Refuse input containers :meth:`Embedder.embed` cannot slice into batches.

    A generator, iterator, dict or set has no order or no length to batch by (a dict would
    be embedded as its keys); a tensor on the ``meta`` device holds no pixels.

    Raises:
        DataError: Naming the argument ``inputs`` and what to pass instead.
    """
    if isinstance(inputs, Tensor) and inputs.device.type == "meta":
        raise DataError(
            f"inputs: a tensor on the meta device holds no data ({_describe(inputs)}); pass "
            "a tensor with real pixels (on the CPU or a GPU)"
        )
    if isinstance(inputs, (Tensor, np.ndarray, str, Path, Image.Image, list, tuple)):
        return
    kind = type(inputs).__name__
    raise DataError(
        f"inputs: got a {kind}; pass a list of images (paths, PIL images or uint8 arrays), "
        "a uint8 array N x H x W x 3 or a normalised float tensor N x 3 x H x W"
        + (" (list(...) it first)" if hasattr(inputs, "__iter__") else "")
    )


def _normalised_range(pre: Preprocessing) -> tuple[float, float]:
    """Smallest and largest value a normalised pixel ``(x - mean) / std``, x in [0, 1], takes."""
    lows = [(0.0 - m) / s for m, s in zip(pre.mean, pre.std)]
    highs = [(1.0 - m) / s for m, s in zip(pre.mean, pre.std)]
    return min(lows), max(highs)


# Room beyond the normalised range for a float input: a sharpening resize (LANCZOS, bicubic)
# of normalised pixels overshoots by a fraction of the range, and standard-normal noise (the
# usual stand-in for normalised images, e.g. in exports) stays within +-5 at any practical
# size; 0..255 pixels reach 100 times the range. Only a nearly black 0..255 image (every
# pixel below ~8) gets through, where the two cannot be told apart.
FLOAT_INPUT_MARGIN = 5.0


def _check_normalised(images: Tensor, pre: Preprocessing) -> None:
    """Raise if a float ``N x 3 x H x W`` input is far outside the normalised pixel range."""
    low, high = _normalised_range(pre)
    top, bottom = float(images.max()), float(images.min())
    if top > high + FLOAT_INPUT_MARGIN or bottom < low - FLOAT_INPUT_MARGIN:
        raise DataError(
            f"inputs: float tensor is not normalised: its values span {bottom:.4g}..{top:.4g}, "
            f"but normalised pixels ((x / 255 - mean) / std) lie within {low:.2f}..{high:.2f}; "
            "pass 0..255 pixels as uint8 (N x H x W x 3) or normalise them first"
        )


def _check_finite_input(images: Tensor) -> None:
    """Raise if a float ``N x 3 x H x W`` input holds NaN or infinity (naming the image)."""
    finite = torch.isfinite(images).flatten(1).all(dim=1)  # N
    if not finite.all():
        first = int(torch.nonzero(~finite)[0, 0])
        raise DataError(
            f"float input tensor holds NaN or infinity in image {first} "
            f"({int((~finite).sum())} of {len(finite)} images); its embedding would be NaN"
        )


class Embedder:
    """A trained DCLNet with its preprocessing, ready to embed images of either modality.

    Args:
        model: Network with ``embed(images, modality, flip)`` and ``predict_masks`` (eval
            mode is set here).
        preprocessing: Input size and normalisation.
        device: Where the model runs (the model is moved there).
        identity: Checkpoint identity (see :func:`checkpoint_identity`), used by the search
            index to refuse embeddings of another model.
        checkpoint: Path the model came from, for messages.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        preprocessing: Preprocessing,
        *,
        device: str | torch.device = "cpu",
        identity: str = "",
        checkpoint: str = "",
    ) -> None:
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.preprocessing = preprocessing
        self.identity = identity
        self.checkpoint = checkpoint

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "auto") -> Embedder:
        """Load a checkpoint written by ``dclnet train`` (weights only, no code executed).

        Raises:
            CheckpointError: Missing/corrupt file, or weights that do not fit ``model_args``.
        """
        from dclnet.engine.runs import load_model

        dev = resolve_device(device)
        with warnings.catch_warnings():  # the weights come from the checkpoint
            warnings.simplefilter("ignore", RandomInitWarning)
            model, state = load_model(path, dev)
        return cls(
            model,
            Preprocessing.from_checkpoint(state),
            device=dev,
            identity=checkpoint_identity(state),
            checkpoint=str(path),
        )

    @property
    def embed_dim(self) -> int:
        """D, the size of an embedding."""
        return int(self.model.num_features)

    # -- preprocessing -----------------------------------------------------------------------

    def prepare(self, inputs: Inputs) -> Tensor:
        """Inputs → normalised ``N x 3 x H x W`` float32 batch on :attr:`device`.

        Accepts a sequence of paths / PIL images / ``H x W x 3`` uint8 arrays, a uint8 array
        or tensor ``N x H x W x 3``, or a float tensor ``N x 3 x H x W`` already normalised
        (which must have the checkpoint's size).
        """
        pre = self.preprocessing
        if isinstance(inputs, (Tensor, np.ndarray)) and inputs.shape and inputs.shape[0] == 0:
            raise DataError(f"no images given: input {_describe(inputs)} is empty")
        if isinstance(inputs, Tensor) and inputs.is_floating_point():
            if inputs.ndim != 4 or tuple(inputs.shape[1:]) != (3, *pre.size):
                raise DataError(
                    f"float input tensor of shape {tuple(inputs.shape)} must be normalised "
                    f"N x 3 x {pre.height} x {pre.width}; pass uint8 N x H x W x 3 pixels "
                    "(or files / PIL images) to have them resized"
                )
            _check_finite_input(inputs)
            _check_normalised(inputs, pre)
            return inputs.to(self.device, torch.float32)
        if isinstance(inputs, (Tensor, np.ndarray)):
            array = inputs.cpu().numpy() if isinstance(inputs, Tensor) else inputs
            if array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] != 3:
                raise DataError(
                    f"input {_describe(inputs)}: expected uint8 N x H x W x 3 pixels or a "
                    "normalised float N x 3 x H x W tensor"
                )
            if tuple(array.shape[1:3]) != pre.size:
                array = np.stack([to_uint8(a, pre.size, f"input {i}") for i, a in enumerate(array)])
            return self._normalise(array)
        if isinstance(inputs, (str, Path, Image.Image)):
            raise DataError(
                f"inputs must be a list of images, got a single {type(inputs).__name__}; "
                "wrap it in a list"
            )
        items = list(inputs)
        if not items:
            raise DataError("no images given: inputs is empty")
        return self._normalise(
            np.stack([to_uint8(item, pre.size, f"input {i}") for i, item in enumerate(items)])
        )

    def _normalise(self, pixels: np.ndarray) -> Tensor:
        """``N x H x W x 3`` uint8 → normalised ``N x 3 x H x W`` float32 on the device."""
        batch = torch.from_numpy(np.ascontiguousarray(pixels)).to(self.device)
        batch = batch.permute(0, 3, 1, 2).float().div_(255.0)  # N x 3 x H x W in [0, 1]
        return normalize(batch, self.preprocessing.mean, self.preprocessing.std)

    # -- embedding ---------------------------------------------------------------------------

    @overload
    def embed(
        self,
        inputs: Inputs,
        modality: str,
        *,
        batch_size: int = 64,
        flip: bool = False,
        return_masks: Literal[False] = False,
    ) -> Tensor: ...

    @overload
    def embed(
        self,
        inputs: Inputs,
        modality: str,
        *,
        batch_size: int = 64,
        flip: bool = False,
        return_masks: Literal[True],
    ) -> tuple[Tensor, Tensor]: ...

    @torch.no_grad()  # not inference_mode: callers may reuse the outputs in autograd
    def embed(
        self,
        inputs: Inputs,
        modality: str,
        *,
        batch_size: int = 64,
        flip: bool = False,
        return_masks: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Embed images of one modality with that modality's branch.

        Args:
            inputs: See :meth:`prepare`; files are decoded one batch at a time.
            modality: ``"visible"`` or ``"infrared"``.
            batch_size: Images per forward pass.
            flip: Average with the horizontally mirrored images.
            return_masks: Also return the PAP body-part masks.

        Returns:
            ``N x D`` float32 L2-normalised embeddings on the CPU; with ``return_masks``, also
            ``N x H_z x W_z`` int64 masks (0 = background, 1..P = body parts top to bottom).

        Raises:
            DataError: Inputs of a kind it cannot batch (generator, dict, meta tensor), a
                float tensor that is not normalised (0..255 values) or not finite, or an
                image that cannot be read.
            ConfigError: ``batch_size`` is not an integer >= 1, or a flag is not a bool.
        """
        check_modality(modality)
        batch_size = check_batch_size(batch_size)
        flip = check_flag("flip", flip)
        return_masks = check_flag("return_masks", return_masks)
        check_inputs(inputs)
        if isinstance(inputs, Tensor) and inputs.is_floating_point() and inputs.ndim == 4:
            _check_finite_input(inputs)  # here, so that the image index counts from the start
        batches = _chunks(inputs, batch_size)
        embeddings, masks = [], []
        for chunk in batches:
            images = self.prepare(chunk)  # B x 3 x H x W
            emb = self.model.embed(images, modality, flip=flip).float().cpu()  # B x D
            self._check_finite(emb, sum(len(e) for e in embeddings))
            embeddings.append(emb)
            if return_masks:
                masks.append(self.model.predict_masks(images, modality).cpu())
        if return_masks:
            return torch.cat(embeddings), torch.cat(masks)
        return torch.cat(embeddings)

    def _check_finite(self, emb: Tensor, offset: int, names: Sequence[Any] | None = None) -> None:
        """Raise if the network produced NaN/inf (from finite inputs: the weights are at fault)."""
        bad = ~torch.isfinite(emb).all(dim=1)  # B
        if bad.any():
            row = int(torch.nonzero(bad)[0, 0])
            which = f"{names[row]}" if names is not None else f"input {offset + row}"
            source = self.checkpoint or "the model"
            raise CheckpointError(
                f"{source}: the embedding of {which} is NaN or infinite although the input is "
                "finite; the weights hold non-finite values (a diverged run?)"
            )

    @torch.no_grad()  # not inference_mode: callers may reuse the outputs in autograd
    def embed_paths_streaming(
        self,
        paths: Sequence[str | Path],
        modality: str,
        batch_size: int = 64,
        *,
        flip: bool = False,
        workers: int = 0,
        skip_corrupt: bool = False,
    ) -> Iterator[tuple[list[str | Path], Tensor]]:
        """Embed image files batch by batch, holding at most two batches of pixels.

        Args:
            paths: Image files.
            modality: ``"visible"`` or ``"infrared"``.
            batch_size: Images per forward pass (and per yielded chunk).
            flip: Average with the horizontally mirrored images.
            workers: Decoding threads; with ``workers > 0`` the next batch is decoded while
                the current one runs through the network.
            skip_corrupt: Leave unreadable files out of the chunk (logged) instead of raising.

        Yields:
            ``(paths of the chunk, B x D float32 CPU embeddings)``, in input order.
        """
        check_modality(modality)
        batch_size = check_batch_size(batch_size)
        flip = check_flag("flip", flip)
        chunks = [list(paths[i : i + batch_size]) for i in range(0, len(paths), batch_size)]
        size = self.preprocessing.size

        def decode(path: str | Path) -> np.ndarray | None:
            try:
                return load_image(Path(path), size)
            except DataError as exc:
                if not skip_corrupt:
                    raise
                logger.warning("skipping %s", exc)
                return None

        pool = ThreadPoolExecutor(workers) if workers > 0 else None
        try:
            pending: list[Future] = []
            if pool is not None and chunks:
                pending = [pool.submit(decode, p) for p in chunks[0]]
            for i, chunk in enumerate(chunks):
                if pool is None:
                    pixels = [decode(p) for p in chunk]
                else:
                    pixels = [f.result() for f in pending]
                    if i + 1 < len(chunks):  # decode ahead while this batch runs
                        pending = [pool.submit(decode, p) for p in chunks[i + 1]]
                kept = [k for k, a in enumerate(pixels) if a is not None]
                if not kept:
                    continue
                images = self._normalise(np.stack([pixels[k] for k in kept]))
                emb = self.model.embed(images, modality, flip=flip).float().cpu()
                self._check_finite(emb, 0, [chunk[k] for k in kept])
                yield [chunk[k] for k in kept], emb
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)


def _chunks(inputs: Inputs, size: int) -> Iterator[Inputs]:
    """Consecutive slices of at most ``size`` images (a single path raises in ``prepare``)."""
    if isinstance(inputs, (str, Path, Image.Image)):
        yield inputs
        return
    n = len(inputs)
    if n == 0:
        raise DataError("no images given: inputs is empty")
    for start in range(0, n, size):
        yield inputs[start : start + size]
