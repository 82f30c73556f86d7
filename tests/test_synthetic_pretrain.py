"""model.pretrained=synthetic: a backbone pretrained once on other synthetic people, cached."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from dclnet.models import synthetic_pretrain
from dclnet.models.dclnet import DCLNet
from dclnet.models.synthetic_pretrain import PRETRAIN_SEED, pretrained_path, synthetic_backbone


def test_pretrain_caches_loadable_torchvision_named_weights(tmp_path, monkeypatch):
    kw = dict(layer3_stride=2, ids=8, steps=2, progress=False)
    path = synthetic_backbone("resnet18", (32, 16), tmp_path, **kw)
    assert path == pretrained_path(tmp_path, "resnet18", (32, 16), 2, 8, 2)
    assert path.is_file() and not list(path.parent.glob("*.tmp"))
    state = torch.load(path, weights_only=True)
    assert "conv1.weight" in state and "layer4.1.bn2.running_var" in state
    assert not any(k.startswith("fc.") for k in state)
    # both streams and the shared part start from the cached weights
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RandomInitWarning: weights were given
        net = DCLNet(4, arch="resnet18", pretrained=str(path))
    torch.testing.assert_close(net.visible.conv1.weight, state["conv1.weight"])
    torch.testing.assert_close(net.infrared.conv1.weight, state["conv1.weight"])
    torch.testing.assert_close(
        net.shared.layer4[1].bn2.running_var, state["layer4.1.bn2.running_var"]
    )

    # the second call reads the cache and never trains again
    def boom(*args, **kwargs):
        raise AssertionError("pretrained again although cached")

    monkeypatch.setattr(synthetic_pretrain, "pretrain_backbone", boom)
    assert synthetic_backbone("resnet18", (32, 16), tmp_path, **kw) == path


def test_pretraining_learns_and_uses_another_population(monkeypatch):
    seeds = []
    real = (
        synthetic_pretrain.make_synthetic if hasattr(synthetic_pretrain, "make_synthetic") else None
    )
    assert real is None  # imported lazily inside pretrain_backbone
    from dclnet.data.sources import synthetic

    original = synthetic.make_synthetic

    def spy(*args, **kwargs):
        seeds.append(kwargs["seed"])
        return original(*args, **kwargs)

    monkeypatch.setattr(synthetic, "make_synthetic", spy)
    torch.manual_seed(0)
    before = DCLNet(4, arch="resnet18", pretrained=None).visible.conv1.weight.detach().clone()
    state = synthetic_pretrain.pretrain_backbone(
        "resnet18", (32, 16), ids=6, steps=3, progress=False
    )
    assert seeds == [PRETRAIN_SEED]
    assert state["conv1.weight"].shape == before.shape
    assert torch.isfinite(state["conv1.weight"]).all()
    moved = synthetic_pretrain.pretrain_backbone(
        "resnet18", (32, 16), ids=6, steps=3, shift=4, progress=False
    )
    assert not torch.equal(moved["conv1.weight"], state["conv1.weight"])  # other batches


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_train_resolves_synthetic_to_the_cached_file(tmp_path, monkeypatch):
    from dclnet.config import load_config
    from dclnet.engine import train

    calls = []

    def fake(arch, size, cache, *, layer3_stride, shift):
        calls.append((arch, size, cache, layer3_stride, shift))
        return tmp_path / "weights.pt"

    monkeypatch.setattr(synthetic_pretrain, "synthetic_backbone", fake)
    cfg = load_config(None, ["model.pretrained=synthetic", "model.arch=resnet18",
                             f"data.cache_dir={tmp_path}", "data.height=64", "data.width=32",
                             "model.layer3_stride=1", "model.pretrain_shift=5"])  # fmt: skip
    assert train._pretrained(cfg) == tmp_path / "weights.pt"
    assert calls == [("resnet18", (64, 32), tmp_path, 1, 5)]
    assert train._pretrained(load_config(None, ["model.pretrained=null"])) is None


def test_shift_people_moves_each_image_onto_its_background():
    from dclnet.models.synthetic_pretrain import shift_people

    images = np.arange(1, 13, dtype=np.uint8).reshape(1, 2, 3, 2)[..., :1].repeat(3, -1)
    images = np.concatenate([images, images, images])  # 3 x 2 x 3 x 3, values 1..11 odd
    backgrounds = np.zeros((3, 2, 3 + 2 * 2, 3), dtype=np.uint8)
    out = shift_people(images, np.array([0, 2, 4]), backgrounds, shift=2).numpy()
    assert out.shape == images.shape and out.dtype == np.uint8
    # offset 0: moved 2 px left (its last column stays, background enters on the right)
    assert (out[0, :, 0] == images[0, :, 2]).all() and (out[0, :, 1:] == 0).all()
    assert (out[1] == images[1]).all()  # offset == shift: not moved
    # offset 4: moved 2 px right (its first column ends up last)
    assert (out[2, :, :2] == 0).all() and (out[2, :, 2] == images[2, :, 0]).all()


def test_shift_zero_keeps_the_first_recipes_cache_file(tmp_path):
    plain = pretrained_path(tmp_path, "resnet18", (96, 48), 2, 512, 500)
    assert plain.name == "synthetic-resnet18-96x48-s32-512ids-500steps-v1.pt"
    assert pretrained_path(tmp_path, "resnet18", (96, 48), 2, 512, 500, 0) == plain
    moved = pretrained_path(tmp_path, "resnet18", (96, 48), 2, 512, 500, 18)
    assert moved.name == "synthetic-resnet18-96x48-s32-512ids-500steps-shift18-v1.pt"
