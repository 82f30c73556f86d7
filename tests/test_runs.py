"""Run orchestration: RegDB --trial all, config resolution for `dclnet train`."""

import json

import pytest

from dclnet.config import save_config
from dclnet.engine import runs
from dclnet.errors import ConfigError, TrainingError
from dclnet.evaluation.protocols import METRIC_KEYS


def _fake_fit(calls):
    def fit(cfg, output, *, resume=False, overwrite=False, progress=True):
        trial = cfg.data.trial
        calls.append((trial, resume))
        value = float(trial)
        result = {
            "protocol": {"dataset": "regdb", "trial": trial, "direction": "v2t"},
            "trials": [{k: value for k in METRIC_KEYS}],
            "mean": {k: value for k in METRIC_KEYS},
            "std": {k: 0.0 for k in METRIC_KEYS},
        }
        output.mkdir(parents=True, exist_ok=True)
        (output / "test_results.json").write_text(json.dumps(result))
        return {"test": result, "validation": None}

    return fit


def test_regdb_all_trials_trains_ten_models_and_summarises(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(runs, "fit", _fake_fit(calls))
    (tmp_path / "data").mkdir()
    out = tmp_path / "run"
    summary = runs.run_training(
        config=None,
        overrides=["model.pretrained=null"],
        dataset="regdb",
        root=tmp_path / "data",
        trial="all",
        output=out,
        resume=False,
    )
    assert [t for t, _ in calls] == list(range(1, 11))
    assert summary["mean"]["rank1"] == pytest.approx(5.5)  # mean of 1..10
    assert summary["std"]["rank1"] == pytest.approx(2.8722813)  # population std of 1..10
    assert json.loads((out / "summary.json").read_text()) == summary
    assert "5.50 ± 2.87" in capsys.readouterr().out
    # a used folder needs --resume (or --overwrite); finished trials are never redone
    calls.clear()
    (out / "trial4" / "test_results.json").unlink()
    again = dict(dataset="regdb", root=tmp_path / "data", trial="all", output=out)
    with pytest.raises(TrainingError, match="is not empty .* continue it with --resume"):
        runs.run_training(config=None, overrides=["model.pretrained=null"], resume=False, **again)
    assert calls == []
    cfg = runs.resolve_run_config(None, ["model.pretrained=null"], dataset="regdb",
                                  root=tmp_path / "data")  # fmt: skip
    save_config(cfg, out / "trial1" / "config.yaml")  # what a real trial 1 leaves
    runs.run_training(config=None, overrides=None, resume=True, **again)
    assert calls == [(4, False)]  # no last.pt: trial 4 restarts, the others are kept


def test_trial_all_is_only_for_regdb_and_trial_is_checked(tmp_path):
    (tmp_path / "data").mkdir()
    with pytest.raises(ConfigError, match="RegDB"):
        runs.run_training(
            config=None,
            overrides=None,
            dataset="sysu",
            root=tmp_path / "data",
            trial="all",
            output=tmp_path / "o",
            resume=False,
        )
    with pytest.raises(ConfigError, match="1..10"):
        runs.run_training(
            config=None,
            overrides=None,
            dataset="regdb",
            root=tmp_path / "data",
            trial="11",
            output=tmp_path / "o",
            resume=False,
        )


def test_real_data_set_needs_root(tmp_path):
    with pytest.raises(ConfigError, match="--root"):
        runs.resolve_run_config(None, None, dataset="sysu")
