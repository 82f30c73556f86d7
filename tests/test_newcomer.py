"""What a newcomer tripped over on a fresh clone (issue 17, item 7), one test each."""

from __future__ import annotations

import pytest
import yaml

from dclnet.cli import main
from dclnet.cli_commands import CONFIG_DIR
from dclnet.config import load_config
from dclnet.engine import runs
from dclnet.errors import DclnetError


def _no_work(*args, **kwargs):
    raise AssertionError("the demo started work (rendering the baseline's data)")


@pytest.mark.parametrize(
    ("present", "overwrite", "message"),
    [
        (["last.pt", "metrics.jsonl"], False, "start over with --overwrite, or choose another"),
        (["notes.txt"], True, "--overwrite deletes only a run's own files"),
    ],
    ids=["previous demo", "foreign file with --overwrite"],
)
def test_second_demo_refuses_a_used_folder_before_any_work(
    tmp_path, monkeypatch, capsys, present, overwrite, message
):
    out = tmp_path / "demo"
    out.mkdir()
    for name in present:
        (out / name).write_text("x")
    monkeypatch.setattr(runs, "load_eval_data_for", _no_work)
    argv = ["demo", "--output", str(out)] + (["--overwrite"] if overwrite else [])
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # no raw-pixel table
    (line,) = captured.err.splitlines()
    assert line.startswith(f"error: run folder {out} is not empty") and message in line
    assert "--resume" not in line  # dclnet demo has no --resume
    assert sorted(p.name for p in out.iterdir()) == sorted(present)  # nothing deleted


def test_demo_passes_an_overwritable_folder_on_to_the_run(tmp_path, monkeypatch):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "last.pt").write_text("x")

    def stop(*args, **kwargs):
        raise DclnetError("stopped at the data")

    monkeypatch.setattr(runs, "load_eval_data_for", stop)
    with pytest.raises(DclnetError, match="stopped at the data"):
        runs.run_demo(out, config=CONFIG_DIR / "tiny.yaml", overrides=[], overwrite=True)
    assert (out / "last.pt").is_file()  # the check deletes nothing; fit's claim does


