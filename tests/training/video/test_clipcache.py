"""training/video/clipcache.py on the real clips in tests/data, and decode_many / decode_labelled
with a cache."""

from __future__ import annotations

import logging
import shutil
import threading

import numpy as np
import pytest

from training.learn.dataset import decode_labelled
from training.settings import Settings
from training.video import clipcache
from training.video.clip import Clip, SamplingConfig
from training.video.clipcache import ClipCache
from training.video.decoder import VideoDecodeError, decode_many, sample_clip

SAMPLING = SamplingConfig(frames=6, height=32, width=40)
MB = 1024 * 1024


def assert_same_clip(a: Clip, b: Clip) -> None:
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.mask, b.mask)
    assert a.frames.dtype == b.frames.dtype == np.uint8
    assert a.mask.dtype == b.mask.dtype == bool
    assert a.indices == b.indices and all(isinstance(i, int) for i in b.indices)
    assert (a.fps, a.frame_count, a.duration_s) == (b.fps, b.frame_count, b.duration_s)


def entries(cache: ClipCache) -> list:
    return sorted(p for p in cache.root.iterdir() if not p.name.startswith("."))


@pytest.fixture
def videos(tmp_path, data_dir):
    """Copies of three real clips (so tests may rename, change or corrupt them)."""
    folder = tmp_path / "videos"
    folder.mkdir()
    for name in ("b.mp4", "bikes.mp4", "carphone_pristine.mp4"):
        shutil.copy(data_dir / name, folder / name)
    return folder


def test_a_hit_after_put_returns_identical_arrays(tmp_path, videos):
    video = videos / "b.mp4"
    clip = sample_clip(video, SAMPLING)
    cache = ClipCache(tmp_path / "clips", 100 * MB)
    assert cache.get(video, SAMPLING) is None
    entry = cache.put(video, SAMPLING, clip)
    assert entry.parent == cache.root and entry.name.endswith(f"-v{clipcache.FORMAT_VERSION}.npz")

    again = ClipCache(tmp_path / "clips", 100 * MB).get(video, SAMPLING)  # another process
    assert again is not None
    assert_same_clip(clip, again)
    assert (cache.hits, cache.misses) == (0, 1)
    # Stored uncompressed: about the size of the arrays.
    assert entry.stat().st_size < clip.frames.nbytes + 4096


def test_another_sampling_is_a_miss(tmp_path, videos):
    video = videos / "bikes.mp4"
    cache = ClipCache(tmp_path / "clips", 100 * MB)
    cache.put(video, SAMPLING, sample_clip(video, SAMPLING))
    other = SamplingConfig(frames=6, height=32, width=48)
    assert cache.get(video, other) is None
    assert cache.get(video, SAMPLING) is not None
    assert (cache.hits, cache.misses) == (1, 1)


def test_sample_counted_says_whether_the_clip_was_decoded(tmp_path, videos):
    video = videos / "bikes.mp4"
    cache = ClipCache(tmp_path / "clips", 100 * MB)
    decoded, hit = cache.sample_counted(video, SAMPLING)
    assert hit is False and len(entries(cache)) == 1
    cached, hit = cache.sample_counted(video, SAMPLING)
    assert hit is True
    assert_same_clip(decoded, cached)
    assert (cache.hits, cache.misses) == (1, 1)


def test_entries_are_keyed_by_content_not_path(tmp_path, videos):
    cache = ClipCache(tmp_path / "clips", 100 * MB)
    video = videos / "b.mp4"
    cache.put(video, SAMPLING, sample_clip(video, SAMPLING))

    moved = tmp_path / "elsewhere" / "renamed.mp4"
    moved.parent.mkdir()
    shutil.copy(video, moved)
    assert cache.get(moved, SAMPLING) is not None  # same bytes, another path: a hit

    with open(video, "ab") as f:  # same path, other bytes: a miss
        f.write(b"\0")
    assert cache.get(video, SAMPLING) is None
    assert cache.get(tmp_path / "missing.mp4", SAMPLING) is None
    assert (cache.hits, cache.misses) == (1, 2)


