"""Nothing lost, nothing written outside its folder (issue 20): ``cache clear`` of a folder
that is not a cache, a used ``--trial all`` folder, writes through planted links and on
full disks.

Command-line cases check the exit status, one ``error:`` line naming the file and no
traceback.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from _faults import full_disk, one_error_line, one_line
from _inference_fixtures import tiny_model
from PIL import Image

from dclnet.cli import main
from dclnet.errors import DclnetError, OutputError

TINY = Path(__file__).resolve().parents[1] / "src" / "dclnet" / "configs" / "tiny.yaml"

# 1. cache clear deletes only what dclnet wrote ----------------------------------------------


def _real_cache(tmp_path: Path) -> Path:
    from dclnet.data.cache import build_cache
    from dclnet.data.records import Record

    root = tmp_path / "data"
    (root / "cam1").mkdir(parents=True)
    Image.fromarray(np.zeros((20, 10, 3), np.uint8)).save(root / "cam1" / "0.png")
    cache = tmp_path / "cache"
    build_cache(root, [Record("cam1/0.png", 1, 1, "visible")], size=(8, 4), cache_dir=cache,
                name="toy", progress=False)  # fmt: skip
    return cache


def _foreign(folder: Path) -> None:
    (folder / "src").mkdir(parents=True)
    (folder / "src" / "main.c").write_text("int main;")
    (folder / "thesis.tex").write_text("\\chapter{One}")


def test_clear_refuses_a_folder_that_is_not_a_cache(tmp_path, capsys):
    folder = tmp_path / "notacache"
    _foreign(folder)
    status = main(["cache", "clear", "--all", "--yes", "--cache-dir", str(folder)])
    one_error_line(capsys, status, f"{folder} is not a dclnet cache")
    assert (folder / "thesis.tex").is_file() and (folder / "src" / "main.c").is_file()


def test_clear_all_leaves_what_dclnet_did_not_write(tmp_path, capsys):
    cache = _real_cache(tmp_path)
    _foreign(cache)
    status = main(["cache", "clear", "thesis.tex", "--yes", "--cache-dir", str(cache)])
    one_error_line(capsys, status, f"{cache / 'thesis.tex'}: not written by dclnet")
    assert (cache / "thesis.tex").is_file()
    assert main(["cache", "clear", "--all", "--yes", "--cache-dir", str(cache)]) == 0
    out = capsys.readouterr().out
    assert sorted(p.name for p in cache.iterdir()) == ["src", "thesis.tex"]
    assert "left 2 entries dclnet did not write: src, thesis.tex" in out


# 2. --trial all into a used folder ----------------------------------------------------------


@pytest.fixture(scope="module")
def regdb_root(tmp_path_factory) -> Path:
    from dclnet.data.sources.synthetic import write_regdb

    root = tmp_path_factory.mktemp("regdb")
    return write_regdb(root, num_ids=8, height=32, width=16, images_per_modality=2)


def _finished_trials(out: Path) -> None:
    for t in range(1, 11):
        (out / f"trial{t}").mkdir(parents=True)
        result = {"protocol": {"dataset": "regdb"}, "mean": {"rank1": 99.0, "mAP": 99.0,
                  "mINP": 99.0, "rank5": 99.0, "rank10": 99.0, "rank20": 99.0}}  # fmt: skip
        (out / f"trial{t}" / "test_results.json").write_text(json.dumps(result))
    (out / "summary.json").write_text("{}")


def test_trial_all_refuses_a_used_folder(regdb_root, tmp_path, capsys):
    out = tmp_path / "run"
    _finished_trials(out)
    argv = ["train", "--dataset", "regdb", "--root", str(regdb_root), "--config", str(TINY)]
    status = main([*argv, "--trial", "all", "--output", str(out)])
    line = one_error_line(capsys, status, f"run folder {out} is not empty")
    assert "--resume" in line and "--overwrite" in line
    assert (out / "summary.json").read_text() == "{}"


# 3. Writes through planted links ------------------------------------------------------------


def _resumable_run(tmp_path: Path) -> Path:
    from dclnet.config import load_config, save_config
    from dclnet.engine.checkpoint import save_checkpoint
    from dclnet.engine.run_state import checkpoint_state

    cfg = load_config(TINY)
    run = tmp_path / "run"
    run.mkdir()
    save_config(cfg, run / "config.yaml")
    state = checkpoint_state(cfg, tiny_model(), type("D", (), {"num_classes": 5}))
    save_checkpoint(
        {**state, "epoch": 1, "optimizer": {}, "scheduler": {}, "rng": {}}, run / "last.pt"
    )
    return run


@pytest.mark.parametrize("name", ["log.txt", "metrics.jsonl"])
def test_resume_refuses_a_linked_run_file(name, tmp_path, capsys):
    run = _resumable_run(tmp_path)
    target = tmp_path / "precious.txt"
    target.write_text("mine\n")
    (run / name).symlink_to(target)
    status = main(["train", "--output", str(run), "--resume"])
    assert target.read_text() == "mine\n"  # nothing appended through the link
    one_error_line(capsys, status, f"{run / name}: is a symbolic link")


def test_a_linked_lock_creates_nothing_outside(tmp_path):
    from dclnet.engine.run_folder import claim_run_folder

    run = tmp_path / "run"
    run.mkdir()
    outside = tmp_path / "elsewhere" / "planted"
    outside.parent.mkdir()
    (run / ".lock").symlink_to(outside)
    with pytest.raises(DclnetError) as info:
        claim_run_folder(run, resume=False, overwrite=False)
    one_line(info.value, f"{run / '.lock'}: is a symbolic link")
    assert not outside.exists()


def test_a_linked_cache_lock_creates_nothing_outside(tmp_path):
    from dclnet.data.cache import build_cache
    from dclnet.data.records import Record

    cache = _real_cache(tmp_path)
    (folder,) = [p for p in cache.iterdir() if p.name.startswith("toy-")]
    outside = tmp_path / "elsewhere"
    (folder / ".lock").unlink()
    (folder / ".lock").symlink_to(outside)
    with pytest.raises(OutputError) as info:
        build_cache(tmp_path / "data", [Record("cam1/0.png", 1, 1, "visible")], size=(8, 4),
                    cache_dir=cache, name="toy", progress=False)  # fmt: skip
    one_line(info.value, f"{folder / '.lock'}: is a symbolic link")
    assert not outside.exists()


def test_run_log_fails_quietly_once_on_a_full_disk(tmp_path, capsys):
    from dclnet.engine.runlog import run_log_file

    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    log = logging.getLogger("dclnet.engine.test")
    with run_log_file(tmp_path) as path:
        (handler,) = [h for h in logging.getLogger("dclnet").handlers if h.name == str(path)]
        handler.stream = open("/dev/full", "w", encoding="utf-8")  # noqa: SIM115 - closed by it
        for i in range(3):
            log.info("epoch %d", i)
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Logging error" not in err
    lines = [ln for ln in err.splitlines() if "log.txt" in ln]
    assert len(lines) == 1 and "No space left on device" in lines[0], err
    assert "no longer written" in lines[0]


@pytest.mark.parametrize("option", ["--json", "--csv"])
def test_search_results_refuse_links(option, world, tmp_path, capsys):
    target = tmp_path / "precious.txt"
    target.write_text("mine\n")
    link = tmp_path / "out"
    link.symlink_to(target)
    argv = ["search", "--checkpoint", str(world["ckpt"]), "--gallery", str(world["gallery"])]
    argv += ["--query", str(world["queries"]), "--device", "cpu", option, str(link)]
    one_error_line(capsys, main(argv), f"{link}: is a symbolic link")
    assert target.read_text() == "mine\n"


@pytest.mark.parametrize("option", ["--json", "--csv"])
def test_search_results_on_a_full_disk(option, world, tmp_path, monkeypatch, capsys):
    out = tmp_path / "res" / "r.out"
    out.parent.mkdir()
    argv = ["search", "--checkpoint", str(world["ckpt"]), "--gallery", str(world["gallery"])]
    argv += ["--query", str(world["queries"]), "--device", "cpu", "--no-progress"]
    full_disk(monkeypatch)
    status = main([*argv, option, str(out)])
    one_error_line(capsys, status, f"{out.parent}: no space left on the device while writing r.out")
    assert list(out.parent.iterdir()) == []


def test_torchscript_export_on_a_full_disk(embedder, tmp_path, monkeypatch):
    from dclnet.inference.export import export_embedding

    full_disk(monkeypatch, room=4096)
    with pytest.raises(OutputError) as info:
        export_embedding(embedder, "visible", "torchscript", tmp_path / "m.pt")
    one_line(info.value, f"{tmp_path}: no space left on the device while writing m.pt")
    assert list(tmp_path.iterdir()) == []
