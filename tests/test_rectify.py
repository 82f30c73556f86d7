"""Semantic Rectification Module."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dclnet.losses.parsing import stripe_index
from dclnet.losses.rectify import rectify_masks


def _loop_reference(z, masks, num_parts):
    """docs/method.md §5 written image by image and pixel by pixel."""
    out = masks.clone()
    b, _, h, w = z.shape
    band = stripe_index(h, num_parts).tolist()
    for n in range(b):
        feats = F.normalize(z[n].double(), dim=0)  # C x H x W
        protos = {}
        for k in range(1, num_parts + 1):
            sel = masks[n] == k
            if sel.any():
                protos[k] = F.normalize(feats[:, sel].mean(dim=1), dim=0)
        for y in range(h):
            candidates = [k for k in (band[y], band[y] + 1, band[y] + 2) if k in protos]
            for x in range(w):
                if masks[n, y, x] == 0 or not candidates:
                    continue
                sims = [float(feats[:, y, x] @ protos[k]) for k in candidates]
                out[n, y, x] = candidates[max(range(len(sims)), key=sims.__getitem__)]
    return out


def _basis(c, i):
    return F.one_hot(torch.tensor(i), c).float()


def test_mislabelled_pixel_moves_to_matching_neighbour_part():
    z = torch.zeros(1, 3, 6, 2)
    masks = torch.zeros(1, 6, 2, dtype=torch.int64)
    z[0, :, 0, :] = _basis(3, 0).view(3, 1)  # row 0: part 1, feature e1
    masks[0, 0] = 1
    z[0, :, 1, :] = _basis(3, 1).view(3, 1)  # row 1: part 2, feature e2 ...
    masks[0, 1] = 2
    z[0, :, 1, 0] = _basis(3, 0)  # ... except pixel (1, 0) which looks like part 1
    out = rectify_masks(z, masks)
    assert out[0, 1].tolist() == [1, 2]
    assert out[0, 0].tolist() == [1, 1]
    assert (out[0, 2:] == 0).all()


def test_closest_part_outside_neighbouring_bands_is_not_chosen():
    z = torch.zeros(1, 3, 6, 2)
    masks = torch.zeros(1, 6, 2, dtype=torch.int64)
    z[0, :, 0, :] = _basis(3, 0).view(3, 1)
    masks[0, 0] = 1  # part 1 = e1, band 1
    z[0, :, 4:, :] = _basis(3, 2).view(3, 1, 1)
    masks[0, 4:] = 5  # part 5 = e3, bands 5-6
    z[0, :, 4, 0] = _basis(3, 0)  # looks like part 1, but band 5 only allows parts 4..6
    out = rectify_masks(z, masks)
    torch.testing.assert_close(out, masks)


def test_absent_parts_are_never_chosen():
    z = torch.zeros(1, 2, 6, 1)
    masks = torch.zeros(1, 6, 1, dtype=torch.int64)
    z[0, 0, 0:3, 0] = 1.0
    masks[0, 0:3, 0] = 2  # part 2 spans bands 1..3 with feature e1
    z[0, 0, 2, 0] = -1.0  # band 3 pixel anti-aligned with part 2 (absent parts 3, 4 have sim 0)
    out = rectify_masks(z, masks)
    torch.testing.assert_close(out, masks)


def test_all_background_image_unchanged_and_batch_independent():
    torch.manual_seed(0)
    z = torch.randn(3, 8, 12, 4)
    masks = torch.randint(0, 7, (3, 12, 4))
    masks[1] = 0
    out = rectify_masks(z, masks)
    assert (out[1] == 0).all()
    for n in (0, 2):
        torch.testing.assert_close(out[n : n + 1], rectify_masks(z[n : n + 1], masks[n : n + 1]))


def test_matches_loop_reference_on_random_inputs():
    torch.manual_seed(1)
    for h, w in ((12, 4), (8, 3), (18, 9)):
        z = torch.randn(4, 16, h, w, requires_grad=True)
        masks = torch.randint(0, 7, (4, h, w))
        masks[0][masks[0] == 3] = 0  # an absent part
        masks[1] = 0  # an all-background image
        masks[2, :, :] = 6  # one part only, far from the top bands
        z.data[3, :, 0, 0] = 0.0  # a zero feature vector
        out = rectify_masks(z, masks)
        assert not out.requires_grad and out.dtype == torch.int64
        torch.testing.assert_close(out, _loop_reference(z.detach(), masks, 6))


def test_bfloat16_features_give_the_float32_labels():
    # Six parts, two rows each, every pixel's feature close to its part's own direction (at
    # random scales, so bf16's normalisation is exercised); 20 % of the foreground pixels
    # are mislabelled as a neighbouring part, and a quarter of the pixels are background.
    gen = torch.Generator().manual_seed(2)
    b, c, h, w = 3, 8, 12, 4
    truth = (torch.arange(h) // 2 + 1).view(1, h, 1).expand(b, h, w).clone()  # B x H x W
    truth[torch.rand(b, h, w, generator=gen) < 0.25] = 0
    directions = torch.eye(c)[truth.clamp(min=1) - 1].permute(0, 3, 1, 2)  # B x C x H x W
    noise = 0.05 * torch.randn(b, c, h, w, generator=gen)
    scale = torch.empty(b, 1, h, w).uniform_(0.5, 3.0, generator=gen)
    z = scale * (directions + noise)
    masks = truth.clone()
    flip = (torch.rand(b, h, w, generator=gen) < 0.2) & (truth > 0)
    step = torch.where(torch.rand(b, h, w, generator=gen) < 0.5, -1, 1)
    neighbour = torch.where(truth == 1, 2, torch.where(truth == 6, 5, truth + step))
    masks[flip] = neighbour[flip]
    assert ((masks - truth).abs() <= 1).all()  # SRM only looks at neighbouring parts
    assert (masks != truth).sum() >= 10  # there is something to rectify
    exact = rectify_masks(z, masks)
    assert torch.equal(exact, truth)  # float32 puts every pixel back in its own part
    out = rectify_masks(z.bfloat16(), masks)
    assert out.dtype == torch.int64
    assert torch.equal(out, exact)
