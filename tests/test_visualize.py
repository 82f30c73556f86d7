"""Visualisations: each writes a PNG of the promised size; the maths behind them is checked."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from _inference_fixtures import HEIGHT, WIDTH, make_checkpoint, run_cli, write_sysu_images
from PIL import Image

from dclnet.errors import DataError, DclnetError
from dclnet.inference.api import Embedder
from dclnet.inference.index import list_images
from dclnet.inference.visualize import (
    label_reader,
    new_figure,
    part_maps,
    pixel_matches,
    plot_correspondence,
    plot_masks,
)
from dclnet.inference.visualize_curves import read_metrics
from dclnet.inference.visualize_embedding import pca_2d, tsne_2d

pytest.importorskip("matplotlib", reason="matplotlib (the viz extra) is not installed")
pytestmark = pytest.mark.timeout(90)


def png_size(path) -> tuple[int, int]:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def colour_count(path, rgb, tol: int = 12) -> int:
    pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)
    return int((np.abs(pixels - np.array(rgb)).max(axis=-1) <= tol).sum())


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("viz")
    return {
        "ckpt": make_checkpoint(base / "model.pt"),
        "visible": write_sysu_images(base / "vis", "visible", limit=12),
        "infrared": write_sysu_images(base / "ir", "infrared", limit=12),
    }


@pytest.fixture(scope="module")
def embedder(world):
    return Embedder.from_checkpoint(world["ckpt"], device="cpu")


def files(root) -> list[str]:
    return [str(root / p) for p in list_images(root)]


# -- ranks ----------------------------------------------------------------------------------


def test_ranks_grid_with_identity_frames(world, tmp_path, capsys):
    queries = files(world["infrared"])[:2]
    gallery = list_images(world["visible"])
    same = [p for p in gallery if p.split("/")[1] == queries[0].split("/")[-2]]
    other = [p for p in gallery if p not in same]
    entries = [
        {
            "query": q,
            "gallery_root": str(world["visible"]),
            "results": [{"path": p, "score": 0.9 - 0.1 * r} for r, p in enumerate(res)],
        }
        for q, res in ((queries[0], [same[0], other[0], other[1]]), (queries[1], other[:2]))
    ]
    results = tmp_path / "results.json"
    results.write_text(json.dumps(entries))
    out = tmp_path / "ranks.png"
    argv = ["visualize", "ranks", "--results", str(results), "--labels", "folder",
            "--output", str(out)]  # fmt: skip
    assert run_cli(argv) == 0
    assert png_size(out) == (4 * 90, 2 * 210)
    assert "360 x 420 pixels" in capsys.readouterr().out
    assert colour_count(out, (26, 178, 51)) > 100  # a green frame: the same person
    assert colour_count(out, (217, 26, 26)) > 100  # red frames: other people
    plain = tmp_path / "plain.png"
    assert run_cli(["visualize", "ranks", "--results", str(results), "--output", str(plain)]) == 0
    assert colour_count(plain, (26, 178, 51)) == 0  # no labels, no verdict


def test_label_reader(tmp_path):
    assert label_reader("folder")("cam3/0007/0001.jpg") == "0007"
    assert label_reader("none")("cam3/0007/0001.jpg") is None
    table = tmp_path / "labels.csv"
    table.write_text("path,label\nq/a.jpg,5\ncam1/x.jpg,6\n")
    labels = label_reader(table)
    assert labels("q/a.jpg") == "5" and labels("cam1/x.jpg") == "6" and labels("z.jpg") is None
    (tmp_path / "bad.csv").write_text("file,id\na,1\n")
    with pytest.raises(DataError, match="columns path,label"):
        label_reader(tmp_path / "bad.csv")
    with pytest.raises(DataError, match="'folder', 'none' or a CSV"):
        label_reader(tmp_path / "absent.csv")


# -- masks ----------------------------------------------------------------------------------


def test_masks_and_cams(world, embedder, tmp_path):
    paths = files(world["visible"])[:3]
    pixels, masks, cams = part_maps(embedder, paths, "visible")
    assert pixels.shape == (3, HEIGHT, WIDTH, 3) and pixels.dtype == np.uint8
    _, want = embedder.embed(paths, "visible", return_masks=True)
    np.testing.assert_array_equal(masks, want.numpy())
    assert cams.shape == (3, HEIGHT // 16, WIDTH // 16)
    assert cams.min() >= 0.0 and cams.max() <= 1.0
    out = plot_masks(embedder, paths, "visible", tmp_path / "masks.png")
    assert png_size(out) == (3 * 90, 630)
    with pytest.raises(DclnetError, match="unknown modality"):
        plot_masks(embedder, paths, "colour", tmp_path / "x.png")


# -- correspondence -------------------------------------------------------------------------


def brute_force_matches(a: torch.Tensor, b: torch.Tensor, mutual: bool):
    a = torch.nn.functional.normalize(a.flatten(1).T, dim=1)
    b = torch.nn.functional.normalize(b.flatten(1).T, dim=1)
    pairs = []
    for p in range(len(a)):
        sims = [float(a[p] @ b[q]) for q in range(len(b))]
        q = int(np.argmax(sims))
        back = int(np.argmax([float(a[r] @ b[q]) for r in range(len(a))]))
        if not mutual or back == p:
            pairs.append((sims[q], p, q))
    pairs.sort(key=lambda t: (-t[0], t[1]))
    return pairs


@pytest.mark.parametrize("mutual", [True, False])
def test_pixel_matches_equal_a_loop(mutual):
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(8, 5, 4, generator=gen), torch.randn(8, 6, 3, generator=gen)
    idx_a, idx_b, score = pixel_matches(a, b, 7, mutual=mutual)
    want = brute_force_matches(a, b, mutual)[:7]
    assert idx_a.tolist() == [p for _, p, _ in want]
    assert idx_b.tolist() == [q for _, _, q in want]
    np.testing.assert_allclose(score.numpy(), [s for s, _, _ in want], atol=1e-6)
    assert mutual is False or len(want) < 20  # the mutual case really filters


def test_pixel_matches_respect_valid_pixels():
    gen = torch.Generator().manual_seed(1)
    a, b = torch.randn(4, 3, 3, generator=gen), torch.randn(4, 3, 3, generator=gen)
    valid_a = torch.zeros(3, 3, dtype=torch.bool)
    valid_a[0] = True
    valid_b = torch.ones(3, 3, dtype=torch.bool)
    valid_b[:, 1] = False
    idx_a, idx_b, _ = pixel_matches(a, b, 9, mutual=False, valid_a=valid_a, valid_b=valid_b)
    assert set(idx_a.tolist()) <= {0, 1, 2} and len(idx_a) == 3
    assert all(q % 3 != 1 for q in idx_b.tolist())


def test_correspondence_png(world, embedder, tmp_path):
    vis, ir = files(world["visible"])[0], files(world["infrared"])[0]
    out = plot_correspondence(embedder, vis, ir, tmp_path / "corr.png", top=10)
    assert png_size(out) == (400, 500)
    argv = ["visualize", "correspondence", "--checkpoint", str(world["ckpt"]), "--visible",
            vis, "--infrared", ir, "--foreground", "--all-best", "--output",
            str(tmp_path / "fg.png"), "--device", "cpu"]  # fmt: skip
    assert run_cli(argv) == 0
    assert png_size(tmp_path / "fg.png") == (400, 500)


# -- embedding maps -------------------------------------------------------------------------


def test_pca_matches_numpy_svd():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(30, 6, generator=gen) * torch.tensor([5.0, 3.0, 1, 1, 1, 1])
    got = pca_2d(x).numpy()
    centred = x.double().numpy() - x.double().numpy().mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    np.testing.assert_allclose(np.abs(got), np.abs(centred @ vt[:2].T), atol=1e-9)
    np.testing.assert_allclose(got.std(axis=0, ddof=1), s[:2] / np.sqrt(29), rtol=1e-9)
    np.testing.assert_array_equal(pca_2d(x).numpy(), got)


def test_tsne_keeps_clusters_apart():
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(4).repeat_interleave(15)
    x = (torch.randn(4, 12, generator=gen) * 4)[labels] + torch.randn(60, 12, generator=gen)
    y = tsne_2d(x, perplexity=10, iterations=300)
    assert y.shape == (60, 2) and torch.isfinite(y).all()
    d = torch.cdist(y, y).fill_diagonal_(float("inf"))
    assert (labels[d.argmin(dim=1)] == labels).all()  # nearest neighbour: same cluster
    centres = torch.stack([y[labels == k].mean(0) for k in range(4)])
    spread = max(float((y[labels == k] - centres[k]).norm(dim=1).mean()) for k in range(4))
    assert float(torch.pdist(centres).min()) > 5 * spread
    torch.testing.assert_close(tsne_2d(x, perplexity=10, iterations=300), y)
    with pytest.raises(DataError, match="at least 3 points"):
        tsne_2d(x[:2])


@pytest.mark.parametrize("method", ["pca", "tsne"])
def test_embedding_png(world, tmp_path, method):
    out = tmp_path / f"{method}.png"
    argv = ["visualize", "embedding", "--checkpoint", str(world["ckpt"]), "--device", "cpu",
            "--visible", str(world["visible"]), "--infrared", str(world["infrared"]),
            "--method", method, "--perplexity", "5", "--output", str(out)]  # fmt: skip
    assert run_cli(argv) == 0
    assert png_size(out) == (700, 700)


# -- training curves ------------------------------------------------------------------------


def test_curves(tmp_path, capsys):
    lines = [{"event": "train", "step": s, "epoch": 1 + s // 4, "lr": 0.01 / s, "id": 3.0 / s,
              "dcl": 1.0 / s} for s in range(1, 9)]  # fmt: skip
    lines += [{"event": "epoch", "step": 4, "epoch": 1, "seconds": 2.0, "images_per_s": 9.0}]
    lines += [{"event": "validation", "step": s, "epoch": s // 4, "rank1": 10.0 * s,
               "mAP": 5.0 * s, "mINP": 2.0 * s} for s in (4, 8)]  # fmt: skip
    lines += [{"event": "test", "step": 8, "rank1": 70.0, "mAP": 60.0, "mINP": 40.0}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    assert len(read_metrics(tmp_path)) == len(lines)
    out = tmp_path / "curves.png"
    assert run_cli(["visualize", "curves", "--run", str(tmp_path), "--output", str(out)]) == 0
    assert png_size(out) == (1500, 450)
    (tmp_path / "bad.jsonl").write_text(json.dumps(lines[0]) + "\n{oops\n")
    bad = ["visualize", "curves", "--run", str(tmp_path / "bad.jsonl"), "--output", str(out)]
    assert run_cli(bad) == 2
    assert "bad.jsonl:2: not a JSON line" in capsys.readouterr().err
    with pytest.raises(DataError, match="does not exist"):
        read_metrics(tmp_path / "nowhere")


def test_missing_matplotlib_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import now fails
    with pytest.raises(DclnetError, match=r"pip install 'dclnet\[viz\]'"):
        new_figure(1.0, 1.0)
