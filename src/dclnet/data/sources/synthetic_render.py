"""Procedural rendering of two-modality synthetic people (pure, vectorised numpy).

A person is drawn in *body coordinates* ``(u, v)``: ``v`` runs from 0 at the top of the head to
1 at the soles, ``u`` is the horizontal offset from the body axis in the same unit. Every body
region is a simple shape in those coordinates (ellipses, trapezoids, capsules), painted back to
front into a per-pixel label map; textures are periodic patterns of ``(u, v)`` so they move and
scale with the person.

What an identity shares across modalities: its shapes (proportions, hair style, sleeve and
trouser length, bag) and its texture layout (kind, frequency, phase per region). What it does
not share: visible images colour each region with the identity's colours, infrared images give
each region a "heat" drawn independently of those colours, on one channel. Everything else
(pose, background, illumination, noise, occlusion, camera tint and blur) is drawn per image
and tied to no identity.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dclnet.data.sources.synthetic_style import (
    check_style,
    extra_textures,
    lighting,
    restyle_people,
    restyle_views,
    styled_background,
)

PART_NAMES = ("background", "skin", "hair", "top", "bottom", "shoes", "bag")
"""Names of the values of a part label map, by value."""
BACKGROUND, SKIN, HAIR, TOP, BOTTOM, SHOES, BAG = range(len(PART_NAMES))
TEXTURED = (TOP, BOTTOM, BAG)
TEXTURES = ("solid", "hstripes", "vstripes", "checks", "dots")

# Per-identity shape parameters: name -> (low, high), body-height units unless noted.
SHAPE_RANGES = {
    "height": (0.86, 1.0),  # stature as a fraction of the frame at pose scale 1
    "head_rx": (0.042, 0.056),
    "head_ry": (0.058, 0.072),
    "neck_w": (0.016, 0.024),
    "shoulder_w": (0.095, 0.135),  # half-widths
    "hip_w": (0.075, 0.11),
    "shoulder_v": (0.16, 0.19),
    "hip_v": (0.47, 0.54),
    "coat_len": (0.0, 0.16),  # how far the top reaches below the hip
    "arm_r": (0.022, 0.034),
    "arm_len": (0.29, 0.35),
    "leg_r": (0.032, 0.05),
    "leg_gap": (0.028, 0.05),
    "shoe_rx": (0.034, 0.05),
    "hair_line": (-0.45, 0.15),  # in head radii, relative to the head centre
    "hair_len": (0.12, 0.26),  # long hair below the head centre
    "skirt_len": (0.15, 0.3),
    "bag_w": (0.05, 0.09),
    "bag_h": (0.08, 0.16),
}
HAIR_STYLES = (0.5, 0.3, 0.2)  # short, long, shaved: probabilities
SLEEVES = {1.0: 0.55, 0.45: 0.35, 0.0: 0.1}  # fraction of the arm covered -> probability
BOTTOMS = (0.6, 0.2, 0.2)  # trousers, shorts, skirt
BAGS = (0.4, 0.2, 0.2, 0.2)  # none, backpack, shoulder bag, handbag
TEXTURE_P = (0.3, 0.2, 0.15, 0.15, 0.2)
TEXTURE_FREQ = (5.0, 12.0)  # cycles per body height
# Infrared base heat per part (index = part value), drawn independently of colour.
HEAT_RANGES = ((0, 0), (0.45, 0.95), (0.3, 0.6), (0.3, 0.85), (0.3, 0.8), (0.2, 0.5), (0.15, 0.55))


@dataclass(frozen=True)
class People:
    """Appearance of ``n`` identities (one row each).

    Attributes:
        shape: name -> ``n`` floats, keys of :data:`SHAPE_RANGES`.
        hair: ``n`` hair style (0 short, 1 long, 2 shaved).
        sleeve: ``n`` fraction of the arm covered by the top.
        bottom: ``n`` bottom kind (0 trousers, 1 shorts, 2 skirt).
        bag: ``n`` bag kind (0 none, 1 backpack, 2 shoulder bag, 3 handbag).
        texture: ``n x P`` texture kind per part (index into :data:`TEXTURES`).
        freq: ``n x P`` texture frequency, cycles per body height.
        phase: ``n x P x 2`` texture phases (horizontal, vertical).
        colour: ``n x P x 2 x 3`` visible RGB in [0, 1], base and pattern colour per part.
        heat: ``n x P`` infrared base intensity per part.
        contrast: ``n x P`` infrared pattern contrast per part (0 for solid parts).
    """

    shape: dict[str, np.ndarray]
    hair: np.ndarray
    sleeve: np.ndarray
    bottom: np.ndarray
    bag: np.ndarray
    texture: np.ndarray
    freq: np.ndarray
    phase: np.ndarray
    colour: np.ndarray
    heat: np.ndarray
    contrast: np.ndarray


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised HSV -> RGB; inputs of one shape ``S``, output ``S x 3``."""
    k = (np.stack([5.0, 3.0, 1.0]) + h[..., None] * 6.0) % 6.0
    return v[..., None] - v[..., None] * s[..., None] * np.clip(np.minimum(k, 4.0 - k), 0, 1)


