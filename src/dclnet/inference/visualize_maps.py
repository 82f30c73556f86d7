"""Pictures of the model's maps: PAP part masks, part-branch CAMs, pixel matches on Z.

Drawing helpers and the PNG conventions are those of :mod:`.visualize`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from dclnet.data.imageio import load_image
from dclnet.data.records import VISIBLE, check_modality
from dclnet.errors import DataError
from dclnet.inference.api import Embedder
from dclnet.inference.visualize import axes_at, image_axes, image_caption, new_figure, save_figure

PART_COLOURS = (  # body parts 1..6, top to bottom
    (0.89, 0.10, 0.11),
    (1.00, 0.50, 0.00),
    (1.00, 0.85, 0.10),
    (0.30, 0.69, 0.29),
    (0.22, 0.49, 0.72),
    (0.60, 0.31, 0.64),
)
CAM_COLOURMAP = "jet"
MATCH_COLOURMAP = "viridis"


def _forward(embedder: Embedder, images: Tensor, modality: str):
    with torch.inference_mode():
        if modality == VISIBLE:
            return embedder.model(visible=images)
        return embedder.model(infrared=images)


def _colour_bar(fig, ax, cmap: str, vmin: float, vmax: float, label: str) -> None:
    """A horizontal colour bar in ``ax`` for ``cmap`` over ``[vmin, vmax]``."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    bar = fig.colorbar(
        ScalarMappable(Normalize(vmin, vmax), cmap), cax=ax, orientation="horizontal"
    )
    bar.ax.tick_params(labelsize=7, length=2, pad=1)
    bar.set_label(label, fontsize=7.5, labelpad=2)


# -- masks and CAMs -------------------------------------------------------------------------


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
    from dclnet.models.outputs import pap_mask

    check_modality(modality)
    size = embedder.preprocessing.size
    pixels = np.stack([load_image(Path(p), size) for p in paths])
    out = _forward(embedder, embedder.prepare(pixels), modality)
    model = embedder.model
    classes = out.part_logits.argmax(dim=1)  # N
    cams = part_cams(out.final_map, model.part_classifier.weight, classes, model.num_parts)
    return pixels, pap_mask(out.pixel_logits).cpu().numpy(), cams.cpu().numpy()


def _parts_legend(fig, y: float, num_parts: int) -> None:
    from matplotlib.patches import Patch

    names = [str(k) for k in range(1, num_parts + 1)]
    names[0], names[-1] = f"{names[0]} (top)", f"{names[-1]} (bottom)"
    handles = [
        Patch(facecolor=PART_COLOURS[k % len(PART_COLOURS)], alpha=0.8, label=name)
        for k, name in enumerate(names)
    ]
    fig.legend(
        handles=handles, loc="center", bbox_to_anchor=(0.5, y), ncol=num_parts, frameon=False,
        fontsize=7, handlelength=1.0, columnspacing=0.9, handletextpad=0.4,
        title="PAP body parts (no colour: background)", title_fontsize=7.5,
    )  # fmt: skip


def plot_masks(
    embedder: Embedder, paths: Sequence[str | Path], modality: str, output: str | Path
) -> Path:
    """Draw :func:`masks_figure` to the PNG ``output``."""
    return save_figure(masks_figure(embedder, paths, modality), output)


