"""``dclnet benchmark``: structure of the table and the JSON at a tiny size (not timings)."""

import argparse
import dataclasses
import json
import math

import pytest
import torch

from dclnet.bench.common import SIZES, Row, format_rows
from dclnet.bench.components import dense_loss_shape
from dclnet.bench.train_step import bench_train_step
from dclnet.benchmark import format_report, register, run_suite
from dclnet.errors import ConfigError

# the suite's own tiny size, with a last embedding batch that is not full (6 = 4 + 2)
TINY = dataclasses.replace(SIZES["tiny"], embed_images=6)
KEYS = {"benchmark", "device", "dtype", "batch", "size", "value", "unit", "peak_mb", "note"}


@pytest.fixture(scope="module")
def report():
    return run_suite(device="cpu", size=TINY)


def _row(report, prefix):
    (row,) = [r for r in report["rows"] if r["benchmark"].startswith(prefix)]
    return row


def test_report_has_every_section(report):
    assert set(report) == {"hardware", "settings", "rows"}
    assert report["hardware"]["device"] == "cpu" and report["hardware"]["cpu_count"] >= 1
    assert report["settings"]["name"] == "tiny" and report["settings"]["dtypes"] == ["fp32"]
    names = [r["benchmark"] for r in report["rows"]]
    assert names == [
        "train step, baseline (id + metric)",
        "train step, full DCLNet",
        "resnet18 forward+backward (plain)",
        "full DCLNet step / plain forward+backward",
        "eval metrics, SYSU-MM01 all-search",
        "eval metrics, RegDB",
        "eval feature extraction",
        "dense loss forward+backward",
        "dense loss forward+backward",
        "dense loss forward+backward",
        "dense loss / full DCLNet step",
        "data: gather (pinned on CUDA)",
        "data: gather + copy + augment",
    ]
    for row in report["rows"]:
        assert set(row) == KEYS
        assert row["device"] == "cpu" and math.isfinite(row["value"]) and row["value"] > 0
    json.dumps(report)  # serialisable as is


def test_rows_describe_their_settings(report):
    full = _row(report, "train step, full")
    assert full["batch"] == "8" and full["size"] == "32x16 resnet18" and full["dtype"] == "fp32"
    assert full["unit"] == "images/s"
    sysu = _row(report, "eval metrics, SYSU")
    assert sysu["batch"] == "3803x301" and sysu["unit"] == "s"  # real protocol size
    assert _row(report, "eval metrics, RegDB")["batch"] == "2060x2060"
    dense = [r for r in report["rows"] if r["benchmark"] == "dense loss forward+backward"]
    assert [r["dtype"] for r in dense] == ["fp32", "tf32", "bf16"]  # product precisions
    for row in dense:
        assert row["size"] == "64x8x4" and row["batch"] == "4"
        assert row["peak_mb"] is None or row["peak_mb"] >= 0


def test_dense_share_is_dense_time_over_full_step_time(report):
    # CPU: loss.dcl_precision=auto is fp32; the full step's row is in images/s = batch / s.
    (dense,) = [
        r
        for r in report["rows"]
        if r["benchmark"] == "dense loss forward+backward" and r["dtype"] == "fp32"
    ]
    full = _row(report, "train step, full")
    share = _row(report, "dense loss / full")
    assert share["dtype"] == "fp32" and share["unit"] == "x time"
    assert share["value"] == pytest.approx(dense["value"] * full["value"] / int(full["batch"]))


def test_ratio_row_is_full_over_plain_time(report):
    full = _row(report, "train step, full")["value"]
    plain = _row(report, "resnet18 forward+backward")["value"]
    ratio = _row(report, "full DCLNet step / plain")["value"]
    assert ratio == pytest.approx(plain / full)  # images/s are batch / seconds


def test_table_prints_one_line_per_row(report):
    text = format_report(report)
    lines = text.splitlines()
    assert lines[0].startswith("dclnet benchmark, size tiny")
    assert lines[1].split()[:3] == ["benchmark", "device", "dtype"]
    for row in report["rows"]:
        assert any(line.startswith(row["benchmark"]) for line in lines)


def test_format_rows_marks_unmeasured_values():
    text = format_rows([Row("x", "cpu", "fp32", "1", "1x1", float("nan"), "s")])
    assert "n/a" in text.splitlines()[2]


