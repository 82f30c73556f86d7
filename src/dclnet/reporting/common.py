"""Helpers shared by the result renderers: metric cells, where a record ran, fenced text,
reading a results file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dclnet.bench.results import where

__all__ = ["fenced", "load_result", "mean_cells", "metrics_line", "or_not_run", "where"]


def metrics_line(name: str, mean: dict[str, float]) -> str:
    """One line of the demo's printed summary: ``name`` and its rank-1 / mAP / mINP."""
    return (
        f"  {name:<11} rank-1 {mean['rank1']:6.2f}   mAP {mean['mAP']:6.2f}   "
        f"mINP {mean['mINP']:6.2f}"
    )


def fenced(text: str) -> str:
    """``text`` as a Markdown code block."""
    return f"```\n{text}\n```"


def load_result(results: Path, name: str) -> dict[str, Any]:
    """The results file ``results/NAME.json``."""
    return json.loads((results / f"{name}.json").read_text())


def mean_cells(mean: dict[str, float]) -> str:
    """``"rank-1 / mAP / mINP"`` of a protocol mean, two decimals each."""
    return f"{mean['rank1']:.2f} / {mean['mAP']:.2f} / {mean['mINP']:.2f}"


def or_not_run(results: Path, name: str, render, command: str) -> str:
    """``render`` of ``results/NAME.json``, or a line saying which command writes it."""
    if not (results / f"{name}.json").is_file():
        return f"Not measured yet: `{command}` writes `docs/results/{name}.json`."
    return render(load_result(results, name))


def command_note(record: dict[str, Any]) -> str:
    """A record's ``command`` in backticks, with what ran beside it or else its load average at
    its end."""
    load, beside = record.get("load_average"), record.get("beside")
    if beside:
        return f"`{record['command']}` ({beside})"
    return f"`{record['command']}`" + (f" (load average {load[0]:.1f} at its end)" if load else "")
