"""One mapping from a run config to its data: training, the final test, `dclnet test`, demo.

Also the rules every command shares: a RegDB run names its trial, and a weights problem
stops a run before any data is rendered or cached.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from dclnet.cli import main
from dclnet.config import load_config, to_dict
from dclnet.data.sources.synthetic import write_sysu
from dclnet.data.splits import ProtocolSettings, build_splits
from dclnet.engine import runs
from dclnet.engine import train as train_module
from dclnet.engine.checkpoint import load_checkpoint, save_checkpoint
from dclnet.engine.train import fit
from dclnet.errors import CheckpointError, ConfigError
from dclnet.models.dclnet import DCLNet
from dclnet.models.resnet import RandomInitWarning

TINY = Path(__file__).resolve().parents[1] / "src" / "dclnet" / "configs" / "tiny.yaml"


def _checkpoint(path: Path, overrides: list[str]) -> Path:
    """A checkpoint as `dclnet train` writes it, of an untrained tiny network (no training)."""
    cfg = load_config(TINY, overrides)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomInitWarning)
        model = DCLNet(4, arch="resnet18", pretrained=None).eval()
    state = {
        "model": model.state_dict(),
        "model_args": model.model_args(),
        "config": to_dict(cfg),
        "preprocessing": {"height": 64, "width": 32, "mean": [0.5] * 3, "std": [0.5] * 3},
        "num_classes": 4,
        "epoch": 1,
    }
    save_checkpoint(state, path)
    return path


@pytest.fixture(scope="module")
def sysu_with_a_broken_query(tmp_path_factory):
    """A SYSU-MM01 tree whose first query image is not an image any more."""
    root = write_sysu(tmp_path_factory.mktemp("sysu"), num_ids=12, height=64, width=32)
    broken = build_splits(ProtocolSettings("sysu", trials=2), root)[0].query[0].path
    (root / broken).write_bytes(b"not a jpeg")
    return root, broken


def _test_args(checkpoint: Path, root: Path, tmp_path: Path) -> list[str]:
    return [
        "test",
        "--checkpoint",
        str(checkpoint),
        "--dataset",
        "sysu",
        "--root",
        str(root),
        "--trials",
        "2",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--device",
        "cpu",
        "--json",
        str(tmp_path / "result.json"),
    ]


def test_dclnet_test_honours_the_checkpoints_skip_corrupt(
    tmp_path, sysu_with_a_broken_query, capsys
):
    root, broken = sysu_with_a_broken_query
    strict = _checkpoint(tmp_path / "strict.pt", [])
    assert main(_test_args(strict, root, tmp_path)) == 2
    assert Path(broken).name in capsys.readouterr().err  # the unreadable file is named
    lenient = _checkpoint(tmp_path / "lenient.pt", ["data.skip_corrupt=true"])
    assert main(_test_args(lenient, root, tmp_path)) == 0
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["protocol"]["skipped_images"] == 1  # the result says it is not exact
    assert len(result["trials"]) == 2


def test_checkpoint_test_config_takes_data_keys_from_the_run(tmp_path):
    path = _checkpoint(
        tmp_path / "c.pt",
        ["data.skip_corrupt=true", "data.verify_cache=hash", "data.cache_dir=/elsewhere"],
    )
    state = load_checkpoint(path)
    settings = ProtocolSettings("sysu", mode="indoor", trials=3, direction="v2i")
    cfg = runs.checkpoint_test_config(state, settings, root=tmp_path, cache_dir=None)
    assert (cfg.data.skip_corrupt, cfg.data.verify_cache) == (True, "hash")  # the run's
    assert (cfg.data.height, cfg.data.width) == (64, 32)  # its preprocessing
    assert cfg.data.cache_dir is None  # not the training machine's folder
    assert (cfg.data.dataset, cfg.data.root) == ("sysu", str(tmp_path))
    assert (cfg.eval.mode, cfg.eval.trials, cfg.eval.direction) == ("indoor", 3, "v2i")
    assert cfg.data.synthetic_ids == 16  # the tiny recipe's synthetic set


def _no_training(calls: list):
    def fake_fit(cfg, output, *, resume=False, overwrite=False, progress=True):
        calls.append(cfg.data.trial)
        return {"test": None, "validation": None}

    return fake_fit


def test_regdb_training_names_its_trial_like_test(tmp_path, monkeypatch, capsys):
    (tmp_path / "data").mkdir()
    calls: list = []
    monkeypatch.setattr(runs, "fit", _no_training(calls))
    kwargs = dict(config=TINY, dataset="regdb", root=tmp_path / "data", resume=False)
    with pytest.raises(ConfigError, match="RegDB needs --trial 1..10"):
        runs.run_training(overrides=None, trial=None, output=tmp_path / "a", **kwargs)
    runs.run_training(overrides=["data.trial=4"], trial=None, output=tmp_path / "b", **kwargs)
    runs.run_training(overrides=None, trial="7", output=tmp_path / "c", **kwargs)
    assert calls == [4, 7]
    # --resume reads the run's config.yaml, which names the trial
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "config.yaml").write_text("data:\n  dataset: regdb\n  trial: 5\n")
    runs.run_training(
        overrides=None, trial=None, output=tmp_path / "d", **{**kwargs, "resume": True}
    )
    assert calls == [4, 7, 5]
    # the command line: the same one-line error for `train` and `test`
    args = ["--dataset", "regdb", "--root", str(tmp_path / "data")]
    assert main(["train", *args, "--config", str(TINY), "--output", str(tmp_path / "e")]) == 2
    train_err = capsys.readouterr().err
    assert main(["test", *args, "--checkpoint", str(tmp_path / "none.pt")]) == 2
    test_err = capsys.readouterr().err
    assert "RegDB needs --trial 1..10" in train_err and "RegDB needs --trial 1..10" in test_err


def test_missing_weights_fail_before_any_data(tmp_path, monkeypatch, capsys):
    def no_data(*args, **kwargs):
        raise AssertionError("data was loaded before the weights were checked")

    monkeypatch.setattr(train_module, "load_train_data_for", no_data)
    missing = tmp_path / "missing.pth"
    with pytest.raises(CheckpointError, match="not found"):
        fit(load_config(TINY, [f"model.pretrained={missing}"]), tmp_path / "a", progress=False)

    def offline(url, **kwargs):
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    out = str(tmp_path / "b")
    assert main(["train", "--config", str(TINY), "--output", out, "model.pretrained=imagenet"]) == 2
    assert "model.pretrained=PATH" in capsys.readouterr().err


def test_evaluate_features_offers_only_data_sets_on_disk(capsys):
    from dclnet.cli_parser import build_parser

    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(
            ["evaluate-features", "--dataset", "synthetic", "--features", "f.npz"]
        )
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'synthetic'" in err and "'sysu', 'regdb', 'llcm'" in err
    # `dclnet test` renders the synthetic set in memory, so it keeps the choice
    args = build_parser().parse_args(["test", "--checkpoint", "c.pt", "--dataset", "synthetic"])
    assert args.dataset == "synthetic"


def _best_worker(rank: int, port: int, folder: Path) -> None:
    import os

    from dclnet.engine import distributed as dist_utils
    from dclnet.engine.run_state import load_best

    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE="2",
    )
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", RandomInitWarning)
    assert dist_utils.init_from_env()
    try:
        torch.manual_seed(10 + rank)  # the ranks start from different weights
        model = DCLNet(4, arch="resnet18", pretrained=None)
        # rank 1 looks at a folder without best.pt: only rank 0 needs to see the run folder
        seen = folder if rank == 0 else folder / "elsewhere"
        tested = load_best(model, seen, {"epoch": 2})
        missing = load_best(model, folder / "empty", {"epoch": 2})  # best.pt deleted
        torch.save({"tested": tested, "missing": missing, "state": model.state_dict()},
                   folder / f"rank{rank}.pt")  # fmt: skip
    finally:
        dist_utils.cleanup()


def test_best_weights_reach_every_rank(tmp_path):
    import socket

    import torch.multiprocessing as mp

    best = _checkpoint(tmp_path / "best.pt", [])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_best_worker, args=(port, tmp_path), nprocs=2, join=True)
    weights = load_checkpoint(best)["model"]
    for rank in (0, 1):
        out = torch.load(tmp_path / f"rank{rank}.pt")
        assert out["tested"] == {"file": "best.pt", "epoch": 2} and out["missing"] is None
        for key, value in weights.items():
            assert torch.equal(out["state"][key], value), (rank, key)


def test_demo_checks_weights_before_rendering(tmp_path, monkeypatch):
    def no_data(*args, **kwargs):
        raise AssertionError("the demo rendered data before checking the weights")

    monkeypatch.setattr(runs, "load_eval_data_for", no_data)
    missing = tmp_path / "missing.pth"
    with pytest.raises(CheckpointError, match="not found"):
        runs.run_demo(tmp_path / "demo", config=None, overrides=[f"model.pretrained={missing}"])
