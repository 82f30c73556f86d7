"""Training curves from a run's ``metrics.jsonl``.

Each line of the log is ``{"event": ..., "step": int, ...numbers...}`` as written by
:class:`dclnet.engine.run_state.MetricsLog`: ``train`` lines carry the loss terms and ``lr``,
``epoch`` lines throughput, ``validation`` / ``monitoring`` / ``test`` lines ranking metrics
(``rank1``, ``mAP``, ``mINP``, ...).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dclnet.errors import DataError
from dclnet.inference.visualize import new_figure, save_figure

EVAL_EVENTS = {"validation": "-o", "monitoring": "--s", "test": "*"}
EVAL_METRICS = ("rank1", "mAP", "mINP")
NOT_LOSSES = {"event", "step", "epoch", "lr"}


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Records of a ``metrics.jsonl`` file, or of ``RUN/metrics.jsonl`` given a run folder.

    Raises:
        DataError: Missing file, a line that is not a JSON object with ``event`` and ``step``
            (named by its number), or no record at all.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        raise DataError(f"{path} does not exist; pass a run folder or its metrics.jsonl")
    records = []
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                raise DataError(f"{path}:{number}: not a JSON line; fix or delete it") from None
            if not isinstance(record, dict) or "event" not in record or "step" not in record:
                raise DataError(f"{path}:{number}: a record needs 'event' and 'step'")
            records.append(record)
    if not records:
        raise DataError(f"{path} holds no records yet")
    return records


def _series(records: list[dict[str, Any]], event: str, key: str) -> tuple[list, list]:
    rows = [r for r in records if r["event"] == event and _is_number(r.get(key))]
    return [r["step"] for r in rows], [r[key] for r in rows]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def step_range(records: list[dict[str, Any]]) -> tuple[float, float]:
    """x-limits shared by the three panels: every record's step, padded by 3 %.

    A single step (one test point, no training lines) gets a window of one step either side,
    so the point sits in the middle of a readable axis instead of a zero-width one.
    """
    steps = [r["step"] for r in records if _is_number(r.get("step"))]
    lo, hi = min(steps), max(steps)
    if hi == lo:
        return lo - 1.0, hi + 1.0
    pad = 0.03 * (hi - lo)
    return lo - pad, hi + pad


def _legend_below(ax, ncol: int) -> None:
    """The panel's legend under its x-axis label, never over the data."""
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=ncol, frameon=False)


def plot_curves(records: list[dict[str, Any]], output: str | Path, *, title: str = "") -> Path:
    """Draw :func:`curves_figure` to the PNG ``output``."""
    return save_figure(curves_figure(records, title=title), output)


def curves_figure(records: list[dict[str, Any]], *, title: str = ""):
    """Three panels against the training step: loss terms, learning rate, ranking metrics.

    The panels share the x-range of the whole log; legends sit below the panels. An
    evaluation series of at most three points is labelled with its values. The Figure is 1500
    x 480 pixels.
    """
    train = [r for r in records if r["event"] == "train"]
    losses = sorted(
        {k for r in train for k, v in r.items() if k not in NOT_LOSSES and _is_number(v)}
    )
    fig = new_figure(15.0, 4.8)
    ax_loss, ax_lr, ax_eval = fig.subplots(1, 3)
    fig.subplots_adjust(left=0.05, right=0.98, top=0.87, bottom=0.23, wspace=0.25)
    xlim = step_range(records)
    for key in losses:
        ax_loss.plot(*_series(records, "train", key), label=key, lw=1)
    ax_lr.plot(*_series(records, "train", "lr"), color="black", lw=1)
    drawn = 0
    for event, style in EVAL_EVENTS.items():
        for colour, key in zip(("C0", "C1", "C2"), EVAL_METRICS):
            steps, values = _series(records, event, key)
            if not steps:
                continue
            ax_eval.plot(steps, values, style, color=colour, label=f"{event} {key}", ms=5)
            drawn += 1
            if len(steps) <= 3:  # few points: say what they are, on the side with room
                for x, y in zip(steps, values):
                    left = x > sum(xlim) / 2
                    ax_eval.annotate(f"{y:.1f}", (x, y), xytext=(-7 if left else 7, 0),
                                     textcoords="offset points", fontsize=7, va="center",
                                     ha="right" if left else "left")  # fmt: skip
    ax_eval.margins(y=0.08)
    for ax, name in ((ax_loss, "training losses"), (ax_lr, "learning rate"),
                     (ax_eval, "ranking metrics (%)")):  # fmt: skip
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.set_xlim(*xlim)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    if losses:
        _legend_below(ax_loss, min(len(losses), 4))
    if drawn:
        _legend_below(ax_eval, 3)
    else:
        ax_eval.text(0.5, 0.5, "no evaluation records", ha="center", transform=ax_eval.transAxes)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig
