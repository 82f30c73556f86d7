"""Identity and metric losses against plain-loop references (value and gradient)."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from dclnet.losses.identity import identity_loss
from dclnet.losses.metric import center_cluster_loss, triplet_loss


def _dist(a, b):
    return torch.linalg.vector_norm(a - b)  # subgradient 0 at a == b (singleton identity)


def _center_cluster_loop(f, labels, margin):
    ids = sorted(set(labels.tolist()))
    centres = {}
    for y in ids:
        members = [f[i] for i in range(len(labels)) if labels[i] == y]
        centres[y] = sum(members) / len(members)
    intra = sum(_dist(f[i], centres[int(labels[i])]) for i in range(len(labels))) / len(labels)
    inter = 0.0
    for y in ids:
        others = [y2 for y2 in ids if y2 != y]
        if others:
            terms = [torch.relu(margin - _dist(centres[y], centres[y2])) for y2 in others]
            inter = inter + sum(terms) / len(others)
    return intra + inter / len(ids)


def _center_cluster_released_loop(f, labels, margin, chosen=None):
    """The released code's push term: rows 0, P, 2P, ... of the batch (P = identities)."""
    n = len(labels)
    ids = sorted(set(labels.tolist()))
    centres = {}
    for y in ids:
        members = [f[i] for i in range(n) if labels[i] == y]
        centres[y] = sum(members) / len(members)
    intra = sum(_dist(f[i], centres[int(labels[i])]) for i in range(n)) / n
    terms = []
    for row in range(0, n, len(ids)):
        y = int(labels[row])
        if chosen is not None:
            chosen.append(y)
        others = [y2 for y2 in ids if y2 != y]
        if others:
            hinge = [torch.relu(margin - _dist(centres[y], centres[y2])) for y2 in others]
            terms.append(sum(hinge) / len(others))
    return intra + (sum(terms) / len(terms) if terms else 0.0)


def _pk_labels(p, k, seed=0):
    """``2 P K`` labels: P shuffled identities x K images, visible then infrared."""
    ids = torch.randperm(100, generator=torch.Generator().manual_seed(seed))[:p]
    half = ids.repeat_interleave(k)
    return torch.cat([half, half])


def _triplet_loop(f, labels, margin):
    terms = []
    for i in range(len(labels)):
        pos = [_dist(f[i], f[j]) for j in range(len(labels)) if labels[j] == labels[i]]
        neg = [_dist(f[i], f[j]) for j in range(len(labels)) if labels[j] != labels[i]]
        if neg:
            terms.append(torch.relu(max(pos) - min(neg) + margin))
    return sum(terms) / max(len(terms), 1)


def _check_against(fn, ref, features, labels, margin):
    f1 = features.clone().requires_grad_()
    f2 = features.clone().requires_grad_()
    got = fn(f1, labels, margin=margin)
    expected = ref(f2, labels, margin)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    (g1,) = torch.autograd.grad(got, f1)
    (g2,) = torch.autograd.grad(expected, f2)
    torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_center_cluster_matches_loop(seed):
    g = torch.Generator().manual_seed(seed)
    labels = torch.tensor([3, 3, 7, 7, 1, 1, 3, 7, 1, 9])
    # scale so that some centre pairs are within the margin and some are not
    features = torch.randn(len(labels), 6, generator=g) * 0.4
    _check_against(center_cluster_loss, _center_cluster_loop, features, labels, 0.7)
    # the push term must be active for at least one pair, or the test is vacuous
    with torch.no_grad():
        centres = torch.stack([features[labels == y].mean(0) for y in (1, 3, 7, 9)])
        assert (torch.cdist(centres, centres) + torch.eye(4) * 10).min() < 0.7


