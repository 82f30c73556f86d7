"""Documentation stays self-contained: relative links resolve, nothing points outside the repo."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Folders never scanned: tooling, environments and build outputs.
SKIP_DIRS = {".git", ".venv", "venv", "build", "dist", "node_modules", "__pycache__", "runs"}
# Top-level entries whose text files must not point at the internal specification folder.
SCANNED = ("src", "docs", "tests", "scripts", "benchmarks", "configs", "README.md")
SUFFIXES = (".md", ".py", ".yaml", ".yml")
# [text](target) and ![alt](target); the text may span lines, the target may carry a title.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+[\"'][^)]*[\"'])?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`[^`\n]*`")
EXTERNAL = ("http://", "https://", "mailto:", "ftp://")
FORBIDDEN = "shared/" + "spec"  # split so that this file does not match itself


def _walk(top: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """Files under ``top`` ending in ``suffixes``, pruning tooling and build folders."""
    found = []
    for folder, dirs, names in os.walk(top):
        dirs[:] = [
            d for d in dirs if not (d in SKIP_DIRS or d.startswith(".") or d.endswith(".egg-info"))
        ]
        found.extend(Path(folder) / n for n in names if n.endswith(suffixes))
    return found


def _markdown_files() -> list[Path]:
    return sorted(_walk(ROOT, (".md",)))


def _text_files() -> list[Path]:
    files = []
    for name in SCANNED:
        top = ROOT / name
        if top.is_file():
            files.append(top)
        elif top.is_dir():
            files.extend(_walk(top, SUFFIXES))
    return sorted(set(files))


def relative_links(text: str) -> list[str]:
    """Relative link targets of a Markdown text (code blocks and code spans excluded)."""
    text = CODE_SPAN.sub("", FENCE.sub("", text))
    targets = []
    for match in LINK.finditer(text):
        target = match.group(1)
        if target.startswith("#") or target.lower().startswith(EXTERNAL):
            continue
        targets.append(target)
    return targets


def broken_links(md: Path) -> list[str]:
    """Targets of ``md`` that do not exist relative to its folder (anchors stripped)."""
    broken = []
    for target in relative_links(md.read_text(encoding="utf-8")):
        path = target.split("#", 1)[0].split("?", 1)[0]
        if not (md.parent / path).exists():
            broken.append(target)
    return broken


def test_markdown_files_found():
    names = {p.relative_to(ROOT).as_posix() for p in _markdown_files()}
    assert {"README.md", "docs/method.md", "docs/protocols.md"} <= names


@pytest.mark.parametrize("md", _markdown_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(md: Path):
    assert broken_links(md) == [], f"{md.relative_to(ROOT)}: broken relative links"


def test_link_parser(tmp_path: Path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("x")
    (tmp_path / "pic.png").write_text("x")
    md = tmp_path / "README.md"
    md.write_text(
        "[a](docs/a.md#2-x) ![p](pic.png) [web](https://example.org) [top](#top)\n"
        '[split\ntext](docs/a.md "title") [gone](docs/missing.md#1)\n'
        "`[code](nowhere.md)`\n```\n[fenced](nowhere.md)\n```\n"
    )
    assert relative_links(md.read_text()) == [
        "docs/a.md#2-x",
        "pic.png",
        "docs/a.md",
        "docs/missing.md#1",
    ]
    assert broken_links(md) == ["docs/missing.md#1"]


def test_no_reference_to_internal_spec_folder():
    offenders = [
        p.relative_to(ROOT).as_posix()
        for p in _text_files()
        if FORBIDDEN in p.read_text(encoding="utf-8", errors="replace")
    ]
    assert offenders == [], f"files pointing at {FORBIDDEN}/: {offenders}"
