"""``dclnet <command>`` — also runnable as ``python -m dclnet`` (the torchrun launch form).

This module runs one command: it parses the arguments (:mod:`dclnet.cli_parser`), refuses
outputs, devices and counts that cannot work, sets up logging (under torchrun only rank 0
talks), and calls the command's function (:mod:`dclnet.cli_commands`); the work happens in
the library. Input problems are :class:`~dclnet.errors.DclnetError` and are printed as one
``error:`` line (exit status 2); :func:`main` is the last line of defence: an ``OSError`` is
one ``error: <path>: <reason>`` line (exit 2), anything else one line pointing at a saved
traceback (exit 1, ``--debug`` re-raises it).
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Sequence

from dclnet.cli_commands import resolve_config_path  # noqa: F401 (scripts import it here)
from dclnet.cli_parser import build_parser
from dclnet.errors import DclnetError

logger = logging.getLogger("dclnet")


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
