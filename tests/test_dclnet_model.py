"""DCLNet network: outputs, streams, detached branches, PAP head, embeddings; GeM pooling."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from dclnet.errors import CheckpointError, ConfigError
from dclnet.models.dclnet import DCLNet, pap_mask
from dclnet.models.outputs import DCLNetOutput
from dclnet.models.pooling import gem, stripe_bounds, stripe_gem
from dclnet.models.resnet import RandomInitWarning, build_resnet

H, W = 64, 32
NUM_CLASSES = 5


def make_model(**kwargs) -> DCLNet:
    kwargs.setdefault("arch", "resnet18")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomInitWarning)
        return DCLNet(NUM_CLASSES, **kwargs)


def images(n: int, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, H, W, generator=gen).to(dtype)


def randomise(state: dict[str, torch.Tensor], seed: int = 1) -> dict[str, torch.Tensor]:
    """Perturb every float entry (running variances stay positive)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, value in state.items():
        if key.endswith("running_var"):
            value = torch.rand(value.shape, generator=gen) + 0.5
        elif value.is_floating_point():
            value = value + 0.01 * torch.randn(value.shape, generator=gen)
        out[key] = value
    return out


# -- GeM ------------------------------------------------------------------------------------


def test_gem_hand_values():
    x = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]], dtype=torch.float64)  # 1 x 1 x 2 x 2
    expected = ((0 + 1 + 8 + 27) / 4 + 1e-12) ** (1 / 3)
    assert gem(x).item() == pytest.approx(expected, rel=1e-12)
    assert gem(-x).item() == pytest.approx(1e-4, rel=1e-9)  # clamped at 0: (1e-12)^(1/3)
    assert gem(x, p=1.0, eps=0.0).item() == pytest.approx(1.5)


def test_gem_float16_does_not_overflow():
    x = torch.full((1, 2, 3, 3), 100.0, dtype=torch.float16)  # 100^3 > float16 max
    out = gem(x)
    assert out.dtype == torch.float32  # pooled and returned in float32
    assert torch.allclose(out.float(), torch.full((1, 2), 100.0), rtol=1e-3)


def test_stripe_bounds_hand():
    assert stripe_bounds(18, 6) == ([0, 3, 6, 9, 12, 15], [3, 6, 9, 12, 15, 18])
    assert stripe_bounds(4, 6) == ([0, 0, 1, 2, 2, 3], [1, 2, 2, 3, 4, 4])
    assert stripe_bounds(8, 3) == ([0, 2, 5], [3, 6, 8])


def test_stripe_gem_hand_and_adaptive_semantics():
    # 4 rows holding 0, 1, 2, 3 (p = 1 makes GeM a mean): stripes of stripe_bounds(4, 6).
    x = torch.arange(4.0, dtype=torch.float64).view(1, 1, 4, 1).expand(1, 1, 4, 2)
    out = stripe_gem(x, parts=6, p=1.0, eps=0.0)
    assert out.tolist() == [[[0.0, 0.5, 1.0, 2.0, 2.5, 3.0]]]
    for height in range(1, 20):
        x = torch.rand(2, 3, height, 5, dtype=torch.float64)
        ref = F.adaptive_avg_pool2d(x**3, (6, 1)).squeeze(-1).add(1e-12) ** (1 / 3)
        assert torch.allclose(stripe_gem(x), ref, rtol=1e-12, atol=0), height


# -- outputs --------------------------------------------------------------------------------


