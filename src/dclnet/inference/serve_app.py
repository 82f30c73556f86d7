"""The HTTP side of ``dclnet serve``: a FastAPI app over :class:`SearchService`.

Routes::

    GET  /                  the web page (static/index.html; no external resources)
    POST /search            multipart: image (1..max_files), modality, topk, mask
    GET  /gallery/{path}    a gallery image (only below the gallery root)
    POST /index/append      multipart: image files, or a folder below the gallery root
    GET  /health            model and index identity
    GET  /metrics           Prometheus text: requests, latency, queue depth, batch sizes

Every error is JSON ``{"error": "<one line>", "status": N}``: 4xx for a bad request (see
:class:`~dclnet.inference.serve_service.RequestError`), 500 for a fault of the server,
which is logged and keeps serving. Bodies above ``Limits.max_body_bytes`` are refused with
413 before they reach the form parser.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from dclnet.errors import CheckpointError, DclnetError
from dclnet.inference.serve_batching import (
    DEFAULT_MAX_BATCH,
    DEFAULT_WINDOW_MS,
    MicroBatcher,
    Query,
)
from dclnet.inference.serve_service import RequestError, SearchService, check_modality, check_topk

logger = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static")
FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
IMAGE_TYPES = ("image/", "application/octet-stream")  # declared types of an upload we accept
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    """The service's Prometheus metrics, in a registry of its own (no global state)."""

    def __init__(self, service: SearchService, batcher: MicroBatcher) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "dclnet_requests",
            "HTTP requests by route and status",
            ["route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "dclnet_request_seconds",
            "HTTP request latency by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "dclnet_batch_size",
            "queries per micro-batch (one forward, one search)",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.appended = Counter("dclnet_appended_images", "images appended", registry=r)
        queue = Gauge("dclnet_queue_depth", "queries waiting or being computed", registry=r)
        queue.set_function(lambda: batcher.depth)
        size = Gauge("dclnet_gallery_images", "images in the served index", registry=r)
        size.set_function(lambda: len(service.index))

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status)


