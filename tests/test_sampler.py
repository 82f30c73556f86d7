import itertools
import logging

import numpy as np
import pytest

from dclnet.data.sampler import CrossModalitySampler
from dclnet.errors import CheckpointError, DataError


def make_labels(num_ids=12, seed=0):
    """Uneven visible/infrared label vectors in shuffled order (like a real list file)."""
    rng = np.random.default_rng(seed)
    vis = np.repeat(np.arange(num_ids), rng.integers(1, 9, num_ids))
    ir = np.repeat(np.arange(num_ids), rng.integers(1, 5, num_ids))
    return rng.permutation(vis), rng.permutation(ir)


def batches(sampler):
    return [(v.copy(), i.copy()) for v, i in sampler]


def test_batches_are_aligned_pk_blocks():
    vis_labels, ir_labels = make_labels()
    p, k = 5, 3
    sampler = CrossModalitySampler(vis_labels, ir_labels, num_ids=p, num_instances=k, seed=3)
    out = batches(sampler)
    assert len(out) == len(sampler) > 0
    for vis, ir in out:
        assert vis.dtype == np.int64 and ir.dtype == np.int64
        assert vis.shape == ir.shape == (p * k,)
        assert vis.min() >= 0 and vis.max() < len(vis_labels)
        assert ir.min() >= 0 and ir.max() < len(ir_labels)
        lv, li = vis_labels[vis], ir_labels[ir]
        np.testing.assert_array_equal(lv, li)  # position-wise pairing
        blocks = lv.reshape(p, k)  # identity-major layout
        assert (blocks == blocks[:, :1]).all()
        assert len(np.unique(blocks[:, 0])) == p  # P distinct identities


def test_draws_reach_every_image():
    # Draws must reach the whole index table of each identity, not just a prefix of it.
    vis = np.array([0] * 10 + [1] * 3 + [2] * 10)
    ir = np.array([2] * 7 + [1] * 7 + [0] * 1)
    sampler = CrossModalitySampler(vis, ir, num_ids=2, num_instances=4, seed=0)
    drawn = [sampler.epoch_batches(epoch) for epoch in range(40)]
    v = np.concatenate([d[0] for d in drawn])
    i = np.concatenate([d[1] for d in drawn])
    np.testing.assert_array_equal(vis[v], ir[i])
    assert set(np.unique(v)) == set(range(len(vis)))
    assert set(np.unique(i)) == set(range(len(ir)))


