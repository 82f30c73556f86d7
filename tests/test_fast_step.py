"""The fast training step: mixed precision, channels-last and torch.compile against the plain
float32 eager step on the same batch, frozen unused heads, the batch prefetcher."""

import shutil
import traceback

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from dclnet.data.augment import AugmentConfig
from dclnet.data.datasets import load_train_data
from dclnet.data.sampler import CrossModalitySampler
from dclnet.engine.step import (
    BatchPrefetcher,
    build_step_context,
    freeze_unused,
    train_step,
    unused_modules,
)
from dclnet.losses.objective import ABLATIONS
from dclnet.models.dclnet import DCLNet

pytestmark = pytest.mark.filterwarnings("ignore::dclnet.models.resnet.RandomInitWarning")

TERMS = ("id", "metric", "part_id", "pap", "dcl", "total")


def _context(
    amp=None,
    *,
    preset="full",
    channels_last=False,
    compile_backend=None,
    device="cpu",
    compile_scope=None,
):
    torch.manual_seed(0)
    device = torch.device(device)
    net = DCLNet(10, arch="resnet18", pretrained=None).to(device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    kwargs = dict(ABLATIONS[preset])
    freeze_unused(net, kwargs["weights"])
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.01)
    ctx = build_step_context(
        net,
        opt,
        device=device,
        amp_dtype=amp,
        loss_kwargs=kwargs,
        augment=AugmentConfig(),
        channels_last=channels_last,
        compile=compile_scope is not None,
        compile_scope=compile_scope or "step",
        compile_backend=compile_backend or "inductor",
    )
    if compile_backend is not None and compile_scope is None:
        ctx.model = torch.compile(net, backend=compile_backend)
    return ctx


