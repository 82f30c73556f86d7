"""Documented examples print what the documents say they print."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_synthetic_md_example_prints_what_it_shows(tmp_path):
    text = (DOCS / "synthetic.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    shown = re.search(r"\nprints\n\n```\n(.*?)```", text, re.S).group(1)
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout == shown
    for layout in ("synth_sysu", "synth_regdb", "synth_llcm"):
        assert any((tmp_path / "data" / layout).iterdir()), layout
