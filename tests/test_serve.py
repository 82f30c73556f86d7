"""dclnet serve as a user runs it: a real server on a loopback port, queried over HTTP.

Each server is ``python -m dclnet serve --port 0`` (see :class:`_serve_fixtures.Server`):
started, waited for on ``/health``, queried, stopped with SIGTERM.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from _inference_fixtures import random_images, run_cli, write_truncated_jpeg
from _serve_fixtures import Server, copy_index, files, serve_world
from PIL import Image
from test_serve_batching import bomb_png

from dclnet.inference.index import list_images

pytest.importorskip("fastapi", reason="dclnet serve needs the extra: pip install 'dclnet[serve]'")
pytestmark = pytest.mark.timeout(180)

# Scores of one query embedded in another batch differ by up to 6e-7 (measured in
# test_serve_batching: a batch of one against a batch of all queries).
SCORE_ATOL = 2e-6


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return serve_world(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def server(world):
    with Server(world["ckpt"], world["index"], ["--max-body-mb", "8"]) as s:
        yield s
    assert s.proc.returncode == 0, "".join(s.lines)


def _queries(world) -> list[Path]:
    return [world["queries"] / p for p in list_images(world["queries"])]


def _cli_search(world, index: Path, queries: list[Path], tmp_path: Path, topk: int) -> list:
    out = tmp_path / "cli.json"
    argv = ["search", "--checkpoint", str(world["ckpt"]), "--index", str(index), "--device"]
    argv += ["cpu", "--query", *map(str, queries), "--topk", str(topk), "--json", str(out)]
    assert run_cli(argv + ["--no-progress"]) == 0
    return json.loads(out.read_text())


def _assert_same(service: list[dict], cli: list[dict]) -> None:
    assert len(service) == len(cli)
    for s, c in zip(service, cli):
        assert [e["path"] for e in s["results"]] == [e["path"] for e in c["results"]]
        got, want = [e["score"] for e in s["results"]], [e["score"] for e in c["results"]]
        np.testing.assert_allclose(got, want, atol=SCORE_ATOL)


def test_health_and_page(server, world):
    health = httpx.get(server.url + "/health").json()
    assert health["status"] == "ok" and health["gallery_size"] == len(list_images(world["gallery"]))
    assert health["backend"] == "exact" and health["gallery_modality"] == "visible"
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    # Works offline: every script and style sheet comes from this server.
    for ref in re.findall(r'(?:src|href)="([^"]+)"', page.text):
        assert ref.startswith("/static/"), ref
        assert httpx.get(server.url + ref).status_code == 200


def test_search_equals_dclnet_search(server, world, tmp_path):
    queries = _queries(world)
    cli = _cli_search(world, world["index"], queries, tmp_path, 10)
    one_request = httpx.post(server.url + "/search", **files(queries, topk="10"), timeout=60)
    assert one_request.status_code == 200, one_request.text
    body = one_request.json()
    assert body["model"] == httpx.get(server.url + "/health").json()["model"]
    _assert_same(body["queries"], cli)
    # One request per query (other batches): the same ranking.
    singles = [
        httpx.post(server.url + "/search", **files([q], topk="10"), timeout=60).json()
        for q in queries[:4]
    ]
    _assert_same([s["queries"][0] for s in singles], cli[:4])
    entry = body["queries"][0]["results"][0]
    assert entry["camera"] == entry["path"].split("/")[0] and entry["rank"] == 1
    image = httpx.get(server.url + "/gallery/" + entry["path"])
    assert (
        image.status_code == 200
        and image.content == (world["gallery"] / entry["path"]).read_bytes()
    )


def test_faiss_backend_equals_dclnet_search(tmp_path):
    world = serve_world(tmp_path, backend="faiss")
    queries = _queries(world)[:5]
    cli = _cli_search(world, world["index"], queries, tmp_path, 7)
    with Server(world["ckpt"], world["index"]) as s:
        body = httpx.post(s.url + "/search", **files(queries, topk="7"), timeout=60).json()
    assert body["backend"] == "faiss"
    _assert_same(body["queries"], cli)


def test_mask_and_one_batch_for_one_request(server, world):
    before = _metric(server, "dclnet_batch_size_count")
    queries = _queries(world)[:6]
    body = httpx.post(server.url + "/search", **files(queries, topk="3", mask="1"), timeout=60)
    assert body.status_code == 200
    masks = [np.array(q["mask"]) for q in body.json()["queries"]]
    assert all(m.ndim == 2 and m.min() >= 0 and m.max() <= body.json()["num_parts"] for m in masks)
    # The six images of one request are embedded in one forward (one batch).
    assert _metric(server, "dclnet_batch_size_count") == before + 1


def _metric(server: Server, name: str, labels: str = "") -> float:
    text = httpx.get(server.url + "/metrics").text
    pattern = rf"^{re.escape(name)}{re.escape(labels)} (\S+)$"
    found = re.findall(pattern, text, flags=re.MULTILINE)
    return float(found[0]) if found else 0.0


def _png(width: int = 40, height: int = 80) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(random_images(1, 3, (height, width))[0]).save(buf, "PNG")
    return buf.getvalue()


def _raw_get(url: str, target: str) -> tuple[int, dict]:
    """GET ``target`` byte for byte (httpx would remove the ``..``); status and JSON body."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_bad_uploads_get_4xx_json_and_the_server_keeps_serving(server, world, tmp_path):
    url = server.url + "/search"
    truncated = write_truncated_jpeg(tmp_path / "cut.jpg").read_bytes()

    def upload(data: bytes, name: str = "q.jpg", ctype: str = "image/jpeg", **fields):
        form = {"modality": "infrared", "topk": "5", **fields}
        return httpx.post(url, data=form, files=[("image", (name, data, ctype))], timeout=60)

    cases = {
        "not an image": (upload(b"GIF? no, just text\n" * 10), 400, "not an image"),
        "truncated JPEG": (upload(truncated), 400, "truncated"),
        "0-byte file": (upload(b""), 400, "empty"),
        "20000 x 20000 PNG": (upload(bomb_png(), "big.png", "image/png"), 413, "pixels"),
        "100 MB body": (upload(bytes(100 * 1024 * 1024)), 413, "limit of 8 MiB"),
        "wrong modality": (upload(_png(), modality="thermal"), 400, "modality must be one of"),
        "no modality": (
            httpx.post(url, files=[("image", ("q.png", _png(), "image/png"))]),
            400,
            "modality",
        ),
        "JSON body": (
            httpx.post(url, json={"image": "q.jpg", "modality": "infrared"}),
            415,
            "multipart/form-data",
        ),
        "text/plain part": (upload(_png(), "q.txt", "text/plain"), 415, "content type"),
        "topk 0": (upload(_png(), topk="0"), 400, "topk must be in 1..1000"),
        "topk -5": (upload(_png(), topk="-5"), 400, "topk must be in"),
        "topk huge": (upload(_png(), topk=str(10**12)), 400, "topk must be in"),
        "topk text": (upload(_png(), topk="ten"), 400, "topk must be an integer"),
        "no image": (httpx.post(url, data={"modality": "infrared"}), 400, "at least one image"),
        "65 images": (
            httpx.post(
                url,
                data={"modality": "infrared"},
                files=[("image", (f"{i}.png", b"x", "image/png")) for i in range(65)],
            ),
            400,
            "files",
        ),
        "gallery ..": (httpx.get(server.url + "/gallery/%2e%2e/%2e%2e/etc/passwd"), 403, "outside"),
        "gallery missing": (httpx.get(server.url + "/gallery/cam1/none.jpg"), 404, "no gallery"),
    }
    for what, (response, status, words) in cases.items():
        assert response.status_code == status, (what, response.text)
        error = response.json()["error"]
        assert words in error and "\n" not in error, (what, error)
    for target in ("/gallery/../../etc/passwd", "/gallery/cam1/../../../etc/passwd"):
        status, body = _raw_get(server.url, target)
        assert status == body["status"] == 403 and "outside the gallery root" in body["error"]
    assert server.proc.poll() is None  # still running, and still answering
    good = httpx.post(url, **files(_queries(world)[:1], topk="5"), timeout=60)
    assert good.status_code == 200 and len(good.json()["queries"][0]["results"]) == 5
    assert _metric(server, "dclnet_requests_total", '{route="/search",status="500"}') == 0


