"""A stand-in for ImageNet initialisation on CPU: a backbone pretrained on other synthetic people.

DCLNet assumes an ImageNet-pretrained backbone (docs/method.md §3): features that are already
discriminative and localised before the re-identification losses start. Offline, on a CPU, in
minutes, there is no ImageNet. ``model.pretrained=synthetic`` trains the backbone once on a
*separate, larger* synthetic population — other people (seed :data:`PRETRAIN_SEED`, never a
data set's own seed range by default) rendered at the recipe's input size — with identity
cross-entropy on both modalities, and caches the weights (torchvision key names) under
``<cache dir>/pretrained/``. Later runs load the cached file in a second, like a downloaded
ImageNet file. The people a model is trained and tested on are not in this population.

``shift`` (``model.pretrain_shift``) moves each pretraining person sideways by up to that
many pixels on a fresh random background, as objects sit anywhere in ImageNet photographs, so
that the classifier has to find the person wherever it stands. Meant to make the features
more local; what it did in one study-recipe run is in the README's study section (it did
not help there).

``parts`` (``model.pretrain_parts``) adds a second pretraining task: from every cell of the
final map, predict the mix of body parts (skin, hair, top, bottom, shoes, bag, background)
under that cell, with the pretraining population's own part maps as targets. ImageNet
features are local — a cell responds to what lies under it — and this is what the CAMs of
DCLNet's part branch rely on; identity classification alone on centred people does not
produce it (measured in the README's study section). ``local`` (``model.pretrain_local``) adds
a per-cell identity task instead (:func:`local_identity_loss`): identity evidence only on the
cells that show the person. The re-identification training and every evaluation still see no
part label: only the separate pretraining population's maps are used.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from dclnet.data.augment import AugmentConfig, augment_batch
from dclnet.data.records import INFRARED, VISIBLE
from dclnet.data.sources.synthetic_render import PART_NAMES
from dclnet.errors import ConfigError, NonFiniteLossError
from dclnet.fileio import atomic_write
from dclnet.models.pooling import GeM
from dclnet.models.resnet import build_resnet

logger = logging.getLogger(__name__)

PRETRAIN_SEED = 1_000_003  # population seed: other people than any small data.synthetic_seed
RECIPE_VERSION = 1  # bump when the pretraining recipe changes (new cache file)
DEFAULT_LR = 1e-3  # Adam's peak learning rate (model.pretrain_lr)
DEFAULT_BATCH = 64  # images per pretraining step (model.pretrain_batch)
PRETRAIN_AMPS = ("off", "auto", "bfloat16")  # model.pretrain_amp


def native_cpu_bf16() -> bool:
    """Whether this CPU has bfloat16 instructions (AVX512-BF16 or AMX tiles): without them
    bfloat16 is emulated and slower; with them it may still be slower
    (:func:`bf16_step_faster` decides ``model.pretrain_amp=auto``)."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # a PyTorch without these queries: assume emulation
        return False


def resolve_pretrain_amp(amp: str, measure: Callable[[], bool] | None = None) -> bool:
    """Whether the pretraining runs under CPU bfloat16 autocast (``model.pretrain_amp``):
    ``off`` never, ``bfloat16`` always, ``auto`` where :func:`native_cpu_bf16` and then, when
    given, ``measure()`` (a timing of both arithmetics, :func:`bf16_step_faster`) says so:
    native bf16 instructions do not make every CPU's steps faster."""
    if amp not in PRETRAIN_AMPS:
        raise ConfigError(f"model.pretrain_amp={amp!r}: use one of {', '.join(PRETRAIN_AMPS)}")
    if amp != "auto":
        return amp == "bfloat16"
    return native_cpu_bf16() and (measure is None or measure())


