"""README and docs result sections, regenerated from the results files the commands wrote.

Every number the README and docs/benchmarks.md quote lives in a JSON file under
``docs/results/`` written by the command that produced it (with the command, machine, torch
version, thread count and wall time). A document holds each section between
``<!-- results:NAME -->`` and ``<!-- /results:NAME -->``; :func:`render_readme` rewrites them
from the files, and a test fails when a document and a file disagree. Regenerate with::

    python -m dclnet.reporting              # every document of DOCUMENTS, from docs/results
    python -m dclnet.reporting --check      # exit status 1 when a section is stale
    python -m dclnet.reporting DOC.md... RESULTS_DIR [--check]

(run from the repository root).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from dclnet.reporting import bench, study, synthetic
from dclnet.reporting.bench import render_bench_report
from dclnet.reporting.study import render_study
from dclnet.reporting.synthetic import render_demo, render_first_run

__all__ = [
    "DOCUMENTS",
    "RENDERERS",
    "RESULTS",
    "main",
    "render_bench_report",
    "render_demo",
    "render_first_run",
    "render_readme",
    "render_study",
    "replace_section",
]

# The documents with generated sections (paths from the repository root).
DOCUMENTS = (
    "README.md",
    "docs/study.md",
    "docs/synthetic.md",
    "docs/benchmarks.md",
    "docs/search.md",
    "docs/serve.md",
)


RESULTS = "docs/results"


_SECTION = re.compile(
    r"(<!-- results:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /results:(?P=name) -->)", re.S
)


# section name -> its renderer (results folder -> text), from every page's module
RENDERERS = {**synthetic.SECTIONS, **study.SECTIONS, **bench.SECTIONS}


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
    """``python -m dclnet.reporting [DOC... RESULTS_DIR] [--check]``: rewrite (or check) each
    document's result sections (default: :data:`DOCUMENTS` from :data:`RESULTS`); exit status
    1 when ``--check`` finds one stale."""
    args = sys.argv[1:] if argv is None else argv
    paths = [Path(a) for a in args if a != "--check"]
    if not paths:
        paths = [Path(d) for d in (*DOCUMENTS, RESULTS)]
    if len(paths) < 2:
        print("usage: python -m dclnet.reporting DOC.md... RESULTS_DIR [--check]", file=sys.stderr)
        return 2
    *docs, results = paths
    stale = []
    for doc in docs:
        text = doc.read_text()
        new = render_readme(text, results)
        if new == text:
            continue
        if "--check" in args:
            stale.append(doc)
        else:
            doc.write_text(new)
    for doc in stale:
        print(f"{doc}: result sections are stale; run python -m dclnet.reporting")
    return 1 if stale else 0
