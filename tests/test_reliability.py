"""One regression test per reliability class: config values, non-finite loss, the CLI's last
line of defence, and run folders (never mixed up)."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest

from dclnet import config as config_mod
from dclnet.config import Config, from_dict, load_config
from dclnet.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parents[1] / "src" / "dclnet" / "configs"
TINY = CONFIG_DIR / "tiny.yaml"


# 1. Config values are validated when the config is resolved ---------------------------------


@pytest.mark.parametrize(
    "override, needle",
    [
        ("data.height=0", "'data.height' = 0 is out of range (>= 1)"),
        ("optim.lr=.nan", "'optim.lr' = nan must be a finite number"),
        ("optim.lr=0", "'optim.lr' = 0.0 is out of range (> 0)"),
        ("optim.lr=-1e-3", "'optim.lr' = -0.001 is out of range (> 0)"),
        ("optim.lr=.inf", "'optim.lr' = inf must be a finite number"),
        ("train.log_every=0", "'train.log_every' = 0 is out of range (>= 1)"),
        ("train.device=gpu", "'train.device' has invalid value 'gpu'; valid: auto, cpu, cuda"),
        ("train.device=cuda:x", "'train.device' has invalid value 'cuda:x'"),
        ("eval.batch_size=0", "'eval.batch_size' = 0 is out of range (>= 1)"),
        ("train.seed=-1", "'train.seed' = -1 is out of range (>= 0)"),
        ("loss.tau=0", "'loss.tau' = 0.0 is out of range (> 0)"),
        ("loss.dcl=-1", "'loss.dcl' = -1.0 is out of range (>= 0)"),
        ("augment.flip_p=1.5", "'augment.flip_p' = 1.5 is out of range (0..1)"),
        ("train.val_fraction=1", "'train.val_fraction' = 1.0 is out of range (0 < value < 1)"),
        ("optim.momentum=1", "'optim.momentum' = 1.0 is out of range (0 <= value < 1)"),
        ("augment.erase_area=[0.3, 0.1]", "'augment.erase_area' = [0.3, 0.1] must be in ascen"),
        (
            "augment.erase_area=[0, 0.1]",
            "'augment.erase_area' = 0.0 is out of range (0 < value <= 1)",
        ),
        ("optim.milestones=[0]", "'optim.milestones' = 0 is out of range (>= 1)"),
        ("optim.gamma=.nan", "'optim.gamma' = nan must be a finite number"),
        ("optim.lr=fast", "'optim.lr' expects float, got 'fast'"),
    ],
)
def test_bad_values_fail_at_resolution_with_one_line(override, needle):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    message = str(info.value)
    assert needle in message and "\n" not in message


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:12"])
def test_valid_devices_are_accepted(device):
    assert load_config(None, [f"train.device={device}"]).train.device == device


def test_every_numeric_field_has_a_range():
    """A new numeric field must come with its valid range (or a list of choices)."""
    missing = []
    for name, cls in typing.get_type_hints(Config).items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            key, hint = f"{name}.{f.name}", hints[f.name]
            numeric = {int, float} & {hint, *typing.get_args(hint)}
            if numeric and key not in config_mod._RANGES and key not in config_mod._CHOICES:
                missing.append(key)
    assert missing == []


def test_float_given_as_exponent_string_is_accepted(tmp_path):
    # YAML 1.1 reads 3e-4 (no dot) as a string.
    assert load_config(None, ["optim.lr=3e-4"]).optim.lr == pytest.approx(3e-4)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("optim:\n  lr: 3e-4\n  weight_decay: 5E-4\nloss:\n  tau: 1e-1\n")
    cfg = load_config(recipe)
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.loss.tau) == pytest.approx((3e-4, 5e-4, 0.1))
    assert from_dict({"augment": {"erase_area": ["2e-2", 0.3]}}).augment.erase_area == (
        pytest.approx(0.02),
        0.3,
    )
    with pytest.raises(ConfigError, match="'optim.epochs' expects int"):
        load_config(None, ["optim.epochs=1e1"])


@pytest.mark.parametrize("recipe", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_bundled_recipes_load(recipe):
    load_config(recipe)


# 2. A non-finite loss is a one-line user error ----------------------------------------------


def test_non_finite_loss_is_one_error_line(tmp_path, monkeypatch, capsys):
    import torch

    from dclnet.cli import main
    from dclnet.engine import train
    from dclnet.errors import DclnetError, NonFiniteLossError

    assert issubclass(NonFiniteLossError, DclnetError)
    assert issubclass(NonFiniteLossError, FloatingPointError)  # old handlers still work

    def diverged(ctx, vis, ir, labels, gen):
        return {"total": torch.tensor(float("nan")), "id": torch.tensor(1.0)}

    monkeypatch.setattr(train, "train_step", diverged)
    argv = ["train", "--config", str(TINY), "--output", str(tmp_path / "run")]
    assert main([*argv, "optim.epochs=1", "train.log_every=1"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    err = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(err) == 1
    assert err[0].startswith("error: non-finite loss at epoch 1 step 0")
    assert "lower optim.lr" in err[0]


# 3. The CLI's last line of defence -----------------------------------------------------------


def _raising(monkeypatch, exc: BaseException) -> None:
    from dclnet import cli

    def command(args):
        raise exc

    monkeypatch.setattr(cli, "cmd_synth", command)


def _error_lines(capsys) -> list[str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()


@pytest.mark.parametrize(
    "exc, line",
    [
        (
            FileNotFoundError(2, "No such file or directory", "runs/x/last.pt"),
            "error: runs/x/last.pt: No such file or directory",
        ),
        (
            OSError(28, "No space left on device", "/tmp/out"),
            "error: /tmp/out: No space left on device",
        ),
        (PermissionError("plain message"), "error: plain message"),
    ],
)
def test_os_error_is_one_line(tmp_path, monkeypatch, capsys, exc, line):
    from dclnet.cli import main

    _raising(monkeypatch, exc)
    assert main(["synth", "sysu", str(tmp_path)]) == 2
    assert _error_lines(capsys) == [line]


def test_unexpected_error_is_one_line_with_saved_traceback(tmp_path, monkeypatch, capsys):
    from dclnet.cli import main

    _raising(monkeypatch, RuntimeError("shapes do not match\nsecond line"))
    assert main(["synth", "sysu", str(tmp_path)]) == 1
    (line,) = _error_lines(capsys)
    assert line.startswith("error: unexpected RuntimeError: shapes do not match second line (")
    assert line.endswith("rerun with --debug to show it)")
    saved = Path(line.split("full traceback in ")[1].split(";")[0])
    try:
        text = saved.read_text()
        assert "Traceback" in text and "RuntimeError: shapes do not match" in text
    finally:
        saved.unlink()


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_reraises(tmp_path, monkeypatch, where):
    from dclnet.cli import main
    from dclnet.errors import DclnetError

    args = ["synth", "sysu", str(tmp_path)]
    args = ["--debug", *args] if where == "before" else [*args, "--debug"]
    _raising(monkeypatch, RuntimeError("boom"))
    with pytest.raises(RuntimeError, match="boom"):
        main(args)
    _raising(monkeypatch, DclnetError("bad input"))
    with pytest.raises(DclnetError):
        main(args)


def test_dclnet_error_and_interrupt(tmp_path, monkeypatch, capsys):
    from dclnet.cli import main
    from dclnet.errors import DclnetError

    _raising(monkeypatch, DclnetError("bad input"))
    assert main(["synth", "sysu", str(tmp_path)]) == 2
    assert _error_lines(capsys) == ["error: bad input"]
    _raising(monkeypatch, KeyboardInterrupt())
    assert main(["synth", "sysu", str(tmp_path)]) == 130
    assert _error_lines(capsys) == ["interrupted; continue a training run with --resume"]
