"""RegDB ``--trial all``: ten tiny models, and finished trials keep model-only checkpoints."""

import json
from pathlib import Path

import pytest

from dclnet.cli import main
from dclnet.data.sources.synthetic import write_regdb
from dclnet.engine.checkpoint import load_checkpoint, save_checkpoint

TINY = Path(__file__).resolve().parents[1] / "src" / "dclnet" / "configs" / "tiny.yaml"
RESUME_ONLY = {"optimizer", "scheduler", "scaler", "rng"}
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # ten trainings: about a minute


def _model_bytes(state: dict) -> int:
    return sum(t.numel() * t.element_size() for t in state["model"].values())


@pytest.fixture(scope="module")
def all_trials(tmp_path_factory):
    base = tmp_path_factory.mktemp("regdb")
    root = write_regdb(base / "data", num_ids=8, height=32, width=16, images_per_modality=2)
    out, cache = base / "run", base / "cache"
    argv = ["train", "--dataset", "regdb", "--root", str(root), "--config", str(TINY),
            "--trial", "all", "--output", str(out), "optim.epochs=1", "data.height=32",
            "data.width=16", f"data.cache_dir={cache}"]  # fmt: skip
    assert main(argv) == 0
    return root, out, cache


def test_finished_trials_keep_only_the_model(all_trials):
    _, out, _ = all_trials
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["trials"]) == 10
    for t in range(1, 11):
        path = out / f"trial{t}" / "last.pt"
        state = load_checkpoint(path)
        assert not RESUME_ONLY & set(state), (t, sorted(state))
        assert {"model", "model_args", "config", "preprocessing", "epoch"} <= set(state)
        # Adam keeps two moments per parameter: a full checkpoint is about 3x the weights.
        assert path.stat().st_size < 1.2 * _model_bytes(state)


def test_a_slim_checkpoint_tests_like_the_trained_model(all_trials, tmp_path):
    root, out, cache = all_trials
    trained = json.loads((out / "trial3" / "test_results.json").read_text())
    result = tmp_path / "t3.json"
    argv = ["test", "--checkpoint", str(out / "trial3" / "last.pt"), "--dataset", "regdb",
            "--root", str(root), "--trial", "3", "--cache-dir", str(cache), "--device", "cpu",
            "--json", str(result)]  # fmt: skip
    assert main(argv) == 0
    assert json.loads(result.read_text())["mean"] == pytest.approx(trained["mean"])


def test_a_rerun_slims_a_finished_trial_left_full(all_trials):
    _, out, _ = all_trials
    path = out / "trial2" / "last.pt"
    state = load_checkpoint(path)
    # As if the run had stopped between the trial's end and the slimming.
    save_checkpoint({**state, "optimizer": {"state": {}, "param_groups": []}}, path)
    assert "optimizer" in load_checkpoint(path)
    argv = ["train", "--dataset", "regdb", "--trial", "all", "--output", str(out), "--resume"]
    assert main(argv) == 0  # every trial finished: nothing is trained again
    slim = load_checkpoint(path)
    assert "optimizer" not in slim and slim["epoch"] == state["epoch"]
