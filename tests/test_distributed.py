"""Distributed training on the CPU: two processes, Gloo backend, tiny synthetic runs.

One ``torch.multiprocessing.spawn`` of two ranks runs every check in :func:`_worker`, which
saves what it observed for the assertions made here in the parent process.
"""

import copy
import datetime
import itertools
import json
import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import dclnet.engine.train as train_mod
from dclnet.config import load_config
from dclnet.data.augment import AugmentConfig
from dclnet.data.datasets import load_train_data
from dclnet.data.sampler import CrossModalitySampler
from dclnet.engine import distributed as dist_utils
from dclnet.engine.build import loss_kwargs
from dclnet.engine.checkpoint import load_checkpoint
from dclnet.engine.step import BatchPrefetcher, build_step_context, freeze_unused, train_step
from dclnet.engine.train import fit
from dclnet.evaluation.extract import extract_features
from dclnet.losses.objective import ABLATIONS, LossWeights
from dclnet.models.dclnet import DCLNet
from dclnet.models.resnet import RandomInitWarning

pytestmark = pytest.mark.filterwarnings("ignore::dclnet.models.resnet.RandomInitWarning")

TINY = Path(__file__).resolve().parents[1] / "src" / "dclnet" / "configs" / "tiny.yaml"
WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tiny_net(num_classes: int) -> DCLNet:
    torch.manual_seed(0)
    return DCLNet(num_classes, arch="resnet18", pretrained=None)


def _ddp_steps(out: Path, rank: int) -> None:
    """Two DDP steps (SGD) on this rank's own sampler batches; save batches and parameters."""
    cfg = load_config(TINY, [])
    data = load_train_data("synthetic", size=(64, 32), synthetic_ids=16)
    net = _tiny_net(data.num_classes)
    kwargs = loss_kwargs(cfg)
    freeze_unused(net, kwargs["weights"])
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.05)
    ctx = build_step_context(
        net,
        opt,
        device=torch.device("cpu"),
        amp_dtype=None,
        loss_kwargs=kwargs,
        augment=AugmentConfig(),
    )
    assert isinstance(ctx.model, torch.nn.parallel.DistributedDataParallel)
    sampler = CrossModalitySampler(
        data.visible.labels, data.infrared.labels, num_ids=4, num_instances=2, rank=rank,
        world_size=WORLD,
    )  # fmt: skip
    batches = list(sampler)[:2]
    for step, (vis, ir, labels) in enumerate(BatchPrefetcher(data, batches, pin=False)):
        train_step(ctx, vis, ir, labels, torch.Generator().manual_seed(100 * rank + step))
    params = {k: p.detach().clone() for k, p in net.named_parameters()}
    saved = [tuple(map(torch.from_numpy, b)) for b in batches]
    torch.save({"batches": saved, "params": params}, out / f"ddp_rank{rank}.pt")


def _float64_context(data, cfg) -> tuple[DCLNet, list[torch.nn.Parameter], object]:
    """The tiny network in float64 with the tiny recipe's losses (SGD, learning rate 0)."""
    net = _tiny_net(data.num_classes).double()
    kwargs = loss_kwargs(cfg)
    freeze_unused(net, kwargs["weights"])
    trainable = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.SGD(trainable, lr=0.0)
    ctx = build_step_context(
        net, opt, device=torch.device("cpu"), amp_dtype=None, loss_kwargs=kwargs,
        augment=AugmentConfig(),
    )  # fmt: skip
    return net, trainable, ctx


def _float64_step(ctx, data, batch, seed: int) -> None:
    """One step on ``batch`` (visible / infrared indices) with float64 images in [0, 1]."""
    (vis, ir, labels), = BatchPrefetcher(data, [batch], pin=False)  # fmt: skip
    vis, ir = (x.double() / 255 for x in (vis, ir))
    train_step(ctx, vis, ir, labels, torch.Generator().manual_seed(seed))


def _ddp_gradient(out: Path, rank: int) -> None:
    """The DDP gradient of one float64 step on this rank's first batch."""
    cfg = load_config(TINY, [])
    data = load_train_data("synthetic", size=(64, 32), synthetic_ids=16)
    _, trainable, ctx = _float64_context(data, cfg)
    assert isinstance(ctx.model, torch.nn.parallel.DistributedDataParallel)
    sampler = CrossModalitySampler(
        data.visible.labels, data.infrared.labels, num_ids=4, num_instances=2, rank=rank,
        world_size=WORLD,
    )  # fmt: skip
    batch = next(iter(sampler))
    _float64_step(ctx, data, batch, seed=100 * rank)
    grads = [p.grad.clone() for p in trainable]
    saved = {"batch": [torch.from_numpy(b) for b in batch], "grads": grads}
    torch.save(saved, out / f"ddp_grad_rank{rank}.pt")


