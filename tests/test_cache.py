"""Image decoding and the on-disk cache: values, keys, reuse, rebuilds, crashes, memory."""

from __future__ import annotations

import gc
import json
import logging
import os
import threading
import tracemalloc
import weakref
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dclnet.data import cache_build, imageio
from dclnet.data.cache import CachedSet, build_cache, default_cache_dir
from dclnet.data.imageio import load_image
from dclnet.data.records import Record
from dclnet.errors import DataError, DclnetError

SIZE = (32, 16)
# (relative path, label, cam, modality, (height, width) of the raw file)
LAYOUT = [
    ("cam1/0001/a.jpg", 0, 1, "visible", (96, 40)),
    ("cam1/0001/b.bmp", 0, 1, "visible", (70, 33)),
    ("cam2/0002/a.png", 1, 2, "visible", (128, 64)),
    ("cam2/0002/b.jpg", 1, 2, "visible", (32, 16)),  # already at the target size
    ("cam3/0001/a.bmp", 0, 3, "infrared", (81, 47)),
    ("cam3/0002/a.jpg", 1, 3, "infrared", (120, 50)),
    ("cam6/0002/b.png", 1, 6, "infrared", (64, 24)),
]


def write_image(path: Path, shape: tuple[int, int], seed: int) -> None:
    """A noisy gradient, so that resizing and position errors change the pixels."""
    rng = np.random.default_rng(seed)
    h, w = shape
    ramp = np.linspace(0, 200, h * w).reshape(h, w, 1)
    pixels = np.clip(ramp + rng.integers(0, 55, size=(h, w, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    options = {"quality": 95} if path.suffix == ".jpg" else {}
    Image.fromarray(pixels).save(path, **options)


def pil_resized(path: Path, size: tuple[int, int]) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB").resize((size[1], size[0]), Image.Resampling.LANCZOS))


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, list[Record]]:
    root = tmp_path / "data"
    for seed, (rel, _, _, _, shape) in enumerate(LAYOUT):
        write_image(root / rel, shape, seed)
    return root, [Record(rel, label, cam, mod) for rel, label, cam, mod, _ in LAYOUT]


@pytest.fixture
def decode_calls(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Paths passed to the cache's decoder, in call order (the real decoder still runs)."""
    calls: list[Path] = []

    def counting(path: Path, size: tuple[int, int] | None) -> np.ndarray:
        calls.append(Path(path))
        return imageio.load_image(path, size)

    monkeypatch.setattr(cache_build, "load_image", counting)
    return calls


def build(root: Path, records: list[Record], tmp_path: Path, **kwargs) -> CachedSet:
    kwargs.setdefault("size", SIZE)
    return build_cache(root, records, cache_dir=tmp_path / "cache", progress=False, **kwargs)


def temp_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.tmp")) + sorted(directory.glob(".*.tmp"))


# --- load_image -------------------------------------------------------------------------


def test_load_image_matches_pil_lanczos_and_keeps_size_without_target(tree):
    root, _ = tree
    for rel, *_, shape in LAYOUT:
        image = load_image(root / rel, SIZE)
        assert image.shape == (*SIZE, 3) and image.dtype == np.uint8
        np.testing.assert_array_equal(image, pil_resized(root / rel, SIZE))
        assert load_image(root / rel, None).shape == (*shape, 3)
    image = load_image(root / LAYOUT[0][0], SIZE)
    image[0, 0] = 0  # callers may write into the result


def test_load_image_converts_grey_and_palette_to_rgb(tmp_path):
    grey = tmp_path / "grey.png"
    Image.fromarray(np.full((10, 6), 77, np.uint8), mode="L").save(grey)
    image = load_image(grey, None)
    assert image.shape == (10, 6, 3) and (image == 77).all()


@pytest.mark.parametrize("suffix", [".jpg", ".bmp", ".png"])
def test_load_image_truncated_file_names_path_and_fix(tmp_path, suffix):
    path = tmp_path / f"broken{suffix}"
    write_image(path, (80, 40), 0)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError) as info:
        load_image(path, SIZE)
    message = str(info.value)
    assert str(path) in message and "skip_corrupt=True" in message and "\n" not in message


def test_load_image_not_an_image_or_missing(tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    with pytest.raises(DataError, match="notes.jpg"):
        load_image(text, SIZE)
    with pytest.raises(DataError, match="absent.jpg"):
        load_image(tmp_path / "absent.jpg", SIZE)


# --- building and reading ---------------------------------------------------------------


def test_build_keeps_order_values_and_is_read_only_memmap(tree, tmp_path):
    root, records = tree
    cached = build(root, records, tmp_path)
    assert isinstance(cached.images, np.memmap) and cached.images.mode == "r"
    assert cached.images.shape == (len(records), *SIZE, 3) and cached.images.dtype == np.uint8
    assert cached.paths == [r.path for r in records]
    assert cached.labels.dtype == np.int64 and cached.labels.tolist() == [r.label for r in records]
    assert cached.cams.dtype == np.int64 and cached.cams.tolist() == [r.cam for r in records]
    assert cached.modalities.tolist() == [r.modality for r in records]
    assert cached.skipped == [] and len(cached) == len(records)
    for row, r in enumerate(records):
        np.testing.assert_array_equal(cached.images[row], pil_resized(root / r.path, SIZE))
    with pytest.raises(ValueError):
        cached.images[0, 0, 0, 0] = 1
    assert (cached.directory / "images.npy").exists() and temp_files(cached.directory) == []
    meta = json.loads((cached.directory / "meta.json").read_text())
    assert meta["key"]["size"] == list(SIZE) and meta["key"]["root"] == str(root.resolve())
    assert meta["key"]["reader_version"] == imageio.READER_VERSION
    assert [m[0] for m in meta["records"]] == cached.paths and meta["skipped"] == []


def test_image_set_memmapped_when_grouped_and_copied_when_interleaved(tree, tmp_path):
    root, records = tree
    cached = build(root, records, tmp_path)
    infrared = cached.image_set("infrared")
    assert isinstance(infrared.images, np.memmap)  # contiguous rows stay on disk
    assert infrared.paths == [r.path for r in records if r.modality == "infrared"]
    assert infrared.cams.tolist() == [3, 3, 6] and infrared.labels.tolist() == [0, 1, 1]
    np.testing.assert_array_equal(infrared.images, cached.images[4:])

    mixed = [records[4], records[0], records[5], records[1]]
    cached = build(root, mixed, tmp_path)
    visible = cached.image_set("visible")
    assert visible.paths == [records[0].path, records[1].path]
    np.testing.assert_array_equal(visible.images, cached.images[[1, 3]])
    with pytest.raises(DclnetError, match="infrared"):
        cached.image_set("thermal")


def test_parallel_decoding_writes_the_same_arrays_in_order(tree, tmp_path):
    root, records = tree
    serial = build(root, records, tmp_path / "a", num_workers=0)
    parallel = build(root, records, tmp_path / "b", num_workers=3)
    assert parallel.paths == serial.paths
    np.testing.assert_array_equal(parallel.images, serial.images)


def test_progress_bar_only_when_asked(tree, tmp_path, capsys):
    root, records = tree
    build_cache(root, records, size=SIZE, cache_dir=tmp_path / "q", progress=False)
    assert "caching" not in capsys.readouterr().err
    build_cache(root, records, size=SIZE, cache_dir=tmp_path / "p", progress=True, name="train")
    assert "caching train" in capsys.readouterr().err


def test_bad_inputs_raise_data_errors(tree, tmp_path):
    root, records = tree
    with pytest.raises(DataError, match="absent"):
        build(tmp_path / "absent", records, tmp_path)
    with pytest.raises(DataError, match="no records"):
        build(root, [], tmp_path)
    (root / records[2].path).unlink()
    with pytest.raises(DataError, match=records[2].path) as info:
        build(root, records, tmp_path)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="height, width"):
        build(root, records, tmp_path, size=(32, 0))


# --- reuse and rebuild ------------------------------------------------------------------


def test_reuse_never_decodes(tree, tmp_path, monkeypatch, caplog):
    root, records = tree
    first = build(root, records, tmp_path)

    def must_not_decode(path, size):
        raise AssertionError(f"decoded {path} although the cache is valid")

    monkeypatch.setattr(cache_build, "load_image", must_not_decode)
    with caplog.at_level(logging.INFO, logger="dclnet.data.cache"):
        again = build(root, records, tmp_path)
    assert "reusing cache" in caplog.text
    assert again.directory == first.directory
    np.testing.assert_array_equal(again.images, first.images)
    assert again.paths == first.paths and again.labels.tolist() == first.labels.tolist()


def test_changed_raw_file_triggers_rebuild_with_new_pixels(tree, tmp_path, decode_calls, caplog):
    root, records = tree
    first = build(root, records, tmp_path)
    old_row = np.array(first.images[2])
    write_image(root / records[2].path, (100, 60), seed=99)  # new content, new size
    with caplog.at_level(logging.INFO, logger="dclnet.data.cache"):
        second = build(root, records, tmp_path)
    assert "building cache" in caplog.text and records[2].path in caplog.text
    assert second.directory == first.directory  # same key, new contents
    assert len(decode_calls) == 2 * len(records)
    assert not np.array_equal(second.images[2], old_row)
    np.testing.assert_array_equal(second.images[2], pil_resized(root / records[2].path, SIZE))


def test_touched_raw_file_triggers_rebuild(tree, tmp_path, decode_calls):
    root, records = tree
    build(root, records, tmp_path)
    path = root / records[5].path
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    build(root, records, tmp_path)
    assert len(decode_calls) == 2 * len(records)
    build(root, records, tmp_path)  # and then it is current again
    assert len(decode_calls) == 2 * len(records)


def test_size_records_and_name_are_part_of_the_key(tree, tmp_path, decode_calls):
    root, records = tree
    base = build(root, records, tmp_path)
    smaller = build(root, records, tmp_path, size=(24, 12))
    fewer = build(root, records[:-1], tmp_path)
    shifted = [Record(r.path, r.label + 5, r.cam, r.modality) for r in records]
    relabelled = build(root, shifted, tmp_path)
    named = build(root, records, tmp_path, name="sysu-train")
    dirs = {c.directory for c in (base, smaller, fewer, relabelled, named)}
    assert len(dirs) == 5 and named.directory.name.startswith("sysu-train-32x16-")
    assert smaller.images.shape == (len(records), 24, 12, 3)
    assert fewer.paths == base.paths[:-1] and relabelled.labels.tolist()[0] == 5
    calls = len(decode_calls)
    again = build(root, records, tmp_path)  # the first cache is still valid
    assert len(decode_calls) == calls and again.directory == base.directory


# --- corrupt files ----------------------------------------------------------------------


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_truncated_jpeg_raises_and_writes_no_cache(tree, tmp_path):
    root, records = tree
    truncate(root / records[5].path)
    with pytest.raises(DataError) as info:
        build(root, records, tmp_path, num_workers=2)
    assert str(root / records[5].path) in str(info.value)
    (directory,) = (tmp_path / "cache").iterdir()
    assert not (directory / "meta.json").exists() and not (directory / "images.npy").exists()
    assert temp_files(directory) == []


def test_skip_corrupt_drops_lists_and_warns(tree, tmp_path, monkeypatch, caplog):
    root, records = tree
    truncate(root / records[1].path)
    with caplog.at_level(logging.WARNING, logger="dclnet.data.cache"):
        cached = build(root, records, tmp_path, skip_corrupt=True)
    kept = [r for i, r in enumerate(records) if i != 1]
    assert cached.skipped == [records[1].path] and records[1].path in caplog.text
    assert cached.images.shape[0] == len(kept) and cached.paths == [r.path for r in kept]
    assert cached.cams.tolist() == [r.cam for r in kept]
    for row, r in enumerate(kept):
        np.testing.assert_array_equal(cached.images[row], pil_resized(root / r.path, SIZE))
    meta = json.loads((cached.directory / "meta.json").read_text())
    assert meta["skipped"] == [records[1].path] and meta["num_images"] == len(kept)
    assert temp_files(cached.directory) == []

    monkeypatch.setattr(cache_build, "load_image", lambda p, s: pytest.fail("decoded again"))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dclnet.data.cache"):
        again = build(root, records, tmp_path, skip_corrupt=True)
    assert again.skipped == [records[1].path] and records[1].path in caplog.text
    with pytest.raises(DataError, match="skip_corrupt=True") as info:
        build(root, records, tmp_path)  # reusing a shortened cache needs the same consent
    assert str(root / records[1].path) in str(info.value)


def test_skip_corrupt_missing_file_and_all_unreadable(tree, tmp_path):
    root, records = tree
    (root / records[0].path).unlink()
    cached = build(root, records, tmp_path, skip_corrupt=True)
    assert cached.skipped == [records[0].path] and len(cached) == len(records) - 1
    for r in records[1:]:
        truncate(root / r.path)
    with pytest.raises(DataError, match="no readable images"):
        build(root, records, tmp_path, skip_corrupt=True)


# --- crashes and partial caches ---------------------------------------------------------


def crash_after(monkeypatch: pytest.MonkeyPatch, k: int) -> None:
    count = 0

    def flaky(path, size):
        nonlocal count
        count += 1
        if count > k:
            raise RuntimeError("simulated crash")
        return imageio.load_image(path, size)

    monkeypatch.setattr(cache_build, "load_image", flaky)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_crash_mid_build_leaves_nothing_trusted(tree, tmp_path, monkeypatch, num_workers):
    root, records = tree
    crash_after(monkeypatch, 3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        build(root, records, tmp_path, num_workers=num_workers)
    (directory,) = (tmp_path / "cache").iterdir()
    assert not (directory / "meta.json").exists() and not (directory / "images.npy").exists()
    assert temp_files(directory) == []

    calls: list[Path] = []
    monkeypatch.setattr(cache_build, "load_image", lambda p, s: calls.append(p) or load_image(p, s))
    cached = build(root, records, tmp_path, num_workers=num_workers)
    assert len(calls) == len(records) and cached.directory == directory
    for row, r in enumerate(records):
        np.testing.assert_array_equal(cached.images[row], pil_resized(root / r.path, SIZE))


def test_crash_during_rebuild_invalidates_the_old_cache(tree, tmp_path, monkeypatch):
    root, records = tree
    first = build(root, records, tmp_path)
    write_image(root / records[0].path, (50, 50), seed=7)
    crash_after(monkeypatch, 2)
    with pytest.raises(RuntimeError):
        build(root, records, tmp_path)
    assert not (first.directory / "meta.json").exists()  # old arrays no longer vouched for
    monkeypatch.setattr(cache_build, "load_image", imageio.load_image)
    cached = build(root, records, tmp_path)
    np.testing.assert_array_equal(cached.images[0], pil_resized(root / records[0].path, SIZE))


def test_crash_before_meta_json_is_written_rebuilds(tree, tmp_path, monkeypatch, decode_calls):
    root, records = tree

    def fail(path, data):
        raise OSError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(cache_build, "_write_json_atomic", fail)
        with pytest.raises(OSError, match="disk full"):
            build(root, records, tmp_path)
    (directory,) = (tmp_path / "cache").iterdir()
    assert (directory / "images.npy").exists() and not (directory / "meta.json").exists()
    build(root, records, tmp_path)
    assert len(decode_calls) == 2 * len(records)


def test_stale_temp_files_are_removed(tree, tmp_path):
    root, records = tree
    cached = build(root, records, tmp_path)
    stale = cached.directory / ".images.0123abcd.tmp"  # what a killed build leaves behind
    stale.write_bytes(b"\0" * 1000)
    (cached.directory / "meta.json").unlink()
    build(root, records, tmp_path)
    assert not stale.exists() and temp_files(cached.directory) == []


@pytest.mark.parametrize("damage", ["truncate_images", "garbage_meta", "incomplete_meta"])
def test_damaged_cache_is_rebuilt(tree, tmp_path, decode_calls, damage):
    root, records = tree
    cached = build(root, records, tmp_path)
    images, meta = cached.directory / "images.npy", cached.directory / "meta.json"
    del cached
    gc.collect()
    if damage == "truncate_images":
        images.write_bytes(images.read_bytes()[:1000])
    elif damage == "garbage_meta":
        meta.write_text("{not json")
    else:
        meta.write_text(json.dumps({**json.loads(meta.read_text()), "complete": False}))
    rebuilt = build(root, records, tmp_path)
    assert len(decode_calls) == 2 * len(records)
    np.testing.assert_array_equal(rebuilt.images[3], pil_resized(root / records[3].path, SIZE))


def test_concurrent_builders_decode_once(tree, tmp_path, decode_calls):
    root, records = tree
    results: list[CachedSet] = []
    threads = [
        threading.Thread(target=lambda: results.append(build(root, records, tmp_path)))
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2 and len(decode_calls) == len(records)
    np.testing.assert_array_equal(results[0].images, results[1].images)


# --- memory -----------------------------------------------------------------------------


@pytest.mark.parametrize("num_workers", [0, 2])
def test_decoded_images_are_streamed_not_accumulated(tmp_path, monkeypatch, num_workers):
    root = tmp_path / "data"
    records = [Record(f"{i:03d}.bmp", i, 1, "visible") for i in range(40)]
    for i, r in enumerate(records):
        write_image(root / r.path, (40, 20), i)
    alive: list[weakref.ref] = []
    most_alive = 0

    def tracked(path, size):
        nonlocal most_alive
        gc.collect()
        most_alive = max(most_alive, sum(ref() is not None for ref in alive))
        image = imageio.load_image(path, size)
        alive.append(weakref.ref(image))
        return image

    monkeypatch.setattr(cache_build, "load_image", tracked)
    cached = build(root, records, tmp_path, num_workers=num_workers)
    assert len(alive) == len(records) and len(cached) == len(records)
    # in flight: the one being written plus at most 2 * num_workers queued
    assert most_alive <= 2 * num_workers + 1


def test_peak_python_memory_is_far_below_the_whole_set(tmp_path):
    root = tmp_path / "data"
    size = (128, 64)
    records = [Record(f"{i:03d}.bmp", i, 1, "visible") for i in range(64)]
    for i, r in enumerate(records):
        write_image(root / r.path, (256, 128), i)
    decoded_full = len(records) * 256 * 128 * 3
    resized_all = len(records) * size[0] * size[1] * 3
    build(root, records[:1], tmp_path / "warm-up", size=size)  # lazy imports are not the point
    tracemalloc.start()
    try:
        cached = build(root, records, tmp_path, size=size)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert cached.images.shape == (len(records), *size, 3)
    # Holding every resized image (let alone every decoded one) would exceed this many times.
    assert peak < resized_all / 4 and peak < decoded_full / 16


def test_default_cache_dir_follows_xdg(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "dclnet"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/path")  # the XDG spec says: ignore it
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "dclnet"
