"""Visualisations: each writes a PNG of the promised size and says what it shows (titles,
legends, colour bars); the maths behind them is checked."""

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
from dclnet.inference.visualize import image_caption, label_reader, new_figure, ranks_figure
from dclnet.inference.visualize_curves import curves_figure, read_metrics, step_range
from dclnet.inference.visualize_embedding import pca_2d, tsne_2d
from dclnet.inference.visualize_maps import (
    PART_COLOURS,
    correspondence_figure,
    masks_figure,
    match_regions,
    part_maps,
    pixel_matches,
    plot_correspondence,
    plot_masks,
)

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


def texts(fig) -> list[str]:
    """Every piece of text drawn in ``fig``: titles, labels, legend entries, annotations."""
    from matplotlib.text import Text

    return [t.get_text() for t in fig.findobj(Text) if t.get_text()]


def longest_white_band(path) -> float:
    """Longest run of all-white pixel rows, as a fraction of the picture's height."""
    white = (np.asarray(Image.open(path).convert("RGB")) >= 250).all(axis=(1, 2))
    longest = run = 0
    for row in white:
        run = run + 1 if row else 0
        longest = max(longest, run)
    return longest / len(white)


# -- ranks ----------------------------------------------------------------------------------


def _rank_entries(world, queries: int, per_query: int) -> list[dict]:
    gallery = list_images(world["visible"])
    return [
        {
            "query": q,
            "gallery_root": str(world["visible"]),
            "results": [
                {"path": gallery[(i + r) % len(gallery)], "score": 0.9 - 0.01 * r}
                for r in range(per_query)
            ],
        }
        for i, q in enumerate((files(world["infrared"]) * queries)[:queries])
    ]


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
    assert png_size(out) == (4 * 90, 2 * 200 + 55)
    assert "360 x 455 pixels" in capsys.readouterr().out
    assert colour_count(out, (26, 178, 51)) > 100  # a green frame: the same person
    assert colour_count(out, (217, 26, 26)) > 100  # red frames: other people
    plain = tmp_path / "plain.png"
    assert run_cli(["visualize", "ranks", "--results", str(results), "--output", str(plain)]) == 0
    assert colour_count(plain, (26, 178, 51)) == 0  # no labels, no verdict (nor its legend)
    # The query's identity, camera and file, each result's identity; a key to the frames.
    drawn = texts(ranks_figure(entries, labels=label_reader("folder")))
    person, camera = queries[0].split("/")[-2], queries[0].split("/")[-3]
    assert f"query {queries[0].split('/')[-1]}\nid {person} · {camera}" in drawn
    assert any(t.startswith("#1  0.900\nid ") for t in drawn)
    assert {"query", "same identity as the query", "another identity"} <= set(drawn)
    assert "same identity as the query" not in texts(ranks_figure(entries))


def test_a_full_rank_page_is_small(world, tmp_path):
    results = tmp_path / "results.json"
    results.write_text(json.dumps(_rank_entries(world, queries=8, per_query=10)))
    out = tmp_path / "ranks.png"
    argv = ["visualize", "ranks", "--results", str(results), "--labels", "folder",
            "--output", str(out)]  # fmt: skip
    assert run_cli(argv) == 0
    assert png_size(out) == (11 * 90, 8 * 200 + 55)
    assert out.stat().st_size < 1_000_000  # 8 x 11 photographs, palette PNG
    with Image.open(out) as im:
        assert im.mode == "P"


def test_image_captions_name_identity_and_camera():
    assert image_caption("q/cam3/0007/0001.jpg") == "id 0007 · cam3"  # SYSU-MM01
    assert image_caption("test_nir/cam4/0012/x.jpg") == "id 0012 · cam4"  # LLCM
    assert image_caption("RegDB/Thermal/25/male_t.bmp") == "id 25 · Thermal"  # RegDB
    assert image_caption("queries/person.jpg") == "person.jpg"  # nothing to read
    assert image_caption("queries/person.jpg", label="5") == "id 5"


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
    assert png_size(out) == (380, 698)  # three 85 x 170 rows, legend, colour bar
    legend_purple = tuple(round(255 * (0.8 * c + 0.2)) for c in PART_COLOURS[-1])
    assert colour_count(out, legend_purple, tol=6) > 20  # the legend's swatch of part 6
    with pytest.raises(DclnetError, match="unknown modality"):
        plot_masks(embedder, paths, "colour", tmp_path / "x.png")


