"""The argument parser of ``dclnet``: every sub-command's options, help texts and examples.

:func:`build_parser` declares ``dclnet``'s own sub-commands (their functions are in
:mod:`dclnet.cli_commands`), then lets the library register the others (``index``,
``search``, ``visualize``, ``export``, ``serve``, ``benchmark``, ``cache``). Every help text
states its defaults (:class:`HelpFormatter`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dclnet import __version__
from dclnet import cli_commands as commands
from dclnet.cli_commands import bundled_recipes

TRAIN_EXAMPLES = """\
examples:
  # a one-minute smoke run on the built-in synthetic set (CPU)
  dclnet train --config tiny --output runs/tiny
  # the paper recipe on SYSU-MM01, then continue it after an interruption
  dclnet train --config sysu --root data/SYSU-MM01 --output runs/sysu
  dclnet train --config sysu --root data/SYSU-MM01 --output runs/sysu --resume
  # change any config key (list them with `dclnet config --keys`)
  dclnet train --config sysu --root data/SYSU-MM01 --output runs/sysu-e10 optim.epochs=10
  # RegDB: all 10 index trials, one model each, then mean +- std
  dclnet train --config regdb --root data/RegDB --trial all --output runs/regdb
  # 4 GPUs of one machine (docs/distributed.md)
  torchrun --standalone --nproc_per_node 4 -m dclnet train --config sysu \\
      --root data/SYSU-MM01 --output runs/sysu-4gpu

Run folder: config.yaml, log.txt (what the console shows), metrics.jsonl, last.pt,
best.pt (with a validation split) and test_results.json; see docs/training.md.
"""

DEMO_EXAMPLES = """\
examples:
  # the README's demo: raw-pixel baseline, then DCLNet trained and tested (CPU)
  dclnet demo
  # again with another training seed, into a new run folder
  dclnet demo --output runs/demo-seed1 train.seed=1
  # replace the previous demo and keep its numbers, timing and machine as JSON
  dclnet demo --overwrite --json demo.json
  # a one-minute check that everything runs (the smoke recipe, random init)
  dclnet demo --config tiny --output runs/demo-tiny

Writes the run folder of `dclnet train` (last.pt, no best.pt: the demo has no validation
split); use it with `dclnet test --checkpoint runs/demo/last.pt --dataset synthetic`.
"""

TEST_EXAMPLES = """\
examples:
  # the demo's model on the synthetic test set (the checkpoint's own synthetic seed)
  dclnet test --checkpoint runs/demo/last.pt --dataset synthetic
  # SYSU-MM01: all-search single-shot (the default), then indoor-search 10-shot
  dclnet test --checkpoint runs/sysu/best.pt --dataset sysu --root data/SYSU-MM01
  dclnet test --checkpoint runs/sysu/best.pt --dataset sysu --root data/SYSU-MM01 \\
      --mode indoor --shots 10 --json indoor10.json
  # RegDB trial 3, thermal to visible, with flip-averaged features and re-ranking
  dclnet test --checkpoint runs/regdb/trial3/last.pt --dataset regdb --root data/RegDB \\
      --trial 3 --direction t2v --flip --rerank

best.pt exists only in runs with a validation split (train.validation); last.pt always.
"""

CONFIG_EXAMPLES = """\
examples:
  # what `dclnet train --config sysu` would use
  dclnet config --config sysu
  # a recipe of your own: the demo with 20 epochs, written out and trained
  dclnet config --config demo optim.epochs=20 > my.yaml
  dclnet train --config my.yaml --output runs/mine
  # every key with its type, default and meaning
  dclnet config --keys
