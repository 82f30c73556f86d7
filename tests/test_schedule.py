"""Optimiser parameter groups and the learning-rate schedule (docs/method.md §8)."""

from __future__ import annotations

import warnings

import pytest
import torch

from dclnet.engine.schedule import build_optimizer, build_scheduler, lr_factor
from dclnet.models.dclnet import DCLNet
from dclnet.models.resnet import RandomInitWarning

LR = 3.5e-3


@pytest.fixture(scope="module")
def model() -> DCLNet:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomInitWarning)
        return DCLNet(5, arch="resnet18", pretrained=None)


def _by_name(optimizer) -> dict[str, dict]:
    return {group["name"]: group for group in optimizer.param_groups}


def _expected_factor(epoch: int, warmup: int = 5, milestones=(15, 27), gamma=0.1) -> float:
    """The spec's schedule, written out case by case."""
    if epoch < warmup:
        return (epoch + 1) / warmup
    if epoch < milestones[0]:
        return 1.0
    if epoch < milestones[1]:
        return gamma
    return gamma**2


def test_adam_groups_rates_and_weight_decay(model):
    opt = build_optimizer(model.parameter_groups(), lr=LR)
    assert isinstance(opt, torch.optim.Adam)
    groups = _by_name(opt)
    assert set(groups) == {"head", "backbone"}
    assert groups["head"]["lr"] == pytest.approx(LR)
    assert groups["backbone"]["lr"] == pytest.approx(LR * 0.1)
    for group in opt.param_groups:
        assert group["weight_decay"] == 5e-4

    head = {id(p) for p in groups["head"]["params"]}
    backbone = {id(p) for p in groups["backbone"]["params"]}
    head_modules = (model.bnneck, model.classifier, model.part_bnneck, model.part_classifier)
    expected_head = {id(p) for m in head_modules for p in m.parameters() if p.requires_grad}
    assert head == expected_head
    # every trainable parameter in exactly one group, no frozen one in any
    listed = [id(p) for group in opt.param_groups for p in group["params"]]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    assert len(listed) == len(set(listed)) == len(trainable)
    assert set(listed) == set(trainable)
    assert id(model.bnneck.bias) not in set(listed)  # frozen at 0
    # backbone rate: both streams, the shared stages and the PAP pixel classifiers
    for p in (
        model.pixel_classifier.visible.weight,
        model.pixel_classifier.infrared.weight,
        model.visible.conv1.weight,
        model.infrared.conv1.weight,
        model.shared.layer4[0].conv1.weight,
    ):
        assert id(p) in backbone and id(p) not in head


def test_backbone_lr_mult_and_weight_decay_are_applied(model):
    opt = build_optimizer(model.parameter_groups(), lr=1e-2, backbone_lr_mult=0.5, weight_decay=0)
    groups = _by_name(opt)
    assert groups["head"]["lr"] == pytest.approx(1e-2)
    assert groups["backbone"]["lr"] == pytest.approx(5e-3)
    assert all(g["weight_decay"] == 0 for g in opt.param_groups)


def test_sgd_option_is_nesterov_with_momentum(model):
    opt = build_optimizer(model.parameter_groups(), name="sgd", lr=LR)
    assert isinstance(opt, torch.optim.SGD)
    for group in opt.param_groups:
        assert group["momentum"] == 0.9
        assert group["nesterov"] is True
        assert group["weight_decay"] == 5e-4
    groups = _by_name(opt)
    assert groups["head"]["lr"] == pytest.approx(LR)
    assert groups["backbone"]["lr"] == pytest.approx(LR * 0.1)
    listed = [id(p) for group in opt.param_groups for p in group["params"]]
    assert len(listed) == len(set(listed)) == sum(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="adam, sgd"):
        build_optimizer(model.parameter_groups(), name="rmsprop")


@pytest.mark.parametrize("name", ["adam", "sgd"])
def test_default_schedule_factor_at_every_epoch(model, name):
    opt = build_optimizer(model.parameter_groups(), name=name, lr=LR)
    sched = build_scheduler(opt)  # defaults: warm-up 5, milestones (15, 27), gamma 0.1
    seen = []
    for epoch in range(40):
        expected = _expected_factor(epoch)
        assert lr_factor(epoch, 5, (15, 27), 0.1) == pytest.approx(expected), epoch
        groups = _by_name(opt)
        assert groups["head"]["lr"] == pytest.approx(LR * expected), epoch
        assert groups["backbone"]["lr"] == pytest.approx(LR * 0.1 * expected), epoch
        seen.append(expected)
        opt.step()  # no gradients: a no-op that keeps the scheduler from warning
        sched.step()
    # spot values of the formula: warm-up 0.2..1, then 1 / 0.1 / 0.01
    assert seen[:6] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 1.0])
    assert seen[14] == 1.0 and seen[15] == pytest.approx(0.1) and seen[26] == pytest.approx(0.1)
    assert seen[27] == pytest.approx(0.01) and seen[39] == pytest.approx(0.01)


def test_custom_schedule_and_no_warmup():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    sched = build_scheduler(opt, warmup_epochs=2, milestones=[3, 5], gamma=0.5)
    got = []
    for _ in range(7):
        got.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert got == pytest.approx([0.5, 1.0, 1.0, 0.5, 0.5, 0.25, 0.25])
    assert [lr_factor(e, 0, (2,), 0.1) for e in range(4)] == pytest.approx([1, 1, 0.1, 0.1])