def _sharded_extraction(out: Path, rank: int) -> None:
    """Sharded features equal the single-process ones (uneven shares, an empty share)."""
    net = _tiny_net(5).eval()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(7, 64, 32, 3), dtype=np.uint8)
    mods = ["visible", "infrared", "infrared", "visible", "visible", "infrared", "visible"]
    for n in (7, 1):
        full = extract_features(net, images[:n], mods[:n], batch_size=2, progress=False)
        sharded = extract_features(
            net, images[:n], mods[:n], batch_size=2, progress=False, sharded=True
        )
        torch.save({"full": full, "sharded": sharded}, out / f"extract{n}_rank{rank}.pt")


def _fit_runs(out: Path, rank: int) -> None:
    """Uninterrupted 2-epoch run, and a 1-epoch run resumed to 2 epochs; record each rank's
    parameters as seen by the final evaluation (every rank evaluates its own model)."""
    seen = {}
    real_evaluate = train_mod.evaluate_model

    def spy(model, *args, **kwargs):
        seen["params"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return real_evaluate(model, *args, **kwargs)

    train_mod.evaluate_model = spy
    overrides = ["train.log_every=1", "eval.trials=1"]
    try:
        full = fit(load_config(TINY, ["optim.epochs=2", *overrides]), out / "full", progress=False)
        torch.save(seen["params"], out / f"full_params_rank{rank}.pt")
        part = out / "part"
        fit(load_config(TINY, ["optim.epochs=1", *overrides]), part, progress=False)
        resumed = fit(
            load_config(TINY, ["optim.epochs=2", *overrides]), part, resume=True, progress=False
        )
        torch.save(seen["params"], out / f"resumed_params_rank{rank}.pt")
    finally:
        train_mod.evaluate_model = real_evaluate
    (out / f"result_rank{rank}.json").write_text(json.dumps({"full": full, "resumed": resumed}))


def _worker(rank: int, port: int, out: Path) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD),
    )
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", RandomInitWarning)
    assert dist_utils.init_from_env()
    try:
        assert dist.get_backend() == "gloo" and dist_utils.world_size() == WORLD
        _ddp_steps(out, rank)
        _ddp_gradient(out, rank)
        _sharded_extraction(out, rank)
        _fit_runs(out, rank)
    finally:
        dist_utils.cleanup()


@pytest.fixture(scope="module")
def spawned(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(_free_port(), out), nprocs=WORLD, join=True)
    return out


def test_ddp_ranks_draw_different_batches_and_stay_identical(spawned):
    r0, r1 = (torch.load(spawned / f"ddp_rank{r}.pt") for r in range(WORLD))
    for (v0, _), (v1, _) in zip(r0["batches"], r1["batches"]):
        assert not torch.equal(v0, v1)  # per-rank sampler streams: no duplicated batches
    num_classes = load_train_data("synthetic", size=(64, 32), synthetic_ids=16).num_classes
    start = _tiny_net(num_classes).state_dict()
    moved = 0
    for key, p0 in r0["params"].items():
        torch.testing.assert_close(p0, r1["params"][key], rtol=0, atol=1e-6)
        moved += int(not torch.equal(p0, start[key]))
    assert moved > 10  # the steps changed the trained parameters


