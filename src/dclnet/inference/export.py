"""Export one modality's embedding path to ONNX or TorchScript, checked against PyTorch.

The exported graph is ``stream → shared stages → GeM → BNNeck → L2 normalise``: it takes a
*normalised* ``N x 3 x H x W`` float32 batch (any N) named ``images`` and returns ``N x D``
``embeddings``. Preprocessing is not part of the graph; it is written next to the file as
``FILE.json`` (and, for ONNX, into the model's ``metadata_props``):

- resize to ``height x width`` (Pillow LANCZOS), RGB, scale to [0, 1],
- ``(x - mean) / std`` per channel.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import dclnet
from dclnet.data.records import VISIBLE, check_modality
from dclnet.errors import ConfigError, DclnetError
from dclnet.fileio import atomic_path, atomic_write, check_output_file, require_free_space
from dclnet.inference.api import Embedder

logger = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript")
INPUT_NAME = "images"
OUTPUT_NAME = "embeddings"
# The ONNX exporter's own chatter, none of it about the user's model: torch.onnx warns that
# torchvision's detection ops (nms, roi_align, ...) cannot be registered without torchvision,
# onnxscript / onnx_ir log every optimiser pass at INFO. torch.onnx's errors and onnxscript's
# warnings still get through; the exported model is checked numerically against PyTorch.
_EXPORTER_LOGGERS = (
    ("torch.onnx", logging.ERROR),
    ("onnxscript", logging.WARNING),
    ("onnx_ir", logging.WARNING),
)


class EmbeddingNet(nn.Module):
    """The embedding path of one modality as a standalone module (eval mode, CPU copy).

    Args:
        model: A trained :class:`~dclnet.models.dclnet.DCLNet`.
        modality: Which stream to keep.
    """

    def __init__(self, model: nn.Module, modality: str) -> None:
        super().__init__()
        check_modality(modality)
        stream = model.visible if modality == VISIBLE else model.infrared
        self.stream = copy.deepcopy(stream).cpu()
        self.shared = copy.deepcopy(model.shared).cpu()
        self.pool = copy.deepcopy(model.pool)
        self.bnneck = copy.deepcopy(model.bnneck).cpu()
        self.eval()

    def forward(self, images: Tensor) -> Tensor:
        """``N x 3 x H x W`` normalised images → ``N x D`` L2-normalised embeddings."""
        feat = self.bnneck(self.pool(self.shared(self.stream(images))))  # N x D
        return F.normalize(feat, dim=1)


@dataclass
class ExportReport:
    """What :func:`export_embedding` wrote and how well it matches PyTorch.

    Attributes:
        path: The exported model.
        sidecar: ``path + ".json"`` with the preprocessing.
        max_abs_diff: Largest absolute difference to PyTorch on a check batch, or ``None``
            when the runtime to check with is not installed.
        check_batch: Batch size of that check (not the export example's size).
        seconds: Time taken by the export.
    """

    path: Path
    sidecar: Path
    max_abs_diff: float | None
    check_batch: int
    seconds: float


def export_metadata(embedder: Embedder, modality: str, fmt: str) -> dict[str, Any]:
    """Everything a consumer of the exported file needs to feed it."""
    pre = embedder.preprocessing
    return {
        "format": fmt,
        "modality": modality,
        "input_name": INPUT_NAME,
        "input_shape": ["batch", 3, pre.height, pre.width],
        "input": "float32 RGB, resized (Pillow LANCZOS), scaled to [0, 1], (x - mean) / std",
        "output_name": OUTPUT_NAME,
        "output_shape": ["batch", embedder.embed_dim],
        "output": "L2-normalised embedding; similarity = dot product",
        "embed_dim": embedder.embed_dim,
        **pre.as_dict(),
        "arch": getattr(embedder.model, "arch", None),
        "checkpoint": embedder.checkpoint,
        "checkpoint_identity": embedder.identity,
        "dclnet_version": dclnet.__version__,
        "torch_version": torch.__version__,
    }


def export_embedding(
    embedder: Embedder,
    modality: str,
    fmt: str,
    output: str | Path,
    *,
    example_batch: int = 2,
    check_batch: int = 3,
    tolerance: float = 1e-4,
) -> ExportReport:
    """Export ``modality``'s embedding path, run the result and compare it with PyTorch.

    The check runs on a batch of ``check_batch`` images, a different size from the export
    example, so that the dynamic batch dimension is exercised too.

    Raises:
        ConfigError: Unknown format.
        DclnetError: The exporter or its runtime is missing, or the exported model's output
            differs from PyTorch by more than ``tolerance``.
    """
    check_modality(modality)
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if check_batch == example_batch:
        raise ConfigError("check_batch must differ from example_batch (dynamic batch check)")
    output = check_output_file(output)  # before the export's minutes of work
    net = EmbeddingNet(embedder.model, modality)
    pre = embedder.preprocessing
    gen = torch.Generator().manual_seed(0)
    example = torch.randn(example_batch, 3, pre.height, pre.width, generator=gen)
    check = torch.randn(check_batch, 3, pre.height, pre.width, generator=gen)
    meta = export_metadata(embedder, modality, fmt)
    start = time.perf_counter()
    with torch.no_grad():
        if fmt == "onnx":
            with quiet_onnx_exporter():
                _export_onnx(net, example, output, meta)
        else:
            _export_torchscript(net, example, output, meta)
        seconds = time.perf_counter() - start
        want = net(check)
        got = _run_exported(fmt, output, check)
    diff = None if got is None else float((got - want).abs().max())
    if diff is not None and not diff <= tolerance:
        raise DclnetError(
            f"exported {output} differs from PyTorch by {diff:.3g} (> {tolerance:g}) on a batch "
            f"of {check_batch}; report this with your torch/onnx versions"
        )
    sidecar = Path(f"{output}.json")
    _atomic_write_text(
        sidecar, json.dumps({**meta, "max_abs_diff": diff, "check_batch": check_batch}, indent=1)
    )
    return ExportReport(output, sidecar, diff, check_batch, seconds)


@contextlib.contextmanager
def quiet_onnx_exporter() -> Iterator[None]:
    """Silence, for the duration of the block, what torch.onnx and onnxscript print that is
    not about the user's model: the exporter's loggers are raised to :data:`_EXPORTER_LOGGERS`
    and torch's deprecation notices about its own internals (``FutureWarning`` /
    ``DeprecationWarning``, e.g. ``isinstance(treespec, LeafSpec)``) are ignored. Levels and
    warning filters are restored afterwards; dclnet's own loggers are untouched.
    """
    saved = {name: logging.getLogger(name).level for name, _ in _EXPORTER_LOGGERS}
    try:
        for name, level in _EXPORTER_LOGGERS:
            logging.getLogger(name).setLevel(level)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def _export_onnx(net: nn.Module, example: Tensor, output: Path, meta: dict[str, Any]) -> None:
    try:
        import onnx
    except ImportError:
        raise DclnetError(
            "ONNX export needs onnx and onnxscript: pip install 'dclnet[export]'"
        ) from None
    with atomic_path(output) as tmp:
        torch.onnx.export(
            net,
            (example,),
            str(tmp),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes={INPUT_NAME: {0: torch.export.Dim("batch")}},
            dynamo=True,
            external_data=False,  # one self-contained file (the weights are far below 2 GB)
            verbose=False,
        )
        proto = onnx.load(str(tmp))
        for key, value in meta.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, json.dumps(value)
        onnx.save(proto, str(tmp))


def _export_torchscript(
    net: nn.Module, example: Tensor, output: Path, meta: dict[str, Any]
) -> None:
    traced = torch.jit.trace(net, example, check_trace=False)  # checked below, on another N
    # torch.jit.save writing to a file aborts the whole process on a full disk (C++
    # "terminate called ... unexpected pos"): serialise into memory, check the free space,
    # then write the bytes atomically from Python, where a full disk is one clear line.
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer, _extra_files={"dclnet.json": json.dumps(meta)})
    data = buffer.getvalue()
    output.parent.mkdir(parents=True, exist_ok=True)
    hint = "free some space or choose another --output"
    require_free_space(output.parent, len(data), f"the TorchScript file {output.name}", hint)
    with atomic_write(output, "wb", fsync=True) as fh:
        fh.write(data)


def _run_exported(fmt: str, path: Path, images: Tensor) -> Tensor | None:
    """Run the exported file on ``images`` with its own runtime (``None``: not installed)."""
    if fmt == "torchscript":
        return torch.jit.load(str(path), map_location="cpu")(images)
    try:
        import onnxruntime as ort
    except ImportError:
        logger.warning("onnxruntime is not installed: %s was not checked", path)
        return None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run([OUTPUT_NAME], {INPUT_NAME: images.numpy()})
    return torch.from_numpy(out)


def _atomic_write_text(path: Path, text: str) -> None:
    with atomic_write(path) as fh:
        fh.write(text + "\n")
