"""README result sections equal what their results files say (no stale numbers)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dclnet.reporting import main, render_readme, replace_section

ROOT = Path(__file__).resolve().parents[1]


def test_readme_sections_match_results_files():
    text = (ROOT / "README.md").read_text()
    assert "<!-- results:demo -->" in text and "<!-- results:study -->" in text
    assert render_readme(text, ROOT / "docs" / "results") == text, (
        "README result sections are stale: run python -m dclnet.reporting README.md docs/results"
    )


def _demo_record(rank1: float) -> dict:
    mean = {"rank1": rank1, "mAP": 2.0, "mINP": 1.0}
    return {
        "command": "dclnet demo",
        "baseline": {"mean": mean},
        "dclnet": {"mean": mean},
        "config": {"data": {"synthetic_seed": 0}},
        "seconds": 60.0,
        "machine": "x86_64 CPU, 2 cores",
        "torch": "2.13.0",
        "threads": 2,
    }


def test_regeneration_rewrites_only_the_sections(tmp_path):
    import json

    results = tmp_path / "results"
    results.mkdir()
    (results / "demo.json").write_text(json.dumps(_demo_record(12.5)))
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- results:demo -->\nold 99.99\n<!-- /results:demo -->\nend\n")
    assert main([str(readme), str(results), "--check"]) == 1  # stale
    assert main([str(readme), str(results)]) == 0
    new = readme.read_text()
    assert new.startswith("intro\n<!-- results:demo -->\n") and new.endswith("-->\nend\n")
    assert "12.50" in new and "99.99" not in new
    assert main([str(readme), str(results), "--check"]) == 0
    (results / "demo.json").write_text(json.dumps(_demo_record(13.0)))
    assert main([str(readme), str(results), "--check"]) == 1  # a changed file is caught


def test_unknown_or_missing_sections_are_errors():
    with pytest.raises(ValueError, match="no renderer"):
        render_readme("<!-- results:nope -->\n<!-- /results:nope -->", Path("."))
    with pytest.raises(ValueError, match="results:study"):
        replace_section("no markers here", "study", "body")