def _local_gradients(saved: list[dict], threads: int) -> list[list[torch.Tensor]]:
    """Single-process float64 gradients of each rank's batch, computed with ``threads``."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        cfg = load_config(TINY, [])
        data = load_train_data("synthetic", size=(64, 32), synthetic_ids=16)
        grads = []
        for rank, rank_saved in enumerate(saved):
            _, trainable, ctx = _float64_context(data, cfg)
            batch = tuple(t.numpy() for t in rank_saved["batch"])
            _float64_step(ctx, data, batch, seed=100 * rank)
            grads.append([p.grad.clone() for p in trainable])
        return grads
    finally:
        torch.set_num_threads(before)


def _worst_excess(got: list[torch.Tensor], want: list[torch.Tensor], tol: list[float]) -> float:
    """max over tensors of max|got - want| / tol (> 1: outside the tolerance)."""
    return max(float((g - w).abs().max()) / t for g, w, t in zip(got, want, tol))


def test_ddp_gradient_is_the_mean_over_ranks(spawned):
    """One DDP step's gradient == the mean of the two ranks' single-process gradients.

    Compared in float64 after one step (not parameters after several float32 steps, where
    BatchNorm amplifies the CPU's summation order past any fixed tolerance). The tolerance
    is measured: the same single-process gradients computed with 1 and with 2 threads (the
    convolutions then sum in another order) differ by ``noise``; allowed is 100 x that per
    tensor, at least 1000 float64 ulps of the tensor's largest entry (when the two orders
    happen to agree). A wrong average (one rank's gradient, or the sum) is far outside it.
    """
    saved = [torch.load(spawned / f"ddp_grad_rank{r}.pt") for r in range(WORLD)]
    ddp = saved[0]["grads"]
    for g0, g1 in zip(ddp, saved[1]["grads"]):
        assert torch.equal(g0, g1)  # both ranks hold the same averaged gradient
    one, two = _local_gradients(saved, 1), _local_gradients(saved, 2)
    mean = [(a + b) / 2 for a, b in zip(*one)]
    other_order = [(a + b) / 2 for a, b in zip(*two)]
    eps = torch.finfo(torch.float64).eps
    tol = [
        max(100 * float((m - o).abs().max()), 1000 * eps * float(m.abs().max()), 1e-300)
        for m, o in zip(mean, other_order)
    ]
    excess = _worst_excess(ddp, mean, tol)
    print(f"max |DDP - mean| / tolerance: {excess:.3g}; tolerances {min(tol):.3g}..{max(tol):.3g}")
    assert excess <= 1.0
    # the check can fail: no averaging (rank 0's own gradient) or a sum instead of a mean
    assert _worst_excess(one[0], mean, tol) > 1e3
    assert _worst_excess([2 * m for m in mean], mean, tol) > 1e3


@pytest.mark.parametrize("n", [7, 1])
def test_sharded_extraction_matches_single_process(spawned, n):
    for rank in range(WORLD):
        saved = torch.load(spawned / f"extract{n}_rank{rank}.pt")
        assert saved["sharded"].shape == saved["full"].shape == (n, 512)
        torch.testing.assert_close(saved["sharded"], saved["full"], rtol=1e-5, atol=1e-6)


def _events(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_rank0_writes_the_run_folder_alone(spawned):
    run = spawned / "full"
    names = sorted(p.name for p in run.iterdir())
    assert names == ["config.yaml", "last.pt", "log.txt", "metrics.jsonl", "test_results.json"]
    events = _events(run)
    assert [e["epoch"] for e in events if e["event"] == "epoch"] == [1, 2]  # one writer
    assert len([e for e in events if e["event"] == "test"]) == 1
    state = load_checkpoint(run / "last.pt")
    assert state["epoch"] == 2 and not any(k.startswith("module.") for k in state["model"])
    # Each rank takes ceil(T / 2) steps of the T an epoch has in a single process.
    steps = [e for e in events if e["event"] == "train" and e["epoch"] == 1]
    d = load_config(TINY, []).data
    data = load_train_data("synthetic", size=(d.height, d.width), synthetic_ids=d.synthetic_ids)
    single = CrossModalitySampler(
        data.visible.labels, data.infrared.labels, num_ids=d.num_ids, num_instances=d.num_instances
    )
    assert len(steps) == -(-single.total_batches // WORLD)


def test_ranks_finish_with_identical_models_and_results(spawned):
    results = [json.loads((spawned / f"result_rank{r}.json").read_text()) for r in range(WORLD)]
    assert results[0] == results[1]  # sharded evaluation: every rank has every feature
    for name in ("full", "resumed"):
        p0, p1 = (torch.load(spawned / f"{name}_params_rank{r}.pt") for r in range(WORLD))
        for key in p0:
            torch.testing.assert_close(p0[key], p1[key], rtol=0, atol=1e-6)
    written = json.loads((spawned / "full" / "test_results.json").read_text())
    assert written["mean"] == pytest.approx(results[0]["full"]["test"]["mean"])


def test_distributed_resume_continues_exactly(spawned):
    full, part = spawned / "full", spawned / "part"
    assert load_checkpoint(part / "last.pt")["epoch"] == 2
    a = [e for e in _events(full) if e["event"] == "train" and e["epoch"] == 2]
    b = [e for e in _events(part) if e["event"] == "train" and e["epoch"] == 2]
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert x["total"] == pytest.approx(y["total"], rel=1e-5, abs=1e-6)
    pa = torch.load(spawned / "full_params_rank0.pt")
    pb = torch.load(spawned / "resumed_params_rank0.pt")
    for key in pa:
        torch.testing.assert_close(pa[key], pb[key], rtol=1e-4, atol=1e-5)


def test_init_from_env_is_a_no_op_without_torchrun(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not dist_utils.init_from_env()
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not dist_utils.init_from_env()
    assert not dist_utils.is_distributed() and dist_utils.shard_range(5) == (0, 5, 5)


def test_torchrun_cli_launch(tmp_path):
    """The documented launch line: torchrun --nproc_per_node 2 -m dclnet train ..."""
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_port", str(_free_port()), "-m", "dclnet", "train", "--config", "tiny",
        "--output", str(out), "optim.epochs=1", "eval.trials=1",
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == [
        "config.yaml",
        "last.pt",
        "log.txt",
        "metrics.jsonl",
        "test_results.json",
    ]
    assert [e["epoch"] for e in _events(out) if e["event"] == "epoch"] == [1]


# -- DDP with loss terms switched off ------------------------------------------------------


def _weight_combinations() -> list[tuple[float, ...]]:
    """(id, metric, part_id, pap, dcl) for every on/off combination except all off."""
    return [tuple(map(float, on)) for on in itertools.product((0, 1), repeat=5)][1:]


def _combinations_worker(rank: int, port: int, out: Path) -> None:
    """One DDP step per combination of switched-off terms, on this rank's own batch; save the
    reducer's state (finished or its error) and the trainable parameters' gradients."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", RandomInitWarning)
    dist.init_process_group(
        "gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=120)
    )
    try:
        base = _tiny_net(2 * WORLD)
        g = torch.Generator().manual_seed(rank)
        vis, ir = (torch.randint(0, 256, (4, 32, 16, 3), dtype=torch.uint8, generator=g)
                   for _ in range(2))  # fmt: skip
        labels = torch.tensor([0, 0, 1, 1]) + 2 * rank
        results = {}
        for weights in _weight_combinations():
            net = copy.deepcopy(base)
            kwargs = {**ABLATIONS["full"], "weights": LossWeights(*weights)}
            freeze_unused(net, kwargs["weights"])
            trainable = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
            opt = torch.optim.SGD([p for _, p in trainable], lr=0.0)
            ctx = build_step_context(
                net, opt, device=torch.device("cpu"), amp_dtype=None, loss_kwargs=kwargs,
                augment=AugmentConfig(),
            )  # fmt: skip
            train_step(ctx, vis, ir, labels, torch.Generator().manual_seed(rank))
            try:
                ctx.model._check_reducer_finalized()  # what the next forward would raise
                error = None
            except RuntimeError as exc:
                error = str(exc).splitlines()[0]
            missing = [n for n, p in trainable if p.grad is None]
            grads = torch.cat([p.grad.flatten() for _, p in trainable if p.grad is not None])
            results[weights] = {"error": error, "missing": missing, "grads": grads}
        torch.save(results, out / f"combinations_rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ddp_steps_with_any_loss_terms_switched_off(tmp_path):
    """Every combination of loss.id/metric/part_id/pap/dcl weights at 0 trains under DDP
    without find_unused_parameters: the reducer finishes (no "Expected to have finished
    reduction" at the next step), every trainable parameter gets a gradient, and the
    gradients are averaged (identical on both ranks, whose batches differ)."""
    mp.spawn(_combinations_worker, args=(_free_port(), tmp_path), nprocs=WORLD, join=True)
    r0, r1 = (torch.load(tmp_path / f"combinations_rank{r}.pt") for r in range(WORLD))
    assert set(r0) == set(r1) == set(_weight_combinations())
    failed = {w: (r0[w]["error"], r0[w]["missing"][:3]) for w in r0
              if r0[w]["error"] or r0[w]["missing"] or r1[w]["error"]}  # fmt: skip
    assert not failed, failed
    for w in r0:
        torch.testing.assert_close(r0[w]["grads"], r1[w]["grads"], rtol=0, atol=0, msg=str(w))
        assert r0[w]["grads"].abs().sum() > 0, w
