"""The training step: batched device-side augmentation, forward, objective, update.

Also what feeds it (:class:`BatchPrefetcher`: cached uint8 arrays → pinned memory) and what
wraps the network for it (:func:`build_step_context`: DDP, ``torch.compile``, AMP scaler).
Kept apart from the loop (:mod:`dclnet.engine.train`) so that benchmarks and tests drive
exactly the step that training runs.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from dclnet.data.augment import AugmentConfig, apply_augment, draw, image_size
from dclnet.data.datasets import TrainData
from dclnet.data.records import INFRARED, VISIBLE
from dclnet.engine import distributed as dist_utils
from dclnet.errors import ConfigError
from dclnet.losses.objective import LossWeights, dclnet_objective
from dclnet.models.dclnet import DCLNet


@dataclass
class StepContext:
    """Everything :func:`train_step` needs besides the batch.

    ``model`` is what the forward calls (the network, or its DDP and/or ``torch.compile``
    wrapper); ``net`` is the bare network, whose part-classifier weight scores the CAMs.
    """

    model: nn.Module
    net: DCLNet
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    loss_kwargs: dict[str, Any]
    augment: AugmentConfig
    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool = False
    cam_fold_bn: bool = False  # CAMs scored with the part BNNeck's scale folded in
    augment_fn: Callable[..., tuple[Tensor, Tensor]] = apply_augment  # or its compiled form
    objective_fn: Callable[..., dict[str, Tensor]] = dclnet_objective  # or its compiled form


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for ``train.amp`` (``None`` = float32).

    ``"auto"`` on CUDA: bfloat16 where the GPU has native bf16 arithmetic (Ampere and
    newer), else float16 with a GradScaler -- pre-Ampere GPUs (V100, T4) only emulate bf16,
    slower than float16, so emulation does not count.
    """
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "auto":
        return torch.bfloat16 if _native_bf16(device) else torch.float16
    return {"bfloat16": torch.bfloat16, "float16": torch.float16}[amp]


def _native_bf16(device: torch.device) -> bool:
    """Whether the CUDA ``device`` (the current one when unnumbered) has native bf16."""
    if device.index is None:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    with torch.cuda.device(device.index):
        return torch.cuda.is_bf16_supported(including_emulation=False)


def configure_cudnn(device: torch.device, deterministic: bool) -> None:
    """cuDNN settings of a run on ``device`` (no effect on the CPU).

    ``deterministic``: cuDNN's deterministic algorithms without autotuning, so a run (and a
    resumed run) repeats its convolutions exactly; otherwise ``benchmark`` autotunes the
    fastest kernels once per input size (one size in training), which may differ between
    processes and runs.
    """
    if device.type != "cuda":
        return
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic


def step_generator(seed: int, epoch: int, step: int, rank: int = 0) -> torch.Generator:
    """Augmentation RNG as a pure function of (seed, epoch, step, rank): exact resume."""
    state = np.random.SeedSequence([seed, epoch, step, rank]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def unused_modules(net: DCLNet, weights: LossWeights) -> list[nn.Module]:
    """Parts of ``net`` that no enabled loss term reaches (they would get no gradient).

    What each term reaches: the identity loss the BNNeck, the identity classifier, the shared
    stages and both modality streams; the metric loss (on the pre-BNNeck feature) the shared
    stages and the streams; the dense loss (on Z, the streams' output) the streams only; the
    part-identity and PAP losses only their own heads (the part branch and the PAP pixel
    classifier see detached features).

    Raises:
        ConfigError: Every term is off (nothing would train).
    """
    if not any(dataclasses.astuple(weights)):
        raise ConfigError(
            "every loss term is off (loss.id, loss.metric, loss.part_id, loss.pap and "
            "loss.dcl are all 0): nothing would train; give at least one a weight > 0"
        )
    unused: list[nn.Module] = []
    if not weights.id:
        unused += [net.bnneck, net.classifier]
    if not weights.part_id:
        unused += [net.part_bnneck, net.part_classifier]
    if not weights.pap:
        unused.append(net.pixel_classifier)
    if not (weights.id or weights.metric):
        unused.append(net.shared)
    if not (weights.id or weights.metric or weights.dcl):  # only the detached heads train
        unused += [net.visible, net.infrared]
    return unused


def freeze_unused(net: DCLNet, weights: LossWeights) -> int:
    """Set ``requires_grad=False`` on :func:`unused_modules`; returns the frozen tensor count.

    Call before building the optimiser and before DDP wrapping: DDP then ignores these
    parameters, so it needs no ``find_unused_parameters`` (a graph traversal every step), and
    single-process training is unchanged (the optimiser skipped gradient-less parameters).
    Every combination of switched-off terms leaves exactly the reached parameters trainable.
    """
    params = [p for m in unused_modules(net, weights) for p in m.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    return len(params)


def train_step(
    ctx: StepContext, visible: Tensor, infrared: Tensor, labels: Tensor, gen: torch.Generator
) -> dict[str, Tensor]:
    """One optimisation step on an aligned batch.

    The images arrive as uint8 (pinned, for an asynchronous copy) and are augmented on the
    device. Nothing here reads a value back to the host, so the CPU can queue the next step
    while the GPU works (with float16 the GradScaler's overflow check is the one exception).

    Args:
        ctx: Model, optimiser, loss settings, device.
        visible: ``N x H x W x 3`` uint8 visible images (any device).
        infrared: ``N x H x W x 3`` uint8 infrared images; image n shares visible n's identity.
        labels: ``N`` identities of the pairs.
        gen: CPU generator for the augmentation.

    Returns:
        Detached weighted loss terms (and ``"total"``), still on the device: no host sync.
    """
    device = ctx.device
    # The random draws stay eager on the CPU generator (visible first, as augment_batch);
    # applying them is pure device code, compiled with train.compile_scope=step.
    vis_draws = draw(*image_size(visible), ctx.augment, gen).to(device)
    ir_draws = draw(*image_size(infrared), ctx.augment, gen).to(device)
    vis, vis_erased = ctx.augment_fn(
        visible.to(device, non_blocking=True), VISIBLE, ctx.augment, vis_draws
    )
    ir, ir_erased = ctx.augment_fn(
        infrared.to(device, non_blocking=True), INFRARED, ctx.augment, ir_draws
    )
    if ctx.channels_last:
        vis, ir = (
            vis.contiguous(memory_format=torch.channels_last),
            ir.contiguous(memory_format=torch.channels_last),
        )
    targets = labels.to(device, non_blocking=True).repeat(2)  # 2N: [visible; infrared]
    erased = torch.cat([vis_erased, ir_erased])  # 2N x H x W
    with torch.autocast(
        device.type, dtype=ctx.amp_dtype or torch.float32, enabled=ctx.amp_dtype is not None
    ):
        out = ctx.model(vis, ir)
    losses = ctx.objective_fn(
        out, targets, erased, part_weight=ctx.net.cam_weight(ctx.cam_fold_bn), **ctx.loss_kwargs
    )
    ctx.optimizer.zero_grad(set_to_none=True)
    ctx.scaler.scale(losses["total"]).backward()
    ctx.scaler.step(ctx.optimizer)
    ctx.scaler.update()
    return {k: v.detach() for k, v in losses.items()}


class BatchPrefetcher:
    """Gathers the next batches' uint8 images in background threads, in order.

    Each batch is one ``index_select`` from the (memory-mapped) arrays straight into a fresh
    pinned buffer (when ``pin``), which releases the GIL; PyTorch's pinned-memory cache
    recycles a buffer only after its asynchronous copy to the GPU has finished. Up to
    ``workers + 1`` batches are prepared ahead of the training loop.
    """

    def __init__(
        self,
        data: TrainData,
        batches: list[tuple[np.ndarray, np.ndarray]],
        pin: bool,
        workers: int = 1,
    ):
        self._batches, self._pin = batches, pin
        self._workers = max(1, workers)
        with warnings.catch_warnings():  # read-only memmaps: the tensors are never written
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            self._visible = torch.from_numpy(data.visible.images)
            self._infrared = torch.from_numpy(data.infrared.images)
        self._labels = torch.from_numpy(data.visible.labels.astype(np.int64))
        self._sets = (data.visible, data.infrared)  # map set indices to array rows

    def __len__(self) -> int:
        return len(self._batches)

    def _take(self, source: Tensor, index: Tensor) -> Tensor:
        out = torch.empty((len(index), *source.shape[1:]), dtype=source.dtype, pin_memory=self._pin)
        return torch.index_select(source, 0, index, out=out)

    def _gather(self, vis_idx: np.ndarray, ir_idx: np.ndarray) -> tuple[Tensor, Tensor, Tensor]:
        labels = self._take(self._labels, torch.from_numpy(vis_idx))
        vis_rows, ir_rows = (s.source_rows(i) for s, i in zip(self._sets, (vis_idx, ir_idx)))
        vis_index, ir_index = torch.from_numpy(vis_rows), torch.from_numpy(ir_rows)
        return self._take(self._visible, vis_index), self._take(self._infrared, ir_index), labels

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        pool = ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix="dclnet-batch")
        pending: deque = deque()
        try:
            for batch in self._batches:
                pending.append(pool.submit(self._gather, *batch))
                if len(pending) > self._workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


COMPILE_SCOPES = ("step", "network")


def build_step_context(
    net: DCLNet,
    optimizer: torch.optim.Optimizer,
    *,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    loss_kwargs: dict[str, Any],
    augment: AugmentConfig,
    channels_last: bool = False,
    compile: bool = False,
    compile_scope: str = "step",
    compile_backend: str = "inductor",
    sync_bn: bool = False,
    cam_fold_bn: bool = False,
) -> StepContext:
    """Wrap ``net`` for training (DDP in a process group, then ``torch.compile`` if asked).

    ``net`` must already be on ``device`` (in channels-last layout when ``channels_last``),
    with :func:`freeze_unused` applied. A float16 run gets an enabled GradScaler.

    With ``compile``, ``compile_scope="network"`` compiles the (DDP-wrapped) network;
    ``"step"`` compiles the augmentation (:func:`~dclnet.data.augment.apply_augment`) and
    the objective too, so that their few hundred small operations each run as fused kernels
    instead of one host-side dispatch apiece. The random draws, the backward pass and the
    optimiser step stay eager. ``compile_backend`` is ``torch.compile``'s backend
    (``"aot_eager"`` in the CPU tests).
    """
    if compile_scope not in COMPILE_SCOPES:
        raise ConfigError(
            f"train.compile_scope={compile_scope!r} is not valid; choose one of "
            f"{', '.join(COMPILE_SCOPES)}"
        )
    model = dist_utils.wrap_model(net, device, sync_bn=sync_bn)
    augment_fn, objective_fn = apply_augment, dclnet_objective
    if compile:
        model = torch.compile(model, backend=compile_backend)
        if compile_scope == "step":
            augment_fn = torch.compile(apply_augment, backend=compile_backend)
            objective_fn = torch.compile(dclnet_objective, backend=compile_backend)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    return StepContext(
        model,
        net,
        optimizer,
        scaler,
        loss_kwargs,
        augment,
        device,
        amp_dtype,
        channels_last,
        cam_fold_bn,
        augment_fn,
        objective_fn,
    )
