"""Pictures of what a trained model does: rank lists, part masks and CAMs, pixel matches.

Every function writes one PNG of a fixed pixel size (figure inches x ``DPI``, no tight
bounding box), so the output is predictable. matplotlib is an optional extra (``viz``) and is
imported inside the functions; figures are drawn with its object-oriented Agg canvas, without
pyplot's global figure state. Embedding plots live in :mod:`.visualize_embedding`, training
curves in :mod:`.visualize_curves`.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from dclnet.data.imageio import load_image
from dclnet.data.records import VISIBLE, check_modality
from dclnet.errors import DataError, DclnetError
from dclnet.inference.api import Embedder

DPI = 100
DISPLAY_SIZE = (128, 64)  # (height, width) at which images are drawn
CELL = (0.9, 2.1)  # inches (width, height) of one image cell, title included
PART_COLOURS = (  # body parts 1..6, top to bottom
    (0.89, 0.10, 0.11),
    (1.00, 0.50, 0.00),
    (1.00, 0.85, 0.10),
    (0.30, 0.69, 0.29),
    (0.22, 0.49, 0.72),
    (0.60, 0.31, 0.64),
)

LabelFn = Callable[[str], "str | None"]


def new_figure(width_in: float, height_in: float):
    """An Agg-backed matplotlib Figure of exactly ``round(size * DPI)`` pixels."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise DclnetError("visualisation needs matplotlib: pip install 'dclnet[viz]'") from None
    fig = Figure(figsize=(width_in, height_in), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, output: str | Path) -> Path:
    """Write ``fig`` as a PNG (atomically) at its own size; return the path."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fig.savefig(fh, format="png", dpi=DPI)
        os.replace(tmp, output)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return output


def _image_axes(ax, title: str = "", colour=None) -> None:
    """No ticks; a thick coloured frame when ``colour`` is given."""
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=7)
    for spine in ax.spines.values():
        spine.set_visible(colour is not None)
        if colour is not None:
            spine.set_edgecolor(colour)
            spine.set_linewidth(4)


# -- labels ---------------------------------------------------------------------------------


def label_reader(spec: str | Path | None) -> LabelFn:
    """Identity of an image path, for colouring: ``None`` when unknown.

    Args:
        spec: ``None``/``"none"``: no labels. ``"folder"``: the image's parent folder name
            (the person folder of SYSU-MM01 ``camC/PPPP/x.jpg``, RegDB ``Visible/P/x.bmp``
            and LLCM ``test_vis/camC/PPPP/x.jpg``). Otherwise a CSV file with columns
            ``path,label`` whose paths are written as in the search results.
    """
    if spec is None or str(spec) == "none":
        return lambda path: None
    if str(spec) == "folder":
        return lambda path: Path(path).parent.name or None
    path = Path(spec)
    if not path.is_file():
        raise DataError(f"--labels {spec}: use 'folder', 'none' or a CSV file path,label")
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or not {"path", "label"} <= set(rows[0]):
        raise DataError(f"{path}: labels CSV needs a header row with columns path,label")
    table = {Path(r["path"]).as_posix(): r["label"] for r in rows}
    return lambda p: table.get(Path(p).as_posix())


# -- rank lists -----------------------------------------------------------------------------


def read_results(path: str | Path) -> list[dict[str, Any]]:
    """Entries of a ``dclnet search --json`` file."""
    path = Path(path)
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read search results {path}: {exc}") from None
    if not isinstance(entries, list) or not all("query" in e and "results" in e for e in entries):
        raise DataError(f"{path}: not a `dclnet search --json` file (list of query/results)")
    return entries


def plot_ranks(
    results: Sequence[dict[str, Any]],
    output: str | Path,
    *,
    labels: LabelFn | None = None,
    gallery_root: str | Path | None = None,
    max_queries: int = 8,
    topk: int = 10,
) -> Path:
    """Grid of rank lists: one row per query, the query then its top-k gallery images.

    Frames: blue = query; green = same identity as the query, red = another identity (when
    ``labels`` knows both), none otherwise.

    Args:
        results: Entries as written by ``dclnet search --json``.
        output: PNG path; size ``(1 + k) * 90`` x ``rows * 210`` pixels.
        labels: Identity of a path (see :func:`label_reader`); gallery paths are looked up as
            written in the results (relative to the gallery root).
        gallery_root: Folder of the gallery paths (default: each entry's ``gallery_root``).
        max_queries: Rows drawn.
        topk: Gallery images per row.
    """
    labels = labels or label_reader(None)
    rows = list(results)[:max_queries]
    if not rows:
        raise DataError("no queries to draw: the search results are empty")
    k = min(topk, max(len(e["results"]) for e in rows))
    fig = new_figure(CELL[0] * (1 + k), CELL[1] * len(rows))
    axes = fig.subplots(len(rows), 1 + k, squeeze=False)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.97, bottom=0.01, wspace=0.08, hspace=0.25)
    for row, entry in zip(axes, rows):
        root = Path(gallery_root or entry.get("gallery_root") or ".")
        query_label = labels(entry["query"])
        row[0].imshow(load_image(Path(entry["query"]), DISPLAY_SIZE))
        _image_axes(row[0], "query", (0.1, 0.3, 0.9))
        for rank, ax in enumerate(row[1:], start=1):
            if rank > len(entry["results"]):
                ax.set_axis_off()
                continue
            hit = entry["results"][rank - 1]
            gallery_label = labels(hit["path"])
            colour = None
            if query_label is not None and gallery_label is not None:
                colour = (0.1, 0.7, 0.2) if gallery_label == query_label else (0.85, 0.1, 0.1)
            ax.imshow(load_image(root / hit["path"], DISPLAY_SIZE))
            _image_axes(ax, f"{rank}: {hit['score']:.3f}", colour)
    return save_figure(fig, output)


# -- masks and CAMs -------------------------------------------------------------------------


def _forward(embedder: Embedder, images: Tensor, modality: str):
    with torch.inference_mode():
        if modality == VISIBLE:
            return embedder.model(visible=images)
        return embedder.model(infrared=images)


def mask_rgba(mask: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """``H x W`` part labels (0 = background) → ``H x W x 4`` overlay, background clear."""
    colours = np.zeros((len(PART_COLOURS) + 1, 4))
    colours[1:, :3] = PART_COLOURS
    colours[1:, 3] = alpha
    return colours[np.clip(mask, 0, len(PART_COLOURS))]


def part_maps(embedder: Embedder, paths: Sequence[str | Path], modality: str):
    """Display images, PAP masks and part-branch CAMs of ``paths``.

    The CAM of each image uses the part classifier's row of its predicted (top-1 part-logit)
    class, as no identity label exists at inference time.

    Returns:
        ``N x h x w x 3`` uint8 images at the model's input size, ``N x H_z x W_z`` masks,
        ``N x h_x x w_x`` CAMs in [0, 1] on the final map's grid.
    """
    from dclnet.losses.parsing import part_cams
    from dclnet.models.dclnet import pap_mask

    check_modality(modality)
    size = embedder.preprocessing.size
    pixels = np.stack([load_image(Path(p), size) for p in paths])
    out = _forward(embedder, embedder.prepare(pixels), modality)
    model = embedder.model
    classes = out.part_logits.argmax(dim=1)  # N
    cams = part_cams(out.final_map, model.part_classifier.weight, classes, model.num_parts)
    return pixels, pap_mask(out.pixel_logits).cpu().numpy(), cams.cpu().numpy()


def plot_masks(
    embedder: Embedder, paths: Sequence[str | Path], modality: str, output: str | Path
) -> Path:
    """Per image (one column each): the image, its PAP part mask, its part-branch CAMs.

    Output size: ``N * 90`` x ``630`` pixels.
    """
    if not paths:
        raise DataError("no images given for the mask visualisation")
    pixels, masks, cams = part_maps(embedder, paths, modality)
    h, w = pixels.shape[1:3]
    fig = new_figure(CELL[0] * len(paths), CELL[1] * 3)
    axes = fig.subplots(3, len(paths), squeeze=False)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.95, bottom=0.01, wspace=0.08, hspace=0.2)
    extent = (-0.5, w - 0.5, h - 0.5, -0.5)  # stretch the coarse maps over the image
    for n, path in enumerate(paths):
        top, mid, low = axes[0, n], axes[1, n], axes[2, n]
        top.imshow(pixels[n])
        _image_axes(top, Path(path).name[:14])
        mid.imshow(pixels[n])
        mid.imshow(mask_rgba(masks[n]), extent=extent, interpolation="nearest")
        _image_axes(mid, "PAP parts")
        low.imshow(pixels[n])
        low.imshow(cams[n], extent=extent, cmap="jet", alpha=0.5, interpolation="bilinear")
        _image_axes(low, "part CAMs")
    return save_figure(fig, output)


# -- pixel correspondence -------------------------------------------------------------------


def pixel_matches(
    z_a: Tensor,
    z_b: Tensor,
    top: int,
    *,
    mutual: bool = True,
    valid_a: Tensor | None = None,
    valid_b: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Best pixel matches between two feature maps by cosine similarity.

    Each pixel p of ``a`` is matched to its most similar pixel q of ``b``; with ``mutual``
    only pairs where p is also q's best match in ``a`` are kept. The ``top`` most similar
    pairs are returned, best first (equal scores: lower index of ``a`` first).

    Args:
        z_a: ``C x H_a x W_a`` map (e.g. Z of the visible image).
        z_b: ``C x H_b x W_b`` map.
        top: Pairs returned at most.
        mutual: Keep mutual best matches only.
        valid_a: Optional ``H_a x W_a`` bool, pixels allowed to match (e.g. foreground).
        valid_b: Same for ``b``.

    Returns:
        Flat pixel indices into ``a`` and ``b`` (``M``, int64) and their similarities (``M``).
    """
    a = F.normalize(z_a.flatten(1).T.float(), dim=1)  # HW_a x C
    b = F.normalize(z_b.flatten(1).T.float(), dim=1)  # HW_b x C
    sim = a @ b.T  # HW_a x HW_b
    if valid_a is not None:
        sim = sim.masked_fill(~valid_a.flatten()[:, None], float("-inf"))
    if valid_b is not None:
        sim = sim.masked_fill(~valid_b.flatten()[None, :], float("-inf"))
    score, best_b = sim.max(dim=1)  # HW_a
    keep = torch.isfinite(score)
    if mutual:
        best_a = sim.argmax(dim=0)  # HW_b
        keep &= best_a[best_b] == torch.arange(len(best_b), device=sim.device)
    idx_a = keep.nonzero().flatten()
    order = score[idx_a].sort(descending=True, stable=True).indices[:top]
    idx_a = idx_a[order]
    return idx_a, best_b[idx_a], score[idx_a]


def plot_correspondence(
    embedder: Embedder,
    visible: str | Path,
    infrared: str | Path,
    output: str | Path,
    *,
    top: int = 20,
    mutual: bool = True,
    foreground: bool = False,
) -> Path:
    """Lines between the best-matching pixels of Z (the low-level map the dense loss aligns).

    Z is computed by each image's own stream; pixel centres on Z's grid are drawn at their
    place on the resized images. Line colour = cosine similarity. Output: 400 x 500 pixels.

    Args:
        foreground: Match only pixels that the PAP head marks as a body part, on both sides.
    """
    size = embedder.preprocessing.size
    pixels = np.stack([load_image(Path(visible), size), load_image(Path(infrared), size)])
    batch = embedder.prepare(pixels)
    with torch.inference_mode():
        out = embedder.model(visible=batch[:1], infrared=batch[1:])
    z = out.low_map.float().cpu()  # 2 x C x H_z x W_z
    valid = None
    if foreground:
        from dclnet.models.dclnet import pap_mask

        valid = pap_mask(out.pixel_logits).cpu() > 0  # 2 x H_z x W_z
    idx_v, idx_i, score = pixel_matches(
        z[0],
        z[1],
        top,
        mutual=mutual,
        valid_a=None if valid is None else valid[0],
        valid_b=None if valid is None else valid[1],
    )
    return _draw_matches(pixels, z.shape[-2:], idx_v, idx_i, score, output, mutual)


def _draw_matches(pixels, grid, idx_v, idx_i, score, output, mutual: bool) -> Path:
    h, w = pixels.shape[1:3]
    gap = w // 4
    canvas = np.full((h, 2 * w + gap, 3), 255, np.uint8)
    canvas[:, :w], canvas[:, w + gap :] = pixels[0], pixels[1]
    gh, gw = int(grid[0]), int(grid[1])

    def centre(idx: Tensor) -> tuple[np.ndarray, np.ndarray]:  # Z pixel → image coordinates
        rows, cols = (idx // gw).numpy(), (idx % gw).numpy()
        return (cols + 0.5) * w / gw - 0.5, (rows + 0.5) * h / gh - 0.5

    xv, yv = centre(idx_v)
    xi, yi = centre(idx_i)
    fig = new_figure(4.0, 5.0)
    ax = fig.add_axes((0.02, 0.02, 0.96, 0.9))
    ax.imshow(canvas)
    import matplotlib

    cmap = matplotlib.colormaps["viridis"]
    s = score.numpy()
    norm = (s - s.min()) / max(float(s.max() - s.min()), 1e-6) if len(s) else s
    for k in range(len(s)):
        ax.plot([xv[k], xi[k] + w + gap], [yv[k], yi[k]], "-o", color=cmap(norm[k]), lw=1, ms=2)
    kind = "mutual best" if mutual else "best"
    ax.set_title(
        f"visible | infrared: top {len(s)} {kind} matches on Z\n"
        + (f"cosine {s.min():.2f} .. {s.max():.2f}" if len(s) else "no match"),
        fontsize=8,
    )
    _image_axes(ax)
    return save_figure(fig, output)
