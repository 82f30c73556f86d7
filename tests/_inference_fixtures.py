"""Tiny checkpoints and image folders for the inference, search, export and visualisation tests.

Checkpoints hold a random ResNet-18 DCLNet at 64 x 32 and are written with the same keys as
training (:func:`dclnet.engine.run_state.checkpoint_state`), so they load like a real run's file.
"""

from __future__ import annotations

import dataclasses
import warnings
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image

from dclnet.config import Config
from dclnet.data.sources.synthetic import SyntheticSet, make_synthetic
from dclnet.engine.checkpoint import save_checkpoint
from dclnet.engine.run_state import checkpoint_state
from dclnet.models.dclnet import DCLNet
from dclnet.models.resnet import RandomInitWarning

HEIGHT, WIDTH = 64, 32
NUM_CLASSES = 5


def tiny_model(seed: int = 0, arch: str = "resnet18") -> DCLNet:
    """A random DCLNet whose BN statistics are perturbed (so that eval mode is not trivial)."""
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomInitWarning)
        model = DCLNet(NUM_CLASSES, arch=arch, pretrained=None)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.normal_(0.0, 0.1, generator=gen)
                module.running_var.uniform_(0.5, 1.5, generator=gen)
    return model.eval()


def make_checkpoint(path: Path, *, seed: int = 0, model: DCLNet | None = None) -> Path:
    """Write a checkpoint with the keys ``dclnet train`` writes; return its path."""
    model = model if model is not None else tiny_model(seed)
    base = Config()
    cfg = dataclasses.replace(
        base,
        data=dataclasses.replace(base.data, height=HEIGHT, width=WIDTH),
        model=dataclasses.replace(base.model, arch=model.arch, pretrained=None),
    )
    state = checkpoint_state(cfg, model, SimpleNamespace(num_classes=NUM_CLASSES))
    save_checkpoint(state, path)
    return path


@lru_cache(maxsize=1)
def synthetic_people() -> SyntheticSet:
    """A few synthetic people at 96 x 48 (larger than the model input, so inputs get resized)."""
    return make_synthetic(
        4, seed=3, height=96, width=48, images_per_camera=(2, 3), num_val_ids=0, num_test_ids=1
    )


def write_sysu_images(root: Path, modality: str | None = None, limit: int | None = None) -> Path:
    """Write synthetic images in the SYSU layout ``camC/PPPP/NNNN.jpg``; return ``root``."""
    people = synthetic_people()
    rows = [i for i, r in enumerate(people.records) if modality in (None, r.modality)]
    for i in rows[:limit]:
        path = root / people.records[i].path
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(people.images[i]).save(path, quality=95)
    return root


def random_images(n: int, seed: int = 0, size: tuple[int, int] = (80, 40)) -> np.ndarray:
    """``n x H x W x 3`` uint8 noise-and-gradient images."""
    rng = np.random.default_rng(seed)
    h, w = size
    ramp = np.linspace(0, 255, w)[None, None, :, None]
    noise = rng.integers(0, 256, size=(n, h, w, 3))
    return ((noise + ramp) / 2).astype(np.uint8)


def write_truncated_jpeg(path: Path) -> Path:
    """A JPEG cut in half (Pillow cannot fully decode it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(random_images(1, 7)[0]).save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def run_cli(argv: list[str]) -> int:
    """Run an inference sub-command like ``dclnet`` does (``error:`` line and 2 on DclnetError).

    The parser is built here from :func:`dclnet.inference.commands.register`, so these tests
    do not depend on ``dclnet.cli`` wiring.
    """
    import argparse
    import sys

    from dclnet.errors import DclnetError
    from dclnet.inference.commands import register

    parser = argparse.ArgumentParser(prog="dclnet")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except DclnetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def ranked(embedder, index, world, **kwargs):
    """``{query: [(path, score), ...]}`` of an infrared search over ``index`` (top 30)."""
    from dclnet.inference.index import list_images
    from dclnet.inference.results import search

    queries = [world["queries"] / p for p in list_images(world["queries"])]
    results = search(embedder, index, queries, "infrared", topk=30, **kwargs)
    return {r.query: list(zip(r.paths, r.scores)) for r in results}


def assert_same_ranking(a, b):
    """Two :func:`ranked` outputs list the same paths in order, scores within 1e-5."""
    assert a.keys() == b.keys()
    for query in a:
        assert [p for p, _ in a[query]] == [p for p, _ in b[query]]
        np.testing.assert_allclose([s for _, s in a[query]], [s for _, s in b[query]], atol=1e-5)


def exact_index(embedder, world: dict, folder: Path) -> Path:
    """An exact gallery index of ``world``'s gallery, written to ``folder``."""
    from dclnet.inference.indexing import write_index

    write_index(embedder, world["gallery"], "visible", folder, progress=False)
    return folder
