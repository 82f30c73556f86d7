"""ResNet backbone: torchvision key names, last stride, weight loading."""

from __future__ import annotations

import warnings

import pytest
import torch

from dclnet.errors import CheckpointError, ConfigError
from dclnet.models.resnet import (
    ARCHS,
    IMAGENET_URLS,
    RandomInitWarning,
    ResNetStages,
    build_resnet,
    check_pretrained,
    load_pretrained,
    stage_of_key,
)

BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def torchvision_keys(blocks: tuple[int, ...], bottleneck: bool) -> list[str]:
    """State-dict keys of torchvision's ``resnet18/34/50()``, written from its naming scheme."""
    keys = ["conv1.weight", *(f"bn1.{k}" for k in BN_KEYS)]
    n_convs = 3 if bottleneck else 2
    for layer, n_blocks in enumerate(blocks, start=1):
        for b in range(n_blocks):
            prefix = f"layer{layer}.{b}"
            for c in range(1, n_convs + 1):
                keys.append(f"{prefix}.conv{c}.weight")
                keys += [f"{prefix}.bn{c}.{k}" for k in BN_KEYS]
            # torchvision projects the shortcut in block 0 of every layer but layer1 of
            # ResNet-18/34 (ResNet-50's layer1 changes 64 -> 256 channels).
            if b == 0 and (layer > 1 or bottleneck):
                keys.append(f"{prefix}.downsample.0.weight")
                keys += [f"{prefix}.downsample.1.{k}" for k in BN_KEYS]
    return keys + ["fc.weight", "fc.bias"]


def test_resnet18_keys_match_torchvision():
    model = build_resnet("resnet18")
    expected = torchvision_keys((2, 2, 2, 2), bottleneck=False)
    assert len(expected) == 122  # len(torchvision.models.resnet18().state_dict())
    assert list(model.state_dict().keys()) == expected


def test_resnet10_is_resnet18_with_one_block_per_stage():
    state = build_resnet("resnet10").state_dict()
    assert list(state.keys()) == torchvision_keys((1, 1, 1, 1), bottleneck=False)
    r18 = build_resnet("resnet18").state_dict()
    assert all(state[k].shape == r18[k].shape for k in state)  # block 0s are ResNet-18's
    assert build_resnet("resnet10").stage_channels == (64, 64, 128, 256, 512)


