"""Export of the per-modality embedding path: ONNX and TorchScript parity, dynamic batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from _inference_fixtures import HEIGHT, WIDTH, make_checkpoint, run_cli

from dclnet.errors import ConfigError, DclnetError
from dclnet.inference import export as export_mod
from dclnet.inference.api import Embedder
from dclnet.inference.export import EmbeddingNet, export_embedding

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning"),  # still asked for
    pytest.mark.filterwarnings(r"ignore:`isinstance\(treespec:FutureWarning"),  # torch.export
]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("export") / "model.pt")


@pytest.fixture(scope="module")
def embedder(ckpt):
    return Embedder.from_checkpoint(ckpt, device="cpu")


def batch(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(seed))


def test_embedding_net_is_the_model_embedding(embedder):
    x = batch(4)
    for modality in ("visible", "infrared"):
        net = EmbeddingNet(embedder.model, modality)
        with torch.no_grad():
            torch.testing.assert_close(net(x), embedder.model.embed(x, modality))
    assert not net.training


def test_onnx_parity_and_dynamic_batch(embedder, tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    onnx = pytest.importorskip("onnx", reason="onnx is not installed")
    path = tmp_path / "visible.onnx"
    report = export_embedding(embedder, "visible", "onnx", path)
    assert report.max_abs_diff is not None and report.max_abs_diff < 1e-4
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert inp.name == "images" and out.name == "embeddings"
    assert isinstance(inp.shape[0], str) and inp.shape[1:] == [3, HEIGHT, WIDTH]
    for n in (1, 5):  # neither is the export example's batch size (2)
        x = batch(n, seed=n)
        (got,) = session.run(None, {"images": x.numpy()})
        want = embedder.embed(x, "visible")
        assert got.shape == (n, 512)
        assert (torch.from_numpy(got) - want).abs().max() < 1e-4
    props = {p.key: json.loads(p.value) for p in onnx.load(str(path)).metadata_props}
    assert props["height"] == HEIGHT and props["width"] == WIDTH and props["modality"] == "visible"
    assert props["checkpoint_identity"] == embedder.identity
    side = json.loads(path.with_name("visible.onnx.json").read_text())
    assert side["mean"] == list(embedder.preprocessing.mean) and side["embed_dim"] == 512
    assert side["input_name"] == "images" and side["output_name"] == "embeddings"
    assert side["max_abs_diff"] == report.max_abs_diff
    assert sorted(p.name for p in tmp_path.iterdir()) == ["visible.onnx", "visible.onnx.json"]


def test_torchscript_parity_and_dynamic_batch(embedder, tmp_path):
    path = tmp_path / "ir.pt"
    report = export_embedding(embedder, "infrared", "torchscript", path)
    assert report.max_abs_diff is not None and report.max_abs_diff < 1e-5
    extra = {"dclnet.json": ""}
    loaded = torch.jit.load(str(path), _extra_files=extra)
    assert json.loads(extra["dclnet.json"])["modality"] == "infrared"
    for n in (1, 6):
        x = batch(n, seed=n)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), embedder.embed(x, "infrared"), atol=1e-5, rtol=0)


def test_parity_failure_is_reported(embedder, tmp_path, monkeypatch):
    real = export_mod._run_exported
    monkeypatch.setattr(
        export_mod,
        "_run_exported",
        lambda *a: real(*a) + 1e-2,  # a broken runtime
    )
    with pytest.raises(DclnetError, match="differs from PyTorch by 0.01"):
        export_embedding(embedder, "visible", "torchscript", tmp_path / "m.pt")
    assert not (tmp_path / "m.pt.json").exists()


def test_bad_arguments(embedder, tmp_path):
    with pytest.raises(ConfigError, match="unknown export format 'tflite'.*onnx, torchscript"):
        export_embedding(embedder, "visible", "tflite", tmp_path / "m")
    with pytest.raises(DclnetError, match="unknown modality 'thermal'"):
        export_embedding(embedder, "thermal", "onnx", tmp_path / "m")


def test_cli(ckpt, tmp_path, capsys):
    out = tmp_path / "sub" / "model.ts"
    argv = ["export", "--checkpoint", str(ckpt), "--modality", "visible",
            "--format", "torchscript", "--output", str(out)]  # fmt: skip
    assert run_cli(argv) == 0
    printed = capsys.readouterr().out
    assert "max |exported - PyTorch|" in printed and str(out) in printed
    assert out.is_file() and (tmp_path / "sub" / "model.ts.json").is_file()
    argv[2] = str(tmp_path / "missing.pt")
    assert run_cli(argv) == 2
    assert "missing.pt does not exist" in capsys.readouterr().err


@pytest.mark.timeout(300)
def test_onnx_cli_prints_only_its_own_lines(ckpt, tmp_path):
    """``dclnet export --format onnx`` as a user runs it: no torchvision, FutureWarning or
    exporter INFO lines on stderr, only dclnet's three lines on stdout."""
    pytest.importorskip("onnxscript", reason="onnxscript is not installed")
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    out = tmp_path / "visible.onnx"
    argv = ["export", "--checkpoint", str(ckpt), "--modality", "visible",
            "--format", "onnx", "--output", str(out)]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONWARNINGS", "TORCH_LOGS")}
    done = subprocess.run(
        [sys.executable, "-m", "dclnet", *argv], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    lines = done.stdout.splitlines()
    assert len(lines) == 3, lines
    assert lines[0].startswith("exported the visible embedding path (onnx") and str(out) in lines[0]
    assert lines[2].startswith("checked with onnxruntime on a batch of 3")


def test_quiet_onnx_exporter_restores_levels():
    import logging
    import warnings

    names = ("torch.onnx", "onnxscript", "onnx_ir", "dclnet")
    before = {name: logging.getLogger(name).level for name in names}
    filters = list(warnings.filters)
    with export_mod.quiet_onnx_exporter():
        assert logging.getLogger("torch.onnx").getEffectiveLevel() == logging.ERROR
        assert not logging.getLogger("onnxscript").isEnabledFor(logging.INFO)
        assert logging.getLogger("onnxscript").isEnabledFor(logging.WARNING)
        assert logging.getLogger("dclnet").level == before["dclnet"]  # ours untouched
        with warnings.catch_warnings(record=True) as seen:
            warnings.warn("torch internals", FutureWarning, stacklevel=1)
        assert seen == []
    assert {name: logging.getLogger(name).level for name in names} == before
    assert warnings.filters == filters