def _batch(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    vis = torch.randint(0, 256, (n, 64, 32, 3), dtype=torch.uint8, generator=g)
    ir = torch.randint(0, 256, (n, 64, 32, 3), dtype=torch.uint8, generator=g)
    return vis, ir, torch.arange(n) // 2  # P = n / 2 identities, K = 2


def _steps(ctx, num_steps=1):
    """Losses (as floats) of ``num_steps`` steps on fixed batches and augmentations."""
    out = []
    for step in range(num_steps):
        losses = train_step(ctx, *_batch(seed=step), torch.Generator().manual_seed(step))
        out.append({k: float(v) for k, v in losses.items()})
    return out


@pytest.fixture(scope="module")
def fp32_losses():
    return _steps(_context(), num_steps=2)


@pytest.mark.parametrize(
    ("amp", "term_rtol", "total_rtol"),
    [(torch.bfloat16, 0.1, 0.02), (torch.float16, 0.02, 0.005)],
    ids=["bfloat16", "float16"],
)
def test_mixed_precision_step_is_close_to_float32(fp32_losses, amp, term_rtol, total_rtol):
    ctx = _context(amp)
    assert ctx.scaler.is_enabled() == (amp == torch.float16)  # loss scaling for fp16 only
    (mixed,) = _steps(ctx)
    ref = fp32_losses[0]
    assert set(mixed) == set(TERMS)
    for k in TERMS:
        tol = total_rtol if k == "total" else term_rtol
        assert mixed[k] == pytest.approx(ref[k], rel=tol), k
    assert all(torch.isfinite(p).all() for p in ctx.net.parameters())
    # bf16 keeps float32's exponent range: the dense loss's float32 island still matters
    # because its logits reach 1/tau = 20 and are exponentiated.


def test_channels_last_step_matches(fp32_losses):
    ctx = _context(channels_last=True)
    got = _steps(ctx, num_steps=2)
    for ref, step in zip(fp32_losses, got):
        for k in TERMS:
            assert step[k] == pytest.approx(ref[k], rel=1e-4, abs=1e-5), k


def test_compiled_step_matches_eager(fp32_losses):
    """train.compile_scope=step: network, augmentation and objective captured as graphs
    (dynamo + AOT autograd) give the eager step's numbers."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    ctx = _context(compile_backend="aot_eager", compile_scope="step")
    got = _steps(ctx, num_steps=2)
    for ref, step in zip(fp32_losses, got):
        for k in TERMS:
            assert step[k] == pytest.approx(ref[k], rel=1e-4, abs=1e-5), k
    # the network (one graph), the augmentation (one per modality), the objective (>= 1)
    assert counters["stats"]["unique_graphs"] >= 4, dict(counters["stats"])


def _can_inductor() -> bool:
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        return False
    try:
        torch.compile(lambda x: x * 2)(torch.ones(2))
    except Exception:
        return False
    return True


@pytest.mark.slow  # inductor compiles the ResNet-18 step in about 75 s on 2 CPU cores
def test_inductor_compiled_step_matches_eager(fp32_losses):
    if not _can_inductor():
        pytest.skip("this platform cannot compile with inductor (no working C++ compiler)")
    got = _steps(_context(compile_backend="inductor"), num_steps=2)
    for ref, step in zip(fp32_losses, got):
        for k in TERMS:
            assert step[k] == pytest.approx(ref[k], rel=2e-3, abs=1e-4), k


@pytest.mark.parametrize("preset", ["baseline", "dcl_stripes", "full"])
def test_every_trainable_parameter_gets_a_gradient(preset):
    """What DDP needs without find_unused_parameters: frozen heads are exactly the unused,
    and every trainable parameter gets a finite, non-zero gradient (not merely a zero tensor
    from a branch that does not reach it)."""
    ctx = _context(preset=preset)
    frozen = {id(p) for m in unused_modules(ctx.net, ABLATIONS[preset]["weights"])
              for p in m.parameters()}  # fmt: skip
    _steps(ctx)
    for name, p in ctx.net.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
            assert p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name
            assert id(p) in frozen or name.endswith("bnneck.bias"), name
    if preset == "full":
        assert not frozen
    else:
        assert not ctx.net.part_classifier.weight.requires_grad
        assert not ctx.net.pixel_classifier.visible.weight.requires_grad


def test_metric_only_freezes_nothing_that_dcl_trains():
    from dclnet.losses.objective import LossWeights

    net = DCLNet(10, arch="resnet18", pretrained=None)
    names = {n for n, p in net.named_parameters() if p.requires_grad}
    freeze_unused(net, LossWeights(id=0.0, metric=0.0, part_id=0.0, pap=0.0, dcl=1.0))
    still = {n for n, p in net.named_parameters() if p.requires_grad}
    assert still == {n for n in names if n.startswith(("visible.", "infrared."))}


def _weight_combinations():
    """Every on/off combination of the five loss terms except all off."""
    from itertools import product

    from dclnet.losses.objective import LossWeights

    names = ("id", "metric", "part_id", "pap", "dcl")
    return [LossWeights(**dict(zip(names, on))) for on in product((0.0, 1.0), repeat=5)][1:]


def _reached_parameters(loss: torch.Tensor, net: torch.nn.Module) -> set[str]:
    """Names of the parameters whose gradient accumulator is in ``loss``'s autograd graph
    (those backward would give a gradient, and whose DDP hooks would fire)."""
    names = {id(p): n for n, p in net.named_parameters()}
    reached, seen, stack = set(), set(), [loss.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if hasattr(node, "variable"):  # AccumulateGrad
            reached.add(names[id(node.variable)])
        stack.extend(next_fn for next_fn, _ in node.next_functions)
    return reached


def test_frozen_parameters_are_exactly_those_no_enabled_term_reaches():
    """For every combination of switched-off terms (what DDP needs without
    find_unused_parameters): the parameters the enabled terms reach in the autograd graph of
    an unfrozen network are exactly those freeze_unused leaves trainable (it freezes
    unused_modules)."""
    import dataclasses

    from dclnet.losses.objective import dclnet_objective

    torch.manual_seed(0)
    net = DCLNet(10, arch="resnet18", pretrained=None)
    vis, ir, labels = (t[:4] for t in _batch())
    targets, erased = labels.repeat(2), torch.zeros(8, 64, 32, dtype=torch.bool)
    out = net(*(x.permute(0, 3, 1, 2).float() / 255 for x in (vis, ir)))
    always_frozen = {n for n, p in net.named_parameters() if not p.requires_grad}
    wrong = []
    for weights in _weight_combinations():
        kwargs = {**ABLATIONS["full"], "weights": weights}
        losses = dclnet_objective(out, targets, erased, part_weight=net.cam_weight(), **kwargs)
        reached = _reached_parameters(losses["total"], net)
        unused = {id(p) for m in unused_modules(net, weights) for p in m.parameters()}
        trainable = {n for n, p in net.named_parameters() if p.requires_grad} - {
            n for n, p in net.named_parameters() if id(p) in unused
        }
        if reached != trainable or not trainable or trainable & always_frozen:
            wrong.append((dataclasses.astuple(weights), sorted(reached ^ trainable)[:3]))
    assert not wrong, wrong


def test_all_loss_terms_off_is_refused():
    from dclnet.errors import ConfigError
    from dclnet.losses.objective import LossWeights

    net = DCLNet(10, arch="resnet18", pretrained=None)
    off = LossWeights(id=0.0, metric=0.0, part_id=0.0, pap=0.0, dcl=0.0)
    with pytest.raises(ConfigError, match="every loss term is off"):
        freeze_unused(net, off)


@pytest.mark.parametrize("workers", [1, 3])
def test_prefetcher_yields_batches_in_order(workers):
    data = load_train_data("synthetic", size=(64, 32), synthetic_ids=16)
    sampler = CrossModalitySampler(data.visible.labels, data.infrared.labels, num_ids=4)
    batches = list(sampler)
    got = list(BatchPrefetcher(data, batches, pin=False, workers=workers))
    assert len(got) == len(batches) > 3
    for (vis_idx, ir_idx), (vis, ir, labels) in zip(batches, got):
        assert vis.dtype == torch.uint8 and vis.shape == (16, 64, 32, 3)
        assert np.array_equal(vis.numpy(), data.visible.images[vis_idx])
        assert np.array_equal(ir.numpy(), data.infrared.images[ir_idx])
        assert np.array_equal(labels.numpy(), data.visible.labels[vis_idx])
        assert np.array_equal(labels.numpy(), data.infrared.labels[ir_idx])


def test_prefetcher_surfaces_worker_errors():
    data = load_train_data("synthetic", size=(64, 32), synthetic_ids=16)
    bad = [(np.array([0, 1]), np.array([0, 10**9]))]
    with pytest.raises(IndexError):
        list(BatchPrefetcher(data, bad, pin=False, workers=2))


class HostDataConstructions(TorchDispatchMode):
    """Records every tensor built from host data (``torch.tensor``, ``as_tensor``,
    ``from_numpy``: each dispatches ``aten.lift_fresh``) with the Python lines that built it.

    Exempt: a 0-dim lift whose only use is the value of ``aten.fill_.Tensor`` -- a scalar
    assignment ``x[i] = 1.0`` on a CPU tensor; on other devices torch builds that scalar on
    the device itself (no host data, no copy).
    """

    LIFTS = (torch.ops.aten.lift_fresh.default, torch.ops.aten.lift_fresh_copy.default)

    def __init__(self) -> None:
        super().__init__()
        self._lifted: list[tuple[torch.Tensor, str, list]] = []  # (tensor, where, uses)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        for pos, arg in enumerate((*args, *kwargs.values())):
            for tensor, _, uses in self._lifted:
                if arg is tensor:
                    uses.append((func, pos))
        if func in self.LIFTS:
            where = "".join(traceback.format_stack(limit=8)[:-2])
            self._lifted.append((out, where, []))
        return out

    def violations(self) -> list[str]:
        fill = torch.ops.aten.fill_.Tensor
        return [
            where
            for tensor, where, uses in self._lifted
            if not (tensor.dim() == 0 and uses and all(u == (fill, 1) for u in uses))
        ]


@pytest.mark.parametrize("preset", sorted(ABLATIONS))
def test_step_builds_no_tensor_from_host_data(preset):
    """On a GPU a tensor made from Python or NumPy data inside the step is a host-to-device
    copy every step (``torch.tensor(..., device=cuda)`` blocks the CPU until the GPU is done);
    the step must build its constants on the device instead. Checked here on the CPU."""
    ctx = _context(preset=preset)
    vis, ir, labels = _batch()
    train_step(ctx, vis, ir, labels, torch.Generator().manual_seed(0))  # lazy initialisation
    with HostDataConstructions() as mode:
        losses = train_step(ctx, vis, ir, labels, torch.Generator().manual_seed(1))
    assert torch.isfinite(losses["total"])
    found = mode.violations()
    assert not found, f"{len(found)} tensor(s) built from host data:\n" + "\n".join(found)


def test_host_data_detector_sees_every_construction():
    """The detector above flags torch.tensor / as_tensor / from_numpy and a 0-dim tensor used
    in arithmetic, and lets the CPU scalar assignment through."""
    cases = [
        lambda x: x * torch.tensor([1.0, 2.0]),
        lambda x: x + torch.as_tensor(0.5),
        lambda x: x - torch.from_numpy(np.ones(2, dtype=np.float32)),
        lambda x: x.div(torch.tensor(3.0).to(x.device, non_blocking=True)),
    ]
    for case in cases:
        with HostDataConstructions() as mode:
            case(torch.ones(2))
        assert len(mode.violations()) == 1
    x = torch.zeros(2, 3)
    with HostDataConstructions() as mode:
        x[..., 0] = 1.0
        x.mul_(0.5).add_(torch.full((1,), 2.0))
    assert not mode.violations()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_step_has_no_host_sync():
    """No device-to-host synchronisation inside a bf16 step (pinned uint8 input)."""
    ctx = _context(torch.bfloat16, device="cuda")
    vis, ir, labels = (t.pin_memory() for t in _batch())
    train_step(ctx, vis, ir, labels, torch.Generator().manual_seed(0))  # lazy initialisation
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        losses = train_step(ctx, vis, ir, labels, torch.Generator().manual_seed(1))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(losses["total"]).item()


@pytest.mark.parametrize(("native", "expected"), [(True, torch.bfloat16), (False, torch.float16)])
def test_amp_auto_picks_bfloat16_only_where_it_is_native(monkeypatch, native, expected):
    """train.amp=auto: a pre-Ampere GPU (V100, T4) emulates bf16 -- torch counts that as
    supported unless including_emulation=False -- and must get float16 + GradScaler."""
    from dclnet.engine.step import resolve_amp

    def is_bf16_supported(including_emulation: bool = True) -> bool:
        return native or including_emulation  # emulation is always available

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    assert resolve_amp("auto", torch.device("cuda")) == expected
    assert resolve_amp("auto", torch.device("cpu")) is None
    assert resolve_amp("bfloat16", torch.device("cuda")) == torch.bfloat16
    assert resolve_amp("off", torch.device("cuda")) is None


@pytest.mark.parametrize("deterministic", [False, True])
def test_train_deterministic_sets_cudnn(monkeypatch, deterministic):
    """train.deterministic: cuDNN deterministic algorithms and no autotuning on CUDA; the
    default keeps cudnn.benchmark on. The CPU is left alone."""
    from dclnet.config import load_config
    from dclnet.engine.step import configure_cudnn

    cudnn = torch.backends.cudnn
    monkeypatch.setattr(cudnn, "deterministic", not deterministic)
    monkeypatch.setattr(cudnn, "benchmark", deterministic)
    configure_cudnn(torch.device("cpu"), deterministic)
    assert (cudnn.deterministic, cudnn.benchmark) == (not deterministic, deterministic)
    cfg = load_config(None, [f"train.deterministic={str(deterministic).lower()}"])
    configure_cudnn(torch.device("cuda"), cfg.train.deterministic)
    assert (cudnn.deterministic, cudnn.benchmark) == (deterministic, not deterministic)