def test_append_uploads_and_folders_then_search(world, tmp_path):
    index = copy_index(world, "index-append")
    extra = world["gallery"] / "extra"
    extra.mkdir()
    try:
        with Server(world["ckpt"], index) as s:
            _append_and_search(s, world, extra)
    finally:
        for folder in (extra, world["gallery"] / "uploads"):
            shutil.rmtree(folder, ignore_errors=True)


def _append_and_search(s: Server, world, extra: Path) -> None:
    size = httpx.get(s.url + "/health").json()["gallery_size"]
    new = _queries(world)[0]  # an infrared image, appended to the visible gallery
    added = httpx.post(s.url + "/index/append", **files([new]), timeout=60).json()
    assert added["added"] == 1 and added["gallery_size"] == size + 1
    assert added["folder"].startswith("uploads/")
    # The same image searched with the gallery's (visible) branch finds itself first.
    hit = httpx.post(s.url + "/search", **files([new], "visible", topk="3"), timeout=60).json()
    top = hit["queries"][0]["results"][0]
    assert top["path"].startswith(added["folder"] + "/") and top["score"] == pytest.approx(
        1, abs=1e-5
    )
    assert httpx.get(s.url + "/gallery/" + top["path"]).status_code == 200
    for i, pixels in enumerate(random_images(3, 11)):
        Image.fromarray(pixels).save(extra / f"{i}.png")
    folder = httpx.post(s.url + "/index/append", data={"folder": "extra"}, files=[]).json()
    assert folder == {"added": 3, "folder": "extra", "gallery_size": size + 4}
    again = httpx.post(s.url + "/index/append", data={"folder": "extra"}, files=[]).json()
    assert again["added"] == 0  # already held
    outside = httpx.post(s.url + "/index/append", data={"folder": "../queries"}, files=[])
    assert outside.status_code == 403 and "outside the gallery root" in outside.json()["error"]
    bad = httpx.post(s.url + "/index/append", **files([Path(__file__)]))
    assert bad.status_code == 400 and "not an image" in bad.json()["error"]
    assert httpx.get(s.url + "/health").json()["gallery_size"] == size + 4