@pytest.mark.parametrize(("n_vis", "n_ir"), [(2, 0), (0, 3), (2, 3)])
def test_output_shapes(n_vis, n_ir):
    model = make_model()
    out = model(
        visible=images(n_vis) if n_vis else None, infrared=images(n_ir, 1) if n_ir else None
    )
    b = n_vis + n_ir
    assert isinstance(out, DCLNetOutput)
    expected = {
        "global_feat": (b, 512),
        "bn_feat": (b, 512),
        "logits": (b, NUM_CLASSES),
        "part_logits": (b, NUM_CLASSES),
        "final_map": (b, 512, H // 16, W // 16),
        "low_map": (b, 64, H // 4, W // 4),
        "pixel_logits": (b, 8, H // 4, W // 4),
    }
    for name, shape in expected.items():
        value = getattr(out, name)
        assert value.shape == shape, name
        assert value.dtype == torch.float32 and torch.isfinite(value).all(), name


def test_resnet50_shapes():
    model = make_model(arch="resnet50")
    out = model(visible=images(2), infrared=images(2, 1))
    assert out.final_map.shape == (4, 2048, H // 16, W // 16)
    assert out.low_map.shape == (4, 256, H // 4, W // 4)
    assert out.global_feat.shape == out.bn_feat.shape == (4, 2048)
    assert out.pixel_logits.shape == (4, 8, H // 4, W // 4)
    assert model.pixel_classifier.visible.weight.shape == (8, 3904)
    assert model.part_classifier.weight.shape == (NUM_CLASSES, 6 * 2048)


@pytest.mark.parametrize(
    ("split", "low_shape"),
    [(1, (64, 16, 8)), (2, (64, 16, 8)), (3, (128, 8, 4)), (4, (256, 4, 2))],
)
def test_split_points(split, low_shape):
    model = make_model(split=split)
    out = model(visible=images(2), infrared=images(2, 1))
    assert out.low_map.shape == (4, *low_shape)
    assert out.pixel_logits.shape == (4, 8, *low_shape[1:])
    assert out.final_map.shape == (4, 512, 4, 2)
    # stages 0..split-1 (stem = conv1/bn1, then layer1..) are per modality, the rest shared
    modules = {".".join(k.split(".")[:2]) for k in model.state_dict()}
    streams = {m for m in modules if m.startswith(("visible.", "infrared.", "shared."))}
    specific = ["conv1", "bn1", *(f"layer{k}" for k in range(1, split))]
    assert streams == {f"{s}.{n}" for s in ("visible", "infrared") for n in specific} | {
        f"shared.layer{k}" for k in range(split, 5)
    }
    # Behaviour: the last modality-specific stage changes Z of its own modality only; the
    # first shared stage changes the final map of both and Z of neither.
    last_specific = "conv1" if split == 1 else f"layer{split - 1}"
    vis, ir = images(2), images(2, 1)
    model.eval()
    with torch.no_grad():
        before = model(visible=vis, infrared=ir)
        getattr(model.visible, last_specific).apply(_scale_convs)
        mid = model(visible=vis, infrared=ir)
        getattr(model.shared, f"layer{split}").apply(_scale_convs)
        after = model(visible=vis, infrared=ir)
    assert not torch.allclose(mid.low_map[:2], before.low_map[:2])
    assert torch.equal(mid.low_map[2:], before.low_map[2:])
    assert torch.equal(after.low_map, mid.low_map)
    assert not torch.allclose(after.final_map[2:], mid.final_map[2:])


def _scale_convs(module: torch.nn.Module) -> None:
    if isinstance(module, torch.nn.Conv2d):
        module.weight.mul_(1.5)


def test_bad_arguments():
    with pytest.raises(ConfigError, match="split"):
        make_model(split=5)
    with pytest.raises(ConfigError, match="resnet18"):
        make_model(arch="vgg16")
    model = make_model()
    with pytest.raises(ValueError, match="visible, infrared"):
        model.embed(images(1), "thermal")
    with pytest.raises(ValueError, match="visible and/or infrared"):
        model()


# -- torchvision weights --------------------------------------------------------------------


def test_torchvision_state_loads_into_both_streams(tmp_path):
    source = randomise(build_resnet("resnet18").state_dict())  # torchvision names, with fc
    model = make_model()
    model.load_backbone_state_dict(source)
    keys = model.state_dict().keys()
    assert {"visible.conv1.weight", "infrared.layer1.1.bn2.running_var"} <= keys
    assert "shared.layer2.0.downsample.0.weight" in keys
    assert not any(k.startswith(("visible.layer2", "shared.layer1", "shared.conv1")) for k in keys)
    for modality in ("visible", "infrared"):
        got = model.backbone_state_dict(modality)
        assert set(got) == {k for k in source if not k.startswith("fc.")}
        for key, value in got.items():
            assert torch.equal(value, source[key]), (modality, key)
    # Through the constructor, from a file; the streams are copies, not shared tensors.
    path = tmp_path / "r18.pth"
    torch.save(source, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        built = DCLNet(NUM_CLASSES, arch="resnet18", pretrained=str(path))
    assert torch.equal(built.infrared.conv1.weight, source["conv1.weight"])
    assert built.visible.conv1.weight.data_ptr() != built.infrared.conv1.weight.data_ptr()


def test_mismatched_backbone_state():
    model = make_model()
    with pytest.raises(CheckpointError, match="resnet18.*layer1.0.conv1.weight"):
        model.load_backbone_state_dict(build_resnet("resnet50").state_dict(), source="r50.pth")


def test_random_init_warns_and_streams_start_equal():
    with pytest.warns(RandomInitWarning):
        model = DCLNet(NUM_CLASSES, arch="resnet18")
    assert torch.equal(model.visible.layer1[0].conv1.weight, model.infrared.layer1[0].conv1.weight)


def test_model_args_rebuild():
    model = make_model(split=3, num_parts=4, gem_p=2.0)
    args = model.model_args()
    assert args["pretrained"] is None and args["split"] == 3 and args["arch"] == "resnet18"
    clone = make_model(**{k: v for k, v in args.items() if k != "num_classes"})
    clone.load_state_dict(model.state_dict())
    assert model.default_cfg["mean"] == (0.485, 0.456, 0.406)
    assert model.default_cfg["input_size"] == (3, 288, 144)
    assert model.default_cfg["embed_dim"] == model.num_features == 512


def test_pixel_init_option_round_trips(tmp_path):
    from dclnet.engine.checkpoint import save_checkpoint
    from dclnet.engine.runs import load_model

    torch.manual_seed(0)
    default = make_model()
    normal = make_model(pixel_init="normal")
    dim = sum(normal.pixel_classifier.level_channels)
    uniform_std = 1 / (3 * dim) ** 0.5  # nn.Linear's default: U(-1/sqrt D, 1/sqrt D)
    for model, std in ((normal, 0.001), (default, uniform_std)):
        for linear in (model.pixel_classifier.visible, model.pixel_classifier.infrared):
            assert linear.weight.std().item() == pytest.approx(std, rel=0.05)
            assert linear.weight.mean().abs().item() < std / 10
    vis, ir = normal.pixel_classifier.visible.weight, normal.pixel_classifier.infrared.weight
    assert not torch.equal(vis, ir)
    assert default.model_args()["pixel_init"] == "default"
    args = normal.model_args()
    assert args["pixel_init"] == "normal"
    assert make_model(**{k: v for k, v in args.items() if k != "num_classes"})._args == normal._args
    # a checkpoint written before the option existed still loads (default init, weights kept)
    old_args = {k: v for k, v in args.items() if k != "pixel_init"}
    save_checkpoint({"model_args": old_args, "model": normal.state_dict()}, tmp_path / "old.pt")
    loaded, _ = load_model(tmp_path / "old.pt")
    assert loaded.model_args()["pixel_init"] == "default"
    assert torch.equal(loaded.pixel_classifier.visible.weight, vis)
    with pytest.raises(ConfigError, match="pixel_init"):
        make_model(pixel_init="zeros")


# -- gradients ------------------------------------------------------------------------------


def backbone_params(model: DCLNet):
    return [
        (name, p)
        for name, p in model.named_parameters()
        if name.startswith(("visible.", "infrared.", "shared."))
    ]


@pytest.mark.parametrize("branch", ["part_logits", "pixel_logits"])
def test_detached_branches_do_not_train_backbone(branch):
    model = make_model()
    out = model(visible=images(2), infrared=images(2, 1))
    getattr(out, branch).square().mean().backward()
    for name, p in backbone_params(model):
        assert p.grad is None, name
    trained = model.part_classifier if branch == "part_logits" else model.pixel_classifier
    assert all(p.grad is not None and p.grad.any() for p in trained.parameters())


def test_global_logits_train_backbone():
    model = make_model()
    out = model(visible=images(2), infrared=images(2, 1))
    F.cross_entropy(out.logits, torch.tensor([0, 1, 0, 1])).backward()
    for name, p in backbone_params(model):
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_every_trainable_parameter_gets_a_gradient():
    model = make_model()
    out = model(visible=images(2), infrared=images(2, 1))
    loss = sum(v.square().mean() for v in vars(out).values())
    loss.backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name


def test_bnneck_bias_frozen_at_zero():
    model = make_model()
    for bn in (model.bnneck, model.part_bnneck):
        assert not bn.bias.requires_grad and not bn.bias.any()
        assert bn.weight.requires_grad
    groups = model.parameter_groups()
    optim = torch.optim.Adam(
        [{"params": groups["head"]}, {"params": groups["backbone"], "lr": 1e-4}],
        lr=1e-3,
        weight_decay=5e-4,
    )
    out = model(visible=images(2), infrared=images(2, 1))
    (out.logits.square().mean() + out.part_logits.square().mean()).backward()
    optim.step()
    assert not model.bnneck.bias.any() and not model.part_bnneck.bias.any()


def test_parameter_groups_cover_every_parameter_once():
    model = make_model()
    groups = model.parameter_groups()
    ids = [id(p) for group in groups.values() for p in group]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    head = {id(p) for p in groups["head"]}
    assert id(model.classifier.weight) in head and id(model.part_bnneck.weight) in head
    assert id(model.pixel_classifier.visible.weight) not in head
    assert id(model.shared.layer4[0].conv1.weight) not in head


# -- PAP head -------------------------------------------------------------------------------


def naive_pixel_logits(model: DCLNet, stages, n_visible: int) -> torch.Tensor:
    """Concatenate the resized stage maps into the full descriptor, then apply the linear map."""
    size = stages[model.split - 1].shape[-2:]
    descriptor = torch.cat(
        [F.interpolate(s, size=size, mode="bilinear", align_corners=False) for s in stages], 1
    )  # B x D x H_z x W_z
    w_vis = model.pixel_classifier.visible.weight  # 8 x D
    w_ir = model.pixel_classifier.infrared.weight
    vis = torch.einsum("kd,bdhw->bkhw", w_vis, descriptor[:n_visible])
    ir = torch.einsum("kd,bdhw->bkhw", w_ir, descriptor[n_visible:])
    return torch.cat([vis, ir])


@pytest.mark.parametrize("split", [2, 3])
def test_pap_efficient_equals_naive(split):
    model = make_model(split=split).double().eval()
    with torch.no_grad():
        for head in (model.pixel_classifier.visible, model.pixel_classifier.infrared):
            head.weight.normal_()
        vis, ir = images(2, dtype=torch.float64), images(3, 1, dtype=torch.float64)
        stages = model.forward_features(vis, ir)
        out = model.forward_head(stages, 2)
        ref = naive_pixel_logits(model, stages, 2)
    assert out.pixel_logits.shape == ref.shape == (5, 8, *stages[split - 1].shape[-2:])
    assert torch.allclose(out.pixel_logits, ref, rtol=0, atol=1e-10)


def test_pap_mask_hand():
    logits = torch.zeros(1, 8, 1, 3)
    logits[0, 1, 0, 0] = 1.0  # foreground, part argmax 0 -> 1
    logits[0, 1, 0, 1], logits[0, 7, 0, 1] = 1.0, 2.0  # foreground, part 6
    logits[0, 0, 0, 2], logits[0, 5, 0, 2] = 1.0, 2.0  # background wins -> 0
    assert pap_mask(logits).tolist() == [[[1, 6, 0]]]


def test_predict_masks():
    model = make_model().eval()
    with torch.no_grad():
        for head in (model.pixel_classifier.visible, model.pixel_classifier.infrared):
            head.weight.normal_()
        x = images(3)
        masks = model.predict_masks(x, "infrared")
        expected = pap_mask(model(infrared=x).pixel_logits)
    assert masks.dtype == torch.int64 and masks.shape == (3, H // 4, W // 4)
    assert masks.min() >= 0 and masks.max() <= 6
    assert torch.equal(masks, expected)
    assert len(masks.unique()) > 1


# -- embeddings -----------------------------------------------------------------------------


def test_embed_normalised_deterministic_and_matches_forward():
    model = make_model()
    model.load_backbone_state_dict(randomise(build_resnet("resnet18").state_dict()))
    model.eval()
    x = images(3)
    with torch.no_grad():
        emb = model.embed(x, "infrared")
        again = model.embed(x, "infrared")
        from_forward = F.normalize(model(visible=images(2, 5), infrared=x).bn_feat[2:], dim=1)
        other_stream = model.embed(x, "visible")
    assert emb.shape == (3, 512)
    assert torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-6)
    assert torch.equal(emb, again)
    assert torch.allclose(emb, from_forward, atol=1e-5)
    assert torch.allclose(emb, other_stream, atol=1e-6)  # streams start from equal weights
    with torch.no_grad():
        model.visible.conv1.weight.mul_(-1)
        assert not torch.allclose(model.embed(x, "visible"), emb, atol=1e-3)


def test_embed_flip_averages_before_normalising():
    model = make_model().eval()
    x = images(2)
    with torch.no_grad():
        flipped = model.embed(x, "visible", flip=True)
        bn = lambda t: model.bnneck(model.pool(model.shared(model.visible(t))))  # noqa: E731
        expected = F.normalize((bn(x) + bn(x.flip(-1))) / 2, dim=1)
        plain = model.embed(x, "visible")
    assert torch.allclose(flipped, expected, atol=1e-6)
    assert torch.allclose(flipped.norm(dim=1), torch.ones(2), atol=1e-6)
    assert not torch.allclose(flipped, plain, atol=1e-4)


# -- dense contrastive loss through the network -----------------------------------------------


def test_dense_contrastive_term_alone_trains_both_stems():
    """L_dcl acts on Z, the output of the modality-specific stages: both stems get gradient."""
    from dclnet.losses.objective import LossWeights, dclnet_objective

    torch.manual_seed(0)
    model = make_model()
    out = model(visible=images(4), infrared=images(4, 1))
    weights = LossWeights(id=0, metric=0, part_id=0, pap=0, dcl=1)
    terms = dclnet_objective(
        out, torch.tensor([0, 0, 1, 1] * 2), None, weights=weights, dcl_masks="stripes"
    )
    assert set(terms) == {"dcl", "total"} and terms["total"].item() > 0
    terms["total"].backward()
    for stream in (model.visible, model.infrared):
        grad = stream.conv1.weight.grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    for name, p in model.named_parameters():  # nothing after Z is in the graph
        if not name.startswith(("visible.", "infrared.")):
            assert p.grad is None, name