def test_cli_writes_json(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    out = tmp_path / "bench.json"
    argv = ["benchmark", "--device", "cpu", "--only", "data", "--threads", "1", "--json", str(out)]
    args = parser.parse_args(argv)
    threads = torch.get_num_threads()
    try:
        args.func(args)
    finally:
        torch.set_num_threads(threads)  # --threads sets it for the whole process
    printed = capsys.readouterr().out
    saved = json.loads(out.read_text())
    # A results record: the command that wrote it, where it ran, how long it took.
    assert saved["command"] == "dclnet " + " ".join(argv)
    assert saved["threads"] == 1 and saved["torch"] and "cores" in saved["machine"]
    assert saved["seconds"] > 0 and saved["hardware"]["torch_threads"] == 1
    assert format_report(saved) in printed  # the file reprints as the console table
    assert [r["benchmark"] for r in saved["rows"]] == [
        "data: gather (pinned on CUDA)",
        "data: gather + copy + augment",
    ]
    assert saved["settings"]["name"] == "small" and saved["settings"]["sections"] == ["data"]
    assert "data: gather + copy + augment" in printed and f"wrote {out}" in printed


def test_real_size_is_the_papers_setting():
    real = SIZES["real"]
    assert (real.arch, real.height, real.width) == ("resnet50", 288, 144)
    assert (real.num_ids, real.num_instances, real.batch) == (8, 4, 64)
    assert dense_loss_shape(real) == (32, 256, 72, 36)


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ConfigError, match="unknown size"):
        run_suite(device="cpu", size="huge")
    with pytest.raises(ConfigError, match="unknown dtype"):
        run_suite(device="cpu", size=TINY, dtypes=["fp8"])
    with pytest.raises(ValueError, match="unknown variant"):
        bench_train_step("fast", TINY, device=None)


def _script(name: str):
    """A ``benchmarks/`` script as a module (the folder is not a package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


RECORD_KEYS = {"command", "machine", "torch", "threads", "seconds"}


def test_bench_eval_writes_the_table_it_printed(tmp_path, capsys):
    from dclnet.bench.results import format_eval_table

    out = tmp_path / "eval.json"
    argv = ["--trials", "1", "--no-rerank", "--json", str(out)]
    assert _script("bench_eval").main(argv) == 0
    record = json.loads(out.read_text())
    assert RECORD_KEYS <= set(record) and record["command"].endswith(" ".join(argv))
    assert [p["rule"] for p in record["protocols"]] == ["sysu", "regdb"]
    assert all(p["max_abs_diff"] <= 1e-12 for p in record["protocols"])
    assert format_eval_table(record) in capsys.readouterr().out  # README shows what it printed


def test_bench_dense_loss_writes_the_table_it_printed(tmp_path, capsys):
    from dclnet.bench.results import format_dense_table

    out = tmp_path / "dense.json"
    argv = ["--n", "2", "--c", "8", "--h", "8", "--w", "4", "--threads", "1", "--json", str(out)]
    threads = torch.get_num_threads()
    try:
        _script("bench_dense_loss").main(argv)
    finally:
        torch.set_num_threads(threads)  # --threads sets it for the whole process
    record = json.loads(out.read_text())
    assert RECORD_KEYS <= set(record) and record["threads"] == 1
    naive, chunked, tf32, bf16 = record["rows"]
    assert [r["variant"] for r in record["rows"]] == ["naive", "chunked", "tf32", "bf16"]
    assert chunked["value"] == pytest.approx(naive["value"], rel=1e-5)
    assert chunked["rel_dgrad"] < 1e-4
    # Reduced-precision products: within 2 (2u + u^2) / tau of the value (u: the format's unit
    # roundoff, tau = 0.05; see test_dense_contrastive), and not the float32 result itself.
    for row, u in ((tf32, 2.0**-11), (bf16, 2.0**-8)):
        assert 0 < abs(row["value"] - naive["value"]) <= 2 * (2 * u + u * u) / 0.05
        assert row["rel_dgrad"] > 0 and "mem_ratio" in row
    assert format_dense_table(record) in capsys.readouterr().out


def test_bench_train_step_writes_its_rows(tmp_path):
    out = tmp_path / "step.json"
    argv = ["--height", "32", "--width", "16", "-P", "2", "-K", "2", "--warmup", "0",
            "--iters", "1", "--repeats", "1", "--variant", "plain", "--json", str(out)]  # fmt: skip
    _script("bench_train_step").main(argv)
    record = json.loads(out.read_text())
    assert RECORD_KEYS <= set(record) and record["settings"]["height"] == 32
    (row,) = record["rows"]
    assert row["benchmark"] == "plain step" and row["unit"] == "images/s" and row["value"] > 0
