"""A validation split keeps the training arrays memory-mapped: index arrays, no copy."""

from __future__ import annotations

import numpy as np
import pytest

from dclnet.data.datasets import load_train_data
from dclnet.data.records import ImageSet
from dclnet.data.sampler import CrossModalitySampler
from dclnet.data.sources.synthetic import write_sysu
from dclnet.engine.step import BatchPrefetcher


@pytest.fixture(scope="module")
def sysu(tmp_path_factory):
    root = write_sysu(tmp_path_factory.mktemp("sysu"), num_ids=12, height=32, width=16)
    return root, tmp_path_factory.mktemp("cache")


def _load(sysu, validation):
    root, cache = sysu
    kwargs = dict(size=(32, 16), cache_dir=cache, progress=False, val_fraction=0.25, seed=3)
    return load_train_data("sysu", root, validation=validation, **kwargs)


@pytest.mark.parametrize("validation", ["sysu", "fraction"])
def test_training_arrays_stay_memmap_views_and_give_the_same_batches(sysu, validation):
    full, data = _load(sysu, "none"), _load(sysu, validation)
    assert data.validation is not None
    for whole, part in ((full.visible, data.visible), (full.infrared, data.infrared)):
        # Still the cache's memory map itself: no training image was copied into memory.
        assert isinstance(part.images, np.memmap) and part.images.shape == whole.images.shape
        assert part.rows is not None and len(part.rows) == len(part) < len(whole)
        # Row i of the set is the image of its path in the whole set.
        row_of = {p: i for i, p in enumerate(whole.paths)}
        assert part.rows.tolist() == [row_of[p] for p in part.paths]
        assert np.array_equal(part.take(np.arange(len(part))), whole.take(part.rows))
        held = set(data.validation.paths)
        assert held.isdisjoint(part.paths)
    # The batches: what the copying hold-out gave, i.e. the images of the kept rows.
    copied = [s.subset(np.arange(len(s))) for s in (data.visible, data.infrared)]
    assert copied[0].rows is None and not isinstance(copied[0].images, np.memmap)
    sampler = CrossModalitySampler(data.visible.labels, data.infrared.labels, num_ids=2)
    vis_batches, ir_batches = sampler.epoch_batches(0)
    batches = list(zip(vis_batches, ir_batches))
    for (vis_idx, ir_idx), (vis, ir, labels) in zip(
        batches, BatchPrefetcher(data, batches, pin=False, workers=2)
    ):
        assert np.array_equal(vis.numpy(), copied[0].images[vis_idx])
        assert np.array_equal(ir.numpy(), copied[1].images[ir_idx])
        assert np.array_equal(labels.numpy(), data.visible.labels[vis_idx])
        assert np.array_equal(labels.numpy(), data.infrared.labels[ir_idx])


def test_subset_of_a_view_composes_rows():
    images = np.arange(10 * 2 * 1 * 3, dtype=np.uint8).reshape(10, 2, 1, 3)
    base = ImageSet(
        images, np.arange(10), np.ones(10, np.int64), [str(i) for i in range(10)], "visible"
    )
    view = base.subset(np.array([8, 2, 5, 7]), copy=False).subset(np.array([3, 0]), copy=False)
    assert view.images is images and view.rows.tolist() == [7, 8]
    assert view.paths == ["7", "8"] and np.array_equal(view.take([1, 0]), images[[8, 7]])
    copied = view.subset(np.array([1]))
    assert copied.rows is None and np.array_equal(copied.images, images[[8]])