def _random_colours(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Clothing colours of any hue, ``shape x 3``."""
    h, s = rng.random(shape), rng.random(shape) ** 0.7
    return _hsv_to_rgb(h, s, rng.uniform(0.08, 0.95, shape))


def sample_people(rng: np.random.Generator, n: int, style: str = "default") -> People:
    """Draw the appearance of ``n`` identities, in the look ``style``
    (:mod:`~dclnet.data.sources.synthetic_style`; ``default``: the data sets' own)."""
    shape = {k: rng.uniform(lo, hi, n) for k, (lo, hi) in SHAPE_RANGES.items()}
    parts = len(PART_NAMES)
    texture = rng.choice(len(TEXTURES), size=(n, parts), p=TEXTURE_P)
    texture[:, [BACKGROUND, SKIN, HAIR, SHOES]] = 0
    colour = _random_colours(rng, (n, parts, 2))
    tone = rng.random((n, 1))
    colour[:, SKIN, :] = ((1 - tone) * [0.33, 0.2, 0.13] + tone * [0.96, 0.8, 0.68])[:, None]
    hair_v = rng.uniform(0.05, 0.75, n)
    colour[:, HAIR, :] = _hsv_to_rgb(rng.uniform(0.04, 0.12, n), rng.uniform(0.2, 0.7, n), hair_v)[
        :, None
    ]
    solid = texture == 0
    colour[:, :, 1] = np.where(solid[..., None], colour[:, :, 0], colour[:, :, 1])
    lo, hi = np.array(HEAT_RANGES).T
    heat = rng.uniform(lo, hi, (n, parts))  # independent of every colour draw above
    contrast = rng.uniform(0.12, 0.3, (n, parts)) * rng.choice([-1.0, 1.0], (n, parts))
    people = People(
        shape=shape,
        hair=rng.choice(3, size=n, p=HAIR_STYLES),
        sleeve=rng.choice(list(SLEEVES), size=n, p=list(SLEEVES.values())),
        bottom=rng.choice(3, size=n, p=BOTTOMS),
        bag=rng.choice(4, size=n, p=BAGS),
        texture=texture,
        freq=rng.uniform(*TEXTURE_FREQ, (n, parts)),
        phase=rng.uniform(0, 2 * np.pi, (n, parts, 2)),
        colour=colour.astype(np.float32),
        heat=heat.astype(np.float32),
        contrast=np.where(solid, 0.0, contrast).astype(np.float32),
    )
    if check_style(style) == "default":
        return people
    constants = {
        "ranges": SHAPE_RANGES,
        "untextured": [BACKGROUND, SKIN, HAIR, SHOES],
        "heat": HEAT_RANGES,
        "skin": SKIN,
        "hair": HAIR,
    }
    return restyle_people(rng, people, style, constants)


def sample_views(rng: np.random.Generator, n: int, style: str = "default") -> dict[str, np.ndarray]:
    """Draw per-image pose and photometric parameters for ``n`` images (name -> ``n`` array),
    in the look ``style``."""
    u = rng.uniform
    views = {
        "scale": u(0.86, 1.0, n),
        "shift_x": u(-0.12, 0.12, n),  # fraction of the width
        "shift_y": u(-0.03, 0.03, n),  # fraction of the height
        "flip": rng.random(n) < 0.5,  # seen from the other side
        "head_dx": u(-0.012, 0.012, n),
        "swing_l": u(-0.03, 0.06, n),
        "swing_r": u(-0.03, 0.06, n),
        "stride_l": u(-0.05, 0.05, n),
        "stride_r": u(-0.05, 0.05, n),
        "shade": u(0.1, 0.35, n),
        "gain": u(0.65, 1.3, n),
        "gamma": u(0.75, 1.35, n),
        "offset": u(-0.08, 0.08, n),
        "noise": u(0.004, 0.03, n),
        "blur": u(-0.2, 0.3, n),
        "occlude": rng.random(n) < 0.15,
    }
    return views if check_style(style) == "default" else restyle_views(rng, views, style)


def _capsule(u, v, a, b, r) -> tuple[np.ndarray, np.ndarray]:
    """Pixels within ``r`` of segment ``a -> b`` and their position ``t`` along it.

    ``u``: ``B x 1 x W``, ``v``: ``B x H x 1``; ``a``, ``b``: pairs of ``B x 1 x 1`` (u, v);
    ``r``: ``B x 1 x 1``. Returns a ``B x H x W`` mask and ``t`` in [0, 1].
    """
    du, dv = b[0] - a[0], b[1] - a[1]
    t = np.clip(((u - a[0]) * du + (v - a[1]) * dv) / (du * du + dv * dv), 0.0, 1.0)
    d2 = (u - a[0] - t * du) ** 2 + (v - a[1] - t * dv) ** 2
    return d2 <= r * r, t


def _ellipse(u, v, cu, cv, ru, rv) -> np.ndarray:
    return ((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2 <= 1.0


def _box(u, v, u0, u1, v0, v1) -> np.ndarray:
    return (u >= u0) & (u <= u1) & (v >= v0) & (v <= v1)


def _col(x: np.ndarray) -> np.ndarray:
    """``B`` -> ``B x 1 x 1`` for broadcasting against ``B x H x W``."""
    return np.asarray(x, dtype=np.float32)[:, None, None]


def body_coordinates(
    height: int, width: int, stature: np.ndarray, views: dict[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Body coordinates of every pixel: ``u`` ``B x 1 x W`` and ``v`` ``B x H x 1``."""
    ph = _col(views["scale"] * stature * 0.95 * height)
    top = (height - ph) / 2 + _col(views["shift_y"] * height)
    cx = width / 2 + _col(views["shift_x"] * width)
    x = np.arange(width, dtype=np.float32)[None, None, :] + 0.5
    y = np.arange(height, dtype=np.float32)[None, :, None] + 0.5
    sign = np.where(_col(views["flip"]) > 0, -1.0, 1.0).astype(np.float32)
    if "stretch" in views:  # styled views: a wider or narrower body
        sign = sign / _col(views["stretch"])
    return sign * (x - cx) / ph, (y - top) / ph


def _paint(lab: np.ndarray, mask: np.ndarray, value) -> None:
    np.copyto(lab, np.asarray(value, dtype=np.uint8), where=mask)


def _legs(lab, s, views, u, v, bottom) -> None:
    """Legs (trousers down to the ankle, shorts to the knee, or bare), shoes and skirt."""
    covered = np.where(bottom == 0, 1.0, np.where(bottom == 1, 0.45, 0.0))
    for side, stride in ((-1, views["stride_l"]), (1, views["stride_r"])):
        hip = (side * s["leg_gap"], s["hip_v"])
        ankle = (side * s["leg_gap"] + _col(stride), 0.955)
        leg, t = _capsule(u, v, hip, ankle, s["leg_r"])
        _paint(lab, leg, np.where(t <= covered, BOTTOM, SKIN))
        _paint(lab, _ellipse(u, v, ankle[0] + side * 0.01, 0.97, s["shoe_rx"], 0.024), SHOES)
    below = v - s["hip_v"]
    flare = s["hip_w"] + 0.05 * np.clip(below / s["skirt_len"], 0, 1)
    skirt = (below >= -0.02) & (below <= s["skirt_len"]) & (np.abs(u) <= flare)
    _paint(lab, (bottom == 2) & skirt, BOTTOM)


def _torso_arms(lab, s, views, u, v, sleeve) -> tuple[np.ndarray, np.ndarray]:
    """Torso (down to the coat length), neck, arms with sleeves, hands; returns the right hand."""
    sh_v, hip_v, sh_w, hip_w = s["shoulder_v"], s["hip_v"], s["shoulder_w"], s["hip_w"]
    taper = np.clip((v - sh_v) / (hip_v - sh_v), 0, 1)
    w = sh_w + (hip_w - sh_w) * taper + 0.1 * np.clip(v - hip_v, 0, None)
    _paint(lab, (v >= sh_v + 1.5 * u * u) & (v <= hip_v + s["coat_len"]) & (np.abs(u) <= w), TOP)
    _paint(lab, _box(u, v, -s["neck_w"], s["neck_w"], s["head_ry"], sh_v + 0.01), SKIN)
    for side, swing in ((-1, views["swing_l"]), (1, views["swing_r"])):
        shoulder = (side * (sh_w - 0.4 * s["arm_r"]), sh_v + 0.03)
        hand = (shoulder[0] + side * _col(swing), sh_v + s["arm_len"])
        arm, t = _capsule(u, v, shoulder, hand, s["arm_r"])
        _paint(lab, arm, np.where(t <= sleeve, TOP, SKIN))
        palm = _ellipse(u, v, hand[0], hand[1] + 0.01, 1.1 * s["arm_r"], 1.3 * s["arm_r"])
        _paint(lab, palm, SKIN)
    return hand


def _head(lab, s, views, u, v, hair) -> None:
    """Head and hair (short, or shaved: a higher hair line; long hair is painted earlier)."""
    cu, cv = _col(views["head_dx"]), s["head_ry"] + 0.004
    _paint(lab, _ellipse(u, v, cu, cv, s["head_rx"], s["head_ry"]), SKIN)
    cap = _ellipse(u, v, cu, cv - 0.004, 1.1 * s["head_rx"], 1.08 * s["head_ry"])
    line = cv + (s["hair_line"] - np.where(hair == 2, 0.7, 0.0)) * s["head_ry"]
    _paint(lab, cap & (v <= line), HAIR)


def _bags(lab, s, u, v, bag, hand) -> None:
    """Bags in front of the body: backpack straps, shoulder bag and sling, handbag."""
    sh_v, hip_v, sh_w = s["shoulder_v"], s["hip_v"], s["shoulder_w"]
    strap = (np.abs(np.abs(u) - 0.55 * sh_w) <= 0.012) & (v >= sh_v) & (v <= sh_v + 0.16)
    _paint(lab, (bag == 1) & strap, BAG)
    u0, v0 = s["hip_w"] + 0.01, hip_v - 0.1
    _paint(lab, (bag == 2) & _box(u, v, u0, u0 + s["bag_w"], v0, v0 + s["bag_h"]), BAG)
    diagonal = np.abs(u + (v - sh_v - 0.1) * (sh_w / (hip_v - sh_v))) <= 0.01
    _paint(lab, (bag == 2) & diagonal & (v >= sh_v) & (v <= v0 + 0.02), BAG)
    half, top = s["bag_w"] / 2, hand[1] + 0.02
    _paint(lab, (bag == 3) & _box(u, v, hand[0] - half, hand[0] + half, top, top + s["bag_h"]), BAG)


def layout(people: People, who: np.ndarray, views: dict[str, np.ndarray], u, v) -> np.ndarray:
    """Paint the parts of people ``who`` (``B`` identity rows) back to front.

    Args:
        people: Appearance of all identities.
        who: ``B`` rows of ``people``.
        views: Per-image pose parameters, each ``B``.
        u: ``B x 1 x W`` body coordinate across.
        v: ``B x H x 1`` body coordinate down.

    Returns:
        ``B x H x W`` uint8 part labels (values index :data:`PART_NAMES`).
    """
    s = {k: _col(a[who]) for k, a in people.shape.items()}
    hair, bag = _col(people.hair[who]), _col(people.bag[who])
    lab = np.zeros(np.broadcast_shapes(u.shape, v.shape), dtype=np.uint8)
    sh_v, sh_w, rx, cv = s["shoulder_v"], s["shoulder_w"], s["head_rx"], s["head_ry"]
    _paint(lab, (bag == 1) & _box(u, v, -sh_w - 0.02, sh_w + 0.02, sh_v + 0.03, sh_v + 0.27), BAG)
    _paint(lab, (hair == 1) & _box(u, v, -1.15 * rx, 1.15 * rx, cv, cv + s["hair_len"]), HAIR)
    _legs(lab, s, views, u, v, _col(people.bottom[who]))
    hand = _torso_arms(lab, s, views, u, v, _col(people.sleeve[who]))
    _head(lab, s, views, u, v, hair)
    _bags(lab, s, u, v, bag, hand)
    return lab


def _soft_step(z: np.ndarray) -> np.ndarray:
    return np.clip(0.5 + 2.5 * z, 0.0, 1.0)


def pattern(people: People, who: np.ndarray, labels: np.ndarray, u, v) -> np.ndarray:
    """Texture value in [0, 1] of every pixel of the textured parts (0 elsewhere), ``B x H x W``."""
    out = np.zeros(labels.shape, dtype=np.float32)
    for part in TEXTURED:
        f = _col(people.freq[who, part]) * 2 * np.pi
        au = f * u + _col(people.phase[who, part, 0])  # B x 1 x W
        av = f * v + _col(people.phase[who, part, 1])  # B x H x 1
        su, sv = np.sin(au), np.sin(av)
        kinds = [  # solid, horizontal stripes, vertical stripes, checks, dots
            np.zeros_like(sv),
            _soft_step(sv),
            _soft_step(su),
            _soft_step(su * sv),
            _soft_step(np.cos(au) + np.cos(av) - 1.1),
        ]
        if people.texture.max() >= len(TEXTURES):  # a style's further kinds
            phase = people.phase[who, part]
            kinds += [_soft_step(z) for z in extra_textures(f, au, av, u, v, phase)]
        kind = _col(people.texture[who, part]).astype(np.int64)
        value = np.select([kind == k for k in range(len(kinds))], np.broadcast_arrays(*kinds))
        np.copyto(out, value, where=labels == part)
    return out


def background(
    rng: np.random.Generator, n: int, height: int, width: int, channels: int
) -> np.ndarray:
    """Random backgrounds: a gradient, a floor and clutter boxes, ``n x H x W x C`` in [0, 1].

    Visible backgrounds (``channels=3``) take any colour; infrared ones (``channels=1``) are
    mostly cooler than people but clutter can be hot.
    """
    lo, hi = (0.1, 0.9) if channels == 3 else (0.05, 0.5)
    y = np.linspace(0, 1, height, dtype=np.float32)[None, :, None, None]
    x = np.linspace(0, 1, width, dtype=np.float32)[None, None, :, None]

    def draw(low: float, high: float, shape: tuple[int, ...]) -> np.ndarray:
        return rng.uniform(low, high, shape).astype(np.float32)

    a, b = draw(lo, hi, (n, 1, 1, channels)), draw(lo, hi, (n, 1, 1, channels))
    theta = draw(0, 2 * np.pi, (n, 1, 1, 1))
    ramp = (np.cos(theta) * x + np.sin(theta) * y + 1.5) / 3.0
    img = a + (b - a) * ramp
    floor = y >= rng.uniform(0.7, 0.97, (n, 1, 1, 1))
    img = np.where(floor, draw(lo, hi, (n, 1, 1, channels)), img)
    chi = 0.95 if channels == 3 else 0.9
    for _ in range(6):
        x0, y0 = draw(-0.2, 1.0, (2, n, 1, 1, 1))
        w, h = draw(0.05, 0.5, (2, n, 1, 1, 1))
        on = rng.random((n, 1, 1, 1)) < 0.7
        box = on & (x >= x0) & (x <= x0 + w) & (y >= y0) & (y <= y0 + h)
        img = np.where(box, draw(0.0, chi, (n, 1, 1, channels)), img)
    return img


def blur(img: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Separable Gaussian blur with a per-image ``sigma`` (``B``) of ``B x H x W x C`` images."""
    taps = np.arange(-3, 4, dtype=np.float32)
    w = np.exp(-0.5 * (taps[None] / np.maximum(sigma, 1e-3)[:, None]) ** 2)
    w = (w / w.sum(1, keepdims=True)).astype(np.float32)[:, :, None, None, None]  # B x 7 x 1...
    for axis in (1, 2):
        pad = [(0, 0)] * 4
        pad[axis] = (3, 3)
        p = np.pad(img, pad, mode="edge")
        n = img.shape[axis]
        img = sum(w[:, i] * p.take(np.arange(i, i + n), axis=axis) for i in range(7))
    return img


def _occlude(rng: np.random.Generator, img, labels, on: np.ndarray) -> None:
    """Cover a random box of the images where ``on`` with a flat patch; labels become 0."""
    n, height, width, channels = img.shape
    y = np.arange(height)[None, :, None]
    x = np.arange(width)[None, None, :]
    w = rng.uniform(0.3, 0.7, (n, 1, 1)) * width
    h = rng.uniform(0.15, 0.4, (n, 1, 1)) * height
    x0 = rng.uniform(-0.2, 0.9, (n, 1, 1)) * width
    y0 = rng.uniform(0.35, 1.0, (n, 1, 1)) * height - h
    box = on[:, None, None] & (x >= x0) & (x <= x0 + w) & (y >= y0) & (y <= y0 + h)
    fill = rng.uniform(0.05, 0.9, (n, 1, 1, channels)).astype(np.float32)
    np.copyto(img, np.broadcast_to(fill, img.shape), where=box[..., None])
    labels[box] = BACKGROUND


def render(
    people: People,
    who: np.ndarray,
    views: dict[str, np.ndarray],
    tint: np.ndarray,
    sigma: np.ndarray,
    infrared: bool,
    height: int,
    width: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render one modality's images of people ``who``.

    Args:
        people: Appearance of all identities.
        who: ``B`` rows of ``people`` to draw.
        views: Per-image parameters from :func:`sample_views`, each ``B``.
        tint: ``B x 3`` camera RGB gains (ignored for infrared).
        sigma: ``B`` camera blur in pixels.
        infrared: Render heat on one channel instead of colour.
        height: Image height in pixels.
        width: Image width in pixels.
        rng: Source of the backgrounds, occluders and noise.

    Returns:
        ``B x H x W x 3`` uint8 images (infrared: three equal channels), ``B x H x W`` uint8
        part labels and ``B x H`` float32 body coordinate ``v`` of every pixel row (0 at the
        top of the head, 1 at the soles; see :func:`body_bands`).
    """
    n = len(who)
    u, v = body_coordinates(height, width, people.shape["height"][who], views)
    labels = layout(people, who, views, u, v)
    pat = pattern(people, who, labels, u, v)[..., None]
    row = np.arange(n)[:, None, None]
    if infrared:
        base = people.heat[who][row, labels][..., None]
        img = base + people.contrast[who][row, labels][..., None] * (pat - 0.5)
    else:
        colour = people.colour[who]
        img = colour[:, :, 0][row, labels] * (1 - pat) + colour[:, :, 1][row, labels] * pat
    person = (labels > 0)[..., None]
    shade = 1 - _col(views["shade"])[..., None] * np.clip((u / 0.16) ** 2, 0, 1)[..., None]
    if "bg_kind" in views:  # styled views
        bg = styled_background(rng, views["bg_kind"], height, width, img.shape[-1], background)
        img = np.where(person, img * shade, bg) * lighting(views, height, width)
    else:
        bg = background(rng, n, height, width, img.shape[-1])
        img = np.where(person, img * shade, bg)
    _occlude(rng, img, labels, views["occlude"])
    gamma, gain = _col(views["gamma"])[..., None], _col(views["gain"])[..., None]
    img = np.clip(img, 0, 1) ** gamma
    if infrared:
        img = img * (1 + (gain - 1) * 0.5) + _col(views["offset"])[..., None]
    else:
        img = img * gain * tint[:, None, None, :]
    img = blur(img, np.maximum(sigma + views["blur"], 0.3))
    img = img + rng.standard_normal(img.shape, dtype=np.float32) * _col(views["noise"])[..., None]
    img = np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)
    img = np.repeat(img, 3, axis=-1) if infrared else img
    return img, labels, np.ascontiguousarray(v[:, :, 0], dtype=np.float32)


def body_bands(labels: np.ndarray, body_v: np.ndarray, num_bands: int = 6) -> np.ndarray:
    """Body band of every person pixel: the k-th of ``num_bands`` equal slices of head-to-sole.

    The renderer draws the body between ``v = 0`` (top of the head) and ``v = 1`` (soles), so
    band ``k`` (1-based) is ``floor(v * num_bands) + 1``, clipped to ``1..num_bands``; pixels
    that are not on the person (background, occluders) are 0.

    Args:
        labels: ``B x H x W`` part labels (0 = not on the person).
        body_v: ``B x H`` body coordinate of each pixel row.
        num_bands: Number of bands.

    Returns:
        ``B x H x W`` uint8 in ``0..num_bands``.
    """
    band = np.clip(np.floor(body_v * num_bands), 0, num_bands - 1).astype(np.uint8) + 1
    return np.where(labels > 0, band[:, :, None], 0).astype(np.uint8)
