"""Looks of the synthetic renderer: the data sets' own, a wide randomisation, a held-out one.

A *style* decides how the people of :mod:`dclnet.data.sources.synthetic_render` look, on
every axis a renderer can differ on: body shape, clothing texture, palette, infrared heat,
lighting, background, camera (blur, noise, gain), framing and aspect. Each axis has
*families* (for textures: periodic patterns, diagonal stripes, plaid, ... ; for backgrounds:
clutter boxes, plain gradients, facades, natural-looking noise), and a style draws from some
of them:

- ``default``: the look of every built-in data set (`dclnet synth`, the demo, the study);
  the renderer's original code path, unchanged to the bit.
- ``wide``: the synthetic pretraining's look. Every family except the held-out ones, each
  identity and image drawing its own, with wider continuous ranges than ``default``, so that
  what the backbone learns is the person rather than one renderer's look.
- ``heldout``: a look that neither the pretraining nor any tuning sees, made only of the
  families ``wide`` never draws (:data:`HELD_OUT_FAMILIES`): camouflage-like noise textures,
  an earth-tone palette, stocky bodies, directional lighting, natural-looking noise
  backgrounds and a soft, grainy camera. A stand-in for "another renderer" - which a user's
  own images always are.

The functions here change an already drawn :class:`People` or view dict, after the default
draws, so ``default`` consumes the random streams exactly as before.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from dclnet.data.sources.synthetic_render import People

STYLES = ("default", "wide", "heldout")
"""Names accepted by ``style=`` (``data.synthetic_style``, ``model.pretrain_style``)."""

# Texture kinds beyond the renderer's five (solid, hstripes, vstripes, checks, dots).
EXTRA_TEXTURES = ("diagonal", "plaid", "bands", "camo")
PALETTES = ("any", "pastel", "dark", "vivid", "earth")
BACKGROUNDS = ("boxes", "gradient", "facade", "noise")
# The families of each axis that only ``heldout`` uses; ``wide`` never draws them.
HELD_OUT_FAMILIES = {
    "texture": ("camo",),
    "palette": ("earth",),
    "body": ("stocky",),
    "lighting": ("directional",),
    "background": ("noise",),
    "camera": ("soft and grainy",),
}
# wide: texture kinds 0..7 (default five + diagonal, plaid, bands); heldout: solid or camo
_WIDE_TEXTURE_P = (0.2, 0.1, 0.1, 0.1, 0.1, 0.14, 0.13, 0.13, 0.0)
_HELDOUT_TEXTURE_P = (0.3, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.7)
_WIDE_PALETTE_P = (0.4, 0.2, 0.2, 0.2, 0.0)
_WIDE_BACKGROUND_P = (0.45, 0.2, 0.35, 0.0)
_STOCKY = {"shoulder_w": 1.3, "hip_w": 1.3, "arm_r": 1.3, "leg_r": 1.3, "neck_w": 1.3}


def check_style(style: str, name: str = "style") -> str:
    """Return ``style`` or raise a ValueError naming ``name`` and the choices."""
    if style not in STYLES:
        raise ValueError(f"{name} must be one of {', '.join(STYLES)}, got {style!r}")
    return style


def hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised HSV -> RGB; inputs of one shape ``S``, output ``S x 3``."""
    k = (np.stack([5.0, 3.0, 1.0]) + h[..., None] * 6.0) % 6.0
    return v[..., None] - v[..., None] * s[..., None] * np.clip(np.minimum(k, 4.0 - k), 0, 1)


