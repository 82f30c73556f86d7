"""``dclnet <command>`` — also runnable as ``python -m dclnet`` (the torchrun launch form).

Each sub-command is a small function; the work happens in the library. Input problems are
:class:`~dclnet.errors.DclnetError` and are printed as one ``error:`` line (exit status 2);
:func:`main` is the last line of defence: an ``OSError`` is one ``error: <path>: <reason>``
line (exit 2), anything else one line pointing at a saved traceback (exit 1, ``--debug``
re-raises it).
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from dclnet import __version__
from dclnet.errors import DclnetError

logger = logging.getLogger("dclnet")

CONFIG_DIR = Path(__file__).parent / "configs"

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


def bundled_recipes() -> list[str]:
    """Names of the recipes shipped in ``dclnet/configs`` (``--config NAME``), sorted."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


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


def resolve_config_path(value: str | None) -> Path | None:
    """A YAML path, or the name of a bundled recipe (``demo``, ``tiny``, ``sysu``, ...)."""
    if value is None:
        return None
    path = Path(value)
    if path.is_file():  # a folder named like a recipe (runs/demo, ./tiny) must not hide it
        return path
    bundled = CONFIG_DIR / f"{value}.yaml"
    if bundled.exists():
        return bundled
    names = ", ".join(bundled_recipes())
    raise DclnetError(f"config {value!r} is neither a file nor a bundled recipe ({names})")


def _settings(args: argparse.Namespace):
    from dclnet.data.splits import ProtocolSettings

    trial = args.trial
    if args.dataset == "regdb" and trial is None:
        raise DclnetError("RegDB needs --trial 1..10")
    return ProtocolSettings(
        dataset=args.dataset,
        mode=args.mode,
        shots=args.shots,
        sampler=args.sampler,
        trials=args.trials,
        trial=trial if args.dataset == "regdb" else None,
        direction=args.direction,
    )


def _report(result, json_path: Path | None) -> None:
    from dclnet.evaluation.protocols import format_table, write_json

    print(format_table(result))
    if json_path is not None:
        write_json(result.to_json(), json_path)
        print(f"wrote {json_path}")


def cmd_evaluate_features(args: argparse.Namespace) -> None:
    from dclnet.data.splits import build_splits
    from dclnet.evaluation.protocols import evaluate_splits, load_features_npz

    if args.root is None:
        raise DclnetError("--root is required: the raw data-set folder")
    settings = _settings(args)
    splits = build_splits(settings, args.root)
    paths, feats = load_features_npz(args.features)
    _report(
        evaluate_splits(paths, feats, splits, settings.as_dict(), rerank=args.rerank), args.json
    )


def cmd_synth(args: argparse.Namespace) -> None:
    from dclnet.data.sources.synthetic import write_llcm, write_regdb, write_sysu

    write = {"sysu": write_sysu, "regdb": write_regdb, "llcm": write_llcm}[args.layout]
    kwargs = {"seed": args.seed, "overwrite": args.overwrite}
    if args.ids is not None:
        kwargs["num_ids"] = args.ids
    out = write(args.out_dir, **kwargs)
    print(f"wrote a synthetic {args.layout} data set to {out}")


def cmd_train(args: argparse.Namespace) -> None:
    from dclnet.engine.runs import run_training

    run_training(
        config=resolve_config_path(args.config),
        overrides=args.overrides,
        dataset=args.dataset,
        root=args.root,
        trial=args.trial,
        output=args.output,
        resume=args.resume,
        overwrite=args.overwrite,
    )


def cmd_test(args: argparse.Namespace) -> None:
    from dclnet.engine.runs import test_checkpoint

    result = test_checkpoint(
        args.checkpoint,
        _settings(args),
        root=args.root,
        device=args.device,
        batch_size=args.batch_size,
        flip=args.flip,
        rerank=args.rerank,
        cache_dir=args.cache_dir,
    )
    _report(result, args.json)


def cmd_demo(args: argparse.Namespace) -> None:
    from dclnet.engine.runs import run_demo

    config = resolve_config_path(args.config)
    result = run_demo(
        args.output, config=config, overrides=args.overrides, overwrite=args.overwrite
    )
    if args.json is not None:
        from dclnet.evaluation.protocols import write_json

        command = ["dclnet demo"] + (["--config", args.config] if args.config != "demo" else [])
        write_json({"command": " ".join(command + args.overrides), **result}, args.json)


def cmd_config(args: argparse.Namespace) -> None:
    from dclnet.config import check_protocol, format_keys, load_config, to_dict

    if args.keys:
        if args.config is not None or args.overrides:
            raise DclnetError("--keys lists every key of the schema; drop --config and overrides")
        print(format_keys())
        return
    import yaml

    cfg = check_protocol(load_config(resolve_config_path(args.config), args.overrides))
    print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")


