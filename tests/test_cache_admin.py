"""`dclnet cache list | clear` on a tmp cache: a tiny real image cache plus a pretrained file."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dclnet.cli import main
from dclnet.data import cache_admin
from dclnet.data.cache import build_cache
from dclnet.data.records import Record

PRETRAINED_NAME = "synthetic-resnet18-64x32-s32-64ids-10steps-v1.pt"


def _write_images(root: Path) -> list[Record]:
    records = []
    for i, (cam, modality) in enumerate(((1, "visible"), (1, "visible"), (3, "infrared"))):
        rel = f"cam{cam}/0001/{i:04d}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        pixels = np.random.default_rng(i).integers(0, 255, (40, 20, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / rel)
        records.append(Record(rel, 1, cam, modality))
    return records


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    """A cache dir with one complete image cache, one incomplete folder, one pretrained file."""
    cache_dir = tmp_path / "cache"
    root = tmp_path / "data"
    build_cache(
        root,
        _write_images(root),
        size=(16, 8),
        cache_dir=cache_dir,
        name="toy-train",
        progress=False,
    )
    (cache_dir / "pretrained").mkdir()
    (cache_dir / "pretrained" / PRETRAINED_NAME).write_bytes(b"\0" * 1000)
    (cache_dir / "other-16x8-deadbeefdeadbeef").mkdir()  # crashed before meta.json
    (cache_dir / "other-16x8-deadbeefdeadbeef" / "images.npy").write_bytes(b"\0" * 10)
    return cache_dir


def _image_entry(cache_dir: Path) -> str:
    (name,) = [p.name for p in cache_dir.iterdir() if p.name.startswith("toy-train-16x8-")]
    return name


def _run(capsys, *args: str) -> tuple[int, list[str], list[str]]:
    code = main(["cache", *args])
    captured = capsys.readouterr()
    return code, captured.out.splitlines(), captured.err.splitlines()


def test_list_one_line_per_entry_with_meta_sizes_and_total(cache: Path, capsys) -> None:
    code, out, _ = _run(capsys, "list", "--cache-dir", str(cache))
    assert code == 0
    image = _image_entry(cache)
    assert len(out) == 4  # three entries and the total
    lines = {line.split()[0]: line for line in out[:-1]}
    assert set(lines) == {image, "other-16x8-deadbeefdeadbeef", f"pretrained/{PRETRAINED_NAME}"}
    npy = (cache / image / "images.npy").stat().st_size
    meta = (cache / image / "meta.json").stat().st_size
    lock = (cache / image / ".lock").stat().st_size
    assert " images  " in lines[image] and f"({npy + meta + lock} bytes)" in lines[image]
    assert f"toy-train root={(cache.parent / 'data').resolve()} size=16x8 images=3" in lines[image]
    assert "modified 20" in lines[image]
    assert " incomplete " in lines["other-16x8-deadbeefdeadbeef"]
    assert " pretrained " in lines[f"pretrained/{PRETRAINED_NAME}"]
    assert "(1000 bytes)" in lines[f"pretrained/{PRETRAINED_NAME}"]
    assert out[-1].startswith("3 entries") and str(cache) in out[-1]


def test_list_missing_or_empty_cache_dir(tmp_path: Path, capsys) -> None:
    code, out, _ = _run(capsys, "list", "--cache-dir", str(tmp_path / "none"))
    assert code == 0 and out == [f"cache directory {tmp_path / 'none'} does not exist"]
    (tmp_path / "empty").mkdir()
    assert _run(capsys, "list", "--cache-dir", str(tmp_path / "empty"))[1][0].endswith("is empty")


def test_default_cache_dir_follows_xdg(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    (tmp_path / "dclnet" / "pretrained").mkdir(parents=True)
    (tmp_path / "dclnet" / "pretrained" / "x.pt").write_bytes(b"x")
    code, out, _ = _run(capsys, "list")
    assert code == 0 and out[0].startswith("pretrained/x.pt  pretrained  1 B (1 bytes)")


def test_clear_without_yes_only_prints(cache: Path, capsys) -> None:
    before = sorted(p for p in cache.rglob("*"))
    code, out, _ = _run(capsys, "clear", "--all", "--cache-dir", str(cache))
    assert code == 0
    assert sum(line.startswith("would delete ") for line in out) == 3
    assert out[-1].endswith("pass --yes to delete them")
    assert sorted(p for p in cache.rglob("*")) == before


def test_clear_names_then_all(cache: Path, capsys) -> None:
    image = _image_entry(cache)
    code, out, _ = _run(capsys, "clear", image, "--yes", "--cache-dir", str(cache))
    assert code == 0 and out[0].startswith(f"deleted {image} (")
    assert not (cache / image).exists()
    assert (cache / "pretrained" / PRETRAINED_NAME).exists()
    code, out, _ = _run(capsys, "clear", "pretrained", "--yes", "--cache-dir", str(cache))
    assert code == 0 and out[0] == f"deleted pretrained/{PRETRAINED_NAME} (1000 B)"
    assert not (cache / "pretrained").exists()  # the emptied folder goes too
    code, out, _ = _run(capsys, "clear", "--all", "--yes", "--cache-dir", str(cache))
    assert code == 0 and out[0].startswith("deleted other-16x8-deadbeefdeadbeef")
    assert cache.is_dir() and not any(cache.iterdir())
    assert (cache.parent / "data" / "cam1" / "0001" / "0000.png").is_file()  # raw data untouched
    code, out, _ = _run(capsys, "clear", "--all", "--yes", "--cache-dir", str(cache))
    assert code == 0 and out == [f"nothing to delete in {cache}"]


def test_clear_pretrained_file_by_name_and_trailing_slash(cache: Path, capsys) -> None:
    name = f"pretrained/{PRETRAINED_NAME}"
    assert _run(capsys, "clear", name, "--yes", "--cache-dir", str(cache))[0] == 0
    assert not (cache / name).exists()
    folder = "other-16x8-deadbeefdeadbeef/"
    assert _run(capsys, "clear", folder, "--yes", "--cache-dir", str(cache))[0] == 0
    assert not (cache / folder).exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["nope"], "unknown cache entry 'nope'"),
        (["../data"], "unknown cache entry '../data'"),
        ([], "give entry names"),
        (["--all", "pretrained"], "either --all or entry names"),
    ],
)
def test_clear_errors_are_one_line_and_delete_nothing(cache: Path, capsys, args, message) -> None:
    before = sorted(p for p in cache.rglob("*"))
    code, _, err = _run(capsys, "clear", *args, "--yes", "--cache-dir", str(cache))
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert sorted(p for p in cache.rglob("*")) == before


def test_symlinks_never_followed_out_of_the_cache(cache: Path, tmp_path: Path, capsys) -> None:
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    (cache / "escape").symlink_to(outside, target_is_directory=True)
    code, out, _ = _run(capsys, "list", "--cache-dir", str(cache))
    assert any(line.startswith("escape  link ") and str(outside) in line for line in out)
    code, _, err = _run(capsys, "clear", "escape", "--yes", "--cache-dir", str(cache))
    assert code == 2 and len(err) == 1 and "outside the cache directory" in err[0]
    code, _, err = _run(capsys, "clear", "--all", "--yes", "--cache-dir", str(cache))
    assert code == 2 and "outside the cache directory" in err[0]
    assert (outside / "keep.txt").read_text() == "keep"
    assert (cache / _image_entry(cache)).is_dir()  # refused before deleting anything
    # a link to something inside the cache is removed as a link
    (cache / "escape").unlink()
    (cache / "alias").symlink_to(cache / _image_entry(cache), target_is_directory=True)
    assert _run(capsys, "clear", "alias", "--yes", "--cache-dir", str(cache))[0] == 0
    assert not (cache / "alias").exists() and (cache / _image_entry(cache) / "meta.json").is_file()


def test_cache_dir_given_through_a_link_works(cache: Path, tmp_path: Path, capsys) -> None:
    link = tmp_path / "cache-link"
    link.symlink_to(cache, target_is_directory=True)
    code, out, _ = _run(capsys, "clear", "pretrained", "--yes", "--cache-dir", str(link))
    assert code == 0 and not (cache / "pretrained").exists()


def test_linked_pretrained_folder_is_listed_as_a_link_not_entered(cache: Path, tmp_path) -> None:
    elsewhere = tmp_path / "weights"
    elsewhere.mkdir()
    (elsewhere / "w.pt").write_bytes(b"w")
    os.rename(cache / "pretrained", tmp_path / "old-pretrained")
    (cache / "pretrained").symlink_to(elsewhere, target_is_directory=True)
    entries = {e.name: e for e in cache_admin.list_entries(cache)}
    assert entries["pretrained"].kind == "link" and "pretrained/w.pt" not in entries


def test_entry_being_built_is_skipped(cache: Path, capsys) -> None:
    import fcntl

    image = _image_entry(cache)
    with open(cache / image / ".lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        code, out, err = _run(capsys, "clear", image, "--yes", "--cache-dir", str(cache))
    assert code == 2 and any(line.startswith(f"skipped {image}") for line in out)
    assert "in use" in err[0] and (cache / image / "meta.json").is_file()


def test_format_bytes() -> None:
    assert cache_admin.format_bytes(0) == "0 B"
    assert cache_admin.format_bytes(1023) == "1023 B"
    assert cache_admin.format_bytes(1536) == "1.5 KB"
    assert cache_admin.format_bytes(3 * 1024**3) == "3.0 GB"
