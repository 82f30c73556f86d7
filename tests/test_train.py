"""End-to-end training: tiny runs on the synthetic set (in memory and written to disk)."""

import json
from pathlib import Path

import pytest
import torch

from dclnet.cli import main
from dclnet.config import load_config
from dclnet.data.sources.synthetic import write_regdb, write_sysu
from dclnet.data.splits import ProtocolSettings
from dclnet.engine.checkpoint import load_checkpoint
from dclnet.engine.runs import load_model
from dclnet.engine.runs import test_checkpoint as run_test_checkpoint
from dclnet.engine.train import fit
from dclnet.errors import CheckpointError
from dclnet.evaluation.protocols import METRIC_KEYS

TINY = Path(__file__).resolve().parents[1] / "src" / "dclnet" / "configs" / "tiny.yaml"


def _events(run: Path, event: str) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["event"] == event]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    cfg = load_config(TINY, ["optim.epochs=3", "train.log_every=1"])
    result = fit(cfg, run, progress=False)
    return run, result


def test_run_folder_contents(tiny_run):
    run, result = tiny_run
    for name in ("last.pt", "config.yaml", "metrics.jsonl", "test_results.json"):
        assert (run / name).is_file(), name
    assert not (run / "best.pt").exists()  # no validation split configured
    state = load_checkpoint(run / "last.pt")
    assert state["epoch"] == 3 and state["model_args"]["arch"] == "resnet18"
    assert state["preprocessing"]["height"] == 64 and state["config"]["optim"]["epochs"] == 3
    assert set(result["test"]) == {"protocol", "trials", "mean", "std", "checkpoint"}
    assert result["test"]["checkpoint"] == {"file": "last.pt", "epoch": 3}
    assert len(result["test"]["trials"]) == 2


def test_loss_decreases(tiny_run):
    run, _ = tiny_run
    steps = _events(run, "train")
    assert {"total", "id", "metric", "part_id", "pap", "dcl"} <= set(steps[0])
    n = max(3, len(steps) // 5)
    first = sum(s["id"] for s in steps[:n]) / n
    last = sum(s["id"] for s in steps[-n:]) / n
    assert last < first


def test_resume_gives_identical_next_steps(tmp_path, tiny_run):
    run, _ = tiny_run
    part = tmp_path / "part"
    fit(load_config(TINY, ["optim.epochs=2", "train.log_every=1"]), part, progress=False)
    fit(
        load_config(TINY, ["optim.epochs=3", "train.log_every=1"]),
        part,
        resume=True,
        progress=False,
    )
    full_steps = [s for s in _events(run, "train") if s["epoch"] == 3]
    resumed = [s for s in _events(part, "train") if s["epoch"] == 3]
    assert len(full_steps) == len(resumed) > 0
    for a, b in zip(full_steps, resumed):
        assert a["total"] == pytest.approx(b["total"], rel=1e-5, abs=1e-6)
    wa = load_checkpoint(run / "last.pt")["model"]
    wb = load_checkpoint(part / "last.pt")["model"]
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=1e-4, atol=1e-5)


def test_validation_split_selects_the_tested_checkpoint(tmp_path):
    cfg = load_config(TINY, ["optim.epochs=1", "train.validation=sysu"])
    run = tmp_path / "v"
    result = fit(cfg, run, progress=False)
    assert (run / "best.pt").is_file()
    assert result["validation"]["epoch"] == 1
    assert _events(run, "validation")
    # the final test says which weights it tested, everywhere it is reported
    assert result["test"]["checkpoint"] == {"file": "best.pt", "epoch": 1}
    assert json.loads((run / "test_results.json").read_text()) == result["test"]
    assert _events(run, "test")[-1]["checkpoint"] == "best"
    log = (run / "log.txt").read_text()
    assert "final test of best.pt (epoch 1, best validation rank-1)" in log
    # and the numbers are best.pt's: `dclnet test` of that file gives them again
    settings = ProtocolSettings("synthetic", trials=2)
    tested = run_test_checkpoint(run / "best.pt", settings, root=None, device="cpu", progress=False)
    assert tested.plain.mean == pytest.approx(result["test"]["mean"])


