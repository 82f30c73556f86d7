"""ResNet-10/18/34/50 with torchvision parameter names, a configurable last stride, weight loading.

The modules are named exactly as in ``torchvision.models.resnet`` (``conv1``, ``bn1``,
``layer1.0.conv1``, ``layer1.0.downsample.0`` / ``.1``, ``fc``), so torchvision's ImageNet
checkpoints load without renaming. ResNet-50 uses the "v1.5" bottleneck (stride on the 3 x 3
convolution), as torchvision does. ResNet-10 is ResNet-18 with one basic block per stage
instead of two (the same stem and stage widths, so the same names up to ``layer*.0``): about
half ResNet-18's cost per image, a backbone for 2 CPU cores and for the synthetic
pretraining, which needs no published weights (torchvision publishes none for it).

A network is read as five *stages* (:data:`STAGES`): the stem (conv1, bn1, relu, maxpool) and
``layer1`` ... ``layer4``. :class:`ResNetStages` holds a contiguous run of them under the same
names, which is how DCLNet builds its modality-specific and shared parts.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from dclnet.errors import CheckpointError, ConfigError

logger = logging.getLogger(__name__)

# Stage k of a ResNet is made of these top-level modules (stage 0 is the stem).
STAGES: tuple[tuple[str, ...], ...] = (
    ("conv1", "bn1", "relu", "maxpool"),
    ("layer1",),
    ("layer2",),
    ("layer3",),
    ("layer4",),
)

# torchvision's IMAGENET1K_V1 weights (the file name carries a SHA-256 prefix that
# torch.hub checks).
IMAGENET_URLS: dict[str, str] = {
    "resnet18": "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    "resnet34": "https://download.pytorch.org/models/resnet34-b627a593.pth",
    "resnet50": "https://download.pytorch.org/models/resnet50-0676ba61.pth",
}


class RandomInitWarning(UserWarning):
    """Warned when a backbone is left randomly initialised (``pretrained=None``)."""


def _conv3x3(inplanes: int, planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)


def _conv1x1(inplanes: int, planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3 x 3 convolutions with a residual connection (ResNet-18/34)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _shortcut(inplanes, planes * self.expansion, stride)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1 x 1 → 3 x 3 (strided, "v1.5") → 1 x 1 convolutions with a residual (ResNet-50)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(inplanes, planes * self.expansion, stride)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _shortcut(inplanes: int, outplanes: int, stride: int) -> nn.Sequential | None:
    """Projection shortcut ``downsample.0`` (conv) / ``downsample.1`` (BN) when shapes change."""
    if stride == 1 and inplanes == outplanes:
        return None
    return nn.Sequential(_conv1x1(inplanes, outplanes, stride), nn.BatchNorm2d(outplanes))


# arch name -> (block type, blocks per layer)
ARCHS: dict[str, tuple[type[BasicBlock] | type[Bottleneck], tuple[int, int, int, int]]] = {
    "resnet10": (BasicBlock, (1, 1, 1, 1)),
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
}


class ResNet(nn.Module):
    """ImageNet ResNet with torchvision's module names.

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        layers: Number of blocks in ``layer1`` ... ``layer4``.
        last_stride: Stride of ``layer4`` (2 as in torchvision; 1 for re-identification,
            which keeps the final map at 1/16 of the input, e.g. 18 x 9 for 288 x 144).
        layer3_stride: Stride of ``layer3`` (2 as in torchvision; 1 with ``last_stride=1``
            keeps the final map at 1/8 of the input, e.g. 12 x 6 for a small 96 x 48 input).
        num_classes: Outputs of ``fc`` (kept so that state-dict keys match torchvision's).

    Attributes:
        stage_channels: Output channels of the five stages (stem, layer1..layer4).
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: tuple[int, int, int, int],
        *,
        last_stride: int = 2,
        layer3_stride: int = 2,
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        if last_stride not in (1, 2) or layer3_stride not in (1, 2):
            raise ConfigError(
                f"last_stride and layer3_stride must be 1 or 2, got {last_stride}, {layer3_stride}"
            )
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        strides = (1, 2, layer3_stride, last_stride)
        inplanes = 64
        for i, (planes, n_blocks, stride) in enumerate(zip((64, 128, 256, 512), layers, strides)):
            blocks = [block(inplanes, planes, stride)]
            inplanes = planes * block.expansion
            blocks += [block(inplanes, planes) for _ in range(n_blocks - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, num_classes)
        self.stage_channels = (64, *(p * block.expansion for p in (64, 128, 256, 512)))
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        """``N x 3 x H x W`` images → ``N x C x h x w`` final map (output of ``layer4``)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # N x 64 x H/4 x W/4
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)

    def forward_head(self, x: Tensor) -> Tensor:
        """``N x C x h x w`` final map → ``N x num_classes`` ImageNet logits."""
        return self.fc(torch.flatten(self.avgpool(x), 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


class ResNetStages(nn.Module):
    """Stages ``start`` .. ``stop - 1`` of a ResNet, keeping torchvision's module names.

    The modules are taken (not copied) from ``resnet``; deep-copy the result for an
    independent copy. A torchvision key such as ``layer2.0.conv1.weight`` is the same key here.

    Args:
        resnet: Source network.
        start: First stage (0 = stem, 1..4 = layer1..layer4).
        stop: One past the last stage.
    """

    def __init__(self, resnet: ResNet, start: int, stop: int) -> None:
        super().__init__()
        if not 0 <= start < stop <= len(STAGES):
            raise ValueError(f"stages must satisfy 0 <= start < stop <= 5, got {start}, {stop}")
        self.stage_ids = tuple(range(start, stop))
        self.out_channels = resnet.stage_channels[stop - 1]
        for k in self.stage_ids:
            for name in STAGES[k]:
                self.add_module(name, getattr(resnet, name))

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        """Output of every stage held here, in order."""
        outs = []
        for k in self.stage_ids:
            for name in STAGES[k]:
                x = getattr(self, name)(x)
            outs.append(x)
        return outs

    def forward(self, x: Tensor) -> Tensor:
        """Output of the last stage held here."""
        return self.forward_stages(x)[-1]


def stage_of_key(key: str) -> int:
    """Stage (0 = stem, 1..4 = layer1..layer4) of a torchvision ResNet state-dict key.

    Raises:
        KeyError: ``key`` belongs to no stage (e.g. ``fc.weight``).
    """
    top = key.split(".", 1)[0]
    for k, names in enumerate(STAGES):
        if top in names:
            return k
    raise KeyError(key)


def build_resnet(
    arch: str, *, last_stride: int = 2, layer3_stride: int = 2, num_classes: int = 1000
) -> ResNet:
    """A randomly initialised ResNet by name (a key of :data:`ARCHS`)."""
    if arch not in ARCHS:
        raise ConfigError(f"unknown backbone arch {arch!r}; valid names: {', '.join(ARCHS)}")
    block, layers = ARCHS[arch]
    return ResNet(
        block, layers, last_stride=last_stride, layer3_stride=layer3_stride, num_classes=num_classes
    )


def pretrained_state_dict(weights: str | Path | None, arch: str) -> dict[str, Tensor] | None:
    """Read backbone weights with torchvision names; the ``fc.*`` entries are dropped.

    Args:
        weights: ``None`` or ``"none"`` (random init: warns and returns ``None``),
            ``"imagenet"`` (torchvision's published file for ``arch``, via the torch hub cache)
            or the path of a local file holding a state dict, or a dict with the state dict
            under ``"state_dict"`` or ``"model"`` (a ``module.`` prefix on every key is removed).
        arch: Backbone name, used for the URL and messages.

    Raises:
        CheckpointError: The file is missing or unreadable, or the download failed.
    """
    if weights is None or (isinstance(weights, str) and weights.lower() == "none"):
        warnings.warn(
            f"{arch} backbone is randomly initialised (pretrained=None); pass "
            "pretrained='imagenet' or a weights file for real training",
            RandomInitWarning,
            stacklevel=3,
        )
        return None
    if isinstance(weights, str) and weights.lower() == "imagenet":
        return _drop_fc(_unwrap_state_dict(_download_imagenet(arch), IMAGENET_URLS[arch]))
    path = Path(weights).expanduser()
    if not path.is_file():
        raise CheckpointError(
            f"pretrained weights file not found: {path}; pass 'imagenet', 'none' or a .pth file"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any read failure is the same user error
        raise CheckpointError(f"cannot read pretrained weights {path}: {_one_line(exc)}") from exc
    return _drop_fc(_unwrap_state_dict(obj, str(path)))


def check_pretrained(weights: str | Path | None, arch: str) -> None:
    """Raise now the error that loading ``weights`` would raise later, if any.

    For a training run to fail on a missing or unreadable weights file, or on ImageNet
    weights that cannot be downloaded, before it spends minutes rendering or caching data.
    A download lands in the torch hub cache, so the later load reads it from disk. Random
    initialisation (``None`` / ``"none"``) passes without the warning it gets when loaded.

    Raises:
        CheckpointError: As :func:`pretrained_state_dict`.
    """
    if weights is None or (isinstance(weights, str) and weights.lower() == "none"):
        return
    pretrained_state_dict(weights, arch)


def _download_imagenet(arch: str) -> dict[str, Tensor]:
    if arch not in IMAGENET_URLS:
        raise ConfigError(
            f"model.arch={arch} has no published ImageNet weights (they exist for "
            f"{', '.join(IMAGENET_URLS)}): use model.pretrained=synthetic, a weights file, "
            "or another model.arch"
        )
    url = IMAGENET_URLS[arch]
    try:
        return torch.hub.load_state_dict_from_url(
            url, map_location="cpu", progress=False, check_hash=True, weights_only=True
        )
    except Exception as exc:  # offline, proxy, hash: all need the same fix
        raise CheckpointError(
            f"could not fetch ImageNet {arch} weights from {url} ({_one_line(exc)}); download "
            f"that file and pass its path instead of 'imagenet' (model.pretrained=PATH)"
        ) from exc


def _unwrap_state_dict(obj: object, source: str) -> dict[str, Tensor]:
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{source} holds no state dict of tensors")
    state = dict(obj)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _drop_fc(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def check_state_dict(
    state: Mapping[str, Tensor], expected: Mapping[str, Tensor], *, source: str, arch: str
) -> None:
    """Raise a one-line :class:`CheckpointError` unless ``state`` fits ``expected`` exactly.

    Keys and shapes must match; a missing BatchNorm ``num_batches_tracked`` is allowed (older
    torchvision files lack it and PyTorch fills it in).
    """
    problems = []
    for key, ref in expected.items():
        if key not in state:
            if not key.endswith("num_batches_tracked"):
                problems.append(f"missing key {key!r}")
        elif tuple(state[key].shape) != tuple(ref.shape):
            problems.append(
                f"key {key!r} has shape {tuple(state[key].shape)}, expected {tuple(ref.shape)}"
            )
    problems += [f"unexpected key {key!r}" for key in state if key not in expected]
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise CheckpointError(
            f"{source} does not fit a {arch} backbone: {problems[0]}{more}; "
            f"expected torchvision {arch} weights"
        )


def load_pretrained(model: ResNet, weights: str | Path | None, arch: str) -> ResNet:
    """Load backbone weights into ``model`` in place (see :func:`pretrained_state_dict`).

    Every key except ``fc.*`` must match; ``fc`` keeps its random init.

    Raises:
        CheckpointError: The weights cannot be read or do not fit ``arch``.
    """
    state = pretrained_state_dict(weights, arch)
    if state is None:
        return model
    expected = _drop_fc(model.state_dict())
    check_state_dict(state, expected, source=str(weights), arch=arch)
    model.load_state_dict(state, strict=False)
    logger.info("loaded %s backbone weights from %s", arch, weights)
    return model
