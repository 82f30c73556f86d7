"""One regression test per reliability class: config values, non-finite loss, the CLI's last
line of defence, and run folders (never mixed up)."""

from __future__ import annotations

import dataclasses
import json
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
    from dclnet import cli_commands

    def command(args):
        raise exc

    monkeypatch.setattr(cli_commands, "cmd_synth", command)


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


# 4. Run folders are never mixed up ---------------------------------------------------------


def _files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def _claim(output: Path, *, resume: bool, overwrite: bool) -> None:
    """Check and clear ``output`` as a training would, then give its lock back."""
    from dclnet.engine.run_folder import claim_run_folder, release_run_folder

    release_run_folder(claim_run_folder(output, resume=resume, overwrite=overwrite))


def test_training_into_a_used_folder_is_refused_before_any_work(tmp_path, capsys):
    from dclnet.cli import main

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"event": "train", "step": 1}\n')
    assert main(["train", "--config", str(TINY), "--output", str(run)]) == 2
    (line,) = _error_lines(capsys)
    assert line.startswith(f"error: run folder {run} is not empty (metrics.jsonl)")
    assert "--resume" in line and "--overwrite" in line
    # no work began: nothing in the folder changed (no log.txt, no config.yaml)
    assert _files(run) == {"metrics.jsonl"}
    assert (run / "metrics.jsonl").read_text() == '{"event": "train", "step": 1}\n'
    argv = ["train", "--config", str(TINY), "--output", str(run), "--resume", "--overwrite"]
    assert main(argv) == 2
    assert "pass one" in _error_lines(capsys)[0]


def test_overwrite_deletes_only_the_runs_own_files(tmp_path):
    from dclnet.errors import TrainingError

    run = tmp_path / "run"
    (run / "tensorboard").mkdir(parents=True)
    owned = ["last.pt", "best.pt", "metrics.jsonl", "config.yaml", "test_results.json", "x.log"]
    for name in owned:
        (run / name).write_text("old")
    (run / ".last.pt.abc.tmp").write_text("stale")
    _claim(run, resume=False, overwrite=True)
    assert _files(run) == set()
    # a file the run does not own blocks --overwrite, and nothing is deleted
    (run / "last.pt").write_text("old")
    (run / "notes.txt").write_text("mine")
    with pytest.raises(TrainingError, match=r"not empty \(notes\.txt\).*only a run's own"):
        _claim(run, resume=False, overwrite=True)
    assert _files(run) == {"last.pt", "notes.txt"}


def test_new_or_empty_folder_needs_no_flag_and_stale_temp_files_go(tmp_path):
    from dclnet.errors import CheckpointError

    _claim(tmp_path / "a" / "b", resume=False, overwrite=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / ".config.yaml.x1.tmp").write_text("half")
    _claim(empty, resume=False, overwrite=False)
    assert _files(empty) == set()
    with pytest.raises(CheckpointError, match="cannot resume: .*last.pt does not exist"):
        _claim(tmp_path / "c", resume=True, overwrite=False)
    assert not (tmp_path / "c").exists()


def test_one_training_per_folder(tmp_path):
    from dclnet.engine.run_folder import claim_run_folder, release_run_folder
    from dclnet.errors import TrainingError

    held = claim_run_folder(tmp_path, resume=False, overwrite=False)
    try:
        assert _files(tmp_path) == {".lock"}
        with pytest.raises(TrainingError, match=f"run folder {tmp_path} is in use"):
            claim_run_folder(tmp_path, resume=False, overwrite=False)
    finally:
        release_run_folder(held)
    assert _files(tmp_path) == set()  # no lock file is left behind
    _claim(tmp_path, resume=False, overwrite=False)


def test_config_yaml_is_written_atomically(tmp_path, monkeypatch):
    from dclnet import config_load as cfg_mod

    path = tmp_path / "config.yaml"
    cfg_mod.save_config(load_config(TINY), path)
    before = path.read_text()

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cfg_mod.yaml, "safe_dump", broken)
    with pytest.raises(OSError):
        cfg_mod.save_config(load_config(None), path)
    assert path.read_text() == before and {p.name for p in tmp_path.iterdir()} == {path.name}


def test_resume_cuts_the_metrics_log_back_to_the_checkpoint(tmp_path):
    from dclnet.engine.checkpoint import load_checkpoint
    from dclnet.engine.train import fit
    from dclnet.errors import TrainingError

    run = tmp_path / "run"
    cfg = load_config(TINY, ["optim.epochs=1", "train.log_every=1"])
    fit(cfg, run, progress=False)
    log = run / "metrics.jsonl"
    events = [json.loads(line) for line in log.read_text().splitlines()]
    last_step = max(e["step"] for e in events)
    assert load_checkpoint(run / "last.pt")["epoch"] == 1
    # a killed continuation logged steps past the checkpoint, the last line half-written
    with log.open("a") as fh:
        fh.write(json.dumps({"event": "train", "step": last_step + 1, "epoch": 2}) + "\n")
        fh.write('{"event": "train", "st')
    with pytest.raises(TrainingError, match="not empty"):
        fit(cfg, run, progress=False)
    fit(cfg, run, resume=True, progress=False)
    again = [json.loads(line) for line in log.read_text().splitlines()]
    assert max(e["step"] for e in again) == last_step
    assert [e for e in again if e["event"] != "test"] == [e for e in events if e["event"] != "test"]
    assert sum(e["event"] == "test" for e in again) == 1  # the final test, logged once


def test_trial_all_resume_restarts_a_trial_without_checkpoint(tmp_path, monkeypatch):
    from dclnet.engine import runs

    calls = []

    def fake_fit(cfg, output, *, resume=False, overwrite=False, progress=True):
        calls.append((cfg.data.trial, resume, overwrite))
        result = {
            "protocol": {"dataset": "regdb", "trial": cfg.data.trial, "direction": "v2t"},
            "trials": [],
            "mean": {k: 1.0 for k in ("rank1", "rank10", "rank20", "mAP", "mINP")},
            "std": {},
        }
        output.mkdir(parents=True, exist_ok=True)
        (output / "test_results.json").write_text(json.dumps(result))
        return {"test": result, "validation": None}

    monkeypatch.setattr(runs, "fit", fake_fit)
    monkeypatch.setattr(runs, "METRIC_KEYS", ("rank1",))
    (tmp_path / "data").mkdir()
    out = tmp_path / "run"
    kwargs = dict(
        config=None,
        overrides=["model.pretrained=null"],
        dataset="regdb",
        root=tmp_path / "data",
        output=out,
    )
    runs.run_training(trial="all", resume=False, **kwargs)
    (out / "trial2" / "test_results.json").unlink()
    (out / "trial2" / "config.yaml").write_text("{}")  # stopped before its first epoch
    (out / "trial3" / "test_results.json").unlink()
    (out / "trial3" / "last.pt").write_text("")
    (out / "trial1" / "config.yaml").write_text("{}")  # --resume reads the saved recipe
    calls.clear()
    runs.run_training(trial="all", resume=True, **kwargs)
    assert calls == [(2, False, True), (3, True, False)]
    calls.clear()
    runs.run_training(trial="all", resume=False, overwrite=True, **kwargs)
    assert [c[2] for c in calls] == [True] * 10  # --overwrite redoes finished trials too
