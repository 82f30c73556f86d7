"""What a training run says: config line, data statistics, epoch lines, log.txt, CLI help."""

from __future__ import annotations

import argparse
import logging
import re
import warnings
from pathlib import Path

import pytest
import yaml

from dclnet import cli, cli_commands, cli_parser
from dclnet.config import Config, describe_keys, format_keys, load_config
from dclnet.engine.run_folder import RUN_FILES
from dclnet.engine.runlog import config_changes, config_summary, format_duration
from dclnet.engine.train import fit

TINY = Path(__file__).resolve().parents[1] / "src" / "dclnet" / "configs" / "tiny.yaml"
EPOCH_LINE = re.compile(
    r"epoch 1/1 loss [\d.]+ \(id [\d.]+ .*\) lr [\d.e+-]+ time [\d.]+ s "
    r"\([\d.]+ images/s\) eta 0:00"
)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    cfg = load_config(TINY, ["optim.epochs=1"])
    fit(cfg, run, progress=False)
    return run, cfg


def test_log_txt_has_config_statistics_and_epoch_line(tiny_run):
    run, cfg = tiny_run
    text = (run / "log.txt").read_text()
    assert config_summary(cfg) in text
    assert "config: dataset=synthetic arch=resnet18 input=64x32 | " in text
    assert "optim.epochs=1" in text and "train.amp='off'" in text
    assert "training data: synthetic, " in text
    for word in ("modality", "camera", "ids", "images", "visible", "infrared"):
        assert word in text
    assert re.search(r"batches per epoch: \d+ \(P=4 ids x K=2", text)
    assert EPOCH_LINE.search(text), text
    assert "final test of last.pt (epoch 1, the last epoch): rank-1" in text
    assert "log.txt" in RUN_FILES  # --overwrite clears it with the rest of the run


def test_log_handler_removed_and_resume_appends(tiny_run):
    run, _ = tiny_run
    package = logging.getLogger("dclnet")
    assert not [h for h in package.handlers if isinstance(h, logging.FileHandler)]
    before = (run / "log.txt").read_text()
    # --resume of a finished run: nothing left to train, the final test runs again.
    fit(load_config(TINY, ["optim.epochs=1"]), run, resume=True, progress=False)
    after = (run / "log.txt").read_text()
    assert after.startswith(before) and "resuming training in" in after[len(before) :]
    assert not [h for h in package.handlers if isinstance(h, logging.FileHandler)]


def test_config_changes_round_trip_as_overrides():
    cfg = load_config(TINY, ["optim.milestones=[3,7]", "model.pretrained=null", "loss.tau=1e-3"])
    changes = config_changes(cfg)
    assert "optim.milestones=[3,7]" in changes and "train.amp='off'" in changes
    assert load_config(None, changes) == cfg
    assert config_changes(Config()) == []
    assert config_summary(Config()).endswith("| all defaults")


def test_format_duration():
    assert format_duration(5) == "0:05"
    assert format_duration(3725) == "1:02:05"


def test_config_command_prints_yaml_that_loads_back(tmp_path, capsys):
    assert cli.main(["config", "--config", "tiny", "optim.epochs=3", "loss.tau=0.1"]) == 0
    out = capsys.readouterr().out
    assert yaml.safe_load(out)["optim"]["epochs"] == 3
    saved = tmp_path / "resolved.yaml"
    saved.write_text(out)
    assert load_config(saved) == load_config(TINY, ["optim.epochs=3", "loss.tau=0.1"])


def test_config_keys_lists_types_defaults_and_comments(capsys):
    assert cli.main(["config", "--keys"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("optim.lr "))
    assert line.split()[1:3] == ["float", "0.0035"]
    assert "BNNecks and classifiers; the rest uses lr * backbone_lr_mult" in line
    arch = next(x for x in out.splitlines() if x.startswith("model.arch "))
    assert "one of resnet10, resnet18, resnet34, resnet50" in arch
    keys = {info.key for info in describe_keys()}
    assert len(keys) == len(out.splitlines()) - out.count("# ") - out.count("\n\n")
    assert {"data.dataset", "train.sync_bn", "eval.batch_size"} <= keys
    assert format_keys() == out.rstrip("\n")
    assert cli.main(["config", "--keys", "optim.lr=1"]) == 2


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


@pytest.mark.parametrize("command", ["train", "test", "demo", "config"])
def test_every_argument_states_its_default(command):
    sub = _subparsers(cli_parser.build_parser())[command]
    formatter = sub._get_formatter()
    for action in sub._actions:
        if action.help in (argparse.SUPPRESS, None) and action.dest == "debug":
            continue
        if isinstance(action, argparse._HelpAction):
            continue
        text = formatter._get_help_string(action) or ""
        assert "default" in text or "(required)" in text, (command, action.dest, text)


def test_train_help_ends_with_examples(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    out = capsys.readouterr().out
    assert "examples:\n  # a one-minute smoke run" in out
    assert "dclnet train --config tiny --output runs/tiny" in out
    assert "(default: off)" in out and "(required)" in out


def _talk(args) -> None:
    logging.getLogger("dclnet.engine.train").info("an info line")
    warnings.warn("a warning", UserWarning, stacklevel=1)
    logging.getLogger("dclnet.engine.train").error("an error line")


@pytest.mark.parametrize("rank", ["0", "1"])
def test_only_rank_zero_talks(monkeypatch, caplog, rank):
    monkeypatch.setenv("RANK", rank)
    monkeypatch.setattr(cli_commands, "cmd_config", _talk)
    caplog.set_level(logging.INFO)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cli.main(["config"]) == 0
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("dclnet")]
    assert "an error line" in messages
    assert ("an info line" in messages) == (rank == "0")
    assert bool([w for w in caught if "a warning" in str(w.message)]) == (rank == "0")
    assert logging.getLogger("dclnet").level == logging.NOTSET  # restored after main
