"""The package imports in the order data moves: data → models → losses → engine → evaluation."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def _loaded_after(module: str) -> list[str]:
    """dclnet modules a fresh interpreter holds after importing ``module``."""
    code = (
        f"import json, sys, {module}; "
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('dclnet.'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=120
    )
    return json.loads(out.stdout)


@pytest.mark.parametrize(
    ("module", "forbidden"),
    [
        ("dclnet.data.datasets", ("dclnet.evaluation", "dclnet.engine", "dclnet.models")),
        ("dclnet.data.splits", ("dclnet.evaluation", "dclnet.engine")),
        ("dclnet.evaluation.run", ("dclnet.engine",)),
        ("dclnet.evaluation.extract", ("dclnet.engine",)),
    ],
)
def test_no_import_against_the_flow(module, forbidden):
    loaded = _loaded_after(module)
    assert module in loaded  # the probe itself worked
    against = [m for m in loaded if m.startswith(forbidden)]
    assert against == [], f"{module} pulls in {against}"


def test_moved_names_still_import():
    from dclnet.data import splits
    from dclnet.engine import distributed
    from dclnet.evaluation import splits as old_splits

    for name in old_splits.__all__:
        assert getattr(old_splits, name) is getattr(splits, name), name
    import dclnet.process_group as pg

    for name in ("rank", "world_size", "barrier", "shard_range", "all_gather_rows"):
        assert getattr(distributed, name) is getattr(pg, name), name
    assert distributed.shard_range(5) == (0, 5, 5)  # no process group: everything is one share
