"""Embedder: one-call loading, every input kind preprocessed identically, masks, streaming."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _inference_fixtures import (
    HEIGHT,
    WIDTH,
    make_checkpoint,
    random_images,
    tiny_model,
    write_truncated_jpeg,
)
from PIL import Image

from dclnet.data.augment import normalize
from dclnet.data.imageio import load_image
from dclnet.engine.checkpoint import load_checkpoint, save_checkpoint
from dclnet.errors import CheckpointError, DataError, DclnetError
from dclnet.inference.api import Embedder, checkpoint_identity, resize_rgb

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> str:
    return str(make_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt"))


@pytest.fixture(scope="module")
def embedder(ckpt) -> Embedder:
    return Embedder.from_checkpoint(ckpt, device="cpu")


@pytest.fixture(scope="module")
def pngs(tmp_path_factory) -> list[str]:
    """Lossless files (80 x 40, so they are resized) whose pixels the arrays below repeat."""
    folder = tmp_path_factory.mktemp("png")
    paths = []
    for i, image in enumerate(random_images(5, seed=1)):
        path = folder / f"{i}.png"
        Image.fromarray(image).save(path)
        paths.append(str(path))
    return paths


def reference(embedder: Embedder, images: np.ndarray, modality: str) -> torch.Tensor:
    """Embeddings computed by hand: PIL LANCZOS resize, normalise, ``model.embed``."""
    resized = np.stack([resize_rgb(Image.fromarray(a), (HEIGHT, WIDTH)) for a in images])
    x = torch.from_numpy(resized).permute(0, 3, 1, 2).float() / 255.0
    with torch.no_grad():
        return embedder.model.embed(normalize(x), modality)


def test_from_checkpoint_reads_preprocessing(embedder):
    assert embedder.preprocessing.size == (HEIGHT, WIDTH)
    assert embedder.embed_dim == 512
    assert not embedder.model.training
    assert len(embedder.identity) == 64


def test_every_input_kind_gives_the_same_embedding(embedder, pngs):
    arrays = random_images(5, seed=1)
    want = reference(embedder, arrays, "infrared")
    pil = [Image.open(p) for p in pngs]
    resized = np.stack([resize_rgb(Image.fromarray(a), (HEIGHT, WIDTH)) for a in arrays])
    normalised = embedder.prepare(resized)
    kinds = {
        "paths": pngs,
        "pil": pil,
        "arrays": list(arrays),
        "uint8 stack": arrays,
        "uint8 tensor": torch.from_numpy(arrays),
        "float tensor": normalised,
    }
    for name, inputs in kinds.items():
        got = embedder.embed(inputs, "infrared", batch_size=2)
        assert got.dtype == torch.float32 and got.shape == (5, 512), name
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0, msg=name)
    norms = got.norm(dim=1)
    torch.testing.assert_close(norms, torch.ones(5))


def test_file_and_pil_resizing_agree(pngs):
    for path in pngs:
        np.testing.assert_array_equal(
            load_image(path, (HEIGHT, WIDTH)), resize_rgb(Image.open(path), (HEIGHT, WIDTH))
        )


def test_modalities_use_their_own_branch(embedder, pngs):
    vis = embedder.embed(pngs, "visible")
    ir = embedder.embed(pngs, "infrared")
    assert (vis - ir).abs().max() > 1e-3
    torch.testing.assert_close(vis, reference(embedder, random_images(5, seed=1), "visible"))


def test_batch_size_and_flip(embedder, pngs):
    full = embedder.embed(pngs, "visible", batch_size=64)
    one = embedder.embed(pngs, "visible", batch_size=1)
    torch.testing.assert_close(one, full, atol=1e-5, rtol=0)
    flipped = embedder.embed(pngs, "visible", flip=True)
    x = embedder.prepare(pngs)
    with torch.no_grad():
        torch.testing.assert_close(flipped, embedder.model.embed(x, "visible", flip=True))
    assert (flipped - full).abs().max() > 1e-4


def test_masks(embedder, pngs):
    emb, masks = embedder.embed(pngs, "visible", batch_size=2, return_masks=True)
    assert emb.shape == (5, 512)
    assert masks.shape == (5, HEIGHT // 4, WIDTH // 4) and masks.dtype == torch.int64
    assert masks.min() >= 0 and masks.max() <= 6
    with torch.no_grad():
        want = embedder.model.predict_masks(embedder.prepare(pngs), "visible")
    torch.testing.assert_close(masks, want)


def test_streaming_matches_embed(embedder, pngs):
    want = embedder.embed(pngs, "visible")
    for workers in (0, 2):
        chunks = list(embedder.embed_paths_streaming(pngs, "visible", 2, workers=workers))
        assert [len(p) for p, _ in chunks] == [2, 2, 1]
        assert [p for c, _ in chunks for p in c] == pngs
        torch.testing.assert_close(torch.cat([e for _, e in chunks]), want, atol=1e-5, rtol=0)


def test_streaming_corrupt_file(embedder, pngs, tmp_path):
    bad = str(write_truncated_jpeg(tmp_path / "bad.jpg"))
    paths = [pngs[0], bad, pngs[1]]
    with pytest.raises(DataError, match="bad.jpg"):
        list(embedder.embed_paths_streaming(paths, "visible", 2, workers=2))
    chunks = list(embedder.embed_paths_streaming(paths, "visible", 2, skip_corrupt=True))
    assert [p for c, _ in chunks for p in c] == [pngs[0], pngs[1]]
    with pytest.raises(DataError, match="bad.jpg"):
        embedder.embed(paths, "visible")


def test_bad_inputs(embedder, pngs):
    with pytest.raises(DclnetError, match="unknown modality 'thermal'.*visible, infrared"):
        embedder.embed(pngs, "thermal")
    with pytest.raises(DclnetError, match="unknown modality"):
        next(embedder.embed_paths_streaming(pngs, "rgb"))
    with pytest.raises(DataError, match="float input tensor.*N x 3 x 64 x 32"):
        embedder.embed(torch.zeros(2, 3, 10, 10), "visible")
    with pytest.raises(DataError, match="input 1: expected a file path"):
        embedder.embed([pngs[0], np.zeros((4, 4), np.float32)], "visible")
    with pytest.raises(DataError, match="wrap it in a list"):
        embedder.embed(pngs[0], "visible")
    with pytest.raises(DataError, match="empty"):
        embedder.embed([], "visible")
    with pytest.raises(DataError, match="missing.png"):
        embedder.embed([pngs[0][:-5] + "missing.png"], "visible")


def test_checkpoint_of_another_architecture(tmp_path):
    path = make_checkpoint(tmp_path / "r18.pt")
    state = load_checkpoint(path)
    state["model"] = tiny_model(arch="resnet34").state_dict()
    save_checkpoint({k: v for k, v in state.items() if k != "format"}, tmp_path / "mixed.pt")
    with pytest.raises(CheckpointError, match="mixed.pt.*resnet18"):
        Embedder.from_checkpoint(tmp_path / "mixed.pt", device="cpu")
    with pytest.raises(CheckpointError, match="does not exist"):
        Embedder.from_checkpoint(tmp_path / "nope.pt", device="cpu")


def test_identity_depends_on_weights_only(tmp_path):
    a = load_checkpoint(make_checkpoint(tmp_path / "a.pt", seed=0))
    b = load_checkpoint(make_checkpoint(tmp_path / "b.pt", seed=0))
    c = load_checkpoint(make_checkpoint(tmp_path / "c.pt", seed=1))
    b["optimizer"] = {"anything": 1}
    assert checkpoint_identity(a) == checkpoint_identity(b) != checkpoint_identity(c)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(ckpt, pngs):
    from dclnet.inference.index import topk_search

    cpu = Embedder.from_checkpoint(ckpt, device="cpu")
    gpu = Embedder.from_checkpoint(ckpt, device="cuda")
    assert gpu.device.type == "cuda" and next(gpu.model.parameters()).is_cuda
    want = cpu.embed(pngs, "visible")
    got, masks = gpu.embed(pngs, "visible", return_masks=True)
    assert got.device.type == "cpu" and masks.device.type == "cpu"
    torch.testing.assert_close(got, want, atol=5e-3, rtol=0)  # cuDNN may use TF32
    _, index = topk_search(want.cuda(), want.numpy(), 1, chunk_size=2)
    assert index.device.type == "cuda" and index[:, 0].tolist() == list(range(len(pngs)))


def test_outputs_are_ordinary_tensors(embedder, pngs):
    emb = embedder.embed(pngs[:2], "visible")
    weight = torch.ones(512, 1, requires_grad=True)
    (emb @ weight).sum().backward()  # inference-mode tensors would refuse this
    assert weight.grad is not None and not emb.is_inference()
    ((_, chunk),) = list(embedder.embed_paths_streaming(pngs[:2], "visible"))
    assert not chunk.is_inference()