def test_demo_banner_and_config_agree_on_the_loss(tmp_path, monkeypatch, capsys):
    def stop(*args, **kwargs):
        raise DclnetError("stopped after the banner")

    monkeypatch.setattr(runs, "fit", stop)
    argv = ["demo", "--config", "tiny", "--output", str(tmp_path / "d"), "eval.trials=1"]
    assert main(argv) == 2
    banner = [x for x in capsys.readouterr().out.splitlines() if x.startswith("Training DCLNet")]
    assert len(banner) == 1
    assert "loss id+metric+part_id+pap+dcl, PAP masks + SRM (= loss.preset full)" in banner[0]
    assert "custom" not in banner[0]
    assert main(["config", "--config", "tiny"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["loss"]["preset"] is None  # what `dclnet config` shows: the keys, no preset
    assert runs.loss_summary(load_config(CONFIG_DIR / "demo.yaml", [])).endswith(
        "(= loss.preset full)"
    )


@pytest.mark.parametrize(
    ("overrides", "summary"),
    [
        (["loss.preset=baseline"], "loss id+metric (loss.preset baseline)"),
        (
            ["loss.srm=false"],
            "loss id+metric+part_id+pap+dcl, PAP masks, no SRM (= loss.preset dcl_pap)",
        ),  # fmt: skip
        (["loss.pap=0", "loss.part_id=0", "loss.dcl=0"], "loss id+metric (= loss.preset baseline)"),
        (
            ["loss.dcl_masks=stripes", "loss.pap=0", "loss.part_id=0"],
            "loss id+metric+dcl, stripe masks (= loss.preset dcl_stripes)",
        ),
        (["loss.dcl=0.5"], "dcl x0.5, PAP masks + SRM (custom: no loss.preset)"),
    ],
)
def test_loss_summary_names_the_preset_the_keys_amount_to(overrides, summary):
    assert runs.loss_summary(load_config(None, overrides)).endswith(summary)


def test_missing_best_pt_points_at_last_pt(tmp_path, capsys):
    run = tmp_path / "demo"
    run.mkdir()
    argv = ["test", "--checkpoint", str(run / "best.pt"), "--dataset", "synthetic"]
    assert main(argv) == 2
    assert capsys.readouterr().err == f"error: checkpoint {run / 'best.pt'} does not exist\n"
    (run / "last.pt").write_bytes(b"")  # only its existence matters here
    assert main(argv) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line == (
        f"error: checkpoint {run / 'best.pt'} does not exist; best.pt is written only with a "
        "validation split (train.validation), and this run has last.pt: --checkpoint "
        f"{run / 'last.pt'}"
    )


def _subcommands() -> dict:
    import argparse

    from dclnet.cli_parser import build_parser

    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return parser, action.choices


def _example_commands(epilog: str) -> list[list[str]]:
    """``dclnet ...`` lines of an epilog (continuations joined, shell redirection cut)."""
    import shlex

    commands, pending = [], ""
    for line in epilog.splitlines():
        text = pending + line.strip()
        if text.endswith("\\"):
            pending = text[:-1] + " "
            continue
        pending = ""
        if text.startswith("dclnet "):
            commands.append(shlex.split(text.split(" > ")[0])[1:])
    return commands


@pytest.mark.parametrize("command", ["train", "test", "demo", "config"])
def test_help_ends_with_examples_that_parse(command):
    parser, subs = _subcommands()
    help_text = subs[command].format_help()
    assert "\nexamples:\n" in help_text
    examples = _example_commands(help_text.split("\nexamples:\n", 1)[1])
    assert len(examples) >= 3 and examples[0][0] == command
    for argv in examples:
        parser.parse_args(argv)  # SystemExit (usage error) fails the test


@pytest.mark.parametrize("command", ["train", "demo", "config"])
def test_config_help_lists_every_bundled_recipe(command):
    _, subs = _subcommands()
    action = next(a for a in subs[command]._actions if a.dest == "config")
    recipes = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    assert {"study", "study96", "demo", "sysu"} <= set(recipes)
    assert ", ".join(recipes) in action.help  # every one, from the folder, not a fixed list


def test_ci_run_cites_the_readme_section_and_command_it_runs():
    import re
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    ci = (repo / ".ci" / "run").read_text(encoding="utf-8")
    readme = (repo / "README.md").read_text(encoding="utf-8")
    lines = ci.splitlines()
    first = next(i for i, line in enumerate(lines) if i and not line.startswith("#"))
    head = " ".join(line.lstrip("# ") for line in lines[1:first])  # the leading comment
    cited = re.findall(r'"([^"]+)"', head)
    assert cited, head
    for name in cited:  # e.g. "**Tests**" in "## Quick start"
        assert re.search(rf"^{re.escape(name)}", readme, re.MULTILINE), name
    command = lines[lines.index("# --- the README test command, verbatim ---") + 1]
    assert any(command in line for line in readme.splitlines() if line.startswith("python3 -m"))


def _sub(command: str):
    import argparse

    _, subs = _subcommands()
    first, *rest = command.split()
    sub = subs[first]
    for name in rest:  # visualize embedding
        kinds = next(a for a in sub._actions if isinstance(a, argparse._SubParsersAction))
        sub = kinds.choices[name]
    return sub


@pytest.mark.parametrize(
    "command", ["index", "search", "export", "visualize embedding", "visualize masks"]
)
def test_inference_help_states_every_default(command):
    import argparse

    sub = _sub(command)
    formatter = sub._get_formatter()
    for action in sub._actions:
        if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
            continue
        text = formatter._get_help_string(action) or ""
        assert "default" in text or "(required)" in text, (command, action.dest, text)
    if command in ("index", "search"):  # written by the formatter: the help shows it
        assert "images per forward pass (default: 64)" in " ".join(sub.format_help().split())


def test_embedding_help_and_docs_say_how_many_identities_are_marked():
    from pathlib import Path

    from dclnet.inference.visualize_embedding import IDENTITY_MARKERS, MARKED

    assert MARKED <= len(IDENTITY_MARKERS) and len(set(IDENTITY_MARKERS)) == len(IDENTITY_MARKERS)
    labels = next(a for a in _sub("visualize embedding")._actions if a.dest == "labels")
    assert f"up to {MARKED} identities are marked" in labels.help
    docs = (Path(__file__).resolve().parents[1] / "docs" / "inference.md").read_text()
    assert f"up to {MARKED} identities marked" in docs and "colour = identity" not in docs


def test_every_help_page_stays_wrapped(monkeypatch):
    """Sub-commands given the defaults formatter keep argparse's wrapping of descriptions."""
    import argparse

    monkeypatch.setenv("COLUMNS", "80")  # argparse wraps to the terminal's width

    def pages(parser, name):
        yield name, parser.format_help()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub, command in action.choices.items():
                    yield from pages(command, f"{name} {sub}")

    parser, _ = _subcommands()
    long = [(name, line) for name, text in pages(parser, "dclnet") for line in text.splitlines()
            if len(line) > 100]  # fmt: skip
    assert long == []


def test_demo_record_says_how_long_the_one_time_pretraining_took(tmp_path):
    cfg = load_config(None, ["model.pretrained=synthetic", "model.arch=resnet18",
                             f"data.cache_dir={tmp_path}", "data.height=32", "data.width=16",
                             "model.pretrain_ids=6", "model.pretrain_steps=1"])  # fmt: skip
    first = runs._pretrain_once(cfg)
    assert first > 0 and len(list((tmp_path / "pretrained").glob("*.pt"))) == 1
    assert runs._pretrain_once(cfg) == 0.0  # cached: nothing made, nothing timed
    assert runs._pretrain_once(load_config(None, ["model.pretrained=null"])) == 0.0
