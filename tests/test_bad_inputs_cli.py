"""Bad command lines and faulty disks get one clear error before any work (issue 9): output
paths and full disks, file modes under the umask, ``--device`` and ``eval.*``.

Every case runs ``dclnet.cli.main`` in-process (or the library call) and checks the exit
status, one ``error:`` line naming the file or key and no traceback.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import shutil
import typing
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from _bad_input_data import evaluate_argv, good_features
from _faults import full_disk, one_error_line, one_line
from _inference_fixtures import make_checkpoint

from dclnet import fileio
from dclnet.cli import main
from dclnet.config import Config
from dclnet.errors import ConfigError, OutputError
from dclnet.evaluation.protocols import save_features_npz

TINY = Path(__file__).resolve().parents[1] / "src" / "dclnet" / "configs" / "tiny.yaml"

# 1. Output paths and full disks -------------------------------------------------------------


@pytest.fixture
def places(tmp_path) -> SimpleNamespace:
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("mine")
    return SimpleNamespace(dir=tmp_path / "adir", file=tmp_path / "afile")


def _output_argv(option: str, target: Path, tmp_path: Path, sysu_root: Path) -> list[str]:
    missing = str(tmp_path / "no.pt")  # the path is refused before anything is loaded
    search = ["search", "--checkpoint", missing, "--gallery", "g", "--query", "q"]
    return {
        "evaluate --json": evaluate_argv("sysu", sysu_root, tmp_path / "no.npz", "--json"),
        "search --csv": [*search, "--csv"],
        "search --json": [*search, "--json"],
        "train --output": ["train", "--config", str(TINY), "--output"],
        "export --output": ["export", "--checkpoint", missing, "--modality", "visible"]
        + ["--format", "onnx", "--output"],
        "visualize --output": ["visualize", "curves", "--run", str(tmp_path), "--output"],
    }[option] + [str(target)]


OUTPUT_CASES = [  # (option, where, needle): where = dir, file, or under (a path below a file)
    ("evaluate --json", "dir", "{dir}: is a directory; give a file name"),
    ("evaluate --json", "under", "{file}/out: cannot be written, {file} is a file"),
    ("search --csv", "dir", "{dir}: is a directory"),
    ("search --json", "under", "{file}/out: cannot be written, {file} is a file"),
    ("train --output", "file", "{file}: is a file; give a folder"),
    ("train --output", "under", "{file}/out: cannot be written, {file} is a file"),
    ("export --output", "dir", "{dir}: is a directory"),
    ("visualize --output", "under", "{file}/out: cannot be written"),
]


@pytest.mark.parametrize(
    "option, where, needle", OUTPUT_CASES, ids=[f"{c[0]} {c[1]}" for c in OUTPUT_CASES]
)
def test_output_path(option, where, needle, places, sysu_root, tmp_path, capsys):
    target = {"dir": places.dir, "file": places.file, "under": places.file / "out"}[where]
    status = main(_output_argv(option, target, tmp_path, sysu_root))
    one_error_line(capsys, status, needle.format(dir=places.dir, file=places.file))
    assert places.file.read_text() == "mine" and list(places.dir.iterdir()) == []


def _left_files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def test_full_disk_while_saving_a_checkpoint(tmp_path, monkeypatch):
    from dclnet.engine.checkpoint import load_checkpoint, save_checkpoint

    path = make_checkpoint(tmp_path / "last.pt")
    before = path.read_bytes()
    full_disk(monkeypatch, room=4096)  # torch reports this as "unexpected pos"
    with pytest.raises(OutputError) as info:
        save_checkpoint({"model": {"w": torch.zeros(100_000)}, "model_args": {}}, path)
    one_line(info.value, f"{tmp_path}: no space left on the device while writing last.pt")
    assert path.read_bytes() == before and _left_files(tmp_path) == {"last.pt"}
    monkeypatch.undo()
    load_checkpoint(path)  # the previous checkpoint is intact


def test_full_disk_on_the_command_line(sysu_root, tmp_path, monkeypatch, capsys):
    features = good_features("sysu", sysu_root, tmp_path / "f.npz")
    full_disk(monkeypatch)
    status = main(evaluate_argv("sysu", sysu_root, features, "--json", str(tmp_path / "r.json")))
    needle = f"{tmp_path}: no space left on the device while writing r.json"
    one_error_line(capsys, status, needle)  # (the table went to stdout before the write)
    assert _left_files(tmp_path) == {"f.npz"}


def test_cache_checks_free_space_before_its_memory_map(sysu_root, tmp_path, monkeypatch):
    from dclnet.data.cache import build_cache
    from dclnet.data.sources import sysu

    records = sysu.train_records(sysu_root)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(
        fileio.shutil,
        "disk_usage",
        lambda p: usage._replace(free=1000),  # a nearly full disk
    )
    with pytest.raises(OutputError) as info:
        build_cache(sysu_root, records, size=(32, 16), cache_dir=tmp_path / "c", progress=False)
    needed = len(records) * 32 * 16 * 3 + 4096
    one_line(info.value, f"images.npy of images needs {needed} bytes but only 1000 are free")
    (folder,) = (tmp_path / "c").iterdir()
    assert str(info.value).startswith(f"{folder}: ") and "data.cache_dir" in str(info.value)
    assert _left_files(folder) == {".lock"}  # no array, no meta.json: nothing half-built


def test_full_disk_while_writing_cache_metadata(sysu_root, tmp_path, monkeypatch):
    from dclnet.data import cache as cache_mod
    from dclnet.data.sources import sysu

    records = sysu.train_records(sysu_root)[:5]
    full_disk(monkeypatch)
    with pytest.raises(OutputError) as info:
        cache_mod.build_cache(sysu_root, records, size=(32, 16), cache_dir=tmp_path, progress=False)
    one_line(info.value, "no space left on the device while writing meta.json")
    monkeypatch.undo()  # the next run rebuilds: no meta.json was left to trust
    (folder,) = tmp_path.iterdir()
    assert "meta.json" not in _left_files(folder)
    assert (
        len(
            cache_mod.build_cache(
                sysu_root, records, size=(32, 16), cache_dir=tmp_path, progress=False
            )
        )
        == 5
    )


# 2. Files written by dclnet respect the umask -----------------------------------------------


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield
    os.umask(old)


def test_written_files_follow_the_umask(umask_027, tmp_path, sysu_root):
    from dclnet.config import save_config
    from dclnet.data.cache import build_cache
    from dclnet.data.sources import sysu
    from dclnet.engine.checkpoint import save_checkpoint
    from dclnet.evaluation.protocols import write_json

    assert fileio.current_umask() == 0o027
    save_config(Config(), tmp_path / "config.yaml")
    write_json({"a": 1}, tmp_path / "r.json")
    save_features_npz(tmp_path / "f.npz", ["a"], np.zeros((1, 2), np.float32))
    save_checkpoint({"model": {}, "model_args": {}}, tmp_path / "last.pt")
    cache = build_cache(
        sysu_root,
        sysu.train_records(sysu_root)[:3],
        size=(8, 8),
        cache_dir=tmp_path / "c",
        progress=False,
    )
    files = ["config.yaml", "r.json", "f.npz", "last.pt"]
    if importlib.util.find_spec("matplotlib") is not None:  # the viz extra
        from dclnet.inference.visualize import new_figure, save_figure

        save_figure(new_figure(1, 1), tmp_path / "fig.png")
        files.append("fig.png")
    modes = {name: oct(os.stat(tmp_path / name).st_mode & 0o777) for name in files}
    for name in ("meta.json", "images.npy"):
        modes[name] = oct(os.stat(cache.directory / name).st_mode & 0o777)
    assert set(modes.values()) == {"0o640"}, modes
    assert oct(os.stat(cache.directory).st_mode & 0o777) == "0o750"
    assert fileio.file_mode() == 0o640 and fileio.dir_mode() == 0o750


# 3. --device and eval.* before any work -----------------------------------------------------


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["test", "--dataset", "sysu", "--device", "gpu"], "--device has invalid value 'gpu'"),
        (["test", "--dataset", "sysu", "--device", "cuda:x"], "--device has invalid value"),
        (["diagnose", "--device", "GPU0"], "--device has invalid value 'GPU0'"),
        (["search", "--gallery", "g", "--query", "q", "--device", "tpu"], "valid: auto, cpu"),
        (["test", "--dataset", "sysu", "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    ],
    ids=["test gpu", "test cuda:x", "diagnose GPU0", "search tpu", "test batch 0"],
)
def test_command_options_checked_first(argv, needle, tmp_path, capsys):
    argv = [argv[0], "--checkpoint", str(tmp_path / "missing.pt"), *argv[1:]]
    status = main(argv)
    one_error_line(capsys, status, needle)


def test_device_index_beyond_the_machine():
    from dclnet.engine.build import resolve_device

    with pytest.raises(ConfigError) as info:
        resolve_device(f"cuda:{max(torch.cuda.device_count(), 1) + 7}", "--device")
    one_line(info.value, "--device='cuda:")


@pytest.mark.parametrize(
    "override, needle",
    [
        ("eval.direction=v2t", "config key 'eval.direction': invalid protocol direction 'v2t'"),
        ("eval.mode=indoor", "config key 'eval.mode': invalid protocol mode 'indoor' for regdb"),
        ("eval.shots=10", "config key 'eval.shots': invalid protocol shots 10 for llcm"),
        ("eval.sampler=official", "config key 'eval.sampler': invalid protocol sampler"),
        ("eval.batch_size=0", "config key 'eval.batch_size' = 0 is out of range"),
        ("eval.trials=0", "config key 'eval.trials' = 0 is out of range"),
    ],
)
def test_eval_settings_fail_before_training(override, needle, tmp_path, capsys):
    dataset = {"eval.direction": "sysu", "eval.mode": "regdb", "eval.shots": "llcm"}.get(
        override.split("=")[0], "regdb"
    )
    (tmp_path / "data").mkdir()  # empty: loading it would fail with another message
    argv = ["train", "--config", str(TINY), "--dataset", dataset, "--root", str(tmp_path / "data")]
    status = main([*argv, "--output", str(tmp_path / "run"), override])
    one_error_line(capsys, status, needle)
    assert not (tmp_path / "run").exists()  # refused before the run folder was claimed


def test_every_eval_field_is_validated():
    from dclnet import config as config_mod
    from dclnet.config import EvalConfig

    hints = typing.get_type_hints(EvalConfig)
    unchecked = [
        f.name
        for f in dataclasses.fields(EvalConfig)
        if hints[f.name] is not bool
        and f"eval.{f.name}" not in config_mod._RANGES
        and f"eval.{f.name}" not in config_mod._CHOICES
    ]
    assert unchecked == []
