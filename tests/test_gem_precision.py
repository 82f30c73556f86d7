"""GeM under mixed precision: pooled and returned in float32, as the metric losses assume."""

import pytest
import torch

from dclnet.models.dclnet import DCLNet
from dclnet.models.pooling import gem, stripe_gem

pytestmark = pytest.mark.filterwarnings("ignore::dclnet.models.resnet.RandomInitWarning")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gem_of_low_precision_maps_is_float32(dtype):
    x = torch.rand(2, 4, 8, 4, generator=torch.Generator().manual_seed(0)).to(dtype)
    assert gem(x).dtype == stripe_gem(x, parts=4).dtype == torch.float32
    # the same numbers as pooling the (exactly representable) float32 copy
    assert torch.equal(gem(x), gem(x.float()))
    assert torch.equal(stripe_gem(x, parts=4), stripe_gem(x.float(), parts=4))
    assert gem(x.double()).dtype == torch.float64


def test_network_features_are_float32_under_bfloat16_autocast():
    """Under bf16 autocast the backbone map is bf16; the pooled global and part features
    that the metric and part-identity losses see are float32."""
    torch.manual_seed(0)
    net = DCLNet(4, arch="resnet18", pretrained=None)
    g = torch.Generator().manual_seed(1)
    vis, ir = (torch.rand(2, 3, 64, 32, generator=g) for _ in range(2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(vis, ir)
        stripes = net.stripe_pool(out.final_map)
    assert out.final_map.dtype == torch.bfloat16
    assert out.global_feat.dtype == stripes.dtype == torch.float32
    assert torch.equal(out.global_feat, gem(out.final_map.float()))
