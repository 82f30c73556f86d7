"""Training is deterministic on one machine with a fixed thread count (what the README's
demo numbers rely on): two identical runs give bit-identical weights and losses."""

import json
from pathlib import Path

import torch

from dclnet.config import load_config
from dclnet.engine.checkpoint import load_checkpoint
from dclnet.engine.train import fit

TINY = Path(__file__).resolve().parents[1] / "src" / "dclnet" / "configs" / "tiny.yaml"


def _train(folder: Path, threads: int) -> tuple[dict, list[float]]:
    overrides = ["optim.epochs=1", "train.log_every=1", "eval.trials=1", "data.synthetic_ids=8"]
    cfg = load_config(TINY, overrides)  # about 13 steps of the full objective, 64 x 32
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        fit(cfg, folder, progress=False)
    finally:
        torch.set_num_threads(saved)
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    losses = [e["total"] for e in map(json.loads, lines) if e["event"] == "train"]
    return load_checkpoint(folder / "last.pt")["model"], losses


def test_two_identical_runs_give_identical_weights(tmp_path):
    threads = torch.get_num_threads()
    first, first_losses = _train(tmp_path / "a", threads)
    second, second_losses = _train(tmp_path / "b", threads)
    assert len(first_losses) >= 2 and first_losses == second_losses  # exact, every step
    assert first.keys() == second.keys()
    for key, value in first.items():
        assert torch.equal(value, second[key]), key  # bit for bit, not approximately
