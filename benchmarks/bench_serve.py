"""Load test of ``dclnet serve``: concurrent clients on 127.0.0.1, exact and FAISS backends.

Usage::

    # the docs/serve.md table (about 3 minutes per backend beyond building the galleries)
    python benchmarks/bench_serve.py --json docs/results/bench_serve.json
    python benchmarks/bench_serve.py --gallery 20000 --duration 5 --clients 1 8  # a quick look
    python benchmarks/bench_serve.py --table docs/results/bench_serve.json          # markdown

What runs: a checkpoint of a random DCLNet (``--arch`` at ``--height x --width``; the numbers
measure the service, not accuracy), a gallery of ``--gallery`` synthetic L2-normalised
embeddings of the model's width generated as ``benchmarks/bench_search.py`` builds them
(clustered identities, written block by block), saved as an exact index and as a FAISS index
(``IVF1024,SQ8``, the default of ``dclnet index --backend faiss`` from 40,960 images), and
real query images (synthetic JPEG crops) sent as uploads. For each backend one
``dclnet serve`` process (``python -m dclnet serve --port 0``) is started, and for each
number of clients an async ``httpx`` client keeps that many ``POST /search`` requests (one
image, top 10) in flight for ``--duration`` seconds after ``--warmup`` seconds: throughput,
p50/p99 latency, errors (any non-200 answer or transport error) and the mean micro-batch
size (from ``/metrics``). A last row per backend repeats the largest client count while
``POST /index/append`` adds ``--append-images`` new images every ``--append-every`` seconds
(the index's atomic append, searches continuing).

Before the servers start, the forward time of the model per batch size is measured in
process (``forward_ms``): the numbers the micro-batching window and batch limit are chosen
from (docs/serve.md). The client runs on the same machine as the server and competes with it
for the CPU, as every other process does (the load average is recorded).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import torch
from PIL import Image

from dclnet.bench.results import command_line, load_average, serve_table, write_record

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_search import write_gallery  # noqa: E402  (the same synthetic gallery)

TOPK = 10
BATCHES = (1, 2, 4, 8, 16, 32, 64)


# -- setup -----------------------------------------------------------------------------------


def make_checkpoint(path: Path, arch: str, height: int, width: int) -> Path:
    """A random DCLNet checkpoint with the keys ``dclnet train`` writes."""
    from dclnet.config import Config
    from dclnet.engine.checkpoint import save_checkpoint
    from dclnet.engine.run_state import checkpoint_state
    from dclnet.models.dclnet import DCLNet
    from dclnet.models.resnet import RandomInitWarning

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomInitWarning)
        model = DCLNet(8, arch=arch, pretrained=None).eval()
    base = Config()
    cfg = dataclasses.replace(
        base,
        data=dataclasses.replace(base.data, height=height, width=width),
        model=dataclasses.replace(base.model, arch=arch, pretrained=None),
    )
    save_checkpoint(checkpoint_state(cfg, model, SimpleNamespace(num_classes=8)), path)
    return path


def query_images(n: int, seed: int = 0) -> list[bytes]:
    """``n`` JPEG person-sized crops (96 x 48 gradients and noise)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        ramp = np.linspace(0, 255, 48)[None, :, None]
        pixels = ((rng.integers(0, 256, (96, 48, 3)) + ramp) / 2).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def build_indexes(args: argparse.Namespace, work: Path, embedder) -> dict[str, Path]:
    """The synthetic gallery as an exact and a FAISS index folder (paths are made up)."""
    from dclnet.inference import faiss_index
    from dclnet.inference.index import GalleryIndex
    from dclnet.inference.index_store import save_index

    root = work / "gallery"
    (root / "appended").mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    rows, _ = write_gallery(work / "rows.npy", args.gallery, embedder.embed_dim, args.seed)
    paths = [f"synthetic/{i:07d}.jpg" for i in range(args.gallery)]
    info = {"checkpoint": embedder.checkpoint, "preprocessing": embedder.preprocessing.as_dict()}
    out = {}
    exact = GalleryIndex(rows, paths, str(root), "visible", embedder.identity, False, dict(info))
    save_index(exact, work / "index-exact")
    out["exact"] = work / "index-exact"
    factory = faiss_index.default_factory(args.gallery)  # IVF1024,SQ8 from 40,960 images
    ann, trained = faiss_index.build(rows, factory)
    faiss_info = {**info, "faiss": faiss_index.build_info(ann, factory, trained)}
    approx = GalleryIndex(None, paths, str(root), "visible", embedder.identity, False, faiss_info)
    approx.ann = ann
    save_index(approx, work / "index-faiss")
    out["faiss"] = work / "index-faiss"
    print(f"built {args.gallery:,}-image indexes in {time.perf_counter() - started:.0f} s")
    return out