def test_a_corrupt_entry_is_a_miss_and_gets_replaced(tmp_path, videos, caplog):
    video = videos / "carphone_pristine.mp4"
    cache = ClipCache(tmp_path / "clips", 100 * MB)
    entry = cache.put(video, SAMPLING, sample_clip(video, SAMPLING))
    good = entry.read_bytes()
    entry.write_bytes(good[: len(good) // 2])  # truncated, as by a full disk

    with caplog.at_level(logging.WARNING, logger="training.video.clipcache"):
        assert cache.get(video, SAMPLING) is None
    assert "unreadable" in caplog.text
    assert not entry.exists()

    entry.write_bytes(b"not a zip file at all")
    clip = cache.sample(video, SAMPLING)  # a miss: decoded again and stored again
    assert entry.read_bytes() == good
    assert_same_clip(clip, cache.get(video, SAMPLING))
    assert (cache.hits, cache.misses) == (1, 2)


def test_an_entry_of_the_wrong_shape_is_a_miss(tmp_path, videos):
    video = videos / "b.mp4"
    cache = ClipCache(tmp_path / "clips", 100 * MB)
    small = SamplingConfig(frames=3, height=16, width=16)
    # An entry under this sampling's name holding another sampling's clip (a bug elsewhere).
    entry = cache.entry_path(video, SAMPLING)
    cache.root.mkdir(parents=True)
    shutil.copy(cache.put(video, small, sample_clip(video, small)), entry)
    assert cache.get(video, SAMPLING) is None
    assert not entry.exists()
    with pytest.raises(ValueError, match="expected uint8"):
        cache.put(video, SAMPLING, sample_clip(video, small))


def test_the_cache_stays_within_its_bound_least_recently_used_first(tmp_path, videos):
    b, bikes, carphone = (videos / n for n in ("b.mp4", "bikes.mp4", "carphone_pristine.mp4"))
    probe = ClipCache(tmp_path / "probe", 100 * MB)
    size = probe.put(b, SAMPLING, sample_clip(b, SAMPLING)).stat().st_size

    cache = ClipCache(tmp_path / "clips", int(2.5 * size))
    cache.sample(b, SAMPLING)
    cache.sample(bikes, SAMPLING)
    assert cache.get(b, SAMPLING) is not None  # b is now the most recently used
    cache.sample(carphone, SAMPLING)

    assert len(entries(cache)) == 2
    assert cache.get(bikes, SAMPLING) is None  # the least recently used went
    assert cache.get(b, SAMPLING) is not None
    assert cache.get(carphone, SAMPLING) is not None
    assert sum(p.stat().st_size for p in entries(cache)) <= cache.max_bytes


def test_a_decode_error_propagates_and_is_not_cached(tmp_path):
    cache = ClipCache(tmp_path / "clips", 100 * MB)
    bad = tmp_path / "corrupt.mp4"
    bad.write_bytes(np.random.default_rng(0).bytes(20_000))
    with pytest.raises(VideoDecodeError, match=r"corrupt\.mp4"):
        cache.sample(bad, SAMPLING)
    with pytest.raises(VideoDecodeError, match="no such video file"):
        cache.sample(tmp_path / "missing.mp4", SAMPLING)
    assert not cache.root.exists() or entries(cache) == []
    assert (cache.hits, cache.misses) == (0, 2)


def test_decode_many_with_a_cache_decodes_each_file_once(tmp_path, videos):
    paths = [videos / "b.mp4", videos / "bikes.mp4", videos / "carphone_pristine.mp4"]
    bad = videos / "corrupt.mp4"
    bad.write_bytes(np.random.default_rng(1).bytes(20_000))
    batch = [*paths, bad, paths[0], paths[1]]  # repeats in one batch too
    plain = decode_many(batch, SAMPLING, threads=2)
    cache = ClipCache(tmp_path / "clips", 100 * MB)

    first = decode_many(batch, SAMPLING, threads=3, cache=cache)
    # Three videos decoded (the repeats waited for them and hit), the corrupt one failed.
    assert (cache.hits, cache.misses) == (2, 4)
    assert isinstance(first[3], VideoDecodeError)
    assert len(entries(cache)) == 3

    progress: list[tuple[int, int]] = []
    second = decode_many(
        batch, SAMPLING, threads=2, cache=cache, progress=lambda d, t: progress.append((d, t))
    )
    assert (cache.hits, cache.misses) == (2 + 5, 4 + 1)  # only the corrupt one again
    assert progress[-1] == (6, 6)
    for expected, got1, got2 in zip(plain, first, second, strict=True):
        if isinstance(expected, VideoDecodeError):
            assert isinstance(got1, VideoDecodeError) and isinstance(got2, VideoDecodeError)
        else:
            assert_same_clip(expected, got1)
            assert_same_clip(expected, got2)


def test_concurrent_samples_of_one_video_decode_it_once(tmp_path, videos):
    cache = ClipCache(tmp_path / "clips", 100 * MB)
    barrier = threading.Barrier(6)
    results: list[Clip] = []

    def work() -> None:
        barrier.wait()
        results.append(cache.sample(videos / "bikes.mp4", SAMPLING))

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 6
    assert (cache.hits, cache.misses) == (5, 1)


def test_decode_labelled_passes_the_cache_through(tmp_path, videos):
    pairs = [(videos / "b.mp4", "x"), (videos / "bikes.mp4", "y")]
    cache = ClipCache(tmp_path / "clips", 100 * MB)
    arrays, skipped = decode_labelled(pairs, ["x", "y"], SAMPLING, cache=cache)
    again, _ = decode_labelled(pairs, ["x", "y"], SAMPLING, cache=cache)
    assert skipped == []
    assert (cache.hits, cache.misses) == (2, 2)
    np.testing.assert_array_equal(arrays.frames, again.frames)
    assert arrays.y.tolist() == [0, 1]


def test_from_settings_uses_the_cache_dir(tmp_path):
    cache = ClipCache.from_settings(Settings(cache_dir=tmp_path / "c", cache_max_mb=3))
    assert cache.root == tmp_path / "c" / clipcache.CLIPS_SUBDIR
    assert cache.max_bytes == 3 * MB
