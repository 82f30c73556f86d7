"""dclnet serve without a server: micro-batching, upload decoding, batched search, appends."""

from __future__ import annotations

import asyncio
import io
import shutil
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from _inference_fixtures import HEIGHT, WIDTH, make_checkpoint, write_sysu_images
from PIL import Image

from dclnet.data.imageio import load_image
from dclnet.inference.api import Embedder
from dclnet.inference.index import list_images
from dclnet.inference.indexing import write_index
from dclnet.inference.results import search
from dclnet.inference.serve_batching import MicroBatcher, Query
from dclnet.inference.serve_service import (
    RequestError,
    SearchService,
    check_modality,
    check_topk,
    decode_upload,
)

pytestmark = pytest.mark.timeout(90)


def _query(value: int, topk: int = 1) -> Query:
    return Query(np.full((1, 1, 3), value, np.uint8), "visible", topk)


def _run(coro):
    return asyncio.run(coro)


# -- micro-batching --------------------------------------------------------------------------


def test_queries_arriving_together_share_batches_up_to_the_limit():
    seen: list[list[int]] = []

    def run_batch(batch):
        seen.append([int(q.pixels[0, 0, 0]) for q in batch])
        return [int(q.pixels[0, 0, 0]) * 10 for q in batch]

    async def main():
        batcher = MicroBatcher(run_batch, window_s=0.05, max_batch=3)
        batcher.start()
        results = await asyncio.gather(*(batcher.submit(_query(v)) for v in range(7)))
        await batcher.close()
        return results

    assert _run(main()) == [0, 10, 20, 30, 40, 50, 60]  # each caller gets its own result
    assert seen == [[0, 1, 2], [3, 4, 5], [6]]  # in arrival order, at most 3 per batch


def test_a_query_after_the_window_gets_its_own_batch():
    sizes: list[int] = []

    async def main():
        batcher = MicroBatcher(lambda b: [None] * len(b), window_s=0.0, max_batch=8)
        batcher.on_batch = sizes.append
        batcher.start()
        await batcher.submit(_query(1))
        await batcher.submit(_query(2))  # sent after the first was answered
        await batcher.close()

    _run(main())
    assert sizes == [1, 1]


def test_a_query_waiting_in_its_window_counts_in_the_depth():
    async def main():
        batcher = MicroBatcher(lambda batch: [None] * len(batch), window_s=0.5, max_batch=8)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit(_query(0)))
        await asyncio.sleep(0.1)  # taken from the queue, held in its 0.5 s window
        assert batcher.depth == 1
        second = asyncio.ensure_future(batcher.submit(_query(1)))
        await asyncio.sleep(0.1)
        assert batcher.depth == 2  # both in the window's batch
        await asyncio.gather(first, second)
        assert batcher.depth == 0
        await batcher.close()

    _run(main())


def test_queries_queued_while_a_batch_runs_form_the_next_batch():
    release = threading.Event()
    seen: list[int] = []

    def run_batch(batch):
        seen.append(len(batch))
        if len(seen) == 1:
            release.wait(10)  # the first batch is slow; five more queries queue meanwhile
        return [None] * len(batch)

    async def main():
        batcher = MicroBatcher(run_batch, window_s=0.0, max_batch=8)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit(_query(0)))
        while batcher.depth == 0 or not seen:
            await asyncio.sleep(0.001)
        rest = [asyncio.ensure_future(batcher.submit(_query(v))) for v in range(1, 6)]
        await asyncio.sleep(0)
        assert batcher.depth == 6  # one computing, five waiting
        release.set()
        await asyncio.gather(first, *rest)
        await batcher.close()

    _run(main())
    assert seen == [1, 5]  # no window needed: they were waiting when the model got free


