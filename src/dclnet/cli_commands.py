"""The commands of ``dclnet``'s own sub-commands (``demo``, ``train``, ``config``, ``test``,
``diagnose``, ``evaluate-features``, ``synth``), and the bundled recipes they resolve.

Each ``cmd_*`` takes the parsed arguments (:mod:`dclnet.cli_parser` builds the parser) and
hands the work to the library, importing it lazily so that ``dclnet --help`` stays fast. Input
problems are raised as :class:`~dclnet.errors.DclnetError`; :mod:`dclnet.cli` prints them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dclnet.errors import DclnetError

CONFIG_DIR = Path(__file__).parent / "configs"


def bundled_recipes() -> list[str]:
    """Names of the recipes shipped in ``dclnet/configs`` (``--config NAME``), sorted."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


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
    kwargs = {"seed": args.seed, "overwrite": args.overwrite, "style": args.style}
    if args.ids is not None:
        kwargs["num_ids"] = args.ids
    out = write(args.out_dir, **kwargs)
    look = "" if args.style == "default" else f" ({args.style} look)"
    print(f"wrote a synthetic {args.layout} data set{look} to {out}")


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
