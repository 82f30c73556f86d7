"""README result sections, regenerated from the results files the commands wrote.

Every number the README quotes lives in a JSON file under ``docs/results/`` written by the
command that produced it (with the command, machine, torch version, thread count and wall
time). The README holds each section between ``<!-- results:NAME -->`` and
``<!-- /results:NAME -->``; :func:`render_readme` rewrites them from the files, and a test
fails when the README and a file disagree. Regenerate with::

    python -m dclnet.reporting README.md docs/results          # rewrite
    python -m dclnet.reporting README.md docs/results --check  # exit 1 if stale
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

STUDY_LABELS = {
    "baseline": "baseline (id + center-cluster)",
    "dcl_stripes": "+ DCL, stripe masks",
    "dcl_pap": "+ DCL, PAP masks (+ part id, PAP loss)",
    "full": "+ DCL, PAP + SRM masks (full DCLNet)",
}
_SECTION = re.compile(
    r"(<!-- results:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /results:(?P=name) -->)", re.S
)


def _metrics_line(name: str, mean: dict[str, float]) -> str:
    return (
        f"  {name:<11} rank-1 {mean['rank1']:6.2f}   mAP {mean['mAP']:6.2f}   "
        f"mINP {mean['mINP']:6.2f}"
    )


def _where(record: dict[str, Any]) -> str:
    return f"{record['machine']}, torch {record['torch']}, {record['threads']} threads"


def render_demo(record: dict[str, Any]) -> str:
    """The demo's printed summary, with the command, machine and wall time."""
    lines = [
        "```",
        "SYNTHETIC data — summary (mean over trials, percent):",
        _metrics_line("raw pixels", record["baseline"]["mean"]),
        _metrics_line("DCLNet", record["dclnet"]["mean"]),
        "```",
        "",
        f"`{record['command']}` on {_where(record)}: {record['seconds'] / 60:.1f} min "
        "(training, test and the raw-pixel baseline; the synthetic-pretrained backbone "
        "already cached).",
    ]
    return "\n".join(lines)


def render_comparison(demo: dict[str, Any], cnn: dict[str, Any]) -> str:
    """Demo model vs the small CNN of ``benchmarks/synthetic_gap.py``, one protocol, one set."""
    d, c = demo["dclnet"]["mean"], cnn["mean"]
    seed = demo["config"]["data"]["synthetic_seed"]
    lines = [
        "| model (synthetic seed " + str(seed) + ") | train wall time | rank-1 (%) | mAP (%) "
        "| mINP (%) |",
        "|---|---|---|---|---|",
        f"| small CNN (`benchmarks/synthetic_gap.py --protocol`) | "
        f"{cnn['train_seconds'] / 60:.1f} min | {c['rank1']:.2f} | {c['mAP']:.2f} | "
        f"{c['mINP']:.2f} |",
        f"| DCLNet demo recipe (`dclnet demo`) | {demo['seconds'] / 60:.1f} min (whole command)"
        f" | {d['rank1']:.2f} | {d['mAP']:.2f} | {d['mINP']:.2f} |",
        "",
        f"Commands: `{demo['command']}` and `{cnn['command']}`, on {_where(demo)}. Both use "
        "the SYSU-style all-search, single-shot protocol with 10 seeded gallery trials "
        "(infrared → visible) on the same synthetic test identities.",
    ]
    return "\n".join(lines)


def render_study(record: dict[str, Any]) -> str:
    """The study table (mean ± std over seeds) with its floors, command and timing."""
    titles = list(next(iter(record["summary"].values())))
    lines = ["| variant | " + " | ".join(titles) + " | seeds |", "|---" * (len(titles) + 2) + "|"]
    for preset, cells in record["summary"].items():
        fmt = [
            f"{m:.2f} ± {s:.2f}" if "%" in title else f"{m:.3f} ± {s:.3f}"
            for title, (m, s) in cells.items()
        ]
        label = STUDY_LABELS.get(preset, preset)
        lines.append(f"| {label} | {' | '.join(fmt)} | {record['seeds'][preset]} |")
    f = record["floors"]
    minutes = [r / 60 for r in record["run_seconds"]]
    lines += [
        "",
        f"Floors on the same test images: fixed stripes fg IoU {f['stripes fg IoU']:.3f}, "
        f"part mIoU {f['stripes part mIoU']:.3f}; random-cell correspondence "
        f"{f['correspondence chance']:.3f}. The baseline and stripe presets do not train the "
        "PAP head, so their PAP columns score an untrained head.",
        "",
        f"Synthetic data (not SYSU-MM01/RegDB). Command: `{record['command']}`; "
        f"{_where(record)}; {len(minutes)} runs of {min(minutes):.1f}–{max(minutes):.1f} min "
        "each (train + test). Cells: mean ± population std over seeds; identity metrics are "
        "the 10-trial mean of the SYSU-style all-search protocol on the synthetic test "
        "identities, mechanism metrics come from `dclnet diagnose` (fractions 0–1).",
    ]
    return "\n".join(lines)


def _load(results: Path, name: str) -> dict[str, Any]:
    return json.loads((results / f"{name}.json").read_text())


RENDERERS = {
    "demo": lambda r: render_demo(_load(r, "demo")),
    "comparison": lambda r: render_comparison(_load(r, "demo_seed7"), _load(r, "cnn_seed7")),
    "study": lambda r: render_study(_load(r, "study")),
}


def replace_section(text: str, name: str, body: str) -> str:
    """``text`` with the body of section ``results:NAME`` replaced by ``body``."""
    found = [m for m in _SECTION.finditer(text) if m["name"] == name]
    if not found:
        raise ValueError(f"no <!-- results:{name} --> ... <!-- /results:{name} --> section")
    m = found[0]
    return f"{text[: m.start('body')]}{body}\n{text[m.end('body') :]}"


def render_readme(text: str, results: Path) -> str:
    """``text`` with every ``results:NAME`` section regenerated from ``results``."""

    def replace(match: re.Match) -> str:
        name = match["name"]
        if name not in RENDERERS:
            raise ValueError(f"README section results:{name} has no renderer")
        return f"{match.group(1)}{RENDERERS[name](results)}\n{match.group(4)}"

    return _SECTION.sub(replace, text)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 2:
        print("usage: python -m dclnet.reporting README.md RESULTS_DIR [--check]", file=sys.stderr)
        return 2
    readme, results = Path(args[0]), Path(args[1])
    text = readme.read_text()
    new = render_readme(text, results)
    if "--check" in args:
        if new != text:
            print(f"{readme}: result sections are stale; run python -m dclnet.reporting")
            return 1
        return 0
    readme.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