def masks_figure(embedder: Embedder, paths: Sequence[str | Path], modality: str):
    """Per image (one column each): the image, its PAP part mask, its part-branch CAMs.

    Column titles name each image's identity and camera (from its path, see
    :func:`~dclnet.inference.visualize.image_caption`) and file; a legend gives the part
    colours and a colour bar the CAM scale. The Figure is ``max(95 N + 40, 380)`` pixels
    wide.
    """
    if not paths:
        raise DataError("no images given for the mask visualisation")
    pixels, masks, cams = part_maps(embedder, paths, modality)
    n, (h, w) = len(paths), pixels.shape[1:3]
    cell_w, img_w = 0.95, 0.85
    img_h = img_w * h / w
    width = max(cell_w * n + 0.4, 3.8)
    heights = (0.3, 0.32, 3 * img_h + 2 * 0.08, 0.55, 0.5)  # title, captions, rows, legend, bar
    height = sum(heights) + 0.05
    fig = new_figure(width, height)
    x0 = max(0.3, (width - cell_w * n) / 2)
    top_of_rows = height - heights[0] - heights[1]
    extent = (-0.5, w - 0.5, h - 0.5, -0.5)  # stretch the coarse maps over the image
    for i, path in enumerate(paths):
        left = x0 + i * cell_w + (cell_w - img_w) / 2
        row = [axes_at(fig, left, top_of_rows - (r + 1) * img_h - r * 0.08, img_w, img_h)
               for r in range(3)]  # fmt: skip
        for ax in row:
            ax.imshow(pixels[i])
            image_axes(ax)
        row[0].set_title(f"{image_caption(path)}\n{Path(path).name}", fontsize=7, pad=2)
        row[1].imshow(mask_rgba(masks[i]), extent=extent, interpolation="nearest")
        row[2].imshow(cams[i], extent=extent, cmap=CAM_COLOURMAP, alpha=0.5, vmin=0, vmax=1,
                      interpolation="bilinear")  # fmt: skip
        if i == 0:
            for ax, name in zip(row, ("image", "PAP parts", "part CAMs")):
                ax.set_ylabel(name, fontsize=7.5, labelpad=2)
    fig.text(0.5, 1 - 0.17 / height, f"{modality} images: PAP part masks and part CAMs",
             ha="center", va="center", fontsize=9)  # fmt: skip
    _parts_legend(fig, (heights[4] + heights[3] / 2) / height, embedder.model.num_parts)
    bar = axes_at(fig, width / 2 - 1.3, 0.32, 2.6, 0.1)
    _colour_bar(fig, bar, CAM_COLOURMAP, 0, 1, "part CAM, normalised per stripe")
    return fig


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


def match_regions(
    grid: tuple[int, int], foreground: Tensor | None, edge: int
) -> tuple[Tensor, list[str]]:
    """Cells of two ``H x W`` maps allowed to match, and what restricts them.

    Args:
        grid: ``(H, W)`` of the maps.
        foreground: Optional ``2 x H x W`` bool (visible, infrared) person cells, e.g. the PAP
            mask; a side where no allowed cell is foreground keeps all its cells (and says so).
        edge: Cells this close to the border are left out: their features see the zero
            padding, and nearest-neighbour matching favours them over the person.

    Returns:
        ``2 x H x W`` bool, and phrases describing the restriction.
    """
    h, w = grid
    inner = torch.zeros(h, w, dtype=torch.bool)
    inner[edge : h - edge, edge : w - edge] = True
    cut = edge > 0 and bool(inner.any())  # a map too small to lose its border keeps it
    if not cut:
        inner[:] = True
    valid = inner.expand(2, h, w).clone()
    notes = [f"{edge}-cell border left out"] if cut else []
    if foreground is not None:
        share = foreground.flatten(1).float().mean(dim=1).tolist()
        notes.insert(0, f"PAP foreground only ({share[0]:.0%} / {share[1]:.0%} of cells)")
        for side, name in enumerate(("visible", "infrared")):
            restricted = valid[side] & foreground[side]
            if restricted.any():
                valid[side] = restricted
            else:
                notes.append(f"no PAP foreground on the {name} side: all cells")
    return valid, notes


def plot_correspondence(
    embedder: Embedder,
    visible: str | Path,
    infrared: str | Path,
    output: str | Path,
    **options: Any,
) -> Path:
    """Draw :func:`correspondence_figure` to the PNG ``output``; ``options`` are its keyword
    arguments."""
    return save_figure(correspondence_figure(embedder, visible, infrared, **options), output)