@pytest.mark.parametrize(("p", "k", "seed"), [(8, 4, 0), (4, 3, 1), (5, 2, 2), (3, 1, 3)])
def test_center_cluster_push_rows_match_loops(p, k, seed):
    g = torch.Generator().manual_seed(seed)
    labels = _pk_labels(p, k, seed)
    features = torch.randn(len(labels), 6, generator=g) * 0.3
    ids = functools.partial(center_cluster_loss, push_rows="identities")
    released = functools.partial(center_cluster_loss, push_rows="released")
    _check_against(ids, _center_cluster_loop, features, labels, 0.7)
    _check_against(released, _center_cluster_released_loop, features, labels, 0.7)
    torch.testing.assert_close(center_cluster_loss(features, labels), ids(features, labels))
    # the two push terms differ (else the released-rows test is vacuous)
    assert abs(ids(features, labels).item() - released(features, labels).item()) > 1e-4


def test_center_cluster_released_rows_are_documented_ones():
    """P = 8, K = 4: rows 0, 8, ..., 56 are identities 0, 2, 4, 6 of the batch, each twice."""
    labels = _pk_labels(8, 4)
    order = labels[::4][:8].tolist()  # the batch's identities in order
    chosen = []
    _center_cluster_released_loop(torch.zeros(64, 2), labels, 0.7, chosen)
    assert chosen == [order[j] for j in (0, 2, 4, 6, 0, 2, 4, 6)]
    # by hand: features equal within an identity (pull term 0), every centre pair within the
    # margin; the push term averages rows 0, 2, 4, 6 of the centre-distance matrix
    centres = torch.randn(8, 3, generator=torch.Generator().manual_seed(0)) * 1e-3
    features = centres.repeat_interleave(4, dim=0).repeat(2, 1).requires_grad_()
    loss = center_cluster_loss(features, labels, push_rows="released")
    expected = 0.7 - torch.cdist(centres, centres)[[0, 2, 4, 6]]  # all pairs within margin
    expected = (expected.sum(1) - 0.7) / 7  # minus the zero-distance self term
    torch.testing.assert_close(loss, expected.mean(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="push_rows"):
        center_cluster_loss(features, labels, push_rows="rows")


def test_center_cluster_single_identity_and_singletons():
    features = torch.randn(4, 5, requires_grad=True)
    loss = center_cluster_loss(features, torch.tensor([2, 2, 2, 2]))
    expected = (features - features.mean(0)).norm(dim=1).mean()
    torch.testing.assert_close(loss, expected)
    loss = center_cluster_loss(features, torch.tensor([0, 1, 2, 3]), margin=1e6)
    loss.backward()  # singletons: zero intra distance must not give NaN gradients
    assert torch.isfinite(features.grad).all()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_triplet_matches_loop(seed):
    g = torch.Generator().manual_seed(seed)
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 5, 5])
    features = torch.randn(len(labels), 8, generator=g)
    _check_against(triplet_loss, _triplet_loop, features, labels, 0.3)
    _check_against(triplet_loss, _triplet_loop, features, labels, 5.0)


def test_triplet_no_negative_is_zero_with_grad():
    features = torch.randn(3, 4, requires_grad=True)
    loss = triplet_loss(features, torch.tensor([1, 1, 1]))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(features.grad).all()


def test_triplet_separated_clusters_give_zero():
    features = torch.tensor([[0.0, 0.0], [0.1, 0.0], [5.0, 0.0], [5.1, 0.0]])
    assert triplet_loss(features, torch.tensor([0, 0, 1, 1]), margin=0.3).item() == 0.0


def test_identity_loss_with_and_without_smoothing():
    logits = torch.randn(5, 4, requires_grad=True)
    targets = torch.tensor([0, 3, 1, 1, 2])
    for eps in (0.0, 0.1):
        expected = 0.0
        for i in range(5):
            logp = torch.log_softmax(logits[i], 0)
            expected = expected - (1 - eps) * logp[targets[i]] - eps * logp.mean()
        torch.testing.assert_close(identity_loss(logits, targets, eps), expected / 5)
    half = identity_loss(logits.half(), targets)
    assert half.dtype == torch.float32 and math.isfinite(half.item())