def test_final_test_loads_best_weights(tmp_path, tiny_run, caplog):
    from dclnet.engine.run_state import load_best
    from dclnet.models.dclnet import DCLNet
    from dclnet.models.resnet import RandomInitWarning

    run, _ = tiny_run
    (tmp_path / "best.pt").write_bytes((run / "last.pt").read_bytes())
    saved = load_checkpoint(run / "last.pt")
    with pytest.warns(RandomInitWarning):
        model = DCLNet(**saved["model_args"])
    assert load_best(model, tmp_path, {"epoch": 3}) == {"file": "best.pt", "epoch": 3}
    for key, value in model.state_dict().items():
        assert torch.equal(value, saved["model"][key]), key
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert load_best(model, tmp_path / "gone", {"epoch": 3}) is None  # best.pt deleted
    assert "best.pt is missing" in caplog.text
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_corrupt_and_foreign_checkpoints(tmp_path, tiny_run):
    run, _ = tiny_run
    bad = tmp_path / "bad.pt"
    bad.write_bytes((run / "last.pt").read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="cannot load checkpoint"):
        load_checkpoint(bad)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a dclnet checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    state = load_checkpoint(run / "last.pt")
    state["model_args"] = {**state["model_args"], "arch": "resnet34"}
    torch.save(state, tmp_path / "mismatch.pt")
    settings = ProtocolSettings("synthetic", trials=1)
    with pytest.raises(CheckpointError, match="do not match"):
        run_test_checkpoint(
            tmp_path / "mismatch.pt", settings, root=None, device="cpu", progress=False
        )


def test_dclnet_test_flips_as_the_run_did_unless_told(tmp_path, tiny_run):
    run, _ = tiny_run
    state = load_checkpoint(run / "last.pt")
    state["config"]["eval"]["flip"] = True  # a run that tested with flip-averaged features
    torch.save(state, tmp_path / "flipped.pt")
    settings = ProtocolSettings("synthetic", trials=1)

    def means(path, flip):
        result = run_test_checkpoint(
            path, settings, root=None, device="cpu", flip=flip, progress=False
        )
        return result.plain.mean

    flipped = means(tmp_path / "flipped.pt", None)
    assert flipped == means(tmp_path / "flipped.pt", True)
    assert flipped != means(tmp_path / "flipped.pt", False)
    assert means(run / "last.pt", None) == means(run / "last.pt", False)


def test_resume_without_checkpoint_is_a_clear_error(tmp_path, capsys):
    code = main(["train", "--config", str(TINY), "--output", str(tmp_path / "nothing"), "--resume"])
    assert code == 2 and "cannot resume" in capsys.readouterr().err


def _check_result(result: dict, protocol: dict, trials: int) -> None:
    """A protocol result: its settings, and every metric present, in percent and ordered."""
    assert result["protocol"] == protocol
    assert len(result["trials"]) == trials
    for summary in (*result["trials"], result["mean"]):
        assert set(summary) == set(METRIC_KEYS)
        assert all(0.0 <= summary[k] <= 100.0 for k in METRIC_KEYS), summary
        ranks = [summary[k] for k in ("rank1", "rank5", "rank10", "rank20")]
        assert ranks == sorted(ranks)  # CMC never decreases
        assert summary["mINP"] <= summary["mAP"] + 1e-9  # the hardest positive bounds mINP
    assert all(0.0 <= v for v in result["std"].values())


@pytest.mark.parametrize("layout", ["sysu", "regdb"])
def test_train_then_test_on_raw_layouts(tmp_path, layout):
    if layout == "sysu":
        root = write_sysu(tmp_path / "data", num_ids=16, height=64, width=32)
        extra, test_args = [], ["--trials", "2"]
        protocol = {
            "dataset": "sysu",
            "mode": "all",
            "shots": 1,
            "sampler": "seeded",
            "trials": 2,  # the tiny recipe's eval.trials
            "direction": "i2v",
        }
    else:
        root = write_regdb(
            tmp_path / "data", num_ids=12, height=64, width=32, images_per_modality=4
        )
        extra, test_args = ["--trial", "3"], ["--trial", "3"]
        protocol = {"dataset": "regdb", "trial": 3, "direction": "v2t"}
    cache = tmp_path / "cache"
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "--dataset",
            layout,
            "--root",
            str(root),
            "--config",
            str(TINY),
            "--output",
            str(out),
            *extra,
            "optim.epochs=1",
            f"data.cache_dir={cache}",
        ]
    )
    assert code == 0
    names = ("config.yaml", "last.pt", "log.txt", "metrics.jsonl", "test_results.json")
    assert all((out / name).is_file() for name in names)
    trained = json.loads((out / "test_results.json").read_text())
    _check_result(trained, protocol, 1 if layout == "regdb" else 2)
    assert trained["checkpoint"] == {"file": "last.pt", "epoch": 1}  # no validation split
    assert "final test of last.pt (epoch 1" in (out / "log.txt").read_text()
    saved = load_config(out / "config.yaml")  # the run folder's config reads back
    assert (saved.data.dataset, saved.data.root) == (layout, str(root))
    # the checkpoint rebuilds the network, which embeds an image of the data set
    model, state = load_model(out / "last.pt")
    assert state["epoch"] == 1 and state["config"]["data"]["dataset"] == layout
    image = torch.zeros(1, 3, 64, 32)
    embedding = model.embed(image, "infrared")
    assert embedding.shape[0] == 1 and torch.isfinite(embedding).all()
    assert sorted(p.name.split("-")[1] for p in cache.iterdir()) == ["test", "train"]
    result_json = tmp_path / "test.json"
    code = main(
        [
            "test",
            "--checkpoint",
            str(out / "last.pt"),
            "--dataset",
            layout,
            "--root",
            str(root),
            "--cache-dir",
            str(cache),
            "--json",
            str(result_json),
            "--device",
            "cpu",
            *test_args,
        ]
    )
    assert code == 0
    tested = json.loads(result_json.read_text())
    _check_result(tested, protocol, len(trained["trials"]))
    # same protocol, same model, same cached images -> the numbers of the end of training
    assert tested["mean"] == pytest.approx(trained["mean"])


