"""The synthetic renderer's looks: default (unchanged), wide (pretraining), heldout."""

from __future__ import annotations

import numpy as np
import pytest

from dclnet.config import SYNTHETIC_STYLES, load_config
from dclnet.data.sources import synthetic_style
from dclnet.data.sources.synthetic import make_synthetic
from dclnet.data.sources.synthetic_render import (
    BOTTOM,
    TEXTURES,
    TOP,
    sample_people,
    sample_views,
)
from dclnet.data.sources.synthetic_style import (
    BACKGROUNDS,
    EXTRA_TEXTURES,
    STYLES,
    lighting,
    styled_background,
)
from dclnet.errors import ConfigError

KINDS = TEXTURES + EXTRA_TEXTURES


def test_config_choices_are_the_renderers_styles():
    assert SYNTHETIC_STYLES == STYLES


@pytest.mark.parametrize("style", ["wide", "heldout"])
def test_a_style_keeps_the_structure_and_changes_the_look(style):
    plain = make_synthetic(12, seed=4, height=32, width=16)
    styled = make_synthetic(12, seed=4, height=32, width=16, style=style)
    assert styled.records == plain.records
    assert (styled.train_ids, styled.val_ids, styled.test_ids) == (
        plain.train_ids,
        plain.val_ids,
        plain.test_ids,
    )
    assert styled.images.dtype == np.uint8 and styled.images.shape == plain.images.shape
    assert np.abs(styled.images.astype(int) - plain.images).mean() > 10
    ir = np.array([r.modality == "infrared" for r in styled.records])
    assert (np.diff(styled.images[ir].astype(int), axis=-1) == 0).all()  # still one channel
    assert styled.parts.max() <= 6 and (styled.parts > 0).mean() > 0.1
    again = make_synthetic(12, seed=4, height=32, width=16, style=style)
    assert (again.images == styled.images).all()  # deterministic


def test_default_style_is_the_renderers_original_draws():
    a = sample_people(np.random.default_rng(3), 20)
    b = sample_people(np.random.default_rng(3), 20, "default")
    assert (a.colour == b.colour).all() and (a.texture == b.texture).all()
    va = sample_views(np.random.default_rng(3), 20)
    assert set(va) == set(sample_views(np.random.default_rng(3), 20, "default"))
    assert "bg_kind" not in va and "stretch" not in va  # the styled code paths stay off


def test_wide_never_draws_a_held_out_family_and_heldout_only_those():
    rng = np.random.default_rng(0)
    wide, held = sample_people(rng, 3000, "wide"), sample_people(rng, 3000, "heldout")
    camo = KINDS.index("camo")
    assert camo not in np.unique(wide.texture)
    assert len(set(np.unique(wide.texture)) - {0}) == len(KINDS) - 2  # every other kind
    assert set(np.unique(held.texture)) == {0, camo}
    views_w, views_h = sample_views(rng, 3000, "wide"), sample_views(rng, 3000, "heldout")
    noise = BACKGROUNDS.index("noise")
    assert noise not in views_w["bg_kind"] and (views_h["bg_kind"] == noise).all()
    assert (views_w["light"] == 0).all() and (views_h["light"] > 0).all()  # directional light
    # stocky bodies: shoulders and hips 1.3 x the default ones on average
    plain = sample_people(rng, 3000)
    for key in ("shoulder_w", "hip_w"):
        assert held.shape[key].mean() > 1.25 * plain.shape[key].mean()


def test_wide_heat_stays_independent_of_colour():
    people = sample_people(np.random.default_rng(1), 4000, "wide")
    luminance = people.colour[:, :, 0] @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    for part in (TOP, BOTTOM):
        # independent draws: r ~ N(0, 1/sqrt(4000)) = 0.016; 0.08 is five of its std
        assert abs(np.corrcoef(luminance[:, part], people.heat[:, part])[0, 1]) < 0.08


def test_lighting_is_one_without_light_and_a_ramp_along_its_direction():
    n = 3
    views = {"light": np.zeros(n), "light_dir": np.zeros(n), "vignette": np.zeros(n)}
    assert np.allclose(lighting(views, 8, 4), 1.0)
    views["light"] = np.full(n, 0.3)  # light from the right (angle 0)
    light = lighting(views, 8, 4)[0, :, :, 0]
    assert (np.diff(light, axis=1) > 0).all() and np.allclose(np.diff(light, axis=0), 0)
    assert np.isclose(light[0, -1] - light[0, 0], 2 * 0.3)  # x runs from -0.5 to 0.5


def test_noise_backgrounds_are_smooth_and_in_range():
    rng = np.random.default_rng(2)
    kinds = np.full(4, BACKGROUNDS.index("noise"))
    bg = styled_background(rng, kinds, 64, 32, 3, boxes=None)
    assert bg.shape == (4, 64, 32, 3) and bg.min() >= 0 and bg.max() <= 1
    # smooth: neighbouring pixels differ far less than random pairs of pixels
    step = np.abs(np.diff(bg, axis=1)).mean()
    pairs = np.abs(bg - bg[:, ::-1, ::-1]).mean()
    assert step < pairs / 5


def test_unknown_style_is_refused_with_one_line():
    with pytest.raises(ConfigError, match="synthetic style: must be one of default, wide"):
        make_synthetic(8, style="cartoon")
    with pytest.raises(ValueError, match="style must be one of"):
        synthetic_style.check_style("cartoon")
    with pytest.raises(ConfigError, match="data.synthetic_style"):
        load_config(None, ["data.synthetic_style=cartoon"])


def test_synth_writes_a_set_in_the_held_out_look(tmp_path, capsys):
    from PIL import Image

    from dclnet.cli import main

    for style in ("default", "heldout"):
        assert main(["synth", "regdb", str(tmp_path / style), "--ids", "4", "--style", style]) == 0
    assert "regdb data set (heldout look) to" in capsys.readouterr().out
    name = "Visible/1/v_0001_01.bmp"
    plain, held = (np.asarray(Image.open(tmp_path / s / name)) for s in ("default", "heldout"))
    assert plain.shape == held.shape and np.abs(plain.astype(int) - held).mean() > 10
