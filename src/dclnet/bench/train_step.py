"""Training-step and data-pipeline throughput.

The DCLNet steps run :func:`dclnet.engine.step.train_step` itself (device-side augmentation,
forward, objective, backward, Adam update) on a fixed uint8 batch; the plain step is a
torchvision-layout ResNet of the same depth (last stride 1), forward + identity
cross-entropy + backward on the same number of already normalised images, the reference
for "how much does DCLNet cost on top of its backbone".
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dclnet.bench.common import BenchSize, PeakMemory, best_seconds, synchronize
from dclnet.data.augment import AugmentConfig, augment_batch
from dclnet.data.datasets import TrainData
from dclnet.data.records import INFRARED, VISIBLE, ImageSet
from dclnet.data.sampler import CrossModalitySampler
from dclnet.engine.schedule import build_optimizer
from dclnet.engine.step import (
    BatchPrefetcher,
    build_step_context,
    freeze_unused,
    step_generator,
    train_step,
)
from dclnet.losses.objective import ABLATIONS
from dclnet.models.dclnet import DCLNet
from dclnet.models.resnet import RandomInitWarning, build_resnet

VARIANTS = ("baseline", "full", "plain")


def _uint8_batch(n: int, height: int, width: int, device: torch.device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (2, n, height, width, 3), dtype=torch.uint8, generator=g)
    if device.type == "cuda":
        images = images.pin_memory()
    return images[0], images[1]


def _dclnet_step(variant: str, size: BenchSize, device, amp_dtype, channels_last, compile):
    with warnings.catch_warnings():  # random weights are fine for timing
        warnings.simplefilter("ignore", RandomInitWarning)
        net = DCLNet(size.num_classes, arch=size.arch, pretrained=None).to(device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    kwargs = dict(ABLATIONS[variant])
    freeze_unused(net, kwargs["weights"])
    optimizer = build_optimizer(net.parameter_groups())
    ctx = build_step_context(
        net,
        optimizer,
        device=device,
        amp_dtype=amp_dtype,
        loss_kwargs=kwargs,
        augment=AugmentConfig(),
        channels_last=channels_last,
        compile=compile,
    )
    n = size.num_ids * size.num_instances
    visible, infrared = _uint8_batch(n, size.height, size.width, device)
    labels = torch.arange(size.num_ids).repeat_interleave(size.num_instances)  # P x K layout
    if device.type == "cuda":
        labels = labels.pin_memory()
    ctx.model.train()
    step = iter(range(1 << 62))

    def run() -> None:
        train_step(ctx, visible, infrared, labels, step_generator(0, 0, next(step)))

    return run


def _plain_step(size: BenchSize, device, amp_dtype, channels_last, compile):
    torch.manual_seed(0)
    model = build_resnet(size.arch, last_stride=1, num_classes=size.num_classes).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    call = torch.compile(model) if compile else model
    g = torch.Generator().manual_seed(0)
    images = torch.randn(size.batch, 3, size.height, size.width, generator=g).to(device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, size.num_classes, (size.batch,), generator=g).to(device)
    model.train()

    def run() -> None:
        model.zero_grad(set_to_none=True)
        with torch.autocast(
            device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None
        ):
            logits = call(images)
        F.cross_entropy(logits.float(), labels).backward()

    return run


def bench_train_step(
    variant: str,
    size: BenchSize,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    *,
    channels_last: bool = False,
    compile: bool = False,
) -> dict[str, Any]:
    """Time one training-step variant.

    Args:
        variant: ``"baseline"`` (identity + metric losses), ``"full"`` (all DCLNet terms, SRM
            on) or ``"plain"`` (ResNet forward + cross-entropy + backward, no update).
        size: Model, input size, batch, iteration counts.
        device: Where to run.
        amp_dtype: Autocast dtype (``None`` = float32).
        channels_last: Channels-last model and inputs.
        compile: ``torch.compile`` the network (the first calls, in the warm-up, compile).

    Returns:
        ``seconds`` per step, ``images_per_s`` (``size.batch`` images per step) and
        ``peak_bytes`` of one step on CUDA (``None`` on the CPU).
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")
    if variant == "plain":
        run = _plain_step(size, device, amp_dtype, channels_last, compile)
    else:
        run = _dclnet_step(variant, size, device, amp_dtype, channels_last, compile)
    seconds = best_seconds(run, device, warmup=size.warmup, iters=size.iters, repeats=size.repeats)
    peak = None
    if device.type == "cuda":
        with PeakMemory(device) as mem:
            run()
        peak = mem.bytes
    return {"seconds": seconds, "images_per_s": size.batch / seconds, "peak_bytes": peak}


def _pipeline_data(size: BenchSize) -> TrainData:
    rng = np.random.default_rng(0)
    n = size.pipeline_images
    labels = np.arange(n) % size.num_classes

    def image_set(modality: str) -> ImageSet:
        images = rng.integers(0, 256, (n, size.height, size.width, 3), dtype=np.uint8)
        paths = [f"{modality}/{i}.png" for i in range(n)]
        return ImageSet(images, labels.copy(), np.ones(n, np.int64), paths, modality)

    return TrainData(image_set(VISIBLE), image_set(INFRARED), size.num_classes, has_test=False)


def bench_data_pipeline(size: BenchSize, device: torch.device, workers: int = 2) -> dict:
    """Images per second of the input pipeline, without the network.

    ``gather``: sampler batches gathered from uint8 arrays in background threads (into
    pinned memory on CUDA). ``augment``: the same, then the copy to ``device`` and the
    batched augmentation of both modalities, as in :func:`~dclnet.engine.step.train_step`.
    """
    data = _pipeline_data(size)
    sampler = CrossModalitySampler(
        data.visible.labels,
        data.infrared.labels,
        num_ids=size.num_ids,
        num_instances=size.num_instances,
    )
    epoch_batches = sampler.epoch_batches(0)
    batches = [
        (epoch_batches[0][i % len(epoch_batches[0])], epoch_batches[1][i % len(epoch_batches[0])])
        for i in range(size.pipeline_batches)
    ]
    pin = device.type == "cuda"
    config = AugmentConfig()

    def gather() -> None:
        for _ in BatchPrefetcher(data, batches, pin=pin, workers=workers):
            pass

    def augment() -> None:
        for step, (vis, ir, _) in enumerate(BatchPrefetcher(data, batches, pin, workers)):
            gen = step_generator(0, 0, step)
            augment_batch(vis.to(device, non_blocking=True), VISIBLE, config, gen)
            augment_batch(ir.to(device, non_blocking=True), INFRARED, config, gen)
        synchronize(device)

    images = len(batches) * size.batch
    out = {}
    for name, fn in (("gather", gather), ("augment", augment)):
        seconds = best_seconds(fn, device, warmup=1, iters=1, repeats=size.repeats)
        out[name] = images / seconds
    return out
