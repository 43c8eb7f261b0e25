"""Least-recently-used eviction for cache folders that several processes share.

Used by the media cache (one folder per downloaded video) and the clip cache (one file per
decoded clip). An entry is a direct child of the cache folder, a file or a folder of files;
its last use is its newest modification time, so readers mark a hit with ``os.utime``.
Entries appear by atomic rename from ``.tmp-*`` names, which eviction leaves alone until
they are old enough to belong to a dead process.

A full scan lists and stats every entry: 23 ms per 1,000 entries here, and a scan after every
download made a soak of 6,500 one-video tasks slow down as the cache grew (bench/RESULTS.md,
Soak). So each process keeps a running estimate of a cache's size, from its last scan plus what
it added since, and scans again only when the estimate passes the bound or is older than
RESCAN_EVERY_S (other processes add entries too: the bound may be passed by what they add in
that time).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

TMP_PREFIX = ".tmp-"
"""Names of entries still being written; never counted, removed once stale."""

STALE_TMP_S = 3600.0
"""Seconds after which a ``.tmp-*`` entry left by a dead process is removed."""

RESCAN_EVERY_S = 30.0
"""Longest a process trusts its estimate of a cache's size without a full scan, in seconds."""

_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()
_estimates: dict[str, tuple[float, int]] = {}
"""Per cache folder: (monotonic time of the last full scan, bytes then plus bytes added)."""


def touch(path: Path) -> bool:
    """Mark ``path`` as just used; False when it vanished (evicted by another process)."""
    try:
        os.utime(path)
    except FileNotFoundError:
        return False
    return True


def evict_lru(
    root: Path,
    max_bytes: int,
    *,
    keep: Path | None = None,
    what: str = "cache",
    setting: str = "CACHE_MAX_MB",
) -> int | None:
    """Delete least recently used entries of ``root`` until they total at most ``max_bytes``.

    ``keep`` (the entry just written) stays even if it alone exceeds the bound: its caller is
    about to read it. Entries that vanish meanwhile (another process evicting) are skipped.
    Only one thread per process evicts a folder at a time; the others return at once.

    Args:
        root: the cache folder.
        max_bytes: the bound, in bytes.
        keep: an entry never to delete now.
        what: the cache's name, for log messages ("media cache").
        setting: the setting that bounds it, named when the bound cannot be kept.

    Returns:
        Bytes in the cache (as estimated, or as scanned), or None when another thread was
        evicting it.
    """
    estimate = _add_to_estimate(root, _size_of(keep) if keep is not None else 0, max_bytes)
    if estimate is not None:
        return estimate
    lock = _lock_for(root)
    if not lock.acquire(blocking=False):
        return None
    try:
        entries = _entries(root)
        total = sum(size for _, size, _ in entries)
        if total <= max_bytes:
            _set_estimate(root, total)
            return total
        for _, size, path in sorted(entries, key=lambda e: e[0]):
            if keep is not None and path == keep:
                continue
            _remove(path)
            total -= size
            log.info("evicted %s from the %s (%.1f MB)", path.name, what, size / 1e6)
            if total <= max_bytes:
                break
        if total > max_bytes:
            log.warning(
                "%s holds %.1f MB, over its %.1f MB bound (%s)",
                what,
                total / 1e6,
                max_bytes / 1e6,
                setting,
            )
        _set_estimate(root, total)
        return total
    finally:
        lock.release()


def _add_to_estimate(root: Path, added: int, max_bytes: int) -> int | None:
    """The estimate with ``added`` bytes, if it is recent and within the bound; else None
    (a full scan is due)."""
    key = os.path.abspath(root)
    with _locks_guard:
        known = _estimates.get(key)
        if known is None or time.monotonic() - known[0] > RESCAN_EVERY_S:
            return None
        total = known[1] + added
        if total > max_bytes:
            return None
        _estimates[key] = (known[0], total)
        return total


def _set_estimate(root: Path, total: int) -> None:
    with _locks_guard:
        _estimates[os.path.abspath(root)] = (time.monotonic(), total)


def _stats_of(entry: Path) -> list[os.stat_result] | None:
    """The stats of an entry's files (a file, or a folder of files); None if neither.

    Raises:
        FileNotFoundError: it vanished meanwhile.
    """
    if entry.is_dir():
        return [f.stat() for f in entry.iterdir() if f.is_file()]
    if entry.is_file():
        return [entry.stat()]
    return None


def _size_of(entry: Path) -> int:
    """Bytes of an entry; 0 if it vanished."""
    try:
        return sum(s.st_size for s in _stats_of(entry) or ())
    except FileNotFoundError:
        return 0


def _lock_for(root: Path) -> threading.Lock:
    key = os.path.abspath(root)
    with _locks_guard:
        return _locks.setdefault(key, threading.Lock())


def _entries(root: Path) -> list[tuple[float, int, Path]]:
    """(last use, bytes, path) of every complete entry; removes stale temporary ones."""
    entries: list[tuple[float, int, Path]] = []
    now = time.time()
    try:
        children = list(root.iterdir())
    except FileNotFoundError:
        return entries
    for path in children:
        try:
            if path.name.startswith(TMP_PREFIX):
                if now - path.stat().st_mtime > STALE_TMP_S:
                    _remove(path)
                continue
            stats = _stats_of(path)
        except FileNotFoundError:
            continue
        if stats is None:
            continue
        used = max((s.st_mtime for s in stats), default=0.0)
        entries.append((used, sum(s.st_size for s in stats), path))
    return entries


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