def cmd_diagnose(args: argparse.Namespace) -> None:
    from dclnet.engine.diagnose_run import run_diagnose

    run_diagnose(
        args.checkpoint,
        synthetic_seed=args.synthetic_seed,
        synthetic_ids=args.synthetic_ids,
        json_path=args.json,
        device=args.device,
        batch_size=args.batch_size,
    )


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
    p.set_defaults(func=cmd_demo)

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
    p.set_defaults(func=cmd_train)

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
    p.set_defaults(func=cmd_config)

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
    p.add_argument("--flip", action="store_true", help="flip-averaged features")
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="image cache (default: $XDG_CACHE_HOME/dclnet or ~/.cache/dclnet)",
    )
    p.set_defaults(func=cmd_test)

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
    p.set_defaults(func=cmd_diagnose)

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
    p.set_defaults(func=cmd_evaluate_features)

    p = sub.add_parser("synth", help="write the synthetic set in a raw layout")
    p.add_argument("layout", choices=("sysu", "regdb", "llcm"))
    p.add_argument("out_dir", type=Path)
    p.add_argument("--ids", type=int, default=None, help="number of identities")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_synth)

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


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _save_traceback() -> str | None:
    """Write the current exception's traceback to a temp file; its path, or None."""
    import tempfile
    import traceback

    try:
        with tempfile.NamedTemporaryFile(
            "w", prefix="dclnet-traceback-", suffix=".txt", delete=False
        ) as fh:
            fh.write(traceback.format_exc())
            return fh.name
    except OSError:
        return None


def _os_error_line(exc: OSError) -> str:
    """``<path>: <reason>`` from an OSError (e.g. ``runs/x/last.pt: No space left on device``)."""
    reason = exc.strerror or _one_line(exc) or type(exc).__name__
    if exc.filename is None:
        return reason
    where = str(exc.filename)
    if getattr(exc, "filename2", None) is not None:
        where += f" -> {exc.filename2}"
    return f"{where}: {reason}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; every failure reaches the user as one ``error:`` line.

    Exit status: 0 success, 2 a problem with the input or the file system, 1 an unexpected
    error (its traceback goes to a temp file; ``--debug`` raises it instead), 130 interrupted.
    """
    args = build_parser().parse_args(argv)
    # Under torchrun only rank 0 talks: the other ranks show errors only, and no warnings.
    quiet = _env_rank() != 0
    level = logging.ERROR if quiet else logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    package = logging.getLogger("dclnet")
    saved_level = package.level
    if quiet or args.verbose:
        package.setLevel(level)
    try:
        with warnings.catch_warnings():
            if quiet:
                warnings.simplefilter("ignore")
            return _run(args)
    finally:
        package.setLevel(saved_level)


def _env_rank() -> int:
    from dclnet.engine.distributed import env_rank

    return env_rank()


# Commands whose --output is a folder (for the others it is a file); --json/--csv are files.
_OUTPUT_DIRS = ("train", "demo", "index")
# Integer options and their smallest valid value, whichever command has them.
_MINIMUMS = {
    "batch_size": 1,
    "workers": 0,
    "topk": 1,
    "chunk_size": 1,
    "seed": 0,  # synth, visualize embedding: numpy refuses negative seeds deep inside
    "synthetic_seed": 0,
}


def _check_arguments(args: argparse.Namespace) -> None:
    """Refuse output paths, devices and counts that cannot work, before any work starts."""
    from dclnet.config import check_device
    from dclnet.fileio import check_output_dir, check_output_file

    for name in ("json", "csv"):
        if getattr(args, name, None) is not None:
            check_output_file(getattr(args, name))
    if getattr(args, "output", None) is not None:
        check = check_output_dir if args.command in _OUTPUT_DIRS else check_output_file
        check(args.output)
    if getattr(args, "device", None) is not None:
        check_device(args.device, "--device")
    for name, low in _MINIMUMS.items():
        value = getattr(args, name, None)
        if isinstance(value, int) and value < low:
            option = "--" + name.replace("_", "-")
            raise DclnetError(f"{option} must be >= {low}, got {value}")


def _run(args: argparse.Namespace) -> int:
    try:
        _check_arguments(args)
        args.func(args)
    except KeyboardInterrupt:
        print("interrupted; continue a training run with --resume", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        if isinstance(exc, DclnetError):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if isinstance(exc, OSError):
            print(f"error: {_os_error_line(exc)}", file=sys.stderr)
            return 2
        saved = _save_traceback()
        where = f"full traceback in {saved}; " if saved else ""
        print(
            f"error: unexpected {type(exc).__name__}: {_one_line(exc)} "
            f"({where}rerun with --debug to show it)",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
