"""Pictures of what a trained model does: shared drawing helpers and rank lists.

Every picture is one PNG whose pixel size follows from its content (inches x ``DPI``, no
tight bounding box), so the output is predictable; a page of photographs (rank lists) is
stored with a 256-colour palette, which keeps it well under a megabyte. matplotlib is an
optional extra (``viz``) imported inside the functions; figures are drawn with its
object-oriented Agg canvas, without pyplot's global figure state. Part masks, CAMs and pixel
matches live in :mod:`.visualize_maps`, embedding plots in :mod:`.visualize_embedding`,
training curves in :mod:`.visualize_curves`.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dclnet.data.imageio import load_image
from dclnet.data.sources.common import escapes_root
from dclnet.errors import DataError, DclnetError
from dclnet.fileio import atomic_path

DPI = 100
DISPLAY_SIZE = (128, 64)  # (height, width) at which images are drawn
QUERY, SAME, OTHER = (0.1, 0.3, 0.9), (0.1, 0.7, 0.2), (0.85, 0.1, 0.1)  # frame colours
CAMERA_FOLDER = re.compile(r"cam\d+|Visible|Thermal", re.IGNORECASE)

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


def save_figure(fig, output: str | Path, *, palette: bool = False) -> Path:
    """Write ``fig`` as a PNG (atomically) at its own size; return the path.

    With ``palette`` the picture is stored with 256 colours fitted to it, without dithering:
    flat colours and text stay exact and a page of photographs loses little, at a fraction of
    the true-colour size. Pictures with colour scales (CAMs, similarity bars) keep true colour.
    """
    from PIL import Image

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.canvas.draw()
    image = Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[..., :3])
    if palette:
        image = image.quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
    with atomic_path(output) as tmp:  # the umask's mode, a full disk as one line
        image.save(tmp, format="png", optimize=True)
    return output


def axes_at(fig, left: float, bottom: float, width: float, height: float):
    """Axes placed in inches from the figure's bottom-left corner."""
    fw, fh = fig.get_size_inches()
    return fig.add_axes((left / fw, bottom / fh, width / fw, height / fh))


def image_axes(ax, title: str = "", colour=None, fontsize: float = 7) -> None:
    """No ticks; a thick coloured frame when ``colour`` is given."""
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=fontsize, linespacing=1.1, pad=3)
    for spine in ax.spines.values():
        spine.set_visible(colour is not None)
        if colour is not None:
            spine.set_edgecolor(colour)
            spine.set_linewidth(4)


def image_caption(path: str | Path, label: str | None = None) -> str:
    """Who and where an image shows, read from its path: ``"id 0007 · cam3"``.

    The identity is ``label`` when given, else a numeric parent folder (SYSU-MM01
    ``camC/PPPP/x.jpg``, RegDB ``Thermal/P/x.bmp``, LLCM ``test_nir/camC/PPPP/x.jpg``); the
    camera is a grandparent folder named ``camN``, ``Visible`` or ``Thermal``. Falls back to
    the file name.
    """
    p = Path(path)
    person, camera = p.parent.name, p.parent.parent.name
    ident = label if label is not None else (person if person.isdigit() else None)
    parts = [f"id {ident}"] if ident is not None else []
    if CAMERA_FOLDER.fullmatch(camera):
        parts.append(camera)
    return " · ".join(parts) or p.name


def frame_legend(fig, entries: Sequence[tuple[str, Any]], y: float, fontsize: float = 8):
    """One row of frame-colour keys centred at height ``y`` (figure fraction)."""
    from matplotlib.patches import Patch

    handles = [Patch(facecolor="white", edgecolor=c, linewidth=2.5, label=t) for t, c in entries]
    fig.legend(
        handles=handles,
        loc="center",
        bbox_to_anchor=(0.5, y),
        ncol=len(handles),
        frameon=False,
        fontsize=fontsize,
        handlelength=1.2,
        columnspacing=1.2,
    )


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

RANK_CELL = (0.9, 2.0)  # inches (width, height) of one rank-list cell, its title included
RANK_HEADER = 0.55  # inches above the grid: title and frame legend


def read_results(path: str | Path) -> list[dict[str, Any]]:
    """Entries of a ``dclnet search --json`` file.

    Raises:
        DataError: Unreadable, not a results file, or a gallery path that lies outside the
            gallery root (absolute, or ``..`` climbing above it): the picture reads
            ``root / path``, and an edited file must not make it read anything else.
    """
    path = Path(path)
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read search results {path}: {exc}") from None
    shape_ok = isinstance(entries, list) and all(
        isinstance(e, dict) and "query" in e and isinstance(e.get("results"), list) for e in entries
    )
    if not shape_ok:
        raise DataError(f"{path}: not a `dclnet search --json` file (list of query/results)")
    check_gallery_paths(entries, str(path))
    return entries


