import pytest
import torch

from dclnet.data import augment
from dclnet.data.augment import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    AugmentConfig,
    augment_batch,
    normalize,
    to_float,
)
from dclnet.errors import ConfigError

OFF = AugmentConfig(grayscale_p=0.0, flip_p=0.0, erase_p=0.0)
MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def random_images(n, h=32, w=16, seed=0):
    """``n x h x w x 3`` uint8, as the caches store them."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, h, w, 3), generator=g, dtype=torch.uint8)


def infrared_images(n, h=32, w=16, seed=0):
    return random_images(n, h, w, seed)[..., :1].expand(n, h, w, 3).contiguous()


def run(images, modality, config, seed=0):
    return augment_batch(images, modality, config, torch.Generator().manual_seed(seed))


def unnormalize(x):
    return x * STD + MEAN


def luma(x):
    bt601 = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return (x * bt601).sum(1, keepdim=True)


def assert_single_rectangles(mask):
    """Each non-empty ``H x W`` mask is one filled axis-aligned rectangle."""
    rows, cols = mask.any(2), mask.any(1)  # N x H, N x W
    assert torch.equal(rows[:, :, None] & cols[:, None, :], mask)
    for lines in (rows, cols):  # the covered rows (columns) are contiguous
        n, length = lines.shape
        first = lines.int().argmax(1)
        last = length - 1 - lines.flip(1).int().argmax(1)
        span = torch.where(lines.any(1), last - first + 1, torch.zeros_like(first))
        assert torch.equal(lines.sum(1), span)


def matches_any(out, mask, candidates, atol=1e-5):
    """N bool: non-erased pixels of ``out`` equal one of the candidate batches."""
    keep = ~mask[:, None]
    hits = [(((out - c).abs() <= atol) | ~keep).flatten(1).all(1) for c in candidates]
    return torch.stack(hits).any(0)


def test_to_float_layouts_and_dtypes():
    nhwc = random_images(2, 5, 4)
    nchw = nhwc.permute(0, 3, 1, 2)
    expected = nchw.float() / 255
    for x in (nhwc, nchw.contiguous()):
        out = to_float(x)
        assert out.dtype == torch.float32 and out.shape == (2, 3, 5, 4)
        torch.testing.assert_close(out, expected)
    torch.testing.assert_close(to_float(expected.double()), expected.double())
    with pytest.raises(ValueError):
        to_float(torch.zeros(2, 5, 4, 4, dtype=torch.uint8))


def test_normalize_and_test_transform():
    x = torch.stack([torch.full((3, 2, 2), v) for v in (0.0, 1.0)])
    out = normalize(x)
    torch.testing.assert_close(out[0, :, 0, 0], -MEAN.view(3) / STD.view(3))
    torch.testing.assert_close(out[1, :, 1, 1], (1 - MEAN.view(3)) / STD.view(3))
    images = random_images(3)
    torch.testing.assert_close(augment.test_transform(images), normalize(to_float(images)))


@pytest.mark.parametrize("modality", ["visible", "infrared"])
def test_zero_probabilities_only_normalise(modality):
    images = random_images(6)
    out, mask = run(images, modality, OFF)
    torch.testing.assert_close(out, normalize(to_float(images)))
    assert mask.shape == (6, 32, 16) and mask.dtype == torch.bool and not mask.any()


@pytest.mark.parametrize("modality", ["visible", "infrared"])
def test_erasing_with_p1_erases_one_rectangle_per_image(modality):
    images = random_images(400, 64, 32)
    out, mask = run(images, modality, AugmentConfig(grayscale_p=0, flip_p=0, erase_p=1))
    assert mask.flatten(1).any(1).all()  # always erased
    # The mask marks exactly the pixels that are 0 in every channel.
    assert torch.equal(mask, (out == 0).all(1))
    assert_single_rectangles(mask)
    reference = normalize(to_float(images))
    assert torch.equal(out[~mask[:, None].expand_as(out)], reference[~mask[:, None].expand_as(out)])
    fraction = mask.flatten(1).float().mean(1)
    assert fraction.min() >= 0.015 and fraction.max() <= 0.36  # 0.02-0.33 up to rounding
    assert abs(fraction.mean().item() - 0.175) < 0.02  # uniform area on 0.02-0.33
    heights, widths = mask.any(2).sum(1).float(), mask.any(1).sum(1).float()
    aspect = (heights / widths).log()  # log-uniform on [log 0.3, log 3.3] up to rounding
    assert aspect.min() > torch.tensor(0.2).log() and aspect.max() < torch.tensor(5.0).log()
    assert (aspect < 0).float().mean() > 0.3 and (aspect > 0).float().mean() > 0.3


@pytest.mark.parametrize(("aspect", "height", "width"), [(1.0, 16, 16), (4.0, 32, 8)])
def test_erased_rectangle_has_the_sampled_size(aspect, height, width):
    # Area 256 px of a 64 x 32 image; aspect is height / width.
    images = random_images(20, 64, 32)
    config = AugmentConfig(
        0, 0, erase_p=1, erase_area=(0.125, 0.125), erase_aspect=(aspect, aspect)
    )
    _, mask = run(images, "visible", config)
    assert_single_rectangles(mask)
    assert (mask.any(2).sum(1) == height).all() and (mask.any(1).sum(1) == width).all()
    tops = mask.any(2).int().argmax(1)
    assert len(tops.unique()) > 5  # positions vary


def test_erasing_retries_until_a_rectangle_fits():
    # Large areas and extreme aspects: most first attempts do not fit the image.
    images = random_images(300, 32, 32)
    config = AugmentConfig(0, 0, erase_p=1, erase_area=(0.4, 0.6), erase_aspect=(0.2, 5.0))
    _, mask = run(images, "visible", config)
    rows, cols = mask.any(2).sum(1), mask.any(1).sum(1)
    assert mask.flatten(1).any(1).float().mean() > 0.95
    erased = rows > 0
    assert (rows[erased] < 32).all() and (cols[erased] < 32).all()  # fits strictly inside
    assert (mask.flatten(1).float().mean(1)[erased] >= 0.38).all()  # not clipped


def test_erasing_gives_up_when_no_rectangle_fits():
    images = random_images(50, 6, 6)
    config = AugmentConfig(grayscale_p=0, flip_p=0, erase_p=1, erase_area=(0.99, 1.0))
    out, mask = run(images, "visible", config)
    assert not mask.any()
    torch.testing.assert_close(out, normalize(to_float(images)))


def test_flip():
    images = random_images(5)
    out, mask = run(images, "visible", AugmentConfig(grayscale_p=0, flip_p=1, erase_p=0))
    torch.testing.assert_close(out, normalize(to_float(images).flip(-1)))
    assert not mask.any()


def test_grayscale_gives_equal_channels_of_luma():
    images = random_images(8)
    config = AugmentConfig(grayscale_p=1, flip_p=0, erase_p=0)
    out, _ = run(images, "visible", config)
    plain = unnormalize(out)
    torch.testing.assert_close(plain, luma(to_float(images)).expand(-1, 3, -1, -1))


def test_infrared_is_never_grayscaled():
    images = random_images(8)  # colourful on purpose: a grayscale step would show
    config = AugmentConfig(grayscale_p=1, flip_p=0, erase_p=0, channel_aug="exchange")
    out, _ = run(images, "infrared", config)
    torch.testing.assert_close(out, normalize(to_float(images)))


def test_channel_exchange_picks_one_channel():
    images = random_images(200)
    config = AugmentConfig(grayscale_p=1, flip_p=0, erase_p=0, channel_aug="exchange")
    plain = unnormalize(run(images, "visible", config)[0])
    x = to_float(images)
    options = torch.cat([x, luma(x)], 1)  # N x 4 x H x W: R, G, B, luma
    close = (plain[:, :, None] - options[:, None]).abs().flatten(3).amax(3) < 1e-5  # N x 3 x 4
    picked = close.all(1)  # N x 4: all three output channels equal option j
    assert picked.any(1).all()
    assert (picked.float().sum(0) > 20).all()  # every option occurs


def test_pad_crop_shifts_within_the_padding():
    pad = 2
    images = random_images(60, 12, 8)
    out, mask = run(images, "visible", AugmentConfig(0, 0, 0, pad_crop=pad))
    padded = torch.nn.functional.pad(to_float(images), (pad,) * 4)
    crops = [
        normalize(padded[..., r : r + 12, c : c + 8])
        for r in range(2 * pad + 1)
        for c in range(2 * pad + 1)
    ]
    hits = torch.stack([(out - c).abs().flatten(1).amax(1) < 1e-5 for c in crops], 1)  # N x 25
    assert hits.any(1).all() and not mask.any()
    assert (hits.float().sum(0) > 0).sum() >= 10  # many different offsets are used


@pytest.mark.parametrize("modality", ["visible", "infrared"])
def test_default_pipeline_keeps_non_erased_pixels(modality):
    images = random_images(300) if modality == "visible" else infrared_images(300)
    out, mask = run(images, modality, AugmentConfig())
    assert out.shape == (300, 3, 32, 16) and out.dtype == torch.float32
    assert (out.permute(0, 2, 3, 1)[mask] == 0).all()
    assert_single_rectangles(mask)
    x = to_float(images)
    gray = luma(x).expand(-1, 3, -1, -1)
    candidates = [x, x.flip(-1), gray, gray.flip(-1)] if modality == "visible" else [x, x.flip(-1)]
    assert matches_any(out, mask, [normalize(c) for c in candidates]).all()


def test_empirical_rates_match_probabilities():
    n = 3000
    images = random_images(n, 16, 8)
    config = AugmentConfig(grayscale_p=0.3, flip_p=0.6, erase_p=0.5)
    out, mask = run(images, "visible", config, seed=5)
    x = to_float(images)
    gray = luma(x).expand(-1, 3, -1, -1)
    is_gray = matches_any(out, mask, [normalize(gray), normalize(gray.flip(-1))])
    is_flip = matches_any(out, mask, [normalize(x.flip(-1)), normalize(gray.flip(-1))])
    assert abs(is_gray.float().mean().item() - 0.3) < 0.04
    assert abs(is_flip.float().mean().item() - 0.6) < 0.04
    erased = mask.flatten(1).any(1).float().mean().item()
    assert 0.45 < erased < 0.54  # slightly below p: a few images find no fitting rectangle


def test_same_seed_same_output():
    images = random_images(16)
    a = run(images, "visible", AugmentConfig(), seed=3)
    b = run(images, "visible", AugmentConfig(), seed=3)
    c = run(images, "visible", AugmentConfig(), seed=4)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_config_accepts_lists_from_yaml():
    config = AugmentConfig(erase_area=[0.1, 0.2], erase_aspect=[0.5, 2.0])
    assert config.erase_area == (0.1, 0.2) and config.erase_aspect == (0.5, 2.0)
    hash(config)


def test_invalid_config_and_arguments():
    with pytest.raises(ConfigError, match="erase_p"):
        AugmentConfig(erase_p=1.5)
    with pytest.raises(ConfigError, match="erase_area"):
        AugmentConfig(erase_area=(0.5, 0.2))
    with pytest.raises(ConfigError, match="exchange"):
        AugmentConfig(channel_aug="swap")
    with pytest.raises(ConfigError, match="pad_crop"):
        AugmentConfig(pad_crop=-1)
    with pytest.raises(Exception, match="modality"):
        augment_batch(random_images(1), "thermal", OFF)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_same_result_on_cuda_and_cpu():
    images = random_images(32)
    config = AugmentConfig(pad_crop=3, channel_aug="exchange")
    cpu = run(images, "visible", config, seed=9)
    gpu = run(images.cuda(), "visible", config, seed=9)
    assert gpu[0].is_cuda and gpu[1].is_cuda
    assert torch.equal(cpu[1], gpu[1].cpu())
    torch.testing.assert_close(cpu[0], gpu[0].cpu())
