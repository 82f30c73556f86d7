"""2-D maps of embeddings (PCA or a compact exact t-SNE), coloured by modality.

Colour (and marker) tell the modalities apart: visible orange circles, infrared blue
triangles. A model that separates the modalities shows two clouds of colour; a good
cross-modality model mixes them. Dozens of identities cannot be told apart by hue, so only a
few (:data:`MARKED`, spread through the sorted names, those with images of both modalities
first) are marked, each with its own large marker and its name at the centre of its images of
each modality: a good model puts a marked person's two names on top of each other.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from dclnet.errors import ConfigError, DataError
from dclnet.inference.visualize import new_figure, save_figure

METHODS = ("pca", "tsne")
MARKERS = {"visible": "o", "infrared": "^"}
# Okabe-Ito colours (told apart with the common colour-vision deficiencies).
MODALITY_COLOURS = {"visible": "#E69F00", "infrared": "#0072B2"}
MARKED = 8  # identities marked at most
IDENTITY_MARKERS = ("s", "D", "P", "X", "*", "p", "h", "v")  # one per marked identity


def pca_2d(x: Tensor) -> Tensor:
    """First two principal components ``N x 2`` of ``N x D`` points (float64, SVD).

    Signs are fixed so that each component's largest-magnitude loading is positive, which
    makes the map deterministic.
    """
    centred = x.double() - x.double().mean(dim=0)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    axes = vh[:2]  # 2 x D
    sign = axes.gather(1, axes.abs().argmax(dim=1, keepdim=True)).sign()  # 2 x 1
    axes = axes * torch.where(sign == 0, torch.ones_like(sign), sign)
    out = centred @ axes.T  # N x 2
    if out.shape[1] < 2:  # fewer than two dimensions of variation
        out = torch.cat([out, out.new_zeros(len(out), 2 - out.shape[1])], dim=1)
    return out


def _affinities(x: Tensor, perplexity: float, steps: int = 64) -> Tensor:
    """Symmetric t-SNE input affinities ``P`` (``N x N``, sums to 1) at ``perplexity``.

    The Gaussian precision of every row is found by bisection on all rows at once.
    """
    n = x.shape[0]
    d2 = torch.cdist(x, x).square()  # N x N
    positive = d2[d2 > 0]
    d2 = d2 / (positive.mean() if positive.numel() else 1.0)  # scale-free precisions
    eye = torch.eye(n, dtype=torch.bool)
    # Shifting a row by its nearest distance changes neither P nor its entropy.
    d2 = d2 - d2.masked_fill(eye, math.inf).min(dim=1, keepdim=True).values
    beta = torch.ones(n, 1, dtype=x.dtype)
    lo = torch.zeros_like(beta)
    hi = torch.full_like(beta, math.inf)
    target = math.log(perplexity)
    for _ in range(steps):
        p = torch.exp(-d2 * beta).masked_fill(eye, 0.0)  # N x N
        total = p.sum(dim=1, keepdim=True)
        entropy = total.log() + beta * (d2 * p).sum(dim=1, keepdim=True) / total
        too_flat = entropy > target  # raise the precision
        lo = torch.where(too_flat, beta, lo)
        hi = torch.where(too_flat, hi, beta)
        beta = torch.where(torch.isinf(hi), beta * 2, (lo + hi) / 2)
    p = p / total
    return (p + p.T) / (2 * n)


def tsne_2d(x: Tensor, *, perplexity: float = 30.0, iterations: int = 500, seed: int = 0) -> Tensor:
    """Exact t-SNE (van der Maaten & Hinton, 2008) of ``N x D`` points into ``N x 2``.

    O(N^2) memory and time per iteration: meant for up to a few thousand points. PCA
    initialisation, early exaggeration 12 for the first quarter, momentum 0.5 → 0.8,
    per-coordinate gains and learning rate ``max(N / 48, 50)``.
    """
    n = x.shape[0]
    if n < 3:
        raise DataError(f"t-SNE needs at least 3 points, got {n}; use --method pca")
    perplexity = min(perplexity, (n - 1) / 3)
    x = x.double()
    p = _affinities(x, perplexity).clamp_min(1e-12)
    gen = torch.Generator().manual_seed(seed)
    y = pca_2d(x)
    noise = torch.randn(n, 2, generator=gen, dtype=torch.float64)
    y = y / y[:, 0].std().clamp_min(1e-12) * 1e-4 + 1e-6 * noise
    velocity = torch.zeros_like(y)
    gains = torch.ones_like(y)
    rate = max(n / 48.0, 50.0)
    eye = torch.eye(n, dtype=torch.bool)
    for it in range(iterations):
        early = it < iterations // 4
        exaggeration = 12.0 if early else 1.0
        kernel = (1.0 + torch.cdist(y, y).square()).reciprocal().masked_fill(eye, 0.0)  # N x N
        q = (kernel / kernel.sum()).clamp_min(1e-12)
        w = (exaggeration * p - q) * kernel  # N x N
        grad = 4.0 * (w.sum(dim=1, keepdim=True) * y - w @ y)  # N x 2
        same = (grad > 0) == (velocity > 0)
        gains = torch.where(same, gains * 0.8, gains + 0.2).clamp_min(0.01)
        velocity = (0.5 if early else 0.8) * velocity - rate * gains * grad
        y = y + velocity
        y = y - y.mean(dim=0)
    return y


def project(x: Tensor, method: str, *, perplexity: float = 30.0, seed: int = 0) -> Tensor:
    """``N x D`` → ``N x 2`` with ``"pca"`` or ``"tsne"``."""
    if method == "pca":
        return pca_2d(x)
    if method == "tsne":
        return tsne_2d(x, perplexity=perplexity, seed=seed)
    raise ConfigError(f"unknown projection {method!r}; choose one of {', '.join(METHODS)}")


def marked_identities(
    labels: Sequence[str | None], modalities: Sequence[str], limit: int = MARKED
) -> list[str]:
    """Up to ``limit`` identities to mark, evenly spread through the sorted names.

    Identities with images of both modalities come first (they show whether the model
    brings the two together); the others fill the remaining places. Deterministic.
    """
    seen: dict[str, set[str]] = {}
    for lab, mod in zip(labels, modalities, strict=True):
        if lab is not None:
            seen.setdefault(lab, set()).add(mod)
    both = sorted(lab for lab, mods in seen.items() if len(mods) > 1)
    one = sorted(lab for lab, mods in seen.items() if len(mods) == 1)
    picked: list[str] = []
    for group in (both, one):
        room = limit - len(picked)
        if room <= 0:
            break
        if len(group) <= room:
            picked += group
        else:
            picked += [group[i] for i in np.linspace(0, len(group) - 1, room).round().astype(int)]
    return picked


def plot_embedding(
    points: np.ndarray,
    labels: Sequence[str | None],
    modalities: Sequence[str],
    output: str | Path,
    *,
    title: str = "",
    marked: int = MARKED,
) -> Path:
    """Scatter of ``N x 2`` points, 700 x 700 pixels.

    Colour and small marker = modality (:data:`MODALITY_COLOURS`, :data:`MARKERS`); up to
    ``marked`` identities (:func:`marked_identities`) are drawn again with a large marker of
    their own, filled with the modality's colour, and named at the centre of their images of
    each modality.
    """
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] != 2 or len(points) != len(labels):
        raise DataError(f"expected N x 2 points with N labels, got {points.shape}")
    if len(modalities) != len(points):
        raise DataError(f"expected {len(points)} modalities, got {len(modalities)}")
    if not 0 <= marked <= len(IDENTITY_MARKERS):
        raise ConfigError(f"marked must be 0..{len(IDENTITY_MARKERS)}, got {marked}")
    mods = np.asarray(modalities)
    names = np.asarray([lab if lab is not None else "" for lab in labels], dtype=object)
    fig = new_figure(7.0, 7.0)
    ax = fig.add_axes((0.06, 0.06, 0.9, 0.86))
    for modality, marker in MARKERS.items():
        rows = np.flatnonzero(mods == modality)
        if len(rows):
            ax.scatter(
                points[rows, 0],
                points[rows, 1],
                c=MODALITY_COLOURS[modality],
                marker=marker,
                s=14,
                alpha=0.6,
                linewidths=0,
            )
            colour = MODALITY_COLOURS[modality]
            label = f"{modality} ({len(rows)})"
            ax.scatter([], [], c=colour, marker=marker, s=40, linewidths=0, label=label)
    chosen = marked_identities(labels, modalities, marked)
    for name, shape in zip(chosen, IDENTITY_MARKERS, strict=False):
        rows = np.flatnonzero(names == name)
        colours = [MODALITY_COLOURS.get(m, "grey") for m in mods[rows]]
        ax.scatter(
            points[rows, 0],
            points[rows, 1],
            c=colours,
            marker=shape,
            s=70,
            linewidths=0.9,
            edgecolors="black",
            zorder=3,
        )
        ax.scatter([], [], c="white", marker=shape, s=50, edgecolors="black", label=f"id {name}")
        for modality in MARKERS:  # the name at the centre of each modality's images of it
            own = rows[mods[rows] == modality]
            if len(own):
                ax.annotate(
                    name,
                    points[own].mean(axis=0),
                    fontsize=7,
                    ha="center",
                    va="center",
                    zorder=4,
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8},
                )
    known = len({lab for lab in labels if lab is not None})
    legend_title = "colour = modality"
    if chosen:
        legend_title += f"; {len(chosen)} of {known} identities marked"
    ax.legend(loc="best", fontsize=7, title=legend_title, title_fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=7)
    return save_figure(fig, output)


def _spread(paths: list[str], limit: int) -> list[str]:
    """At most ``limit`` paths, evenly spaced through the (sorted) list."""
    if len(paths) <= limit:
        return paths
    return [paths[i] for i in np.linspace(0, len(paths) - 1, limit).round().astype(int)]


def plot_image_embeddings(
    embedder,
    visible: Sequence[str],
    infrared: Sequence[str],
    output: str | Path,
    *,
    labels=None,
    method: str = "pca",
    perplexity: float = 30.0,
    max_images: int = 500,
    batch_size: int = 64,
    seed: int = 0,
) -> Path:
    """Embed visible and infrared images with their own branches and map them to 2-D.

    Args:
        embedder: A :class:`~dclnet.inference.api.Embedder`.
        visible: Visible image files.
        infrared: Infrared image files.
        output: PNG path (700 x 700 pixels).
        labels: Identity of a path (see :func:`dclnet.inference.visualize.label_reader`).
        method: ``"pca"`` or ``"tsne"``.
        perplexity: t-SNE perplexity.
        max_images: Images per modality at most (evenly spaced through each list).
        batch_size: Images per forward pass.
        seed: t-SNE initialisation noise.
    """
    if method not in METHODS:
        raise ConfigError(f"unknown projection {method!r}; choose one of {', '.join(METHODS)}")
    sets = [
        (m, _spread(list(p), max_images)) for m, p in (("visible", visible), ("infrared", infrared))
    ]
    sets = [(m, p) for m, p in sets if p]
    if not sets:
        raise DataError("no images to map: give visible and/or infrared images")
    feats = torch.cat([embedder.embed(p, m, batch_size=batch_size) for m, p in sets])
    paths = [q for _, p in sets for q in p]
    mods = [m for m, p in sets for _ in p]
    points = project(feats, method, perplexity=perplexity, seed=seed).numpy()
    names = [labels(q) for q in paths] if labels is not None else [None] * len(paths)
    title = f"{method.upper()} of {len(paths)} embeddings ({Path(embedder.checkpoint).name})"
    return plot_embedding(points, names, mods, output, title=title)
