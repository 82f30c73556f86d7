"""``dclnet serve``: cross-modality search over a gallery index as a local HTTP service.

>>> dclnet serve --checkpoint runs/sysu/best.pt --index gallery_index   # then open the URL

The model and the index are loaded (and checked against each other) before the port is
bound, so a wrong path is one ``error:`` line. The service is FastAPI on uvicorn (the
optional extra ``dclnet[serve]``): routes in :mod:`dclnet.inference.serve_app`, what they do
in :mod:`dclnet.inference.serve_service`, micro-batching in
:mod:`dclnet.inference.serve_batching`. It binds to 127.0.0.1 unless ``--host`` says
otherwise. SIGINT / SIGTERM stop it gracefully: no new connection is accepted, requests in
flight are answered (for up to ``--graceful-timeout`` seconds), then the batcher finishes.

This module imports neither torch nor FastAPI at import time, so ``dclnet --help`` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dclnet.errors import DclnetError

logger = logging.getLogger(__name__)

INSTALL_HINT = 'pip install "dclnet[serve]"'
_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_STACK = (  # (package, module) of the serve extra
    ("fastapi", "fastapi"),
    ("uvicorn", "uvicorn"),
    ("python-multipart", "python_multipart"),
    ("prometheus_client", "prometheus_client"),
)


@dataclass(frozen=True)
class ServeSettings:
    """Everything ``dclnet serve`` is started with (its command-line options)."""

    checkpoint: Path
    index: Path
    host: str = "127.0.0.1"
    port: int = 8000
    gallery_root: Path | None = None
    labels: str = "none"
    device: str = "auto"
    window_ms: float = 2.0
    max_batch: int = 32
    max_body_mb: float = 32.0
    max_pixels: int = 25_000_000
    max_files: int = 64
    max_topk: int = 1000
    graceful_timeout: float = 30.0


def _import_stack() -> None:
    """Refuse with one line when the ``serve`` extra is missing."""
    missing = []
    for package, module in _STACK:
        try:
            __import__(module)
        except ImportError:
            missing.append(package)
    if missing:
        raise DclnetError(
            f"dclnet serve needs the optional packages {', '.join(missing)}: {INSTALL_HINT}"
        )


def build_app(settings: ServeSettings) -> Any:
    """Load the checkpoint and the index, and return the ASGI app serving them."""
    _import_stack()
    from dclnet.inference.api import Embedder
    from dclnet.inference.serve_app import create_app
    from dclnet.inference.serve_service import Limits, SearchService
    from dclnet.inference.visualize import label_reader

    limits = Limits(
        max_body_bytes=int(settings.max_body_mb * 1024 * 1024),
        max_pixels=settings.max_pixels,
        max_files=settings.max_files,
        max_topk=settings.max_topk,
    )
    service = SearchService(
        Embedder.from_checkpoint(settings.checkpoint, settings.device),
        settings.index,
        gallery_root=settings.gallery_root,
        labels=label_reader(settings.labels),
        limits=limits,
    )
    app = create_app(service, window_ms=settings.window_ms, max_batch=settings.max_batch)
    app.service = service
    return app


def serve(settings: ServeSettings) -> None:
    """Run the service until SIGINT / SIGTERM, then shut down gracefully and return."""
    app = build_app(settings)
    service = app.service
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, without re-raising the stop signal after a graceful shutdown."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            saved = {sig: signal.signal(sig, self.handle_exit) for sig in _SIGNALS}
            try:
                yield
            finally:
                for sig, handler in saved.items():
                    signal.signal(sig, handler)

    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        timeout_graceful_shutdown=settings.graceful_timeout,
        log_level="warning",
        access_log=False,
    )
    try:
        sock = config.bind_socket()
    except SystemExit:  # uvicorn logs the OSError and exits
        raise DclnetError(
            f"cannot listen on {settings.host}:{settings.port} (in use?); choose another --port"
        ) from None
    host, port = sock.getsockname()[:2]
    index = service.index
    print(
        f"dclnet serve: http://{host}:{port}/  ({len(index)} {index.modality} images, "
        f"{index.backend}, model {service.embedder.identity[:12]}; micro-batches of up to "
        f"{settings.max_batch} within {settings.window_ms:g} ms)",
        flush=True,
    )
    Server(config).run(sockets=[sock])
    print("dclnet serve: stopped", flush=True)


def cmd_serve(args: argparse.Namespace) -> None:
    checks = (
        ("--port", args.port, 0 <= args.port <= 65535, "0..65535 (0: any free port)"),
        ("--window-ms", args.window_ms, 0 <= args.window_ms <= 10_000, "0..10000"),
        ("--max-batch", args.max_batch, args.max_batch >= 1, ">= 1"),
        ("--max-body-mb", args.max_body_mb, args.max_body_mb > 0, "> 0"),
        ("--max-pixels", args.max_pixels, args.max_pixels >= 1, ">= 1"),
        ("--max-files", args.max_files, args.max_files >= 1, ">= 1"),
        ("--max-topk", args.max_topk, args.max_topk >= 1, ">= 1"),
    )
    for flag, value, ok, want in checks:
        if not ok:
            raise DclnetError(f"{flag} must be {want}, got {value}")
    names = [f.name for f in ServeSettings.__dataclass_fields__.values()]
    serve(ServeSettings(**{name: getattr(args, name) for name in names}))


def register(sub: Any) -> None:
    """Add ``serve`` to ``dclnet``'s sub-parsers."""
    p = sub.add_parser("serve", help="search a gallery index over HTTP, with a web page")
    p.add_argument("--checkpoint", type=Path, required=True, help="checkpoint from dclnet train")
    p.add_argument("--index", type=Path, required=True, help="index folder from dclnet index")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback)")
    p.add_argument("--port", type=int, default=8000, help="port (0: any free one, printed)")
    p.add_argument("--gallery-root", type=Path, help="gallery folder (default: the index's)")
    p.add_argument("--labels", default="none", help="identities: none, folder or a CSV path,label")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda:1")
    p.add_argument("--window-ms", type=float, default=2.0, help="micro-batching window")
    p.add_argument("--max-batch", type=int, default=32, help="most queries per forward")
    p.add_argument("--max-body-mb", type=float, default=32.0, help="largest request body")
    p.add_argument("--max-pixels", type=int, default=25_000_000, help="largest image (w x h)")
    p.add_argument("--max-files", type=int, default=64, help="most images per request")
    p.add_argument("--max-topk", type=int, default=1000, help="largest topk")
    p.add_argument(
        "--graceful-timeout", type=float, default=30.0, help="s to finish requests on stop"
    )
    p.set_defaults(func=cmd_serve)


if __name__ == "__main__":  # pragma: no cover
    from dclnet.cli import main

    sys.exit(main(["serve", *sys.argv[1:]]))
