"""What a training run says: config summary, data statistics, epoch lines and ``log.txt``.

Plain text builders (no side effects) plus :func:`run_log_file`, which mirrors the ``dclnet``
loggers into the run folder's ``log.txt`` for the duration of a training run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from dclnet.config import Config
from dclnet.data.datasets import TrainData
from dclnet.fileio import open_no_follow

LOG_NAME = "log.txt"
FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def override_text(value: Any) -> str:
    """``value`` written so that a ``section.key=<text>`` override reads it back unchanged."""
    if isinstance(value, tuple):
        return "[" + ",".join(override_text(v) for v in value) + "]"
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    if text.endswith("\n..."):  # a plain scalar ends its document with a marker
        text = text[: -len("\n...")].strip()
    return text


def config_changes(cfg: Config) -> list[str]:
    """``section.key=value`` for every key that differs from the dataclass defaults."""
    changes = []
    for section in dataclasses.fields(cfg):
        values = getattr(cfg, section.name)
        defaults = type(values)()
        for f in dataclasses.fields(values):
            value = getattr(values, f.name)
            if value != getattr(defaults, f.name):
                changes.append(f"{section.name}.{f.name}={override_text(value)}")
    return changes


def config_summary(cfg: Config) -> str:
    """One line: data set, architecture, input size, then the keys changed from the defaults."""
    d = cfg.data
    head = f"config: dataset={d.dataset} arch={cfg.model.arch} input={d.height}x{d.width}"
    changes = config_changes(cfg)
    return head + " | " + (" ".join(changes) if changes else "all defaults")


def _rows(data: TrainData) -> list[tuple[str, str, int, int]]:
    rows = []
    for images in (data.visible, data.infrared):
        labels, cams = np.asarray(images.labels), np.asarray(images.cams)
        rows.append((images.modality, "all", len(np.unique(labels)), len(labels)))
        for cam in np.unique(cams):
            mask = cams == cam
            rows.append(("", str(int(cam)), len(np.unique(labels[mask])), int(mask.sum())))
    return rows


def data_statistics(
    data: TrainData,
    dataset: str,
    *,
    batches_per_epoch: int,
    num_ids: int,
    num_instances: int,
    world_size: int = 1,
) -> str:
    """A torchreid-style table of the training data (identities and images per camera)."""
    rows = [("modality", "camera", "ids", "images")] + [
        (m, c, str(i), str(n)) for m, c, i, n in _rows(data)
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    rule = "  " + "-" * (sum(widths) + 6)

    def line(r: tuple[str, ...]) -> str:
        return (
            f"  {r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]:>{widths[3]}}"
        )

    shared = np.intersect1d(data.visible.labels, data.infrared.labels)
    lines = [
        f"training data: {dataset}, {data.num_classes} identities "
        f"({len(shared)} with both modalities are sampled)",
        rule,
        line(rows[0]),
        rule,
        *(line(r) for r in rows[1:]),
        rule,
    ]
    per_batch = num_ids * num_instances
    where = f" per rank, {world_size} ranks" if world_size > 1 else ""
    lines.append(
        f"  batches per epoch: {batches_per_epoch}{where} (P={num_ids} ids x K={num_instances} "
        f"= {per_batch} images per modality, {2 * per_batch} per batch)"
    )
    if data.validation is not None:
        v = data.validation
        lines.append(f"  validation (held-out training identities): {len(v.paths)} images")
    return "\n".join(lines)


def format_duration(seconds: float) -> str:
    """``h:mm:ss`` (``m:ss`` under an hour)."""
    total = max(0, round(seconds))
    h, rest = divmod(total, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def epoch_summary(
    epoch: int,
    epochs: int,
    losses: dict[str, float],
    *,
    lr: float,
    seconds: float,
    images_per_s: float,
    eta_seconds: float,
) -> str:
    """``epoch 3/40 loss 4.213 (id 2.101 metric 0.512 ...) lr 3.50e-04 ...`` (one line)."""
    terms = " ".join(f"{k} {v:.3f}" for k, v in losses.items() if k != "total")
    loss = f"loss {losses['total']:.3f}" if "total" in losses else "loss -"
    if terms:
        loss += f" ({terms})"
    return (
        f"epoch {epoch}/{epochs} {loss} lr {lr:.2e} time {seconds:.1f} s "
        f"({images_per_s:.1f} images/s) eta {format_duration(eta_seconds)}"
    )


class RunLogHandler(logging.StreamHandler):
    """Appends log records to a run's ``log.txt``, opened without following a link.

    A write that fails (a full disk, a vanished file system) must not interrupt training nor
    print logging's ``--- Logging error ---`` traceback for every record: the first failure
    is said once, on stderr, in one line naming the file, and the handler stops writing.

    Args:
        path: The log file (appended to; created with the umask's mode).

    Raises:
        OutputError: ``path`` is a symbolic link.
    """

    def __init__(self, path: Path) -> None:
        fd = open_no_follow(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        super().__init__(os.fdopen(fd, "a", encoding="utf-8"))
        self.path = Path(path)
        self.name = str(path)
        self.failed = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.failed:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        if self.failed:
            return
        self.failed = True
        exc = sys.exc_info()[1]
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        sys.stderr.write(
            f"warning: cannot write {self.path} ({reason}); it is no longer written for this "
            "run (the console log goes on)\n"
        )

    def close(self) -> None:
        with contextlib.suppress(OSError):  # flushing a full disk's buffer fails again
            super().close()
        with contextlib.suppress(OSError):
            self.stream.close()


@contextlib.contextmanager
def run_log_file(output: Path, enabled: bool = True) -> Iterator[Path | None]:
    """Mirror the ``dclnet`` loggers into ``output/log.txt`` (appended) while in the block.

    The file gets INFO lines even when logging is not configured (the ``dclnet`` logger is
    set to INFO for the block unless someone set its level explicitly, e.g. the CLI's
    ``--verbose`` or its quiet mode for ranks other than 0). ``enabled=False`` does nothing.
    ``log.txt`` is never opened through a symbolic link, and a failed write is reported once
    (see :class:`RunLogHandler`).
    """
    if not enabled:
        yield None
        return
    path = Path(output) / LOG_NAME
    handler = RunLogHandler(path)
    handler.setFormatter(logging.Formatter(FILE_FORMAT))
    pkg = logging.getLogger("dclnet")
    saved = pkg.level
    if saved == logging.NOTSET and pkg.getEffectiveLevel() > logging.INFO:
        pkg.setLevel(logging.INFO)
    pkg.addHandler(handler)
    try:
        yield path
    finally:
        pkg.removeHandler(handler)
        pkg.setLevel(saved)
        handler.close()