def test_masks_say_who_is_shown(world, embedder):
    paths = files(world["visible"])[:2]
    drawn = texts(masks_figure(embedder, paths, "visible"))
    for path in paths:  # column titles: identity, camera and file
        *_, camera, person, name = path.split("/")
        assert f"id {person} · {camera}\n{name}" in drawn
    assert {"1 (top)", "6 (bottom)", "PAP body parts (no colour: background)"} <= set(drawn)
    assert "part CAM, normalised per stripe" in drawn  # the colour bar's label
    assert {"image", "PAP parts", "part CAMs"} <= set(drawn)


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


def test_match_regions_leave_out_border_and_background():
    valid, notes = match_regions((6, 4), None, edge=1)
    assert valid.shape == (2, 6, 4) and valid[:, 1:5, 1:3].all()
    assert valid.sum() == 2 * 4 * 2 and notes == ["1-cell border left out"]
    foreground = torch.zeros(2, 6, 4, dtype=torch.bool)
    foreground[0, 2:4, 1:3] = True  # a person on the visible side; none on the infrared side
    valid, notes = match_regions((6, 4), foreground, edge=1)
    assert valid[0].sum() == 4 and valid[0, 2:4, 1:3].all()
    assert valid[1].sum() == 8  # no foreground: every inner cell, and the title says so
    assert notes[0].startswith("PAP foreground only (17% / 0% of cells)")
    assert "no PAP foreground on the infrared side: all cells" in notes
    valid, notes = match_regions((2, 2), None, edge=1)  # too small to lose a border
    assert valid.all() and notes == []


def test_correspondence_png(world, embedder, tmp_path):
    vis, ir = files(world["visible"])[0], files(world["infrared"])[0]
    out = plot_correspondence(embedder, vis, ir, tmp_path / "corr.png", top=10)
    assert png_size(out) == (440, 500)
    assert longest_white_band(out) < 0.06  # the picture is images, not white bands
    drawn = texts(correspondence_figure(embedder, vis, ir, top=10))
    assert {"visible", "infrared", "cosine similarity of the matched Z pixels"} <= set(drawn)
    (title,) = [t for t in drawn if t.startswith("Cross-modality ")]
    assert "mutual best pixel matches on Z" in title and "PAP foreground only" in title
    assert "1-cell border left out" in title
    argv = ["visualize", "correspondence", "--checkpoint", str(world["ckpt"]), "--visible",
            vis, "--infrared", ir, "--no-foreground", "--edge", "0", "--all-best", "--output",
            str(tmp_path / "all.png"), "--device", "cpu"]  # fmt: skip
    assert run_cli(argv) == 0
    assert png_size(tmp_path / "all.png") == (440, 500)
    everything = texts(correspondence_figure(embedder, vis, ir, foreground=False, edge=0))
    assert any(t.endswith("pixel matches on Z\nall cells") for t in everything)


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


def test_marked_identities_prefer_both_modalities_and_spread():
    from dclnet.inference.visualize_embedding import marked_identities

    names = [f"{k:04d}" for k in range(64)]
    labels = names[:32] * 2 + names[32:]  # 0..31 in both modalities, 32..63 visible only
    mods = ["visible"] * 32 + ["infrared"] * 32 + ["visible"] * 32
    # np.linspace(0, 31, 8).round(): 0, 4, 9, 13, 18, 22, 27, 31
    assert marked_identities(labels, mods) == [names[k] for k in (0, 4, 9, 13, 18, 22, 27, 31)]
    labels, mods = (
        names[:3] * 2 + names[3:13],
        ["visible"] * 3 + ["infrared"] * 3 + ["visible"] * 10,
    )
    # the three in both, then linspace(0, 9, 5).round() = 0, 2, 4, 7, 9 of the ten others
    assert marked_identities(labels, mods) == names[:3] + [names[3 + k] for k in (0, 2, 4, 7, 9)]
    assert marked_identities([None, "a"], ["visible", "infrared"]) == ["a"]
    assert marked_identities(labels, mods, 0) == []