def test_test_command_equals_evaluate_features(tmp_path, tiny_run):
    """`dclnet test` and `evaluate-features` give identical numbers for the same features."""
    from dclnet.data.datasets import load_eval_data
    from dclnet.evaluation.extract import extract_features
    from dclnet.evaluation.protocols import save_features_npz

    run, _ = tiny_run
    root = write_sysu(tmp_path / "data", num_ids=16, height=64, width=32)
    cache = tmp_path / "cache"
    out_test = tmp_path / "test.json"
    assert (
        main(
            [
                "test",
                "--checkpoint",
                str(run / "last.pt"),
                "--dataset",
                "sysu",
                "--root",
                str(root),
                "--trials",
                "3",
                "--cache-dir",
                str(cache),
                "--device",
                "cpu",
                "--json",
                str(out_test),
            ]
        )
        == 0
    )
    model, _ = load_model(run / "last.pt")
    data = load_eval_data("sysu", root, size=(64, 32), cache_dir=cache, trials=3, progress=False)
    feats = extract_features(model, data.images, data.modalities, progress=False)
    save_features_npz(tmp_path / "f.npz", data.paths, feats.numpy())
    out_feats = tmp_path / "feats.json"
    assert (
        main(
            [
                "evaluate-features",
                "--dataset",
                "sysu",
                "--root",
                str(root),
                "--features",
                str(tmp_path / "f.npz"),
                "--trials",
                "3",
                "--json",
                str(out_feats),
            ]
        )
        == 0
    )
    assert json.loads(out_test.read_text()) == json.loads(out_feats.read_text())


def test_tensorboard_and_monitoring_events(tmp_path):
    pytest.importorskip("tensorboard", reason="the [tensorboard] extra is not installed")
    cfg = load_config(TINY, ["optim.epochs=2", "train.tensorboard=true", "train.eval_every=1"])
    fit(cfg, tmp_path / "tb", progress=False)
    assert list((tmp_path / "tb" / "tensorboard").glob("events.out.tfevents.*"))
    monitoring = _events(tmp_path / "tb", "monitoring")
    assert [e["epoch"] for e in monitoring] == [1]  # the last epoch is the final test instead
    assert all(e["uses_test_data"] for e in monitoring)


def syn_test_ids(ids: int) -> list[int]:
    from dclnet.data.datasets import synthetic_set

    return synthetic_set(ids, 0, 64, 32).test_ids


