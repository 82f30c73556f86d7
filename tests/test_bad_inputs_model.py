"""Bad model inputs get one clear error (issue 9): the embedding API, crafted checkpoints
and resume overrides.

Command-line cases check the exit status, one ``error:`` line and no traceback; library
cases the error class and a one-line message.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from _faults import one_error_line, one_line
from _inference_fixtures import HEIGHT, WIDTH, make_checkpoint, tiny_model
from PIL import Image

from dclnet.cli import main
from dclnet.config import load_config
from dclnet.errors import CheckpointError, DataError, TrainingError

TINY = Path(__file__).resolve().parents[1] / "src" / "dclnet" / "configs" / "tiny.yaml"

# 1. The embedding API -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def embedder(tmp_path_factory):
    from dclnet.inference.api import Embedder

    return Embedder.from_checkpoint(make_checkpoint(tmp_path_factory.mktemp("ck") / "m.pt"), "cpu")


def _api_input(case: str):
    if case == "nan tensor":
        x = torch.zeros(3, 3, HEIGHT, WIDTH)
        x[2, 1, 5, 5] = float("nan")
        return x
    if case == "inf tensor":
        x = torch.zeros(2, 3, HEIGHT, WIDTH)
        x[0] = float("inf")
        return x
    if case == "zero images (array)":
        return np.zeros((0, 80, 40, 3), np.uint8)
    if case == "zero images (tensor)":
        return torch.zeros(0, 3, HEIGHT, WIDTH)
    if case == "zero-height array":
        return np.zeros((2, 0, 40, 3), np.uint8)
    if case == "zero-size image in a list":
        return [np.zeros((64, 32, 3), np.uint8), np.zeros((0, 0, 3), np.uint8)]
    assert case == "zero-size PIL image"
    return [Image.new("RGB", (0, 0))]


API_CASES = [
    ("nan tensor", "NaN or infinity in image 2"),
    ("inf tensor", "NaN or infinity in image 0"),
    ("zero images (array)", "no images given"),
    ("zero images (tensor)", "no images given"),
    ("zero-height array", "input 0: ndarray of shape (0, 40, 3)"),
    ("zero-size image in a list", "input 1: ndarray of shape (0, 0, 3)"),
    ("zero-size PIL image", "input 0: PIL image of size (0, 0) has no pixels"),
]


@pytest.mark.parametrize("case, needle", API_CASES, ids=[c for c, _ in API_CASES])
def test_embed_refuses(case, needle, embedder):
    with pytest.raises(DataError) as info:
        embedder.embed(_api_input(case), "visible", batch_size=2)
    one_line(info.value, needle)


def test_embed_refuses_nan_embeddings_of_nan_weights(tmp_path):
    from dclnet.inference.api import Embedder

    model = tiny_model()
    with torch.no_grad():
        model.bnneck.weight.fill_(float("nan"))
    path = make_checkpoint(tmp_path / "nan.pt", model=model)
    embedder = Embedder.from_checkpoint(path, "cpu")
    with pytest.raises(CheckpointError) as info:
        embedder.embed(np.zeros((2, HEIGHT, WIDTH, 3), np.uint8), "infrared")
    one_line(info.value, f"{path}: the embedding of input 0 is NaN")


# 2. Crafted checkpoints, resume overrides ---------------------------------------------------


@pytest.fixture(scope="module")
def good_state(tmp_path_factory) -> dict:
    return torch.load(make_checkpoint(tmp_path_factory.mktemp("ck") / "m.pt"), weights_only=True)


class _Code:
    def __reduce__(self):
        return (print, ("this must never run",))


def _crafted(state: dict, case: str) -> dict:
    state = dict(state)
    first = next(iter(state["model"]))
    changes = {
        "format_version str": {"format_version": "2"},
        "format_version list": {"format_version": [1]},
        "model_args list": {"model_args": [1, 2]},
        "model_args split str": {"model_args": {**state["model_args"], "split": "two"}},
        "model_args unknown arch": {"model_args": {**state["model_args"], "arch": "resnet9"}},
        "model list": {"model": [1]},
        "model value int": {"model": {**state["model"], first: 3}},
        "preprocessing list": {"preprocessing": [1]},
        "preprocessing height 0": {"preprocessing": {**state["preprocessing"], "height": 0}},
        "preprocessing std negative": {
            "preprocessing": {**state["preprocessing"], "std": [1, -1, 1]}
        },
        "config list": {"config": [1]},
        "config section list": {"config": {**state["config"], "data": [1]}},
        "config value type": {"config": {**state["config"], "data": {"synthetic_ids": "many"}}},
        "num_classes str": {"num_classes": "5"},
    }[case]
    state.update(changes)
    return state


CHECKPOINT_CASES = [
    ("format_version str", "field 'format_version' must be an integer, got '2'"),
    ("format_version list", "field 'format_version' must be an integer, got list"),
    ("model_args list", "field 'model_args' must be a mapping"),
    ("model_args split str", "field 'model_args.split' must be an integer, got 'two'"),
    ("model_args unknown arch", "field 'model_args' does not build a DCLNet (unknown backbone"),
    ("model list", "field 'model' must be a mapping of parameter names to tensors"),
    ("model value int", "field \"model['visible.conv1.weight']\" must be a tensor, got 3"),
    ("preprocessing list", "field 'preprocessing' must be a mapping"),
    ("preprocessing height 0", "field 'preprocessing.height' must be an integer >= 1, got 0"),
    ("preprocessing std negative", "field 'preprocessing.std' must be 3 positive numbers"),
    ("config list", "field 'config' must be a mapping of sections"),
    ("config section list", "field 'config.data' must be a mapping of keys"),
    ("config value type", "field 'config': config key 'data.synthetic_ids' expects int"),
    ("num_classes str", "field 'num_classes' must be an integer >= 0, got '5'"),
]


@pytest.mark.parametrize("command", ["test", "diagnose"])
@pytest.mark.parametrize("case, needle", CHECKPOINT_CASES, ids=[c for c, _ in CHECKPOINT_CASES])
def test_crafted_checkpoint(case, needle, command, good_state, sysu_root, tmp_path, capsys):
    path = tmp_path / "crafted.pt"
    torch.save(_crafted(good_state, case), path)
    argv = {
        "test": ["test", "--checkpoint", str(path), "--dataset", "sysu", "--root", str(sysu_root)],
        "diagnose": ["diagnose", "--checkpoint", str(path)],
    }[command]
    status = main([*argv, "--device", "cpu"])
    one_error_line(capsys, status, f"checkpoint {path}: {needle}")


@pytest.mark.parametrize("case", ["pickled code", "truncated", "empty"])
def test_unloadable_checkpoint(case, good_state, tmp_path, capsys):
    path = tmp_path / "bad.pt"
    if case == "pickled code":
        torch.save({"format": "dclnet-checkpoint", "payload": _Code()}, path)
        needle = f"{path} is not a weights-only dclnet checkpoint (it holds the Python object "
    else:
        torch.save(good_state, path)
        path.write_bytes(b"" if case == "empty" else path.read_bytes()[:2000])
        needle = f"cannot load checkpoint {path}: the file is corrupt or truncated"
    status = main(["diagnose", "--checkpoint", str(path), "--device", "cpu"])
    line = one_error_line(capsys, status, needle)
    out = capsys.readouterr().out
    assert "this must never run" not in out and "weights_only=False" not in line
    if case == "pickled code":
        assert line.endswith("dclnet never unpickles code, so it does not load this file")


def _run_folder(tmp_path: Path) -> Path:
    """A run folder as a finished epoch leaves it (config.yaml, last.pt) for the TINY recipe."""
    from dclnet.config import save_config
    from dclnet.engine.checkpoint import save_checkpoint
    from dclnet.engine.run_state import checkpoint_state

    cfg = load_config(TINY)
    run = tmp_path / "run"
    run.mkdir()
    save_config(cfg, run / "config.yaml")
    model = tiny_model()
    state = checkpoint_state(cfg, model, SimpleNamespace(num_classes=5))
    save_checkpoint(
        {**state, "epoch": 1, "optimizer": {}, "scheduler": {}, "rng": {}}, run / "last.pt"
    )
    return run


@pytest.mark.parametrize(
    "override, needle",
    [
        ("model.arch=resnet34", "--resume cannot change model.arch ('resnet18' in "),
        ("model.split=3", "--resume cannot change model.split (2 in "),
        ("loss.preset=baseline", "--resume cannot change loss.preset (None in "),
        ("loss.pap=0", "--resume cannot switch loss.pap off (1.0 in "),
        ("data.height=96", "--resume cannot change data.height (64 in "),
        ("optim.optimizer=sgd", "--resume cannot change optim.optimizer ('adam' in "),
    ],
)
def test_resume_cannot_change(override, needle, tmp_path, capsys):
    run = _run_folder(tmp_path)
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    status = main(["train", "--output", str(run), "--resume", override])
    line = one_error_line(capsys, status, needle)
    assert str(run / "last.pt") in line and "start a new run" in line
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before  # no work began


def test_resume_may_change_the_rest():
    from dclnet.config import to_dict
    from dclnet.engine.run_folder import check_resume_config

    saved = to_dict(load_config(TINY))
    changed = to_dict(load_config(TINY, ["optim.epochs=9", "optim.lr=1e-3", "loss.pap=0.5"]))
    check_resume_config(saved, changed, Path("last.pt"))
    older = {k: v for k, v in saved.items() if k != "model"}  # a checkpoint without the key
    check_resume_config(older, to_dict(load_config(TINY, ["model.split=3"])), Path("last.pt"))
    with pytest.raises(TrainingError):
        check_resume_config(saved, to_dict(load_config(TINY, ["model.split=3"])), Path("x"))
