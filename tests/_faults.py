"""Shared by the bad-input suites: the one-line error checks and a disk that fills up."""

from __future__ import annotations

import errno
import io

from dclnet import fileio


class FullDisk(io.RawIOBase):
    """A file whose writes fail with ENOSPC after ``room`` bytes (what a full disk does)."""

    def __init__(self, path, room: int):
        self._fh = open(path, "wb", buffering=0)  # noqa: SIM115 - closed in close()
        self.room = room

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self._fh.write(data)

    def close(self) -> None:
        self._fh.close()
        super().close()


def full_disk(monkeypatch, room: int = 64) -> None:
    """Make every file :mod:`dclnet.fileio` opens for writing run out of space."""

    def fake_open(path, mode="r", encoding=None, newline=None):
        raw = FullDisk(path, room)
        if "b" in mode:
            return raw
        return io.TextIOWrapper(io.BufferedWriter(raw), encoding=encoding, newline=newline)

    monkeypatch.setattr(fileio, "open", fake_open, raising=False)


def one_error_line(capsys, status: int, needle: str, expected: int = 2) -> str:
    """The single ``error:`` line of a CLI run (progress bars aside), checked."""
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    lines = [ln for ln in err.splitlines() if ln.strip() and "%|" not in ln]
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: "), lines
    assert needle in lines[0], lines[0]
    assert status == expected, lines[0]
    return lines[0]


def one_line(exc: BaseException, needle: str) -> None:
    assert "\n" not in str(exc) and needle in str(exc), str(exc)