def timed_step(
    model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, bf16: bool
) -> float:
    """Seconds of one identity-loss training step of a pretraining classifier on ``x``, ``y``
    (forward under bfloat16 autocast when ``bf16``, loss in float32, backward, optimiser)."""
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = model(x)[0]
    loss = F.cross_entropy(logits.float(), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return time.perf_counter() - start


def bf16_step_faster(
    arch: str,
    size: tuple[int, int],
    layer3_stride: int = 2,
    last_stride: int = 1,
    batch_size: int = 64,
    repeats: int = 3,
) -> bool:
    """Time a pretraining step on random images in float32 and under bfloat16 autocast,
    interleaved (a warm-up step each, then ``repeats`` rounds; the fastest of each) so that a
    machine whose speed drifts treats both alike, and say whether bfloat16 is at least 5 %
    faster. A few seconds, against minutes of pretraining: on one 2-core Intel Xeon with
    AVX512-BF16 and AMX the bfloat16 step was 15-30 % *slower* (benchmarks/bench_pretrain.py
    times both everywhere)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = _Classifier(arch, layer3_stride, 512, last_stride=last_stride).train()
        opt = torch.optim.SGD(model.parameters(), lr=0.0)  # the step's cost, not its effect
        x, y = torch.randn(batch_size, 3, *size), torch.randint(0, 512, (batch_size,))
        best = {False: math.inf, True: math.inf}
        for round_ in range(1 + repeats):
            for bf16 in (False, True):
                seconds = timed_step(model, opt, x, y, bf16)
                if round_:  # round 0 warms both up
                    best[bf16] = min(best[bf16], seconds)
    faster = best[True] < 0.95 * best[False]
    logger.info(
        "model.pretrain_amp=auto: a pretraining step takes %.2f s in float32 and %.2f s in "
        "bfloat16 on this CPU: pretraining in %s",
        best[False],
        best[True],
        "bfloat16" if faster else "float32",
    )
    return faster


def pretrained_path(
    cache_dir: Path,
    arch: str,
    size: tuple[int, int],
    layer3_stride: int,
    ids: int,
    steps: int,
    shift: int = 0,
    parts: float = 0.0,
    local: float = 0.0,
    style: str = "default",
    lr: float = DEFAULT_LR,
    last_stride: int = 1,
    seed: int = 0,
    bf16: bool = False,
    batch_size: int = DEFAULT_BATCH,
) -> Path:
    """Cache file of one pretraining recipe (a setting at its default adds nothing to the
    name, so files written before the setting existed keep their names)."""
    h, w = size
    moved = f"-shift{shift}" if shift else ""
    parsed = f"-parts{parts:g}" if parts else ""
    parsed += f"-local{local:g}" if local else ""
    parsed += f"-{style}" if style != "default" else ""
    parsed += f"-lr{lr:g}" if lr != DEFAULT_LR else ""
    parsed += f"-ls{last_stride}" if last_stride != 1 else ""
    parsed += f"-seed{seed}" if seed else ""
    parsed += f"-b{batch_size}" if batch_size != DEFAULT_BATCH else ""
    parsed += "-bf16" if bf16 else ""
    name = f"synthetic-{arch}-{h}x{w}-s3{layer3_stride}-{ids}ids-{steps}steps{moved}{parsed}"
    return Path(cache_dir) / "pretrained" / f"{name}-v{RECIPE_VERSION}.pt"


def output_stride(layer3_stride: int, last_stride: int = 1) -> int:
    """Pixels per final-map cell of the ResNet while it is pretrained: 16 (8 with
    ``layer3_stride`` 1), twice that with ``last_stride`` 2."""
    return 8 * layer3_stride * last_stride


def check_pretrain_size(size: tuple[int, int], layer3_stride: int, last_stride: int = 1) -> None:
    """Raise a :class:`ConfigError` (naming ``model.pretrain_size``) for a size the backbone
    cannot be pretrained at.

    Each side must be a multiple of the backbone's output stride, so that every final-map
    cell covers whole pixels (the per-cell pretraining tasks pool their targets over the
    cells), and give a final map of at least 2 × 1 cells.
    """
    stride = output_stride(layer3_stride, last_stride)
    h, w = size
    if h % stride or w % stride or h < 2 * stride or w < stride:
        cols = max(1, round(w / stride))  # the nearest size with this aspect ratio
        near = (max(2, round(h / w * cols)) * stride, cols * stride)
        raise ConfigError(
            f"model.pretrain_size={[h, w]} cannot be served by a ResNet with output stride "
            f"{stride} (model.layer3_stride={layer3_stride}, model.pretrain_last_stride="
            f"{last_stride}): each side must be a multiple of "
            f"{stride}, at least {2 * stride} x {stride}; e.g. model.pretrain_size=[{near[0]},"
            f"{near[1]}]"
        )


class _Classifier(nn.Module):
    """ResNet → GeM → BatchNorm → linear identity classifier (shared by both modalities).

    With ``num_parts`` > 0 also a 1 × 1 convolution on the final map: per-cell part logits;
    with ``local`` a BatchNorm + 1 × 1 convolution: per-cell identity logits.
    """

    def __init__(
        self,
        arch: str,
        layer3_stride: int,
        num_classes: int,
        num_parts: int = 0,
        local: bool = False,
        last_stride: int = 1,
    ) -> None:
        super().__init__()
        self.backbone = build_resnet(arch, last_stride=last_stride, layer3_stride=layer3_stride)
        dim = self.backbone.stage_channels[-1]
        self.pool = GeM(3.0)
        self.neck = nn.BatchNorm1d(dim)
        self.head = nn.Linear(dim, num_classes, bias=False)
        self.parts = nn.Conv2d(dim, num_parts, 1) if num_parts else None
        self.cells = (
            nn.Sequential(nn.BatchNorm2d(dim), nn.Conv2d(dim, num_classes, 1, bias=False))
            if local
            else None
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Identity logits ``N x classes``, part logits ``N x parts x h x w`` and per-cell
        identity logits ``N x classes x h x w`` (each None when not built)."""
        fmap = self.backbone.forward_features(x)
        parts = self.parts(fmap) if self.parts is not None else None
        cells = self.cells(fmap) if self.cells is not None else None
        return self.head(self.neck(self.pool(fmap))), parts, cells


def local_identity_loss(
    logits: torch.Tensor, labels: torch.Tensor, share: torch.Tensor
) -> torch.Tensor:
    """Identity evidence only where the person is: per-cell identity logits are trained to
    name the person on cells mostly covered by the person (share >= 0.5) and to name nobody
    (uniform target) on cells without person (share 0).

    Args:
        logits: ``N x K x h x w`` per-cell identity logits.
        labels: ``N`` identity indices.
        share: ``N x h x w`` share of person pixels under each cell.

    Returns:
        Mean cross-entropy over person cells plus mean uniform-target cross-entropy over
        background cells (a term is 0 when it has no cell).
    """
    logp = F.log_softmax(logits, dim=1)  # N x K x h x w
    own = logp.gather(1, labels.view(-1, 1, 1, 1).expand(-1, 1, *logp.shape[-2:]))[:, 0]
    person, empty = (share >= 0.5).float(), (share == 0).float()
    # masked means without a host sync: an empty mask gives 0 / 1 = 0
    named = -(own * person).sum() / person.sum().clamp_min(1)
    nobody = -(logp.mean(dim=1) * empty).sum() / empty.sum().clamp_min(1)
    return named + nobody


def part_mix_loss(logits: torch.Tensor, parts: torch.Tensor) -> torch.Tensor:
    """Soft cross-entropy between per-cell part logits and the part mix under each cell.

    Args:
        logits: ``N x P x h x w`` part logits of the final map's cells.
        parts: ``N x H x W`` integer part labels in ``0..P-1`` (``H``, ``W`` multiples of
            ``h``, ``w``).

    Returns:
        Scalar: mean over cells of ``-sum_k t_k log softmax(logits)_k``, where ``t`` is the
        share of each part among the pixels under the cell.
    """
    target = F.one_hot(parts.long(), logits.shape[1]).permute(0, 3, 1, 2).float()
    target = F.adaptive_avg_pool2d(target, logits.shape[-2:])
    return -(target * F.log_softmax(logits, dim=1)).sum(1).mean()


def _batch(images, labels, infrared, rng, size: int):
    """``size`` random rows, visible first: (visible uint8, infrared uint8, labels, rows)."""
    rows = rng.choice(len(images), size, replace=False)
    rows = np.concatenate([rows[~infrared[rows]], rows[infrared[rows]]])
    n_vis = int((~infrared[rows]).sum())
    x = torch.from_numpy(images[rows])
    return x[:n_vis], x[n_vis:], torch.from_numpy(labels[rows]), rows


def shift_people(
    images: np.ndarray, offsets: np.ndarray, backgrounds: np.ndarray, shift: int
) -> torch.Tensor:
    """Move each image sideways onto its own background.

    Image ``i`` is pasted at column ``offsets[i]`` of a ``W + 2 shift`` wide background and the
    middle ``W`` columns are kept, so its content moves by ``offsets[i] - shift`` pixels
    (``offsets`` in ``0..2 shift``); uncovered columns show the background.

    Args:
        images: ``N x H x W x 3`` uint8.
        offsets: ``N`` ints in ``[0, 2 shift]``.
        backgrounds: ``N x H x (W + 2 shift) x 3`` uint8.
        shift: Largest move in pixels.

    Returns:
        ``N x H x W x 3`` uint8.
    """
    n, h, w, _ = images.shape
    canvas = backgrounds.copy()
    cols = offsets[:, None] + np.arange(w)[None]  # N x W
    canvas[np.arange(n)[:, None, None], np.arange(h)[None, :, None], cols[:, None, :]] = images
    return torch.from_numpy(np.ascontiguousarray(canvas[:, :, shift : shift + w]))


def _shifted(
    images: torch.Tensor, infrared: bool, shift: int, rng, parts: np.ndarray | None = None
) -> tuple[torch.Tensor, np.ndarray | None]:
    """``images`` moved by up to ``shift`` px onto fresh random backgrounds of their modality.

    ``parts`` (``N x H x W``), when given, moves with its images onto background (0).
    """
    from dclnet.data.sources.synthetic_render import background

    if shift == 0 or len(images) == 0:
        return images, parts
    n, h, w, _ = images.shape
    bg = background(rng, n, h, w + 2 * shift, 1 if infrared else 3)
    bg = (np.broadcast_to(bg, (*bg.shape[:3], 3)) * 255).round().astype(np.uint8)
    offsets = rng.integers(0, 2 * shift + 1, n)
    moved = shift_people(images.numpy(), offsets, bg, shift)
    if parts is not None:
        empty = np.zeros((n, h, w + 2 * shift, 3), dtype=np.uint8)
        parts = shift_people(np.repeat(parts[..., None], 3, -1), offsets, empty, shift)
        parts = parts[..., 0].numpy()
    return moved, parts


def _flipped(images: torch.Tensor, parts: np.ndarray, flip: torch.Tensor):
    """Mirror the images (``N x H x W x 3``) and part maps (``N x H x W``) where ``flip``."""
    parts = torch.from_numpy(np.ascontiguousarray(parts))
    images = torch.where(flip[:, None, None, None], images.flip(2), images)
    return images, torch.where(flip[:, None, None], parts.flip(2), parts)


class _EtaClock:
    """Logs, once, how long the whole pretraining will take on this machine, measured on
    the steps after the first (which pay for allocation and warm-up)."""

    def __init__(self, steps: int, skip: int = 2, measure: int = 10) -> None:
        self.steps, self.skip, self.measure = steps, skip, measure
        self.start: float | None = None

    def tick(self, step: int) -> None:
        if step == self.skip:
            self.start = time.perf_counter()
        elif self.start is not None and step == self.skip + self.measure:
            per_step = (time.perf_counter() - self.start) / self.measure
            left = per_step * (self.steps - step)
            logger.info(
                "synthetic pretraining: %d steps, %.2f s each on this machine: about %s more "
                "(done once; later runs load the cached file)",
                self.steps,
                per_step,
                _duration(left),
            )
            self.start = None


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def pretrain_backbone(
    arch: str,
    size: tuple[int, int],
    *,
    layer3_stride: int = 2,
    ids: int = 512,
    steps: int = 500,
    batch_size: int = DEFAULT_BATCH,
    lr: float = DEFAULT_LR,
    shift: int = 0,
    parts: float = 0.0,
    local: float = 0.0,
    style: str = "default",
    last_stride: int = 1,
    seed: int = 0,
    bf16: bool = False,
    progress: bool = True,
) -> dict[str, torch.Tensor]:
    """Train a ResNet to classify the people of a separate synthetic population, rendered in
    the look ``style`` (``wide``: randomised far beyond the data sets' look, see
    :mod:`dclnet.data.sources.synthetic_style`).

    Batches of ``batch_size`` random images of both modalities; each person moved sideways
    by up to ``shift`` pixels on a new background (:func:`shift_people`; 0 = as rendered);
    augmentation as in training (visible random grayscale, flips, random erasing); Adam with
    a linear warm-up over the first 5 % of ``steps`` and cosine decay to 0. With ``parts``
    > 0 the loss adds ``parts`` × :func:`part_mix_loss` of a per-cell part head on the final
    map (targets: the population's part maps, flipped with their images, erased pixels
    counted as background). ``last_stride`` 2 pretrains with layer4 at stride 2, as
    ImageNet classifiers are trained (layer4 then costs a quarter; benchmarks/bench_pretrain.py
    times a whole step); the run
    then uses the weights with its own last stride, as it does ImageNet's. ``seed`` changes
    the initialisation, the batches and the augmentation draws, never the population (0:
    the original recipe's draws). ``bf16`` runs the network's forward pass under CPU
    bfloat16 autocast (losses in float32): a step 12-36 % faster on a CPU with native bf16
    math (:func:`native_cpu_bf16`; ``benchmarks/bench_pretrain.py``), slower where it is
    emulated.

    Returns:
        The backbone's state dict with torchvision key names (``fc.*`` dropped).
    """
    from dclnet.data.sources.synthetic import make_synthetic

    syn = make_synthetic(
        ids,
        seed=PRETRAIN_SEED,
        height=size[0],
        width=size[1],
        num_val_ids=0,
        num_test_ids=1,
        style=style,
    )
    train = set(syn.train_ids)
    keep = np.array([r.label in train for r in syn.records])
    images = syn.images[keep]
    labels = np.searchsorted(syn.train_ids, np.array([r.label for r in syn.records])[keep])
    infrared = np.array([r.modality == INFRARED for r in syn.records])[keep]
    if batch_size > len(images):
        raise ConfigError(
            f"model.pretrain_batch={batch_size} is more than the {len(images)} images of the "
            f"pretraining population (model.pretrain_ids={ids}): lower model.pretrain_batch "
            "or raise model.pretrain_ids"
        )
    maps = bool(parts or local)
    part_maps = syn.parts[keep] if maps else None
    torch.manual_seed(PRETRAIN_SEED + seed)
    rng = np.random.default_rng(PRETRAIN_SEED + seed)
    gen = torch.Generator().manual_seed(PRETRAIN_SEED + seed)
    num_parts = len(PART_NAMES) if parts else 0
    model = _Classifier(
        arch, layer3_stride, len(syn.train_ids), num_parts, bool(local), last_stride
    ).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=5e-4)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warm
            if s < warm
            else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm)))
        ),
    )
    # with part targets the flip is drawn here, so that images and part maps flip together
    augment = AugmentConfig(flip_p=0.0) if maps else AugmentConfig()
    # tqdm's ETA is an exponential moving average of the step time (smoothing=0.1)
    bar = tqdm(
        range(steps), desc="synthetic pretraining", disable=not progress, leave=False,
        smoothing=0.1,
    )  # fmt: skip
    clock = _EtaClock(steps)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)
    for step in bar:
        clock.tick(step)
        vis, ir, y, rows = _batch(images, labels, infrared, rng, batch_size)
        if not maps:
            vis, ir = _shifted(vis, False, shift, rng)[0], _shifted(ir, True, shift, rng)[0]
            x_vis = augment_batch(vis, VISIBLE, augment, gen)[0]
            x = torch.cat([x_vis, augment_batch(ir, INFRARED, augment, gen)[0]])
            with autocast:
                logits = model(x)[0]
            loss = F.cross_entropy(logits.float(), y.long())
        else:
            n_vis = len(vis)
            vis, p_vis = _shifted(vis, False, shift, rng, part_maps[rows[:n_vis]])
            ir, p_ir = _shifted(ir, True, shift, rng, part_maps[rows[n_vis:]])
            flip = torch.rand(len(rows), generator=gen) < 0.5
            vis, p_vis = _flipped(vis, p_vis, flip[:n_vis])
            ir, p_ir = _flipped(ir, p_ir, flip[n_vis:])
            (x_vis, e_vis), (x_ir, e_ir) = (
                augment_batch(vis, VISIBLE, augment, gen),
                augment_batch(ir, INFRARED, augment, gen),
            )
            target = torch.cat([p_vis, p_ir]).masked_fill(torch.cat([e_vis, e_ir]), 0)
            with autocast:
                logits, part_cells, id_cells = model(torch.cat([x_vis, x_ir]))
            loss = F.cross_entropy(logits.float(), y.long())
            if parts:
                loss = loss + parts * part_mix_loss(part_cells.float(), target)
            if local:
                fg = (target > 0).float()[:, None]
                share = F.adaptive_avg_pool2d(fg, id_cells.shape[-2:])[:, 0]
                loss = loss + local * local_identity_loss(id_cells.float(), y.long(), share)
        value = loss.item()  # the progress bar shows it anyway: no extra sync
        if not math.isfinite(value):
            raise NonFiniteLossError(
                f"synthetic pretraining: the loss became {value} at step {step + 1} of {steps}"
                + (
                    " under bfloat16 autocast (model.pretrain_amp); on this CPU pretrain in "
                    "float32: model.pretrain_amp=off"
                    if bf16
                    else "; lower model.pretrain_lr"
                )
                + " (nothing was cached)"
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{value:.3f}", refresh=False)
    state = model.backbone.state_dict()
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


def synthetic_backbone(
    arch: str,
    size: tuple[int, int],
    cache_dir: Path,
    *,
    layer3_stride: int = 2,
    ids: int = 512,
    steps: int = 500,
    batch_size: int = DEFAULT_BATCH,
    shift: int = 0,
    parts: float = 0.0,
    local: float = 0.0,
    style: str = "default",
    lr: float = DEFAULT_LR,
    last_stride: int = 1,
    seed: int = 0,
    amp: str = "off",
    progress: bool = True,
) -> Path:
    """Path of the cached synthetic-pretrained backbone; trains and caches it when missing.

    ``amp`` (``model.pretrain_amp``) picks the arithmetic (:func:`resolve_pretrain_amp`); a
    bfloat16 backbone is its own cache file. ``auto`` takes a backbone cached in either
    arithmetic (bfloat16 first); with none, it times both (:func:`bf16_step_faster`) where
    the CPU has native bfloat16 instructions. The file is written atomically (temp file, then
    rename), so an interrupted pretraining leaves nothing that a later run would load.
    """

    def path_for(bf16: bool) -> Path:
        return pretrained_path(
            cache_dir, arch, size, layer3_stride, ids, steps, shift, parts, local, style, lr,
            last_stride, seed, bf16, batch_size,
        )  # fmt: skip

    if amp == "auto":  # a backbone cached in either arithmetic serves: never pretrain twice
        for bf16 in (True, False):
            if path_for(bf16).is_file():
                return path_for(bf16)
    bf16 = resolve_pretrain_amp(
        amp, lambda: bf16_step_faster(arch, size, layer3_stride, last_stride, batch_size)
    )
    path = path_for(bf16)
    if path.is_file():
        return path
    logger.info(
        "model.pretrained=synthetic: pretraining %s on %d other synthetic people (%s look) "
        "for %d steps of %d images%s (once; cached as %s, listed by `dclnet cache list`)",
        arch,
        ids,
        style,
        steps,
        batch_size,
        " in bfloat16 (native on this CPU)" if bf16 and native_cpu_bf16() else
        " in bfloat16" if bf16 else "",
        path,
    )  # fmt: skip
    start = time.perf_counter()
    state = pretrain_backbone(
        arch,
        size,
        layer3_stride=layer3_stride,
        ids=ids,
        steps=steps,
        batch_size=batch_size,
        shift=shift,
        parts=parts,
        local=local,
        style=style,
        lr=lr,
        last_stride=last_stride,
        seed=seed,
        bf16=bf16,
        progress=progress,
    )
    with atomic_write(path, "wb") as fh:
        torch.save(state, fh)
    logger.info("synthetic pretraining took %.0f s", time.perf_counter() - start)
    return path