def check_gallery_paths(entries: Sequence[dict[str, Any]], where: str) -> None:
    """Raise unless every result path is a string below its gallery root."""
    for entry in entries:
        for hit in entry["results"]:
            rel = hit.get("path") if isinstance(hit, dict) else None
            if not isinstance(rel, str):
                raise DataError(f"{where}: a result of {entry['query']} has no path string")
            if escapes_root(rel):
                raise DataError(
                    f"{where}: gallery path {rel!r} lies outside the gallery root (absolute, or "
                    "its '..' climb above it); use the results `dclnet search --json` wrote"
                )


def plot_ranks(results: Sequence[dict[str, Any]], output: str | Path, **options: Any) -> Path:
    """Draw :func:`ranks_figure` to the PNG ``output`` (palette PNG: well under 1 MB for the
    default 8 x 10 grid); ``options`` are its keyword arguments."""
    return save_figure(ranks_figure(results, **options), output, palette=True)


def ranks_figure(
    results: Sequence[dict[str, Any]],
    *,
    labels: LabelFn | None = None,
    gallery_root: str | Path | None = None,
    max_queries: int = 8,
    topk: int = 10,
):
    """Grid of rank lists: one row per query, the query then its top-k gallery images.

    Cell titles name the query's identity, camera and file, and each result's rank,
    similarity and identity. Frames: blue = query; green = same identity as the query, red =
    another identity (when ``labels`` knows both), none otherwise; a legend above the grid
    says so.

    Args:
        results: Entries as written by ``dclnet search --json``.
        labels: Identity of a path (see :func:`label_reader`); gallery paths are looked up as
            written in the results (relative to the gallery root).
        gallery_root: Folder of the gallery paths (default: each entry's ``gallery_root``).
        max_queries: Rows drawn.
        topk: Gallery images per row.

    Returns:
        The matplotlib Figure, ``(1 + k) * 90`` x ``rows * 200 + 55`` pixels.
    """
    labels = labels or label_reader(None)
    rows = list(results)[:max_queries]
    if not rows:
        raise DataError("no queries to draw: the search results are empty")
    check_gallery_paths(rows, "search results")
    k = min(topk, max(len(e["results"]) for e in rows))
    width, height = RANK_CELL[0] * (1 + k), RANK_CELL[1] * len(rows) + RANK_HEADER
    fig = new_figure(width, height)
    axes = fig.subplots(len(rows), 1 + k, squeeze=False)
    fig.subplots_adjust(
        left=0.01, right=0.99, top=1 - (RANK_HEADER + 0.3) / height, bottom=0.01 / height,
        wspace=0.08, hspace=0.32,
    )  # fmt: skip
    verdicts = False
    for row, entry in zip(axes, rows):
        root = Path(gallery_root or entry.get("gallery_root") or ".")
        query_label = labels(entry["query"])
        row[0].imshow(load_image(Path(entry["query"]), DISPLAY_SIZE))
        caption = image_caption(entry["query"], query_label)
        image_axes(row[0], f"query {Path(entry['query']).name}\n{caption}", QUERY, fontsize=6.5)
        for rank, ax in enumerate(row[1:], start=1):
            if rank > len(entry["results"]):
                ax.set_axis_off()
                continue
            hit = entry["results"][rank - 1]
            gallery_label = labels(hit["path"])
            colour = None
            if query_label is not None and gallery_label is not None:
                colour = SAME if gallery_label == query_label else OTHER
                verdicts = True
            ax.imshow(load_image(root / hit["path"], DISPLAY_SIZE))
            caption = image_caption(hit["path"], gallery_label)
            image_axes(ax, f"#{rank}  {hit['score']:.3f}\n{caption}", colour, fontsize=6.5)
    fig.text(
        0.5, 1 - 0.16 / height, f"Top {k} gallery images per query (score: cosine similarity)",
        ha="center", va="center", fontsize=9,
    )  # fmt: skip
    keys = [("query", QUERY)]
    if verdicts:
        keys += [("same identity as the query", SAME), ("another identity", OTHER)]
    frame_legend(fig, keys, 1 - 0.42 / height, fontsize=7.5)
    return fig