"""


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Help that states every default: ``(default: X)``, ``(default: off)`` for flags.

    An option whose default is ``None`` says in its own text what happens without it; text
    that already mentions its default is left alone; required options get ``(required)``.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is argparse.SUPPRESS or "default" in text:
            return text
        if action.required:
            return f"{text} (required)"
        if action.nargs == 0:  # store_true and friends
            return f"{text} (default: off)"
        if action.default is None:
            return text
        return super()._get_help_string(action)


def _add_protocol_args(
    p: argparse.ArgumentParser, *, datasets: tuple[str, ...], dataset_help: str = "data set"
) -> None:
    p.add_argument("--dataset", required=True, choices=datasets, help=dataset_help)
    p.add_argument(
        "--root",
        type=Path,
        help="raw data-set root (default: none; needed for every data set but synthetic)",
    )
    p.add_argument("--mode", default="all", choices=("all", "indoor"), help="SYSU search mode")
    p.add_argument("--shots", type=int, default=1, choices=(1, 10), help="SYSU gallery shots")
    p.add_argument(
        "--sampler",
        default="seeded",
        choices=("seeded", "official"),
        help="SYSU gallery sampler: seeded (Python random, AGW family) or official "
        "(exp/rand_perm_cam.mat)",
    )
    p.add_argument("--trials", type=int, default=10, help="gallery trials (SYSU, LLCM)")
    p.add_argument(
        "--trial", type=int, default=None, help="RegDB split 1..10 (default: none; RegDB needs it)"
    )
    p.add_argument(
        "--direction",
        default=None,
        choices=("i2v", "v2i", "v2t", "t2v"),
        help="search direction (default: i2v for SYSU/LLCM, v2t for RegDB)",
    )
    p.add_argument(
        "--rerank",
        action="store_true",
        help="also report k-reciprocal re-ranked results (separately)",
    )
    p.add_argument("--json", type=Path, help="write results as JSON here (default: do not)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dclnet",
        description="DCLNet for visible-infrared person re-identification.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"dclnet {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of any error (re-raise it)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    overrides_help = "section.key=value overrides, e.g. optim.epochs=10 (default: none)"
    recipes = ", ".join(bundled_recipes())
    recipe_help = (
        f"YAML recipe, or a bundled name: {recipes} "
        "(default: none, i.e. the built-in defaults; see `dclnet config --keys`)"
    )

    p = sub.add_parser(
        "demo",
        help="train and test DCLNet on the built-in synthetic set (CPU)",
        epilog=DEMO_EXAMPLES,
        formatter_class=HelpFormatter,
    )
    p.add_argument("--output", type=Path, default=Path("runs/demo"), help="run folder")
    p.add_argument(
        "--config", default="demo", help=f"recipe: a YAML file or a bundled name ({recipes})"
    )
    p.add_argument("--overwrite", action="store_true", help="replace a previous run in OUTPUT")
    p.add_argument(
        "--json",
        type=Path,
        default=None,
        help="also write the results, timing and machine here (default: do not)",
    )
    p.add_argument("overrides", nargs="*", help=overrides_help)
    p.set_defaults(func=commands.cmd_demo)

    p = sub.add_parser(
        "train",
        help="train DCLNet",
        description="Train DCLNet: recipe (--config), then section.key=value overrides, then\n"
        "--dataset/--root/--trial on top. Logs the config, data statistics and one line per\n"
        "epoch, mirrored into OUTPUT/log.txt.",
        epilog=TRAIN_EXAMPLES,
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "--dataset",
        choices=("synthetic", "sysu", "regdb", "llcm"),
        help="data set (default: the recipe's data.dataset)",
    )
    p.add_argument("--root", type=Path, help="raw data-set root (default: the recipe's data.root)")
    p.add_argument(
        "--trial",
        help="RegDB trial 1..10, or 'all' for the 10 trials (default: the recipe's data.trial; "
        "RegDB needs one or the other)",
    )
    p.add_argument("--config", help=recipe_help)
    p.add_argument("--output", type=Path, required=True, help="run folder")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT/last.pt")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="start over in an OUTPUT that holds a previous run (deletes its run files)",
    )
    p.add_argument("overrides", nargs="*", help=overrides_help)
    p.set_defaults(func=commands.cmd_train)

    p = sub.add_parser(
        "config",
        help="print the resolved config (YAML) without training, or list every key",
        description="Print the config that `dclnet train` with the same --config and overrides\n"
        "would use (defaults, then recipe, then overrides) as YAML that --config reads back.\n"
        "--keys lists every key with its type, default and meaning.",
        epilog=CONFIG_EXAMPLES,
        formatter_class=HelpFormatter,
    )
    p.add_argument("--config", help=recipe_help)
    p.add_argument("--keys", action="store_true", help="list every key: type, default, meaning")
    p.add_argument("overrides", nargs="*", help=overrides_help)
    p.set_defaults(func=commands.cmd_config)

    p = sub.add_parser(
        "test",
        help="evaluate a checkpoint under a data set's full protocol",
        epilog=TEST_EXAMPLES,
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "--checkpoint", type=Path, required=True, help="a dclnet checkpoint (last.pt, best.pt)"
    )
    _add_protocol_args(p, datasets=("sysu", "regdb", "llcm", "synthetic"))
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, ...")
    p.add_argument("--batch-size", type=int, default=128, help="images per forward")
    p.add_argument(
        "--flip",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="flip-averaged features, or not (default: as the checkpoint's run, eval.flip)",
    )
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="image cache (default: $XDG_CACHE_HOME/dclnet or ~/.cache/dclnet)",
    )
    p.set_defaults(func=commands.cmd_test)

    p = sub.add_parser(
        "diagnose",
        help="measure PAP masks, SRM and pixel correspondence against synthetic ground truth",
        description="Score a checkpoint's mechanisms on the synthetic set's test identities: "
        "foreground IoU and part mIoU of the PAP / PAP+SRM / CAM-label / stripe masks against "
        "the true person and body bands, and cross-modal pixel correspondence on Z.",
    )
    p.add_argument("--checkpoint", type=Path, required=True, help="a dclnet checkpoint")
    p.add_argument(
        "--synthetic-seed",
        type=int,
        default=None,
        help="seed of the synthetic set (default: the checkpoint's data.synthetic_seed)",
    )
    p.add_argument(
        "--synthetic-ids",
        type=int,
        default=None,
        help="identities of the synthetic set (default: the checkpoint's data.synthetic_ids)",
    )
    p.add_argument("--json", type=Path, default=None, help="also write the result as JSON here")
    p.add_argument("--device", default="auto", help="cpu, cuda, ... (default: auto)")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward (default: 64)")
    p.set_defaults(func=commands.cmd_diagnose)

    p = sub.add_parser(
        "evaluate-features",
        help="evaluate any model's features (FEATS.npz) under the exact protocol",
    )
    # The synthetic set lives in memory: on disk it is a SYSU-MM01 tree (`dclnet synth sysu`).
    _add_protocol_args(
        p,
        datasets=("sysu", "regdb", "llcm"),
        dataset_help="data set on disk (for the synthetic set: `dclnet synth sysu DIR`, then "
        "--dataset sysu --root DIR)",
    )
    p.add_argument(
        "--features",
        type=Path,
        required=True,
        help="npz with 'paths' (relative to ROOT) and 'features' (one row per path)",
    )
    p.set_defaults(func=commands.cmd_evaluate_features)

    p = sub.add_parser("synth", help="write the synthetic set in a raw layout")
    p.add_argument("layout", choices=("sysu", "regdb", "llcm"))
    p.add_argument("out_dir", type=Path)
    p.add_argument("--ids", type=int, default=None, help="number of identities")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--style",
        choices=("default", "wide", "heldout"),
        default="default",
        help="the people's look: the built-in sets' own, the synthetic pretraining's "
        "randomised one, or the held-out one nothing is pretrained or tuned on "
        "(docs/synthetic.md)",
    )
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=commands.cmd_synth)

    from dclnet.inference.commands import register as register_inference

    register_inference(sub)
    from dclnet.inference.serve import register as register_serve

    register_serve(sub)
    from dclnet.benchmark import register as register_benchmark

    register_benchmark(sub)
    from dclnet.data.cache_admin import register as register_cache

    register_cache(sub)
    for command in sub.choices.values():  # --debug also after the command name
        command.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
        )
    _state_defaults(parser)
    return parser


class WrappingHelpFormatter(HelpFormatter):
    """:class:`HelpFormatter` that wraps descriptions to the terminal, as argparse's own does."""

    _fill_text = argparse.HelpFormatter._fill_text


def _state_defaults(parser: argparse.ArgumentParser) -> None:
    """Give every sub-command (``visualize embedding`` too) that the library registered with
    argparse's plain formatter the :class:`WrappingHelpFormatter`, so that its help states
    defaults and its description stays wrapped."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command in action.choices.values():
                if command.formatter_class is argparse.HelpFormatter:
                    command.formatter_class = WrappingHelpFormatter
                _state_defaults(command)