def test_diagnose_command_reports_mechanisms(tmp_path, tiny_run, capsys):
    import numpy as np

    from dclnet.data.datasets import synthetic_set
    from dclnet.evaluation.mechanisms import majority_downsample

    run, _ = tiny_run
    out = tmp_path / "sub" / "diag.json"
    assert main(["diagnose", "--checkpoint", str(run / "last.pt"), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "foreground IoU" in printed and "correspondence" in printed
    result = json.loads(out.read_text())
    assert result["grid"] == [16, 8]  # Z of a 64 x 32 input
    assert set(result["foreground_iou"]) == {"pap", "pap_srm", "cam_labels", "stripes"}
    assert set(result["part_miou"]) == {"pap", "pap_srm", "stripes", "truth_srm"}
    assert "SRM applied to the true band masks" in printed
    values = [*result["foreground_iou"].values(), *result["part_miou"].values()]
    values += [result["correspondence"]["accuracy"], result["correspondence"]["chance"]]
    assert all(0.0 <= v <= 1.0 for v in values)
    assert result["correspondence"]["num_pairs"] > 0
    assert isinstance(result["cam_labels_train"], float)  # classifier matches the train ids
    cam = result["cam_train"]
    assert cam["foreground_iou"] == result["cam_labels_train"]
    width = len(cam["cam_by_column"])
    assert width == len(cam["foreground_by_column"]) >= 1
    assert all(0 <= v <= 1 for v in cam["cam_by_column"] + cam["foreground_by_column"])
    assert -1 <= cam["correlation"] <= 1
    col = result["identity_by_column"]  # final map of a 64 x 32 input: 2 columns
    assert len(col["accuracy"]) == 2 and all(0 <= v <= 1 for v in col["accuracy"])
    assert col["chance"] == pytest.approx(1 / len(syn_test_ids(16)))
    assert "identity read from one final-map column" in printed
    # the stripe masks mark every cell: their foreground IoU is the true foreground share
    syn = synthetic_set(16, 0, 64, 32)
    rows = [i for i, r in enumerate(syn.records) if r.label in syn.test_ids]
    truth = majority_downsample(torch.from_numpy(syn.bands(np.array(rows))), (16, 8), 7)
    share = (truth > 0).float().mean().item()
    assert result["foreground_iou"]["stripes"] == pytest.approx(share, abs=1e-6)
    # another population: different test people, same keys
    other = tmp_path / "other.json"
    main(["diagnose", "--checkpoint", str(run / "last.pt"), "--synthetic-seed", "5",
          "--json", str(other)])  # fmt: skip
    assert json.loads(other.read_text())["synthetic"]["seed"] == 5
    assert json.loads(other.read_text())["cam_labels_train"] is None  # other training ids


@pytest.mark.parametrize("preset", ["full", "dcl_stripes"])
@pytest.mark.parametrize("num_parts", [4, 8])
def test_training_with_other_part_counts(tmp_path, monkeypatch, num_parts, preset):
    """model.num_parts reaches the objective: PAP, SRM and the dense loss work with 4 and 8
    parts end to end, and the dcl_stripes preset cuts Z into that many stripes."""
    import dclnet.engine.step as step_mod
    import dclnet.losses.objective as objective_mod

    seen: dict[str, set] = {"num_parts": set(), "stripe_labels": set()}
    real_objective, real_stripes = step_mod.dclnet_objective, objective_mod.stripe_masks

    def objective(*args, **kwargs):
        seen["num_parts"].add(kwargs.get("num_parts", 6))  # the objective's default
        return real_objective(*args, **kwargs)

    def stripes(*args, **kwargs):
        masks = real_stripes(*args, **kwargs)
        seen["stripe_labels"] |= set(masks.unique().tolist())
        return masks

    monkeypatch.setattr(step_mod, "dclnet_objective", objective)
    monkeypatch.setattr(objective_mod, "stripe_masks", stripes)
    overrides = [
        f"model.num_parts={num_parts}",
        f"loss.preset={preset}",
        "data.synthetic_ids=6",
        "optim.epochs=1",
        "optim.warmup_epochs=0",
        "optim.milestones=[]",
        "eval.trials=1",
    ]
    result = fit(load_config(TINY, overrides), tmp_path / "run", progress=False)
    assert set(result["test"]["mean"]) == set(METRIC_KEYS)
    assert seen["num_parts"] == {num_parts}
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["model_args"]["num_parts"] == num_parts
    assert state["model"]["part_classifier.weight"].shape[1] == num_parts * 512
    if preset == "dcl_stripes":  # every stripe 1..num_parts on Z's 16 rows (0: erased)
        assert seen["stripe_labels"] - {0} == set(range(1, num_parts + 1))
    else:
        assert not seen["stripe_labels"]


def test_build_names_still_import_from_train():
    """scripts/run_study.py and older callers import these from dclnet.engine.train."""
    from dclnet.engine import build, train

    for name in ("resolve_device", "loss_kwargs", "pretrained_weights", "pretrain_size"):
        assert getattr(train, name) is getattr(build, name), name
    assert train.check_weights is build.check_weights
    assert callable(train.fit) and train.fit.__module__ == "dclnet.engine.train"
