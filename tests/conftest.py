"""Fixtures shared by the bad-input and nothing-lost test modules: small SYSU-MM01 and RegDB
trees on disk (copied where a case changes them), and a checkpoint with a gallery, queries and
its embedder. Module-scoped: each test module builds its own."""

from __future__ import annotations

from pathlib import Path

import pytest
from _inference_fixtures import make_checkpoint, write_sysu_images

from dclnet.data.sources.synthetic import write_regdb, write_sysu


@pytest.fixture(scope="module")
def sysu_root(tmp_path_factory) -> Path:
    return write_sysu(tmp_path_factory.mktemp("sysu"), num_ids=12, height=32, width=16)


@pytest.fixture(scope="module")
def regdb_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("regdb")
    return write_regdb(root, num_ids=8, height=32, width=16, images_per_modality=3)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("world")
    return {
        "ckpt": make_checkpoint(base / "model.pt"),
        "gallery": write_sysu_images(base / "gallery", "visible"),
        "queries": write_sysu_images(base / "queries", "infrared", limit=2),
        "base": base,
    }


@pytest.fixture(scope="module")
def embedder(world):
    from dclnet.inference.api import Embedder

    return Embedder.from_checkpoint(world["ckpt"], "cpu")
