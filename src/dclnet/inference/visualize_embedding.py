"""2-D maps of embeddings (PCA or a compact exact t-SNE), coloured by identity.

A good cross-modality model puts the visible (circles) and infrared (triangles) images of one
person in one cluster; a model that separates modalities shows two clouds instead.
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


def identity_colours(labels: Sequence[str | None]) -> list[tuple[float, ...]]:
    """One colour per distinct identity (golden-angle hues), grey for unknown."""
    import matplotlib.colors as mcolors

    order = {lab: k for k, lab in enumerate(sorted({lab for lab in labels if lab is not None}))}
    colours = []
    for lab in labels:
        if lab is None:
            colours.append((0.5, 0.5, 0.5, 1.0))
            continue
        k = order[lab]
        hue = (k * 0.618033988749895) % 1.0
        value = 0.95 - 0.35 * ((k // 7) % 2)
        colours.append((*mcolors.hsv_to_rgb((hue, 0.85, value)), 1.0))
    return colours


def plot_embedding(
    points: np.ndarray,
    labels: Sequence[str | None],
    modalities: Sequence[str],
    output: str | Path,
    *,
    title: str = "",
) -> Path:
    """Scatter of ``N x 2`` points; colour = identity, marker = modality. 700 x 700 pixels."""
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] != 2 or len(points) != len(labels):
        raise DataError(f"expected N x 2 points with N labels, got {points.shape}")
    colours = np.array(identity_colours(labels))
    mods = np.asarray(modalities)
    fig = new_figure(7.0, 7.0)
    ax = fig.add_axes((0.06, 0.06, 0.9, 0.86))
    for modality, marker in MARKERS.items():
        rows = np.flatnonzero(mods == modality)
        if len(rows):
            style = {"marker": marker, "s": 22, "linewidths": 0.3, "edgecolors": "black"}
            ax.scatter(points[rows, 0], points[rows, 1], c=colours[rows], **style)
            # A grey stand-in for the legend: colours mean identities, not modalities.
            ax.scatter([], [], c="lightgrey", label=f"{modality} ({len(rows)})", **style)
    known = len({lab for lab in labels if lab is not None})
    ax.legend(loc="best", fontsize=8, title=f"{known} identities (colour)", title_fontsize=8)
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
