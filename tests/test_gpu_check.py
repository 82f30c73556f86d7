"""scripts/gpu_check.sh in its tiny CPU mode: every phase runs and writes its JSON file."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def _run(args, env_tiny=True, timeout=600):
    env = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}
    if env_tiny:
        env["DCLNET_GPU_CHECK_TINY"] = "1"
    return subprocess.run(
        ["bash", str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("timeout") is None, reason="needs coreutils' timeout")
def test_tiny_mode_runs_every_phase_and_writes_its_files(tmp_path):
    out = tmp_path / "results"
    proc = _run([str(out)])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    summary = json.loads((out / "gpu_check.json").read_text())
    assert summary["mode"] == "tiny (CPU)" and summary["hardware"]["device"] == "cpu"
    status = {p["phase"]: p["status"] for p in summary["phases"]}
    assert list(status) == ["tests", "benchmark", "ddp", "paper", "diagnose"]
    assert status["ddp"].startswith("skipped: 0 CUDA device(s)")
    assert all(status[k] == "ok" for k in ("tests", "benchmark", "paper", "diagnose"))
    assert summary["files"] == [
        "gpu_check_tests.json",
        "bench_gpu_tiny.json",
        "gpu_check_train.json",
        "gpu_check_diagnose.json",
    ]
    # The CUDA-only tests were collected (and skip without a device).
    tests = json.loads((out / "gpu_check_tests.json").read_text())
    assert tests["skipped"] >= 3 and tests["failed"] == tests["error"] == 0
    assert all(t["outcome"] == "skipped" and "CUDA" in t["reason"] for t in tests["tests"])
    # The benchmark's figures: steps per precision, full/plain ratio, dense loss per product
    # precision and its share of the step.
    bench = json.loads((out / "bench_gpu_tiny.json").read_text())
    names = [(r["benchmark"], r["dtype"]) for r in bench["rows"]]
    assert ("full DCLNet step / plain forward+backward", "fp32") in names
    assert [d for b, d in names if b == "dense loss forward+backward"] == ["fp32", "tf32", "bf16"]
    assert ("dense loss / full DCLNet step", "fp32") in names
    # ... and docs/benchmarks.md's GPU block renders such a file
    from dclnet.reporting import render_bench_report

    assert "dense loss / full DCLNet step" in render_bench_report(bench)
    # The paper-size phase (tiny here): a trained checkpoint's test and its mechanisms.
    diagnose = json.loads((out / "gpu_check_diagnose.json").read_text())
    assert {"foreground_iou", "part_miou", "correspondence"} <= set(diagnose)
    assert (out / "gpu_check_train.json").is_file()


def test_tiny_mode_needs_an_output_folder_and_gpu_mode_a_device(tmp_path):
    proc = _run([], timeout=60)
    assert proc.returncode == 2 and "needs an output folder" in proc.stderr
    proc = _run([str(tmp_path / "x")], env_tiny=False, timeout=120)
    assert proc.returncode == 2 and "no CUDA device" in proc.stderr
    assert not (tmp_path / "x" / "gpu_check.json").exists()