def test_embedding_colours_by_modality_and_marks_a_few_identities(tmp_path, monkeypatch):
    import matplotlib.colors as mcolors

    from dclnet.inference import visualize_embedding as ve

    figures = []
    real_save = ve.save_figure
    monkeypatch.setattr(
        ve, "save_figure", lambda fig, out: figures.append(fig) or real_save(fig, out)
    )
    names = [f"{k:04d}" for k in range(64)]
    labels = names * 2
    mods = ["visible"] * 64 + ["infrared"] * 64
    points = np.random.default_rng(0).normal(size=(128, 2))
    out = ve.plot_embedding(points, labels, mods, tmp_path / "map.png")
    (ax,) = figures[0].axes
    allowed = {mcolors.to_hex(c) for c in ve.MODALITY_COLOURS.values()}
    drawn = [c for col in ax.collections for c in col.get_facecolors() if len(col.get_offsets())]
    assert {mcolors.to_hex(c) for c in drawn} == allowed  # every point: its modality's colour
    assert len(ax.texts) == 2 * ve.MARKED  # 8 names, at each modality's centre
    assert sorted({t.get_text() for t in ax.texts}) == ve.marked_identities(labels, mods)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[:2] == ["visible (64)", "infrared (64)"] and len(legend) == 2 + ve.MARKED
    assert ax.get_legend().get_title().get_text() == (
        "colour = modality; 8 of 64 identities marked"
    )
    assert png_size(out) == (700, 700)


def test_embedding_png_of_a_tiny_model_shows_both_modality_colours(world, tmp_path):
    from dclnet.inference.visualize_embedding import MODALITY_COLOURS

    out = tmp_path / "pca.png"
    argv = ["visualize", "embedding", "--checkpoint", str(world["ckpt"]), "--device", "cpu",
            "--visible", str(world["visible"]), "--infrared", str(world["infrared"]),
            "--output", str(out)]  # fmt: skip
    assert run_cli(argv) == 0
    for colour in MODALITY_COLOURS.values():
        assert colour_count(out, [int(colour[i : i + 2], 16) for i in (1, 3, 5)], tol=6) > 100


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
    assert png_size(out) == (1500, 480)
    (tmp_path / "bad.jsonl").write_text(json.dumps(lines[0]) + "\n{oops\n")
    bad = ["visualize", "curves", "--run", str(tmp_path / "bad.jsonl"), "--output", str(out)]
    assert run_cli(bad) == 2
    assert "bad.jsonl:2: not a JSON line" in capsys.readouterr().err
    with pytest.raises(DataError, match="does not exist"):
        read_metrics(tmp_path / "nowhere")


def test_curves_with_one_test_point_and_legends_off_the_data():
    lines = [{"event": "train", "step": s, "lr": 0.01, "id": 3.0 / s} for s in range(10, 110, 10)]
    lines += [{"event": "test", "step": 100, "rank1": 32.6, "mAP": 39.6, "mINP": 30.4}]
    fig = curves_figure(lines)
    ax_loss, ax_lr, ax_eval = fig.axes
    assert ax_eval.get_xlim() == ax_loss.get_xlim() == pytest.approx((7.3, 102.7))
    assert {"32.6", "39.6", "30.4"} <= set(texts(fig))  # a lone point says its value
    fig.canvas.draw()
    for ax in (ax_loss, ax_eval):
        legend, frame = ax.get_legend().get_window_extent(), ax.get_window_extent()
        assert legend.y1 < frame.y0  # below the panel, not over the curves
    only_test = curves_figure([lines[-1]])
    assert only_test.axes[2].get_xlim() == (99.0, 101.0)  # not a zero-width axis
    assert step_range([{"step": 5}, {"step": 5}]) == (4.0, 6.0)


def test_missing_matplotlib_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import now fails
    with pytest.raises(DclnetError, match=r"pip install 'dclnet\[viz\]'"):
        new_figure(1.0, 1.0)