def test_a_failing_batch_fails_its_queries_only():
    def run_batch(batch):
        if any(q.pixels[0, 0, 0] == 13 for q in batch):
            raise ValueError("bad batch")
        return ["ok"] * len(batch)

    async def main():
        batcher = MicroBatcher(run_batch, window_s=0.0, max_batch=1)
        batcher.start()
        out = await asyncio.gather(
            batcher.submit(_query(13)), batcher.submit(_query(1)), return_exceptions=True
        )
        await batcher.close()
        return out

    bad, good = _run(main())
    assert isinstance(bad, ValueError) and good == "ok"


def test_close_answers_every_queued_query():
    async def main():
        batcher = MicroBatcher(lambda b: [q.topk for q in b], window_s=0.01, max_batch=2)
        batcher.start()
        pending = [asyncio.ensure_future(batcher.submit(_query(0, k))) for k in range(5)]
        await asyncio.sleep(0)
        await batcher.close()
        return [p.result() for p in pending]

    assert _run(main()) == [0, 1, 2, 3, 4]


# -- decoding uploads ------------------------------------------------------------------------


def _png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def bomb_png(width: int = 20_000, height: int = 20_000) -> bytes:
    """A valid 1-bit PNG of ``width x height`` zeros (a few kB; 400 M pixels when decoded)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return len(data).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([1, 0, 0, 0, 0])
    row = bytes(1 + (width + 7) // 8)  # filter byte + packed bits
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.parametrize("kind", ["jpeg", "png", "bmp", "grey16"])
def test_uploads_decode_like_dclnet_search_reads_files(tmp_path, kind):
    rng = np.random.default_rng(0)
    if kind == "grey16":
        image = Image.fromarray(rng.integers(0, 65536, (90, 45), dtype=np.uint16))
        path = tmp_path / "x.png"
    else:
        image = Image.fromarray(rng.integers(0, 256, (90, 45, 3), dtype=np.uint8))
        path = tmp_path / ("x.jpg" if kind == "jpeg" else f"x.{kind}")
    image.save(path)
    want = load_image(path, (HEIGHT, WIDTH))  # what dclnet search feeds the model
    got = decode_upload(path.read_bytes(), path.name, (HEIGHT, WIDTH), 10**6)
    np.testing.assert_array_equal(got, want)


def test_bad_uploads_are_request_errors(tmp_path):
    size, limit = (HEIGHT, WIDTH), 25_000_000
    good = _png_bytes(Image.new("RGB", (40, 80)))
    jpeg = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (80, 40, 3), np.uint8)).save(
        jpeg, "JPEG"
    )
    cases = {
        b"": (400, "empty"),
        b"hello, not an image": (400, "not an image"),
        jpeg.getvalue()[: len(jpeg.getvalue()) // 2]: (400, "truncated"),
        bomb_png(): (413, "400,000,000 pixels, above the limit of 25,000,000"),
    }
    for data, (status, words) in cases.items():
        with pytest.raises(RequestError, match=words) as info:
            decode_upload(data, "q.jpg", size, limit)
        assert info.value.status == status
    with pytest.raises(RequestError, match="80 x 40|40 x 80") as info:
        decode_upload(good, "small.png", size, 40 * 80 - 1)  # the limit is the caller's
    assert info.value.status == 413
    assert decode_upload(good, "ok.png", size, 40 * 80).shape == (HEIGHT, WIDTH, 3)


def test_form_field_checks():
    assert check_modality("visible") == "visible"
    assert check_topk(None, 100) == 10 and check_topk("7", 100) == 7
    for value in ("thermal", None, ""):
        with pytest.raises(RequestError, match="modality must be one of"):
            check_modality(value)
    for value in ("0", "-3", "101", "1e3", "ten"):
        with pytest.raises(RequestError, match="topk must be") as info:
            check_topk(value, 100)
        assert info.value.status == 400


# -- batched search and appends ----------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve_service")
    gallery = write_sysu_images(root / "gallery", "visible")
    queries = write_sysu_images(root / "queries", "infrared")
    embedder = Embedder.from_checkpoint(make_checkpoint(root / "model.pt"), "cpu")
    write_index(embedder, gallery, "visible", root / "index", progress=False)
    return {"root": root, "gallery": gallery, "queries": queries, "embedder": embedder}


def test_one_batch_ranks_as_dclnet_search_does(world):
    service = SearchService(world["embedder"], world["root"] / "index")
    paths = [world["queries"] / p for p in list_images(world["queries"])]
    want = search(world["embedder"], service.index, paths, "infrared", topk=12)
    size = world["embedder"].preprocessing.size
    batch = [
        Query(decode_upload(p.read_bytes(), p.name, size, 10**6), "infrared", 12) for p in paths
    ]
    batch[0].topk = 3  # each query keeps its own k
    got = service.run_batch(batch)
    assert len(got) == len(want)
    for w, g, q in zip(want, got, batch):
        assert [e["path"] for e in g["results"]] == w.paths[: q.topk]
        # The same batch in both: measured |diff| 0 (a batch of one instead: <= 6e-7).
        np.testing.assert_allclose(
            [e["score"] for e in g["results"]], w.scores[: q.topk], atol=1e-6
        )
        assert [e["camera"] for e in g["results"]] == [p.split("/")[0] for p in w.paths[: q.topk]]


def test_mixed_modalities_in_one_batch_use_their_own_branch(world):
    service = SearchService(world["embedder"], world["root"] / "index")
    path = world["queries"] / list_images(world["queries"])[0]
    pixels = decode_upload(
        path.read_bytes(), path.name, world["embedder"].preprocessing.size, 10**6
    )
    mixed = service.run_batch([Query(pixels, "visible", 5), Query(pixels, "infrared", 5, True)])
    for modality, result in zip(("visible", "infrared"), mixed):
        alone = search(world["embedder"], service.index, [path], modality, topk=5)[0]
        assert [e["path"] for e in result["results"]] == alone.paths
    assert mixed[0]["mask"] is None
    mask = torch.tensor(mixed[1]["mask"])
    want = world["embedder"].embed([path], "infrared", return_masks=True)[1][0]
    assert torch.equal(mask, want)


def test_append_swaps_in_the_new_index_and_folders_stay_inside_the_root(world, tmp_path):
    shutil.copytree(world["root"] / "index", tmp_path / "index")
    service = SearchService(world["embedder"], tmp_path / "index")
    before = service.index
    upload = world["queries"] / list_images(world["queries"])[0]
    try:
        _append_and_refuse(service, before, upload, world)
    finally:
        shutil.rmtree(world["gallery"] / "uploads", ignore_errors=True)  # a shared gallery


def _append_and_refuse(service, before, upload, world):
    result = service.append_uploads([(upload.name, upload.read_bytes())])
    assert result["added"] == 1 and result["gallery_size"] == len(before) + 1
    assert len(before) == result["gallery_size"] - 1  # the old object is left whole
    new_path = service.index.paths[-1]
    assert new_path.startswith("uploads/") and (world["gallery"] / new_path).is_file()
    with pytest.raises(RequestError, match="outside the gallery root") as info:
        service.append_folder("../queries")
    assert info.value.status == 403
    with pytest.raises(RequestError, match="not an image"):
        service.append_uploads([("x.jpg", b"nope")])
    assert len(service.index) == result["gallery_size"]  # a refused append adds nothing


def test_gallery_files_stay_inside_the_root(world):
    service = SearchService(world["embedder"], world["root"] / "index")
    rel = list_images(world["gallery"])[0]
    assert service.gallery_file(rel) == (world["gallery"] / rel).resolve()
    for path, status in (
        ("../queries/" + list_images(world["queries"])[0], 403),
        (str(Path(world["gallery"] / rel).resolve()), 403),
        ("cam1/missing.jpg", 404),
        ("", 404),
    ):
        with pytest.raises(RequestError) as info:
            service.gallery_file(path)
        assert info.value.status == status, path