class MetricsMiddleware:
    """Counts every request and times it, labelled by route template (not the raw path)."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), [500]

        async def record(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.requests.labels(route, str(status[0])).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)


class BodyLimitMiddleware:
    """413 for a body above ``limit`` bytes: by its Content-Length up front, else counted.

    A body announced as too large is read and dropped (up to ``drain`` bytes) before the
    answer, so that the client, still sending, reads the 413 instead of a reset connection.
    """

    def __init__(self, app: Any, limit: int, drain: int | None = None) -> None:
        self.app, self.limit = app, limit
        self.drain = drain if drain is not None else max(4 * limit, 256 * 1024 * 1024)

    def _message(self, size: str) -> str:
        mb = self.limit / (1024 * 1024)
        return f"request body of {size} is above the limit of {mb:g} MiB (--max-body-mb)"

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length", b"").decode("latin-1")
        if length.isdigit() and int(length) > self.limit:
            await self._discard(receive, int(length))
            body = json.dumps({"error": self._message(f"{int(length):,} bytes"), "status": 413})
            await send(
                {
                    "type": "http.response.start",
                    "status": 413,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": body.encode()})
            return
        seen = [0]

        async def counted() -> dict:
            message = await receive()
            if message["type"] == "http.request":
                seen[0] += len(message.get("body", b""))
                if seen[0] > self.limit:
                    raise RequestError(413, self._message(f"more than {seen[0]:,} bytes"))
            return message

        await self.app(scope, counted, send)

    async def _discard(self, receive: Any, length: int) -> None:
        if length > self.drain:
            return
        while True:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body"):
                return


async def _form(request: Request, max_files: int):
    """The multipart form of ``request``, or 415 / 400 naming what is wrong."""
    ctype = request.headers.get("content-type", "")
    if not ctype.lower().startswith(FORM_TYPES):
        raise RequestError(
            415,
            f"{request.method} {request.url.path} takes multipart/form-data (an HTML "
            f"form with files), got content type {ctype or 'none'!r}",
        )
    try:
        return await request.form(max_files=max_files, max_fields=16)
    except StarletteHTTPException as exc:
        raise RequestError(400, f"malformed multipart body: {exc.detail}") from None


async def _uploads(form: Any, field: str = "image") -> list[tuple[str, bytes]]:
    """``(filename, bytes)`` of every file in ``field``; 400/415 for a field that is not one."""
    out = []
    for item in form.getlist(field):
        if not isinstance(item, UploadFile):
            raise RequestError(400, f"form field {field!r} must be a file upload, got text")
        name = item.filename or f"{field}{len(out)}"
        ctype = (item.content_type or "").lower()
        if ctype and not ctype.startswith(IMAGE_TYPES):
            raise RequestError(
                415,
                f"upload {name!r} has content type {ctype!r}; send image/jpeg, "
                "image/png or image/bmp",
            )
        out.append((name, await item.read()))
    return out


def create_app(
    service: SearchService,
    *,
    window_ms: float = DEFAULT_WINDOW_MS,
    max_batch: int = DEFAULT_MAX_BATCH,
) -> Any:
    """The ASGI app (FastAPI wrapped in the body-limit and metrics middleware).

    Args:
        service: The loaded model and index.
        window_ms: Micro-batching window (see :mod:`dclnet.inference.serve_batching`).
        max_batch: Most queries per forward.
    """
    batcher = MicroBatcher(service.run_batch, window_s=window_ms / 1000, max_batch=max_batch)
    metrics = Metrics(service, batcher)
    batcher.on_batch = metrics.batch_size.observe
    append_guard = asyncio.Lock()  # one append request at a time; searches go on meanwhile

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        yield
        await batcher.close()  # after uvicorn let the in-flight requests finish

    app = FastAPI(title="dclnet serve", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.service, app.state.batcher, app.state.metrics = service, batcher, metrics

    @app.exception_handler(RequestError)
    async def request_error(request: Request, exc: RequestError) -> JSONResponse:
        return _error(exc.status, str(exc))

    @app.exception_handler(DclnetError)
    async def dclnet_error(request: Request, exc: DclnetError) -> JSONResponse:
        if isinstance(exc, CheckpointError):
            logger.error("%s %s: %s", request.method, request.url.path, exc)
            return _error(500, str(exc))
        return _error(400, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}")

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("%s %s failed", request.method, request.url.path)
        return _error(500, f"internal error: {type(exc).__name__}: {exc} (logged by the server)")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", **service.describe(), "queue_depth": batcher.depth}

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.post("/search")
    async def search(request: Request) -> dict[str, Any]:
        started = time.perf_counter()
        form = await _form(request, service.limits.max_files)
        modality = check_modality(form.get("modality"))
        topk = check_topk(form.get("topk"), service.limits.max_topk)
        mask = str(form.get("mask", "")).lower() in ("1", "true", "on", "yes")
        files = await _uploads(form)
        if not files:
            raise RequestError(400, "POST /search needs at least one image (form field 'image')")
        pixels = [await run_in_threadpool(service.decode, data, name) for name, data in files]
        queries = [Query(p, modality, topk, mask) for p in pixels]
        found = await asyncio.gather(*(batcher.submit(q) for q in queries))
        out = []
        for (name, _), result in zip(files, found):
            entry = {"name": name, "gallery_size": result["index"]["gallery_size"]}
            entry["results"] = result["results"]
            if mask:
                entry["mask"] = result["mask"]
            out.append(entry)
        return {  # the index that ranked the first query (more than max_batch: maybe others)
            **found[0]["index"],
            "modality": modality,
            "topk": topk,
            "num_parts": int(getattr(service.embedder.model, "num_parts", 0)),
            "queries": out,
            "seconds": time.perf_counter() - started,
        }

    @app.get("/gallery/{path:path}")
    async def gallery(path: str) -> FileResponse:
        return FileResponse(service.gallery_file(path))

    @app.post("/index/append")
    async def append(request: Request) -> dict[str, Any]:
        form = await _form(request, service.limits.max_files)
        files = await _uploads(form)
        folder = form.get("folder")
        if folder is not None and not isinstance(folder, str):
            raise RequestError(400, "form field 'folder' must be text (a path below the root)")
        if files and folder:
            raise RequestError(400, "give image files or a 'folder', not both")
        async with append_guard:
            if folder:
                result = await run_in_threadpool(service.append_folder, folder)
            else:
                result = await run_in_threadpool(service.append_uploads, files)
        metrics.appended.inc(result["added"])
        return result

    return MetricsMiddleware(BodyLimitMiddleware(app, service.limits.max_body_bytes), metrics)
