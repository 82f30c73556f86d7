"""A tiny model, gallery and index, and a real ``dclnet serve`` process on a loopback port.

:func:`serve_world` writes what ``dclnet index`` needs (a random 64 x 32 ResNet-18 checkpoint,
SYSU-layout visible gallery and infrared queries); :class:`Server` runs
``python -m dclnet serve --port 0`` as a user would, reads the URL it prints, waits for
``/health`` and stops it with SIGTERM.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
from _inference_fixtures import make_checkpoint, run_cli, write_sysu_images

START_TIMEOUT = 60.0  # s for the server to load torch, the model and the index


def serve_world(root: Path, backend: str = "exact") -> dict[str, Path]:
    """Checkpoint, gallery (visible, SYSU layout), queries (infrared) and an index in ``root``."""
    gallery = write_sysu_images(root / "gallery", "visible")
    queries = write_sysu_images(root / "queries", "infrared")
    ckpt = make_checkpoint(root / "model.pt")
    index = root / f"index-{backend}"
    argv = ["index", "--checkpoint", str(ckpt), "--modality", "visible", "--images"]
    argv += [str(gallery), "--output", str(index), "--device", "cpu", "--no-progress"]
    if backend == "faiss":
        argv += ["--backend", "faiss", "--faiss", "Flat"]
    assert run_cli(argv) == 0
    return {"root": root, "gallery": gallery, "queries": queries, "ckpt": ckpt, "index": index}


def copy_index(world: dict[str, Path], name: str) -> Path:
    """A copy of the world's index folder (for a server whose appends must not leak)."""
    target = world["root"] / name
    shutil.copytree(world["index"], target)
    return target


class Server:
    """``dclnet serve`` in a subprocess; ``url`` once started.

    Args:
        checkpoint: Checkpoint file.
        index: Index folder.
        extra: Further command-line options (``--window-ms 200``, ...).
    """

    def __init__(self, checkpoint: Path, index: Path, extra: list[str] | None = None) -> None:
        argv = [sys.executable, "-m", "dclnet", "serve", "--checkpoint", str(checkpoint)]
        argv += ["--index", str(index), "--port", "0", "--device", "cpu", *(extra or [])]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        self.lines: list[str] = []
        self.url = self._read_url()
        # Keep reading its output, so that the pipe never fills and blocks the server.
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()
        self._wait_healthy()

    def _read_url(self) -> str:
        for line in self.proc.stdout:  # the first line says where it listens
            self.lines.append(line)
            if line.startswith("dclnet serve: http://"):
                return line.split()[2].rstrip("/")
        self.proc.wait(10)
        raise AssertionError(f"dclnet serve exited {self.proc.returncode}: {''.join(self.lines)}")

    def _drain(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/health", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        raise AssertionError(f"{self.url}/health did not answer within {START_TIMEOUT} s")

    def stop(self, timeout: float = 30.0) -> tuple[int, str]:
        """SIGTERM, then wait; the exit status and what it printed since starting."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(10)
        return self.proc.returncode, "".join(self.lines)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def files(paths: list[Path], modality: str = "infrared", **fields: str) -> dict:
    """``httpx`` keyword arguments posting ``paths`` as the form's image files."""
    data = {"modality": modality, **fields}
    upload = [("image", (p.name, p.read_bytes(), "image/jpeg")) for p in paths]
    return {"data": data, "files": upload}