def test_resnet10_has_no_imagenet_weights(monkeypatch):
    def no_call(url, **kwargs):  # pragma: no cover - must not be reached
        raise AssertionError("no download for an arch without published weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_call)
    with pytest.raises(ConfigError) as info:
        check_pretrained("imagenet", "resnet10")
    message = str(info.value)
    assert "\n" not in message
    assert "model.arch=resnet10 has no published ImageNet weights" in message
    assert "model.pretrained=synthetic" in message


def test_resnet50_keys_and_shapes_match_torchvision():
    state = build_resnet("resnet50").state_dict()
    expected = torchvision_keys((3, 4, 6, 3), bottleneck=True)
    assert len(expected) == 320  # len(torchvision.models.resnet50().state_dict())
    assert list(state.keys()) == expected
    # v1.5: the stride sits on the 3 x 3 conv; shapes as in torchvision.
    assert state["layer2.0.conv2.weight"].shape == (128, 128, 3, 3)
    assert state["layer1.0.downsample.0.weight"].shape == (256, 64, 1, 1)
    assert state["fc.weight"].shape == (1000, 2048)


def test_resnet50_stride_on_3x3_conv():
    model = build_resnet("resnet50")
    block = model.layer2[0]
    assert block.conv1.stride == (1, 1)
    assert block.conv2.stride == (2, 2)
    assert block.downsample[0].stride == (2, 2)


@pytest.mark.parametrize(
    ("last_stride", "layer3_stride", "size"), [(1, 2, (4, 2)), (2, 2, (2, 1)), (1, 1, (8, 4))]
)
def test_last_stride_sets_final_map(last_stride, layer3_stride, size):
    model = build_resnet("resnet18", last_stride=last_stride, layer3_stride=layer3_stride).eval()
    with torch.no_grad():
        fmap = model.forward_features(torch.randn(2, 3, 64, 32))
        logits = model(torch.randn(2, 3, 64, 32))
    assert fmap.shape == (2, 512, *size)
    assert logits.shape == (2, 1000)


def test_stage_channels():
    assert build_resnet("resnet18").stage_channels == (64, 64, 128, 256, 512)
    assert build_resnet("resnet34").stage_channels == (64, 64, 128, 256, 512)
    assert build_resnet("resnet50").stage_channels == (64, 256, 512, 1024, 2048)


def test_unknown_arch_lists_valid_names():
    with pytest.raises(ConfigError, match="resnet10, resnet18, resnet34, resnet50"):
        build_resnet("resnet101")
    assert set(ARCHS) - set(IMAGENET_URLS) == {"resnet10"}


def test_stages_split_keep_names_and_compose():
    model = build_resnet("resnet18", last_stride=1).eval()
    low, high = ResNetStages(model, 0, 2), ResNetStages(model, 2, 5)
    assert set(low.state_dict()) | set(high.state_dict()) == set(model.state_dict()) - {
        "fc.weight",
        "fc.bias",
    }
    assert "layer1.1.conv2.weight" in low.state_dict()
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        outs = low.forward_stages(x)
        assert [o.shape[1] for o in outs] == [64, 64]
        assert torch.equal(high(outs[-1]), model.forward_features(x))
    assert [stage_of_key(k) for k in ("conv1.weight", "bn1.bias", "layer3.0.bn1.weight")] == [
        0,
        0,
        3,
    ]


def test_load_local_file_strict(tmp_path):
    source = build_resnet("resnet18")
    with torch.no_grad():
        for t in source.state_dict().values():
            if t.is_floating_point():
                t.uniform_()
    # Raw state dict (with fc, as torchvision ships it) and a wrapped one both load.
    raw, wrapped = tmp_path / "raw.pth", tmp_path / "wrapped.pth"
    torch.save(source.state_dict(), raw)
    torch.save({"state_dict": source.state_dict(), "epoch": 3}, wrapped)
    for path in (raw, wrapped):
        target = load_pretrained(build_resnet("resnet18", last_stride=1), path, "resnet18")
        for key, value in source.state_dict().items():
            if not key.startswith("fc."):
                assert torch.equal(target.state_dict()[key], value), key


def test_load_file_without_num_batches_tracked(tmp_path):
    # Older torchvision files lack the BatchNorm counters: every other tensor still loads,
    # and the counters keep the target's own values instead of failing the strict check.
    source = build_resnet("resnet18")
    with torch.no_grad():
        for t in source.state_dict().values():
            if t.is_floating_point():
                t.uniform_(0.5, 1.5)
    state = {k: v for k, v in source.state_dict().items() if "num_batches" not in k}
    assert len(state) < len(source.state_dict())  # the file really lacks the counters
    torch.save(state, tmp_path / "old.pth")
    target = build_resnet("resnet18")
    target.bn1.num_batches_tracked.fill_(7)
    loaded = load_pretrained(target, str(tmp_path / "old.pth"), "resnet18")
    assert loaded is target
    for key, value in state.items():
        if not key.startswith("fc."):
            assert torch.equal(target.state_dict()[key], value), key
    assert not torch.equal(target.fc.weight, source.fc.weight)  # fc is never loaded
    assert target.bn1.num_batches_tracked.item() == 7


def test_mismatched_file_gives_one_line_error(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(build_resnet("resnet18").state_dict(), path)
    with pytest.raises(CheckpointError) as info:
        load_pretrained(build_resnet("resnet50"), path, "resnet50")
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message and "resnet50" in message
    assert "layer1.0.conv1.weight" in message  # first key whose shape differs


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_pretrained(build_resnet("resnet18"), tmp_path / "nope.pth", "resnet18")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_pretrained(build_resnet("resnet18"), bad, "resnet18")


@pytest.mark.parametrize("weights", [None, "none", "None"])
def test_no_weights_warns(weights):
    model = build_resnet("resnet18")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.warns(RandomInitWarning, match="randomly initialised"):
        load_pretrained(model, weights, "resnet18")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_imagenet_uses_torchvision_url(monkeypatch):
    source = build_resnet("resnet18")
    calls = []

    def fake_load(url, **kwargs):
        calls.append((url, kwargs))
        return source.state_dict()

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_load)
    model = load_pretrained(build_resnet("resnet18"), "imagenet", "resnet18")
    assert calls[0][0] == "https://download.pytorch.org/models/resnet18-f37072fd.pth"
    assert calls[0][1]["check_hash"] is True
    assert torch.equal(model.conv1.weight, source.conv1.weight)


def test_imagenet_offline_error(monkeypatch):
    def offline(url, **kwargs):
        raise OSError("<urlopen error [Errno -3]\n Temporary failure in name resolution>")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(CheckpointError) as info:
        load_pretrained(build_resnet("resnet50"), "imagenet", "resnet50")
    message = str(info.value)
    assert "\n" not in message
    assert IMAGENET_URLS["resnet50"] in message and "pass its path" in message
    assert "model.pretrained=PATH" in message  # the config key that takes the file


def test_no_warning_when_weights_given(tmp_path):
    path = tmp_path / "w.pth"
    torch.save(build_resnet("resnet18").state_dict(), path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = load_pretrained(build_resnet("resnet18"), path, "resnet18")
    assert torch.equal(model.layer4[1].bn2.running_var, torch.ones(512))


def test_check_pretrained_fails_like_loading_would(tmp_path, monkeypatch):
    with pytest.raises(CheckpointError, match="not found"):
        check_pretrained(tmp_path / "nope.pth", "resnet18")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        check_pretrained(bad, "resnet18")

    def offline(url, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(CheckpointError, match=r"model\.pretrained=PATH"):
        check_pretrained("imagenet", "resnet18")
    good = tmp_path / "good.pth"
    torch.save(build_resnet("resnet18").state_dict(), good)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # neither a file nor random init warns here
        assert check_pretrained(good, "resnet18") is None
        assert check_pretrained(None, "resnet18") is None
        assert check_pretrained("none", "resnet18") is None