@pytest.mark.parametrize(
    ("n_vis", "n_ir", "p", "k", "world", "expected_total"),
    [(100, 60, 4, 4, 1, 7), (96, 96, 4, 4, 1, 6), (97, 10, 4, 4, 1, 7), (100, 60, 4, 4, 3, 7)],
)
def test_epoch_length(n_vis, n_ir, p, k, world, expected_total):
    vis = np.arange(n_vis) % 5
    ir = np.arange(n_ir) % 5
    sampler = CrossModalitySampler(vis, ir, num_ids=p, num_instances=k, world_size=world)
    assert sampler.total_batches == expected_total
    assert len(sampler) == -(-expected_total // world)
    assert len(batches(sampler)) == len(sampler)


def test_same_seed_same_batches_and_epochs_differ():
    vis_labels, ir_labels = make_labels()
    a = CrossModalitySampler(vis_labels, ir_labels, num_ids=4, seed=7)
    b = CrossModalitySampler(vis_labels, ir_labels, num_ids=4, seed=7)
    c = CrossModalitySampler(vis_labels, ir_labels, num_ids=4, seed=8)
    first = batches(a)
    assert all(
        np.array_equal(x[0], y[0]) and np.array_equal(x[1], y[1]) for x, y in zip(first, batches(b))
    )
    assert not np.array_equal(np.stack([x[0] for x in first]), np.stack([x[0] for x in batches(c)]))
    # Iterating again without set_epoch repeats the epoch; a new epoch differs.
    again = batches(a)
    assert all(np.array_equal(x[0], y[0]) for x, y in zip(first, again))
    a.set_epoch(1)
    assert not np.array_equal(np.stack([x[0] for x in first]), np.stack([x[0] for x in batches(a)]))


def test_ranks_get_different_streams():
    vis_labels, ir_labels = make_labels(num_ids=30)
    samplers = [
        CrossModalitySampler(vis_labels, ir_labels, num_ids=4, rank=r, world_size=3)
        for r in range(3)
    ]
    streams = [np.stack([v for v, _ in s]) for s in samplers]
    assert all(len(s) == len(samplers[0]) for s in samplers)
    for x, y in itertools.combinations(streams, 2):
        # No batch of one rank appears in another's stream.
        rows_x = {tuple(r) for r in x}
        assert not rows_x & {tuple(r) for r in y}


def test_resume_mid_epoch_continues_the_stream():
    vis_labels, ir_labels = make_labels()
    kwargs = dict(num_ids=4, num_instances=2, seed=11)
    reference = CrossModalitySampler(vis_labels, ir_labels, **kwargs)
    full = []
    for epoch in range(3):
        reference.set_epoch(epoch)
        full += batches(reference)

    run = CrossModalitySampler(vis_labels, ir_labels, **kwargs)
    run.set_epoch(0)
    got = batches(run)
    run.set_epoch(1)
    it = iter(run)
    got += [tuple(a.copy() for a in next(it)) for _ in range(3)]
    state = run.state_dict()
    assert state["epoch"] == 1 and state["position"] == 3

    resumed = CrossModalitySampler(vis_labels, ir_labels, **kwargs)
    resumed.load_state_dict(state)
    resumed.set_epoch(1)  # the trainer calls this again after resuming: must not rewind
    got += batches(resumed)
    assert resumed.state_dict()["position"] == 0  # finished epoch rewinds for a repeat
    resumed.set_epoch(2)
    got += batches(resumed)

    assert len(got) == len(full)
    for (v1, i1), (v2, i2) in zip(got, full):
        np.testing.assert_array_equal(v1, v2)
        np.testing.assert_array_equal(i1, i2)


def test_load_state_rejects_mismatched_settings():
    vis_labels, ir_labels = make_labels()
    state = CrossModalitySampler(vis_labels, ir_labels, num_ids=4).state_dict()
    other = CrossModalitySampler(vis_labels, ir_labels, num_ids=3)
    with pytest.raises(CheckpointError, match="num_ids=4"):
        other.load_state_dict(state)
    same = CrossModalitySampler(vis_labels, ir_labels, num_ids=4)
    with pytest.raises(CheckpointError, match="position"):
        same.load_state_dict({**state, "position": len(same) + 1})


def test_single_modality_identities_are_excluded(caplog):
    vis = np.array([0, 0, 1, 1, 2, 2, 7, 7, 7])  # 7 only visible
    ir = np.array([0, 1, 2, 2, 9, 9, 8])  # 8, 9 only infrared
    with caplog.at_level(logging.WARNING, logger="dclnet.data.sampler"):
        sampler = CrossModalitySampler(vis, ir, num_ids=3, num_instances=2)
    assert "3 identities appear in only one modality" in caplog.text
    np.testing.assert_array_equal(sampler.identities, [0, 1, 2])
    v, i = sampler.epoch_batches(0)
    assert set(vis[v].ravel()) == {0, 1, 2}
    assert set(ir[i].ravel()) == {0, 1, 2}


def test_too_few_shared_identities_is_a_one_line_error():
    vis = np.array([0, 1, 2, 3])
    ir = np.array([0, 1, 5])
    with pytest.raises(DataError) as err:
        CrossModalitySampler(vis, ir, num_ids=3)
    message = str(err.value)
    assert "\n" not in message
    assert "only 2 identities" in message and "num_ids=3" in message and "lower num_ids" in message


def test_invalid_arguments():
    vis, ir = make_labels()
    with pytest.raises(ValueError):
        CrossModalitySampler(vis, ir, rank=2, world_size=2)
    with pytest.raises(ValueError):
        CrossModalitySampler(vis, ir, num_instances=0)
    with pytest.raises(DataError):
        CrossModalitySampler(vis.astype(float), ir)