def test_searches_during_appends_see_a_whole_index(world, tmp_path):
    index = copy_index(world, "index-load")
    query = _queries(world)[1]
    stop = threading.Event()
    try:
        with Server(world["ckpt"], index) as s:
            base = httpx.get(s.url + "/health").json()["gallery_size"]

            def appender() -> list[int]:
                sizes = []
                for i in range(4):
                    one = [("image", (f"{i}.png", _png(), "image/png"))]
                    r = httpx.post(s.url + "/index/append", files=one, timeout=120)
                    assert r.status_code == 200, r.text
                    sizes.append(r.json()["gallery_size"])
                stop.set()
                return sizes

            def searcher() -> list[tuple[int, list[str]]]:
                seen = []
                while not stop.is_set() or len(seen) < 3:
                    r = httpx.post(s.url + "/search", **files([query], topk="50"), timeout=120)
                    assert r.status_code == 200, r.text
                    body = r.json()
                    seen.append(
                        (body["gallery_size"], [e["path"] for e in body["queries"][0]["results"]])
                    )
                return seen

            with ThreadPoolExecutor(4) as pool:
                appends = pool.submit(appender)
                searches = [pool.submit(searcher) for _ in range(3)]
                sizes = appends.result()
                seen = [x for f in searches for x in f.result()]
    finally:
        shutil.rmtree(world["gallery"] / "uploads", ignore_errors=True)
    assert sizes == [base + 1, base + 2, base + 3, base + 4]
    for size, paths in seen:
        # A whole index: every ranked path is one that index holds, and all of them are ranked.
        assert size in [base, *sizes]
        assert len(paths) == min(50, size) and len(set(paths)) == len(paths)
        assert sum(p.startswith("uploads/") for p in paths) == size - base


def test_graceful_shutdown_answers_the_request_in_flight(world):
    # A window long enough to see the query waiting even on a loaded machine, where one
    # /metrics poll can take a second or more.
    with Server(world["ckpt"], world["index"], ["--window-ms", "10000"]) as s:
        result: dict = {}

        def slow_search() -> None:
            result["response"] = httpx.post(
                s.url + "/search", **files(_queries(world)[:1], topk="4"), timeout=60
            )

        thread = threading.Thread(target=slow_search)
        thread.start()
        deadline = time.monotonic() + 60
        while _metric(s, "dclnet_queue_depth") < 1:  # the query waits in its 10 s window
            assert thread.is_alive(), f"the query ended before SIGTERM: {result}"
            assert time.monotonic() < deadline, "the query never reached the queue"
            time.sleep(0.02)
        code, out = s.stop()
        thread.join(30)
        assert result["response"].status_code == 200, out
        assert len(result["response"].json()["queries"][0]["results"]) == 4
        assert code == 0 and "stopped" in out
        with pytest.raises(httpx.ConnectError):
            httpx.get(s.url + "/health")


def test_cli_errors_are_one_line(world, tmp_path, capsys, monkeypatch):
    from dclnet.cli import main

    argv = ["serve", "--checkpoint", str(world["ckpt"]), "--device", "cpu", "--index"]
    assert main([*argv, str(tmp_path / "nope")]) == 2
    assert "is not a dclnet index" in capsys.readouterr().err
    assert main([*argv, str(world["index"]), "--max-batch", "0"]) == 2
    assert "--max-batch must be >= 1" in capsys.readouterr().err
    monkeypatch.setitem(__import__("sys").modules, "uvicorn", None)  # the extra is missing
    assert main([*argv, str(world["index"])]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and 'pip install "dclnet[serve]"' in err and "uvicorn" in err
