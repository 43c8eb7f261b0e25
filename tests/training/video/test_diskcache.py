"""training/video/diskcache.py: least-recently-used eviction of file and folder entries."""

from __future__ import annotations

import os
import time

from training.video.diskcache import STALE_TMP_S, TMP_PREFIX, evict_lru, touch


def make_entry(root, name: str, size: int, used: float, *, folder: bool = False):
    """A file entry (or a folder holding one file) of ``size`` bytes last used at ``used``."""
    path = root / name
    target = path / "video.mp4" if folder else path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b"x" * size)
    os.utime(target, (used, used))
    return path


def test_nothing_goes_while_under_the_bound(tmp_path):
    now = time.time()
    make_entry(tmp_path, "a", 100, now - 10)
    make_entry(tmp_path, "b", 100, now - 5, folder=True)
    assert evict_lru(tmp_path, 200) == 200
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


def test_least_recently_used_go_first_and_keep_stays(tmp_path):
    now = time.time()
    oldest = make_entry(tmp_path, "oldest", 100, now - 40, folder=True)
    old = make_entry(tmp_path, "old", 100, now - 30)
    recent = make_entry(tmp_path, "recent", 100, now - 20, folder=True)
    touched = make_entry(tmp_path, "touched", 100, now - 50)
    assert touch(touched)  # a hit makes it the most recent
    newest = make_entry(tmp_path, "newest", 100, now - 10)

    left = evict_lru(tmp_path, 250, keep=oldest)
    assert left == 200
    assert oldest.exists()  # kept for its caller though it is the oldest
    assert touched.exists()
    assert not old.exists() and not recent.exists() and not newest.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["oldest", "touched"]


def test_an_entry_over_the_bound_alone_is_kept_if_asked(tmp_path, caplog):
    big = make_entry(tmp_path, "big", 1000, time.time())
    assert evict_lru(tmp_path, 10, keep=big, what="clip cache", setting="X_MB") == 1000
    assert big.exists()
    assert "clip cache holds" in caplog.text and "X_MB" in caplog.text


def test_temporary_entries_are_left_alone_until_stale(tmp_path):
    now = time.time()
    fresh = make_entry(tmp_path, f"{TMP_PREFIX}fresh", 500, now)
    stale_dir = make_entry(tmp_path, f"{TMP_PREFIX}stale", 500, now, folder=True)
    os.utime(stale_dir, (now - STALE_TMP_S - 5, now - STALE_TMP_S - 5))
    entry = make_entry(tmp_path, "entry", 100, now)
    assert evict_lru(tmp_path, 100) == 100  # temporary files are not counted
    assert fresh.exists() and entry.exists()
    assert not stale_dir.exists()


def test_a_missing_folder_and_vanished_entries_are_fine(tmp_path):
    assert evict_lru(tmp_path / "nope", 10) == 0
    assert not touch(tmp_path / "gone")


def test_a_process_scans_again_only_when_its_estimate_passes_the_bound(tmp_path, monkeypatch):
    """Scanning every entry after every download slowed a long soak down as the cache grew:
    between scans each process adds what it wrote to the last scan's total."""
    import training.video.diskcache as diskcache

    monkeypatch.setattr(diskcache, "RESCAN_EVERY_S", 3600.0)  # a stalled machine: same scans
    scans = []
    real_entries = diskcache._entries
    monkeypatch.setattr(diskcache, "_entries", lambda root: scans.append(1) or real_entries(root))
    now = time.time()
    make_entry(tmp_path, "first", 100, now - 100)
    assert evict_lru(tmp_path, 1_000, keep=tmp_path / "first") == 100
    for i in range(8):  # 900 bytes in all: within the bound, no scan
        entry = make_entry(tmp_path, f"e{i}", 100, now - 50 + i)
        assert evict_lru(tmp_path, 1_000, keep=entry) == 200 + 100 * i
    assert len(scans) == 1

    entry = make_entry(tmp_path, "e8", 200, now)  # 1,100 bytes: past the bound, scan and evict
    assert evict_lru(tmp_path, 1_000, keep=entry) == 1_000
    assert len(scans) == 2
    assert not (tmp_path / "first").exists() and entry.exists()

    monkeypatch.setattr(diskcache, "RESCAN_EVERY_S", 0.0)  # an old estimate is not trusted
    assert evict_lru(tmp_path, 1_000, keep=entry) == 1_000
    assert len(scans) == 3