def forward_ms(embedder, repeats: int) -> list[dict]:
    """Median ms of one forward per batch size (the model alone, in this process)."""
    h, w = embedder.preprocessing.size
    pixels = np.random.default_rng(0).integers(0, 256, (max(BATCHES), h, w, 3), np.uint8)
    rows = []
    for b in BATCHES:
        embedder.embed(pixels[:b], "infrared", batch_size=b)  # warm up
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            embedder.embed(pixels[:b], "infrared", batch_size=b)
            times.append(time.perf_counter() - t)
        ms = 1000 * float(np.median(times))
        rows.append({"batch": b, "ms": ms, "ms_per_image": ms / b})
        print(f"forward batch {b:3d}: {ms:8.1f} ms  ({ms / b:6.2f} ms/image)")
    return rows


# -- the server and the load -----------------------------------------------------------------


class Server:
    """``python -m dclnet serve --port 0`` and its URL."""

    def __init__(
        self, checkpoint: Path, index: Path, extra: list[str], threads: int | None
    ) -> None:
        argv = [sys.executable, "-m", "dclnet", "serve", "--checkpoint", str(checkpoint)]
        argv += ["--index", str(index), "--port", "0", "--device", "cpu", *extra]
        env = dict(os.environ)
        if threads is not None:  # torch and FAISS read it at start
            env["OMP_NUM_THREADS"] = str(threads)
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env)
        line = self.proc.stdout.readline()
        if not line.startswith("dclnet serve: http://"):
            raise SystemExit(f"dclnet serve did not start: {line}")
        self.url = line.split()[2].rstrip("/")
        for _ in range(600):
            try:
                if httpx.get(self.url + "/health", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        raise SystemExit(f"{self.url}/health never answered")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(120)


def _metric(text: str, name: str) -> float:
    found = re.findall(rf"^{re.escape(name)} (\S+)$", text, flags=re.MULTILINE)
    return float(found[0]) if found else 0.0


async def _client(http, url, images, stop_at, record, i) -> None:
    n = 0
    while time.perf_counter() < stop_at:
        image = images[(i + n) % len(images)]
        n += 1
        form = {"modality": "infrared", "topk": str(TOPK)}
        started = time.perf_counter()
        try:
            r = await http.post(url, data=form, files=[("image", ("q.jpg", image, "image/jpeg"))])
            ok = r.status_code == 200
        except httpx.HTTPError:
            ok = False
        record.append((started, time.perf_counter() - started, ok))


async def _appender(http, url, stop_at, every, images, count, out) -> None:
    n = 0
    while time.perf_counter() + every < stop_at:
        await asyncio.sleep(every)
        files = [
            ("image", (f"a{n}_{j}.jpg", images[n * count + j], "image/jpeg")) for j in range(count)
        ]
        n += 1
        try:
            r = await http.post(url + "/index/append", files=files)
            out.append(r.status_code == 200 and r.json()["added"] == count)
        except httpx.HTTPError:
            out.append(False)


async def _load(url: str, clients: int, args, appends: bool) -> dict:
    images = query_images(64)
    rounds = int((args.warmup + args.duration) / args.append_every) + 1
    # Distinct new images per append, made before the clock starts (encoding blocks the loop).
    new = query_images(rounds * args.append_images, seed=7 + clients) if appends else []
    record: list[tuple[float, float, bool]] = []
    appended: list[bool] = []
    limits = httpx.Limits(max_connections=clients + 2, max_keepalive_connections=clients + 2)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        before = (await http.get(url + "/metrics")).text
        start = time.perf_counter()
        stop_at = start + args.warmup + args.duration
        tasks = [_client(http, url + "/search", images, stop_at, record, i) for i in range(clients)]
        if appends:
            every, count = args.append_every, args.append_images
            tasks.append(_appender(http, url, stop_at, every, new, count, appended))
        await asyncio.gather(*tasks)
        after = (await http.get(url + "/metrics")).text
    timed = [(t, ok) for s, t, ok in record if s >= start + args.warmup]
    lat = np.array([t for t, ok in timed if ok]) * 1000
    batches = _metric(after, "dclnet_batch_size_count") - _metric(before, "dclnet_batch_size_count")
    queries = _metric(after, "dclnet_batch_size_sum") - _metric(before, "dclnet_batch_size_sum")
    return {
        "clients": clients,
        "appends": appends,
        "requests": len(timed),
        "errors": sum(not ok for _, ok in timed) + sum(not ok for ok in appended),
        "throughput_rps": len(lat) / args.duration,
        "p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
        "p99_ms": float(np.percentile(lat, 99)) if len(lat) else None,
        "mean_batch": queries / batches if batches else None,
        "appended_batches": len(appended),
    }


def run_backend(args, backend: str, index: Path, checkpoint: Path) -> list[dict]:
    extra = ["--window-ms", str(args.window_ms), "--max-batch", str(args.max_batch)]
    server = Server(checkpoint, index, extra, args.threads)
    rows = []
    try:
        settings = [(c, False) for c in args.clients] + [(max(args.clients), True)]
        for clients, appends in settings:
            row = {"backend": backend, **asyncio.run(_load(server.url, clients, args, appends))}
            rows.append(row)
            print_row(row)
    finally:
        code = server.stop()
    if code != 0:
        raise SystemExit(f"dclnet serve exited {code} after the {backend} runs")
    return rows


# -- output ----------------------------------------------------------------------------------

HEADER = (
    f"{'backend':8s} {'clients':>7s} {'appends':>8s} {'req/s':>7s} {'p50 ms':>8s} "
    f"{'p99 ms':>8s} {'errors':>6s} {'batch':>6s}"
)


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_row(r: dict) -> None:
    appends = f"{r['appended_batches']}x" if r["appends"] else "no"
    print(
        f"{r['backend']:8s} {r['clients']:7d} {appends:>8s} {r['throughput_rps']:7.1f} "
        f"{_fmt(r['p50_ms'], '8.1f')} {_fmt(r['p99_ms'], '8.1f')} {r['errors']:6d} "
        f"{_fmt(r['mean_batch'], '6.1f')}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gallery", type=int, default=100_000, help="gallery images")
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--duration", type=float, default=10.0, help="s measured per row")
    parser.add_argument("--warmup", type=float, default=2.0, help="s of load before measuring")
    parser.add_argument("--window-ms", type=float, default=2.0)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--append-every", type=float, default=2.0, help="s between appends")
    parser.add_argument("--append-images", type=int, default=2, help="images per append")
    parser.add_argument("--backends", nargs="+", default=["exact", "faiss"])
    parser.add_argument("--forward-repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch/FAISS threads of the server")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/dclnet-bench-serve"))
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--table", type=Path, help="print a results file as markdown")
    args = parser.parse_args(argv)
    if args.table:
        print(serve_table(json.loads(args.table.read_text())))
        return
    from dclnet.inference.api import Embedder

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    started, load_start = time.perf_counter(), load_average()
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    checkpoint = make_checkpoint(args.workdir / "model.pt", args.arch, args.height, args.width)
    embedder = Embedder.from_checkpoint(checkpoint, "cpu")
    forward = forward_ms(embedder, args.forward_repeats)
    indexes = build_indexes(args, args.workdir, embedder)
    del embedder
    print(HEADER)
    rows = [r for b in args.backends for r in run_backend(args, b, indexes[b], checkpoint)]
    seconds = time.perf_counter() - started
    record = {
        "gallery": args.gallery,
        "embed_dim": int(np.load(args.workdir / "rows.npy", mmap_mode="r").shape[1]),
        "arch": args.arch,
        "height": args.height,
        "width": args.width,
        "window_ms": args.window_ms,
        "max_batch": args.max_batch,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "append_every_s": args.append_every,
        "append_images": args.append_images,
        "topk": TOPK,
        "faiss_factory": json.loads((indexes["faiss"] / "meta.json").read_text())["faiss"][
            "factory"
        ],
        "cpu_count": os.cpu_count(),
        "server_threads": args.threads,
        "forward_ms": forward,
        "rows": rows,
        "load_average": {"start": load_start, "end": load_average()},
    }
    if args.json is not None:
        command = command_line("python benchmarks/bench_serve.py", sys.argv[1:])
        record = write_record(args.json, command=command, seconds=seconds, **record)
        print(f"wrote {args.json}")
    print(f"wall time {seconds:.0f} s")


if __name__ == "__main__":
    main()
