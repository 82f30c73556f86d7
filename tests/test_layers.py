"""The package's layers import only downwards.

Every module under src/dclnet is parsed (``ast``): each ``import`` / ``from ... import``, at
module level or inside a function, must name a layer at or below the module's own. The order
(lowest first) is :data:`LAYERS`; a runtime probe of what a fresh interpreter loads backs it up.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "dclnet"

# Lowest first; a module may import its own layer and those before it. Facts behind the order:
# config lazily imports data.splits; models may import data; engine runs evaluation for a
# run's final test; inference serves engine-trained checkpoints; the benchmarks time engine
# and inference code; reporting formats the benchmarks' results; the CLI wires everything.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("dclnet", "dclnet.errors", "dclnet.fileio", "dclnet.process_group"),
    ("dclnet.data",),
    ("dclnet.config", "dclnet.config_load", "dclnet.config_keys"),
    ("dclnet.models",),
    ("dclnet.losses",),
    ("dclnet.evaluation",),
    ("dclnet.engine",),
    ("dclnet.inference",),
    ("dclnet.bench", "dclnet.benchmark"),
    ("dclnet.reporting",),
    ("dclnet.cli", "dclnet.cli_parser", "dclnet.cli_commands", "dclnet.__main__"),
)

# Named exceptions: (importing module, imported module) -> why it is not an upward dependency.
ALLOWED_UPWARD = {
    # `python -m dclnet.inference.serve` runs `dclnet serve`: the import sits under
    # `if __name__ == "__main__":`, an entry point that no library code reaches.
    ("dclnet.inference.serve", "dclnet.cli"): "entry point under if __name__ == '__main__'",
}


def layer_of(module: str) -> int:
    """Index in :data:`LAYERS` of a dclnet module (its longest listed prefix decides)."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        for index, names in enumerate(LAYERS):
            if prefix in names:
                return index
    raise AssertionError(f"{module} is in no layer of LAYERS: add it there")


def _module_name(path: Path) -> tuple[str, bool]:
    """Dotted name of a source file under the package, and whether it is a package."""
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def _is_module(name: str) -> bool:
    rel = Path(*name.split("."))
    return (PACKAGE.parent / rel).with_suffix(".py").is_file() or (
        PACKAGE.parent / rel / "__init__.py"
    ).is_file()


def imported_modules(path: Path) -> list[tuple[str, int]]:
    """Every dclnet module ``path`` imports, anywhere in the file, with its line number.

    ``from X import name`` counts as importing ``X.name`` when that is a module (e.g.
    ``from dclnet import cli``); relative imports are resolved against the file's package.
    """
    module, is_package = _module_name(path)
    here = module.split(".") if is_package else module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here[: len(here) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            names = [base] + [
                f"{base}.{alias.name}" for alias in node.names if _is_module(f"{base}.{alias.name}")
            ]
        else:
            continue
        found += [(n, node.lineno) for n in names if n == "dclnet" or n.startswith("dclnet.")]
    return found


def upward_imports() -> list[tuple[str, str, int]]:
    """``(module, imported module, line)`` for each import of a higher layer."""
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module, _ = _module_name(path)
        for target, line in imported_modules(path):
            if layer_of(target) > layer_of(module):
                bad.append((module, target, line))
    return bad


def test_no_module_imports_a_higher_layer():
    found = upward_imports()
    against = [f"{m} imports {t} (line {n})" for m, t, n in found if (m, t) not in ALLOWED_UPWARD]
    assert against == [], "imports against the layer order: " + "; ".join(against)
    unused = set(ALLOWED_UPWARD) - {(m, t) for m, t, _ in found}
    assert unused == set(), f"exceptions no longer needed, remove them: {sorted(unused)}"


def test_every_module_is_scanned_and_placed():
    modules = [_module_name(p)[0] for p in PACKAGE.rglob("*.py")]
    assert "dclnet.engine.diagnose_run" in modules and "dclnet.cli" in modules
    for module in modules:
        layer_of(module)  # raises for a module outside LAYERS
    # the scanner sees function-level imports too (the CLI's commands import the library lazily)
    targets = {t for t, _ in imported_modules(PACKAGE / "cli_commands.py")}
    assert {"dclnet.engine.runs", "dclnet.engine.diagnose_run"} <= targets


def test_upward_import_is_caught(tmp_path, monkeypatch):
    """A planted function-level upward import (data -> engine) is reported."""
    fake = tmp_path / "dclnet"
    (fake / "data").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "data" / "__init__.py").write_text("")
    (fake / "data" / "bad.py").write_text(
        "def f():\n    from dclnet.engine.runs import load_model\n    return load_model\n"
    )
    (fake / "data" / "rel.py").write_text("from ..evaluation import metrics\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    assert sorted(upward_imports()) == [
        ("dclnet.data.bad", "dclnet.engine.runs", 2),
        ("dclnet.data.rel", "dclnet.evaluation", 1),
    ]


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