def _palette(rng: np.random.Generator, kind: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Clothing colours ``shape x 3`` (``shape[0]`` identities), palette ``kind`` per identity
    (index into :data:`PALETTES`)."""
    k = kind.reshape(-1, *([1] * (len(shape) - 1)))
    h, s, v = rng.random(shape), rng.random(shape), rng.random(shape)
    hue = np.where(k == 4, np.where(s < 0.3, h, 0.03 + 0.14 * h), h)  # earth: browns, olives
    sat = np.select(
        [k == 1, k == 2, k == 3, k == 4],
        [0.35 * s, s, 0.8 + 0.2 * s, 0.05 + 0.55 * s],
        s**0.7,
    )
    val = np.select(
        [k == 1, k == 2, k == 3, k == 4],
        [0.65 + 0.33 * v, 0.05 + 0.3 * v, 0.5 + 0.5 * v, 0.15 + 0.55 * v],
        0.08 + 0.87 * v,
    )
    return hsv_to_rgb(hue, sat, val)


def _shape(rng: np.random.Generator, n: int, style: str, ranges: dict) -> dict[str, np.ndarray]:
    """Body parameters: ``wide`` widens every range by half its width on each side
    (positive parameters stay above half their default low end); ``heldout`` draws stocky
    bodies (wider shoulders, hips and limbs, shorter)."""
    out = {}
    for key, (lo, hi) in ranges.items():
        if style == "wide":
            span = hi - lo
            lo, hi = lo - 0.5 * span, hi + 0.5 * span
            lo = max(lo, 0.5 * ranges[key][0]) if ranges[key][0] > 0 else lo
        elif key in _STOCKY:
            lo, hi = lo * _STOCKY[key], hi * _STOCKY[key]
        elif key == "height":
            lo, hi = 0.8, 0.92
        out[key] = rng.uniform(lo, hi, n)
    return out


def restyle_people(rng: np.random.Generator, people: People, style: str, parts: dict) -> People:
    """``people`` (drawn with the default look) redrawn on the style's families.

    Args:
        rng: Source of the new draws.
        people: Identities drawn by ``sample_people`` with the default look.
        style: ``wide`` or ``heldout``.
        parts: Renderer constants: ``ranges`` (shape ranges), ``untextured`` (part values
            that carry no texture), ``heat`` (per-part infrared base-heat ranges),
            ``skin``/``hair`` (part values).
    """
    n, p = people.texture.shape
    probs = _WIDE_TEXTURE_P if style == "wide" else _HELDOUT_TEXTURE_P
    texture = rng.choice(len(probs), size=(n, p), p=probs)
    texture[:, parts["untextured"]] = 0
    palette = (
        rng.choice(len(PALETTES), size=n, p=_WIDE_PALETTE_P)
        if style == "wide"
        else np.full(n, PALETTES.index("earth"))
    )
    colour = people.colour.astype(np.float64).copy()
    fresh = _palette(rng, palette, (n, p, 2))
    clothes = [k for k in range(p) if k not in (parts["skin"], parts["hair"])]
    colour[:, clothes] = fresh[:, clothes]
    if style == "wide":  # skin and hair: a wider tone range and a slight hue spread
        tone = rng.uniform(-0.1, 1.1, (n, 1))
        skin = (1 - tone) * [0.33, 0.2, 0.13] + tone * [0.96, 0.8, 0.68]
        colour[:, parts["skin"], :] = np.clip(skin * rng.uniform(0.9, 1.1, (n, 3)), 0, 1)[:, None]
    solid = texture == 0
    colour[:, :, 1] = np.where(solid[..., None], colour[:, :, 0], colour[:, :, 1])
    heat, contrast = people.heat, people.contrast
    if style == "wide":
        lo, hi = np.array(parts["heat"]).T
        heat = rng.uniform(np.clip(lo - 0.1, 0.02, 1), np.clip(hi + 0.1, 0.02, 1), (n, p))
        contrast = rng.uniform(0.05, 0.45, (n, p)) * rng.choice([-1.0, 1.0], (n, p))
    else:  # heldout: the default heat draws, textured where the new textures are
        contrast = np.abs(contrast) + (contrast == 0) * rng.uniform(0.12, 0.3, (n, p))
        contrast = contrast * rng.choice([-1.0, 1.0], (n, p))
    return replace(
        people,
        shape=_shape(rng, n, style, parts["ranges"]),
        texture=texture,
        colour=colour.astype(np.float32),
        heat=np.asarray(heat, dtype=np.float32),
        contrast=np.where(solid, 0.0, contrast).astype(np.float32),
    )


def restyle_views(rng: np.random.Generator, views: dict, style: str) -> dict[str, np.ndarray]:
    """Per-image parameters redrawn for the style (a new dict; ``views`` is left as is).

    Adds ``stretch`` (body width factor), ``vignette`` (darkening at the frame's edge),
    ``light`` and ``light_dir`` (strength and angle of a directional light), ``bg_kind``
    (index into :data:`BACKGROUNDS`), which the renderer reads only when present.
    """
    n = len(views["scale"])
    u = rng.uniform
    out = dict(views)
    if style == "wide":
        out.update(
            scale=u(0.72, 1.05, n),
            shift_x=u(-0.2, 0.2, n),
            shift_y=u(-0.06, 0.06, n),
            shade=u(0.0, 0.6, n),
            gain=u(0.45, 1.6, n),
            gamma=u(0.55, 1.7, n),
            offset=u(-0.15, 0.15, n),
            noise=u(0.0, 0.06, n),
            blur=u(-0.3, 1.2, n),
            occlude=rng.random(n) < 0.25,
            stretch=u(0.8, 1.25, n),
            vignette=u(0.0, 0.4, n),
            light=np.zeros(n),
            light_dir=np.zeros(n),
            bg_kind=rng.choice(len(BACKGROUNDS), size=n, p=_WIDE_BACKGROUND_P),
        )
    else:
        out.update(
            noise=u(0.02, 0.05, n),
            blur=u(0.3, 1.0, n),
            stretch=np.ones(n),
            vignette=np.zeros(n),
            light=u(0.2, 0.45, n),
            light_dir=u(0.0, 2 * np.pi, n),
            bg_kind=np.full(n, BACKGROUNDS.index("noise")),
        )
    return out


def extra_textures(f, au, av, u, v, phase) -> list[np.ndarray]:
    """Pattern values (before the soft step) of :data:`EXTRA_TEXTURES`, in that order.

    ``f``: ``B x 1 x 1`` angular frequency; ``au``/``av``: phase-shifted ``f u``/``f v``;
    ``u``: ``B x 1 x W``, ``v``: ``B x H x 1``; ``phase``: ``B x 2`` of the part.
    """
    p0, p1 = phase[:, 0, None, None], phase[:, 1, None, None]

    def wave(scale, angle, shift):
        return np.sin(scale * f * (u * np.cos(angle) + v * np.sin(angle)) + shift)

    diagonal = np.sin(0.7071 * (au + av))
    plaid = np.maximum(np.sin(au), np.sin(av)) - 0.55
    bands = np.sin(0.35 * av) * 2.0
    camo = 0.8 * (wave(0.6, p0, p1) + wave(0.9, p1, p0) + 0.7 * wave(1.3, p0 + p1, 0.0)) - 0.2
    return [diagonal, plaid, bands, camo]


def styled_background(
    rng: np.random.Generator, kinds: np.ndarray, height: int, width: int, channels: int, boxes
) -> np.ndarray:
    """Backgrounds ``n x H x W x C`` in [0, 1], kind ``kinds[i]`` (:data:`BACKGROUNDS`) each.

    ``boxes`` is the renderer's default background function (gradient, floor, clutter).
    """
    n = len(kinds)
    out = np.empty((n, height, width, channels), dtype=np.float32)
    lo, hi = (0.1, 0.9) if channels == 3 else (0.05, 0.5)
    y = np.linspace(0, 1, height, dtype=np.float32)[None, :, None, None]
    x = np.linspace(0, 1, width, dtype=np.float32)[None, None, :, None]
    for kind in np.unique(kinds):
        rows = np.flatnonzero(kinds == kind)
        m = len(rows)
        a = rng.uniform(lo, hi, (m, 1, 1, channels)).astype(np.float32)
        b = rng.uniform(lo, hi, (m, 1, 1, channels)).astype(np.float32)
        if kind == 0:
            out[rows] = boxes(rng, m, height, width, channels)
            continue
        if kind == 1:  # a plain two-colour gradient in a random direction
            theta = rng.uniform(0, 2 * np.pi, (m, 1, 1, 1))
            t = (np.cos(theta) * x + np.sin(theta) * y + 1.5) / 3.0
        elif kind == 2:  # facade: bands across or along the frame, 2-8 per frame
            freq = rng.uniform(2, 8, (m, 1, 1, 1))
            along = rng.random((m, 1, 1, 1)) < 0.5
            shift = rng.uniform(0, 2 * np.pi, (m, 1, 1, 1))
            t = (np.sin(2 * np.pi * freq * np.where(along, x, y) + shift) > 0).astype(np.float32)
        else:  # noise: two octaves of smooth value noise, like foliage or a crowd far away
            t = 0.65 * _value_noise(rng, m, height, width, (4, 3)) + 0.35 * _value_noise(
                rng, m, height, width, (9, 5)
            )
        out[rows] = a + (b - a) * t
    return out


def _value_noise(rng, n: int, height: int, width: int, grid: tuple[int, int]) -> np.ndarray:
    """``n x H x W x 1`` smooth noise in [0, 1]: a random ``grid`` bilinearly upsampled."""
    g = rng.random((n, grid[0] + 1, grid[1] + 1)).astype(np.float32)
    ys = np.linspace(0, grid[0], height, dtype=np.float32)
    xs = np.linspace(0, grid[1], width, dtype=np.float32)
    y0 = np.minimum(ys.astype(int), grid[0] - 1)
    x0 = np.minimum(xs.astype(int), grid[1] - 1)
    fy, fx = (ys - y0)[None, :, None], (xs - x0)[None, None, :]
    top = g[:, y0][:, :, x0] * (1 - fx) + g[:, y0][:, :, x0 + 1] * fx
    bottom = g[:, y0 + 1][:, :, x0] * (1 - fx) + g[:, y0 + 1][:, :, x0 + 1] * fx
    return (top * (1 - fy) + bottom * fy)[..., None]


def lighting(views: dict, height: int, width: int) -> np.ndarray:
    """Per-pixel light factor ``B x H x W x 1``: a directional ramp (``light``, ``light_dir``)
    times a vignette (``vignette``); all ones without them."""
    y = np.linspace(-0.5, 0.5, height, dtype=np.float32)[None, :, None]
    x = np.linspace(-0.5, 0.5, width, dtype=np.float32)[None, None, :]
    angle = views["light_dir"][:, None, None]
    ramp = 1 + 2 * views["light"][:, None, None] * (np.cos(angle) * x + np.sin(angle) * y)
    edge = np.clip(4 * (x * x + y * y) - 0.25, 0, None)
    return (ramp * (1 - views["vignette"][:, None, None] * edge)).astype(np.float32)[..., None]