def correspondence_figure(
    embedder: Embedder,
    visible: str | Path,
    infrared: str | Path,
    *,
    top: int = 20,
    mutual: bool = True,
    foreground: bool = True,
    edge: int = 1,
):
    """Lines between the best-matching pixels of Z (the low-level map the dense loss aligns).

    Z is computed by each image's own stream; pixel centres on Z's grid are drawn at their
    place on the resized images. Line colour = cosine similarity (colour bar below). The
    Figure is 440 pixels wide and as tall as the images need.

    Args:
        foreground: Match only pixels that the PAP head marks as a body part, on each side
            where it marks any.
        edge: Leave out Z cells this close to the map's border (see :func:`match_regions`).
    """
    size = embedder.preprocessing.size
    pixels = np.stack([load_image(Path(visible), size), load_image(Path(infrared), size)])
    batch = embedder.prepare(pixels)
    with torch.inference_mode():
        out = embedder.model(visible=batch[:1], infrared=batch[1:])
    z = out.low_map.float().cpu()  # 2 x C x H_z x W_z
    fg = None
    if foreground:
        from dclnet.models.outputs import pap_mask

        fg = pap_mask(out.pixel_logits).cpu() > 0  # 2 x H_z x W_z
    grid = (int(z.shape[-2]), int(z.shape[-1]))
    valid, notes = match_regions(grid, fg, edge)
    idx_v, idx_i, score = pixel_matches(
        z[0], z[1], top, mutual=mutual, valid_a=valid[0], valid_b=valid[1]
    )
    kind = "mutual best" if mutual else "best"
    count = f"top {top}" if len(score) == top else f"all {len(score)}"
    title = f"{count} {kind} pixel matches on Z\n" + ", ".join(notes or ["all cells"])
    return _draw_matches(pixels, grid, idx_v, idx_i, score, title)


def _draw_matches(pixels, grid, idx_v, idx_i, score, title: str):
    import matplotlib

    h, w = pixels.shape[1:3]
    gap = w // 4
    canvas = np.full((h, 2 * w + gap, 3), 255, np.uint8)
    canvas[:, :w], canvas[:, w + gap :] = pixels[0], pixels[1]
    gh, gw = grid

    def centre(idx: Tensor) -> tuple[np.ndarray, np.ndarray]:  # Z pixel → image coordinates
        rows, cols = (idx // gw).numpy(), (idx % gw).numpy()
        return (cols + 0.5) * w / gw - 0.5, (rows + 0.5) * h / gh - 0.5

    width, axes_w = 4.4, 4.2
    axes_h = axes_w * h / (2 * w + gap)
    heights = (0.5, axes_h, 0.22, 0.55)  # title, images, labels, colour bar
    fig = new_figure(width, sum(heights))
    ax = axes_at(fig, (width - axes_w) / 2, heights[3] + heights[2], axes_w, axes_h)
    ax.imshow(canvas)
    image_axes(ax)
    ax.set_axis_off()
    s = score.numpy()
    lo, hi = (float(s.min()), float(s.max())) if len(s) else (0.0, 1.0)
    lo, hi = (lo - 0.01, hi + 0.01) if hi - lo < 0.02 else (lo, hi)
    cmap = matplotlib.colormaps[MATCH_COLOURMAP]
    xv, yv = centre(idx_v)
    xi, yi = centre(idx_i)
    for k in range(len(s)):
        colour = cmap((s[k] - lo) / (hi - lo))
        ax.plot([xv[k], xi[k] + w + gap], [yv[k], yi[k]], "-o", color=colour, lw=1.2, ms=2.5)
    for x, name in ((w / 2, "visible"), (w + gap + w / 2, "infrared")):
        ax.text(x, h + 1, name, ha="center", va="top", fontsize=9)
    fig.text(0.5, 1 - 0.25 / sum(heights), "Cross-modality " + title, ha="center",
             va="center", fontsize=8.5, linespacing=1.3)  # fmt: skip
    bar = axes_at(fig, width / 2 - 1.5, 0.33, 3.0, 0.1)
    _colour_bar(fig, bar, MATCH_COLOURMAP, lo, hi, "cosine similarity of the matched Z pixels")
    if not len(s):
        ax.text(w + gap / 2, h / 2, "no match", ha="center", va="center", fontsize=10)
    return fig
