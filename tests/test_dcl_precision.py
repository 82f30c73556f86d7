"""``loss.dcl_precision``: from the config through loss_kwargs to the dense loss."""

from __future__ import annotations

import pytest
import torch

import dclnet.losses.objective as objective
from dclnet.config import Config, load_config
from dclnet.engine.build import loss_kwargs
from dclnet.errors import ConfigError
from dclnet.losses.objective import dclnet_objective
from dclnet.models.outputs import DCLNetOutput


def _outputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    b, classes, c = 6, 5, 16

    def leaf(*shape):
        return torch.randn(*shape, generator=g).requires_grad_()

    out = DCLNetOutput(
        global_feat=leaf(b, c),
        bn_feat=leaf(b, c),
        logits=leaf(b, classes),
        part_logits=leaf(b, classes),
        final_map=leaf(b, c, 6, 3),
        low_map=leaf(b, 8, 12, 6),
        pixel_logits=leaf(b, 8, 12, 6),
    )
    return out, torch.tensor([0, 2, 4]).repeat(2), torch.randn(classes, 6 * c, generator=g)


def test_config_key_reaches_the_dense_loss(monkeypatch):
    cfg = load_config(overrides=["loss.dcl_precision=bf16"])
    kwargs = loss_kwargs(cfg)
    assert kwargs["dcl_precision"] == "bf16"
    assert loss_kwargs(Config())["dcl_precision"] == "auto"  # the default
    seen = []
    real = objective.dense_contrastive_loss

    def spy(*args, **kw):
        seen.append(kw["precision"])
        return real(*args, **kw)

    monkeypatch.setattr(objective, "dense_contrastive_loss", spy)
    out, labels, part_weight = _outputs()
    terms = dclnet_objective(out, labels, None, part_weight=part_weight, **kwargs)
    assert seen == ["bf16"] and torch.isfinite(terms["dcl"])


def test_bf16_objective_is_close_to_fp32_and_auto_is_fp32_on_cpu():
    out, labels, part_weight = _outputs(1)
    terms = {
        p: dclnet_objective(out, labels, None, part_weight=part_weight, dcl_precision=p)["dcl"]
        for p in ("fp32", "auto", "bf16")
    }
    assert torch.equal(terms["auto"], terms["fp32"])  # CPU: auto = today's fp32 path
    # test_dense_contrastive bounds the difference; here: a different, finite, close value
    # (<= 2 (2u + u^2) / tau with u = 2^-8, tau = 0.05: 0.32).
    assert terms["bf16"].item() != terms["fp32"].item()
    assert abs(terms["bf16"].item() - terms["fp32"].item()) <= 0.32


def test_unknown_precision_is_a_config_error():
    with pytest.raises(ConfigError, match="dcl_precision"):
        load_config(overrides=["loss.dcl_precision=fp16"])
