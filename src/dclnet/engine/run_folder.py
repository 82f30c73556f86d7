"""Run folders: which files a training run owns, one training per folder, clean resume.

``fit`` claims its output folder here before any work: a used folder needs ``resume`` or
``overwrite`` (which deletes only the run's own files), a ``.lock`` keeps a second training
out, stale temp files of earlier crashes go, and on resume the metrics log is cut back to the
checkpoint's step.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from pathlib import Path

from dclnet.engine.runlog import LOG_NAME
from dclnet.errors import CheckpointError, TrainingError
from dclnet.fileio import atomic_write, check_output_dir, file_lock, refuse_link

logger = logging.getLogger(__name__)
# Files and folders ``fit`` writes in a run folder (what ``overwrite=True`` clears).
RUN_FILES = ("last.pt", "best.pt", "metrics.jsonl", "config.yaml", "test_results.json", LOG_NAME)
RUN_DIRS = ("tensorboard",)
RUN_GLOBS = ("*.log",)
LOCK_NAME = ".lock"


def _lock_run_folder(output: Path) -> contextlib.ExitStack:
    """Hold ``output/.lock`` (one training per folder at a time); give it to
    :func:`release_run_folder`, which deletes the file.

    The lock file is never opened through a symbolic link (a planted ``.lock`` link would
    create or lock a file outside the folder): such a link is refused.
    """
    path = output / LOCK_NAME
    stack = contextlib.ExitStack()
    if not stack.enter_context(file_lock(path, blocking=False)):
        stack.close()
        raise TrainingError(
            f"run folder {output} is in use by another training (it holds {path}); "
            "wait for it to finish or choose another --output"
        )
    return stack


def release_run_folder(lock: contextlib.ExitStack | None) -> None:
    """Give back a lock from :func:`claim_run_folder` (None: nothing to do)."""
    if lock is not None:
        lock.close()


def claim_run_folder(output: Path, *, resume: bool, overwrite: bool):
    """Make ``output`` ready for a run, so that two runs never mix in one folder.

    Takes the folder's lock (returned: give it to :func:`release_run_folder`), removes stale
    ``.*.tmp`` files of crashed writes, and checks the folder: a fresh run needs an empty (or
    new) folder; ``overwrite`` first deletes the run files :func:`fit` owns (nothing else);
    ``resume`` refuses run files that are symbolic links (the run appends to them).
    """
    if resume and overwrite:
        raise TrainingError("--resume continues a run and --overwrite starts over; pass one")
    if resume and not (output / "last.pt").is_file():
        raise CheckpointError(
            f"cannot resume: {output / 'last.pt'} does not exist (wrong --output, or the run "
            "stopped before its first epoch ended: start over with --overwrite)"
        )
    check_output_dir(output)
    output.mkdir(parents=True, exist_ok=True)
    lock = _lock_run_folder(output)
    try:
        _check_run_folder(output, resume=resume, overwrite=overwrite)
    except BaseException:
        release_run_folder(lock)
        raise
    return lock


def refuse_used_run_folder(output: Path, *, overwrite: bool, can_resume: bool = True) -> list[str]:
    """Refuse ``output`` for a fresh run when it holds anything, or (``overwrite``) anything
    but a previous run's own files; changes nothing. A folder that does not exist is free;
    the lock and stale ``.*.tmp`` files (:func:`claim_run_folder` deletes them) do not count.
    ``can_resume``: whether the hint offers ``--resume`` (``dclnet demo`` has none).

    Returns:
        The names ``overwrite`` would delete (empty for a free folder).

    Raises:
        TrainingError: One line naming the folder, what it holds and the way out.
    """
    if not output.is_dir():
        return []
    stale = {p.name for p in output.glob(".*.tmp")}
    present = sorted(p.name for p in output.iterdir() if p.name not in stale | {LOCK_NAME})
    owned = set(RUN_FILES) | set(RUN_DIRS) | {p.name for g in RUN_GLOBS for p in output.glob(g)}
    foreign = [name for name in present if name not in owned]
    if foreign or (present and not overwrite):
        shown = ", ".join((foreign or present)[:5]) + (
            ", ..." if len(foreign or present) > 5 else ""
        )
        hint = (
            "--overwrite deletes only a run's own files; choose another --output"
            if overwrite
            else "continue it with --resume, start over with --overwrite, or choose another "
            "--output"
            if can_resume
            else "start over with --overwrite, or choose another --output"
        )
        raise TrainingError(f"run folder {output} is not empty ({shown}): {hint}")
    return present


def _check_run_folder(output: Path, *, resume: bool, overwrite: bool) -> None:
    for stale in output.glob(".*.tmp"):
        stale.unlink(missing_ok=True)
    if resume:  # the run appends to these: a planted link must not redirect it
        for name in RUN_FILES:
            refuse_link(output / name)
        return
    present = refuse_used_run_folder(output, overwrite=overwrite)
    for name in present:  # overwrite: only the previous run's own files are left
        path = output / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    if present:
        logger.info("--overwrite: deleted %s from %s", ", ".join(present), output)


# What a resumed run cannot change: the network's shape and input, the data it trains on, the
# optimiser type and the loss recipe (which decides the frozen parameters, hence the optimiser's
# parameter groups). Anything else (epochs, learning rate, logging) may change on resume.
RESUME_FIXED = {
    "data.dataset": "the training data",
    "data.trial": "the training data",
    "data.height": "the network input",
    "data.width": "the network input",
    "model.arch": "the architecture",
    "model.split": "the architecture",
    "model.num_parts": "the architecture",
    "model.gem_p": "the architecture",
    "model.layer3_stride": "the architecture",
    "loss.preset": "the loss recipe",
    "optim.optimizer": "the optimiser",
}
_LOSS_TERMS = ("id", "metric", "part_id", "pap", "dcl")
_FIX = "resume without that override, or start a new run (--overwrite or another --output)"


def check_resume_config(saved: dict, new: dict, checkpoint: Path) -> None:
    """Raise if ``new`` (a resolved config as a dict) changes a key a resume cannot change.

    Args:
        saved: The config stored in the checkpoint being resumed (keys it lacks are not
            compared: a checkpoint of an older dclnet).
        new: The config of the resumed run.
        checkpoint: The checkpoint, for the message.
    """
    for key, what in RESUME_FIXED.items():
        section, name = key.split(".")
        if name not in saved.get(section, {}):
            continue
        old, value = saved[section][name], new[section][name]
        if old != value:
            raise TrainingError(
                f"--resume cannot change {key} ({old!r} in {checkpoint}, now {value!r}): it "
                f"changes {what}; {_FIX}"
            )
    if new["loss"]["preset"] is not None:
        return
    for term in _LOSS_TERMS:  # a weight may change, but not switch a term on or off
        old, value = saved.get("loss", {}).get(term), new["loss"][term]
        if old is not None and (old == 0) != (value == 0):
            raise TrainingError(
                f"--resume cannot switch loss.{term} {'on' if value else 'off'} ({old!r} in "
                f"{checkpoint}, now {value!r}): it changes which parameters train; {_FIX}"
            )


def truncate_metrics(path: Path, last_step: int, *, drop_test: bool) -> None:
    """Keep the events of a resumed run up to its checkpoint (``step <= last_step``).

    A run killed mid-epoch logged steps its checkpoint does not contain; they are logged
    again after the resume. Unreadable (half-written) lines are dropped too.
    """
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            event = json.loads(line)
            step = int(event["step"])
        except (ValueError, KeyError, TypeError):
            continue
        if step <= last_step and not (drop_test and event.get("event") == "test"):
            kept.append(line + "\n")
    with atomic_write(path) as fh:
        fh.writelines(kept)
