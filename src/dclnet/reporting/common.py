"""Helpers shared by the result renderers: metric cells, where a record ran, fenced text,
reading a results file."""

from __future__ import annotations

import json
from functools import lru_cache
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


# the demo recipe's settings that have changed since results were recorded, with the value a
# record that predates the setting ran with (None: every record has it)
_RECIPE_KEYS = (
    ("model", "arch", None),
    ("model", "pretrain_steps", 500),
    ("model", "pretrain_batch", 64),
    ("optim", "epochs", None),
    ("optim", "warmup_epochs", None),
    ("optim", "milestones", None),
)


@lru_cache(maxsize=1)
def _demo_recipe():
    """Today's bundled demo recipe, resolved (every key, defaults included)."""
    import dclnet
    from dclnet.config import load_config

    return load_config(Path(dclnet.__file__).parent / "configs" / "demo.yaml")


def _text(value: Any) -> str:
    """A config value as an override writes it, JSON lists as the tuples a config holds."""
    from dclnet.engine.runlog import override_text

    return override_text(tuple(value) if isinstance(value, list) else value)  # "[7,9]"


def today_add(record: dict[str, Any]) -> str:
    """The overrides that make today's ``dclnet demo`` run what a ``dclnet demo`` record ran
    under an earlier demo recipe (``""`` when nothing changed or the record is no demo run
    of the bundled recipe)."""
    command, config = record.get("command", ""), record.get("config")
    if not command.startswith("dclnet demo") or "--config" in command or not config:
        return ""
    recipe, adds = _demo_recipe(), []
    for section, key, before in _RECIPE_KEYS:
        then = config.get(section, {}).get(key, before)
        if then is None or f"{section}.{key}=" in command:
            continue
        if _text(then) != _text(getattr(getattr(recipe, section), key)):
            adds.append(f"{section}.{key}={_text(then)}")
    return " ".join(adds)


_NO_KEY = object()  # an override naming no key of the recipe


def change_today(record: dict[str, Any]) -> str:
    """What a ``dclnet demo`` record ran, as overrides of today's demo recipe: its command's
    overrides that today's recipe does not already hold, then :func:`today_add`."""
    from dclnet.config import parse_override

    words = record["command"].split()[2:]
    if not record["command"].startswith("dclnet demo") or "--config" in words:
        return " ".join(words)
    recipe, kept = _demo_recipe(), []
    for word in words:
        if "=" not in word:  # no override: kept as it is
            kept.append(word)
            continue
        ((section, values),) = parse_override(word).items()
        ((key, value),) = values.items()
        now = getattr(getattr(recipe, section, None), key, _NO_KEY)
        if now is _NO_KEY or _text(value) != _text(now):
            kept.append(word)
    return " ".join(filter(None, [" ".join(kept), today_add(record)]))


def command_note(record: dict[str, Any]) -> str:
    """A record's ``command`` in backticks (with what an earlier demo recipe needs today,
    :func:`today_add`), with what ran beside it or else its load average at its end."""
    load, beside = record.get("load_average"), record.get("beside")
    text = f"`{record['command']}`"
    if add := today_add(record):
        text += f" (an earlier demo recipe: today add `{add}`)"
    if beside:
        return f"{text} ({beside})"
    return text + (f" (load average {load[0]:.1f} at its end)" if load else "")
