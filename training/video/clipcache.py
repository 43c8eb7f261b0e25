"""A disk cache of decoded clips, so a retrain does not decode the same video again.

Each retrain reads every labelled video of the project; decoding is most of that work
(0.1-0.3 s a video here, docs/design.md), and most videos were decoded by the previous retrain.
An entry is keyed by the video's content (sha256 of the file, so the same video under
another URL or path is a hit and a changed file is a miss), the sampling settings and
:data:`FORMAT_VERSION`, and holds the Clip as an uncompressed ``.npz``. Entries appear by
atomic rename, so workers on several machines may share one folder; the folder is bounded
like the media cache (least recently used entries go first, training.video.diskcache).

The trap: the key does not cover the sampler's code. When a change to training.video.decoder
makes it return other frames for the same file and settings, bump FORMAT_VERSION, or
training goes on with clips sampled the old way.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
import zipfile
from pathlib import Path

import numpy as np

from training.settings import Settings
from training.video.clip import Clip, SamplingConfig
from training.video.decoder import DecodeLimits, sample_clip
from training.video.diskcache import TMP_PREFIX, evict_lru, touch
from training.video.windows import WindowedVideo, open_video

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
"""Part of every key: bump it when the stored arrays or the sampler's output change."""

CLIPS_SUBDIR = "clips"
"""The clip cache's folder under CACHE_DIR."""

_DIGEST_MEMO_SIZE = 10_000
_LOAD_ERRORS = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)
"""What numpy raises for a truncated or foreign .npz."""


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 hex digest of a file's content: a video's identity wherever it is stored
    or however it is named (clip cache entries, stable split keys).

    Raises:
        OSError: the file cannot be read.
    """
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class ClipCache:
    """Decoded clips on disk, keyed by video content and sampling; thread-safe.

    ``hits`` and ``misses`` count lookups (a miss in :meth:`sample` is a decode), so a job
    can report "decoded 12 of 80 clips".
    """

    def __init__(
        self, root: Path | str, max_bytes: int, limits: DecodeLimits | None = None
    ) -> None:
        self.root = Path(root)
        self.max_bytes = int(max_bytes)
        self.limits = limits or DecodeLimits()
        """What a decode on a miss may cost, unless :meth:`sample` is given others."""
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()
        self._digests: dict[tuple, str] = {}
        self._inflight: dict[str, threading.Lock] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> ClipCache:
        """``CACHE_DIR/clips``, bounded by CACHE_MAX_MB (on its own, beside the media cache);
        decodes on a miss within the settings' DecodeLimits."""
        return cls(
            Path(settings.cache_dir) / CLIPS_SUBDIR,
            settings.cache_max_mb * 1024 * 1024,
            DecodeLimits.from_settings(settings),
        )

    def get(self, path: str | os.PathLike, sampling: SamplingConfig) -> Clip | None:
        """The cached clip for this video file and sampling, or None (a miss).

        A missing video file is a miss; an unreadable entry is deleted and is a miss.
        """
        try:
            entry = self.entry_path(path, sampling)
        except OSError:
            self._count(hit=False)
            return None
        clip = self._load(entry, sampling)
        self._count(hit=clip is not None)
        return clip

    def put(self, path: str | os.PathLike, sampling: SamplingConfig, clip: Clip) -> Path:
        """Store ``clip`` as the entry for this video file and sampling; returns the entry.

        Raises:
            ValueError: the clip's shape is not what ``sampling`` gives.
            OSError: the video cannot be read (to hash it) or the entry cannot be written.
        """
        _check_clip(clip, sampling)
        entry = self.entry_path(path, sampling)
        self._store(entry, clip)
        return entry

    def sample(
        self, path: str | os.PathLike, sampling: SamplingConfig, limits: DecodeLimits | None = None
    ) -> Clip:
        """The clip from the cache, else sampled from the video (within ``limits``, default
        the cache's) and stored.

        A failure to store is logged and does not fail the call.

        Raises:
            VideoDecodeError: the video cannot be decoded (nothing is cached then).
        """
        return self.sample_counted(path, sampling, limits)[0]

    def open(
        self, path: str | os.PathLike, sampling: SamplingConfig, limits: DecodeLimits | None = None
    ) -> Clip | WindowedVideo:
        """What a model sampled with ``sampling`` predicts from: :meth:`sample`, or under
        windowed sampling training/video/windows.py ``open_video`` (a long video's windows
        are streamed, never cached whole)."""
        if sampling.windowed:
            return open_video(path, sampling, limits=limits or self.limits)
        return self.sample(path, sampling, limits)

    def windows(
        self, path: str | os.PathLike, sampling: SamplingConfig, limits: DecodeLimits | None = None
    ) -> list[Clip]:
        """Every window of a video under windowed sampling (one Clip for a short video), from
        the cache, else decoded once (training/video/windows.py) and stored together.

        Raises:
            VideoDecodeError: the video cannot be decoded (nothing is cached then).
        """
        entry = self.entry_path(path, sampling).with_suffix(".windows.npz")
        with self._lock_for(entry.name):
            try:
                clips = _load_windows(entry, sampling)
                self._count(hit=clips is not None)
                if clips is not None:
                    touch(entry)
                    return clips
                opened = open_video(path, sampling, limits=limits or self.limits)
                clips = list(opened.windows()) if isinstance(opened, WindowedVideo) else [opened]
                try:
                    self._store(entry, stack_windows(clips))
                except OSError as exc:
                    log.warning("cannot store the windows of %s in %s: %s", path, self.root, exc)
                return clips
            finally:
                with self._lock:
                    self._inflight.pop(entry.name, None)

    def sample_counted(
        self, path: str | os.PathLike, sampling: SamplingConfig, limits: DecodeLimits | None = None
    ) -> tuple[Clip, bool]:
        """:meth:`sample`, and whether the clip came from the cache (for a caller's metrics:
        ``hits`` and ``misses`` add up every thread's lookups)."""
        try:
            entry = self.entry_path(path, sampling)
        except OSError:  # no such file, unreadable: let the sampler say so plainly
            self._count(hit=False)
            return sample_clip(path, sampling, limits=limits or self.limits), False
        # One decode per entry at a time: a second thread asking for the same video waits
        # and then hits.
        with self._lock_for(entry.name):
            try:
                clip = self._load(entry, sampling)
                self._count(hit=clip is not None)
                if clip is not None:
                    return clip, True
                clip = sample_clip(path, sampling, limits=limits or self.limits)
                try:
                    self._store(entry, clip)
                except OSError as exc:
                    log.warning("cannot store the clip of %s in %s: %s", path, self.root, exc)
                return clip, False
            finally:
                with self._lock:
                    self._inflight.pop(entry.name, None)

    def entry_path(self, path: str | os.PathLike, sampling: SamplingConfig) -> Path:
        """Where the clip of this video file and sampling is stored (hashes the file).

        Raises:
            OSError: the file cannot be read.
        """
        name = f"{self.digest(path)}-{sampling.key()}-v{FORMAT_VERSION}.npz"
        return self.root / name

    def _lock_for(self, name: str) -> threading.Lock:
        with self._lock:
            return self._inflight.setdefault(name, threading.Lock())

    def _count(self, *, hit: bool) -> None:
        with self._lock:
            if hit:
                self.hits += 1
            else:
                self.misses += 1

    def digest(self, path: str | os.PathLike) -> str:
        """sha256 of the file's content, remembered per (file identity, size, mtime): a run
        that asks for a video's identity before decoding it hashes the file once.

        Raises:
            OSError: the file cannot be read.
        """
        path = Path(path)
        stat = path.stat()
        memo_key = (os.path.abspath(path), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
        with self._lock:
            known = self._digests.get(memo_key)
        if known is not None:
            return known
        text = file_sha256(path)
        with self._lock:
            if len(self._digests) >= _DIGEST_MEMO_SIZE:
                self._digests.clear()
            self._digests[memo_key] = text
        return text

    def _load(self, entry: Path, sampling: SamplingConfig) -> Clip | None:
        try:
            with np.load(entry, allow_pickle=False) as npz:
                clip = Clip(
                    frames=npz["frames"],
                    mask=npz["mask"],
                    indices=[int(i) for i in npz["indices"]],
                    fps=float(npz["fps"]),
                    frame_count=int(npz["frame_count"]),
                    duration_s=float(npz["duration_s"]),
                )
                version = int(npz["version"])
            if version != FORMAT_VERSION:
                raise ValueError(f"format version {version}, expected {FORMAT_VERSION}")
            _check_clip(clip, sampling)
        except FileNotFoundError:
            return None
        except _LOAD_ERRORS as exc:
            return _discard(entry, exc)
        touch(entry)
        return clip

    def _store(self, entry: Path, clip: Clip) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=".npz", dir=self.root)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(
                    f,
                    frames=np.ascontiguousarray(clip.frames, dtype=np.uint8),
                    mask=np.asarray(clip.mask, dtype=bool),
                    indices=np.asarray(clip.indices, dtype=np.int64),
                    fps=np.float64(clip.fps),
                    frame_count=np.int64(clip.frame_count),
                    duration_s=np.float64(clip.duration_s),
                    version=np.int64(FORMAT_VERSION),
                )
            os.replace(tmp_name, entry)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        evict_lru(self.root, self.max_bytes, keep=entry, what="clip cache")


def stack_windows(clips: list[Clip]) -> Clip:
    """A video's windows as one Clip to store: frames (W*T, ...), indices -1 where padded."""
    indices = [i for c in clips for i in [*c.indices, *[-1] * (len(c.mask) - len(c.indices))]]
    last = clips[-1]
    return Clip(
        np.concatenate([c.frames for c in clips]),
        np.concatenate([c.mask for c in clips]),
        indices,
        last.fps,
        last.frame_count,
        last.duration_s,
    )


def _load_windows(entry: Path, sampling: SamplingConfig) -> list[Clip] | None:
    """The windows stored by ClipCache.windows, or None (an unreadable entry is removed)."""
    t = sampling.frames
    try:
        with np.load(entry, allow_pickle=False) as npz:
            frames, mask, indices = npz["frames"], npz["mask"], npz["indices"]
            fps, count, duration = (
                float(npz["fps"]),
                int(npz["frame_count"]),
                float(npz["duration_s"]),
            )
            if int(npz["version"]) != FORMAT_VERSION or len(frames) % t:
                raise ValueError("not a windows entry of this format")
        clips = [
            Clip(
                frames[k : k + t],
                mask[k : k + t],
                [int(i) for i in indices[k : k + t] if i >= 0],
                fps,
                count,
                duration,
            )
            for k in range(0, len(frames), t)
        ]
        for clip in clips:
            _check_clip(clip, sampling)
    except FileNotFoundError:
        return None
    except _LOAD_ERRORS as exc:
        return _discard(entry, exc)
    return clips or None


def _check_clip(clip: Clip, sampling: SamplingConfig) -> None:
    """A clip as ``sample_clip(..., sampling)`` returns it, else ValueError."""
    want = (sampling.frames, sampling.height, sampling.width, 3)
    if clip.frames.shape != want or clip.frames.dtype != np.uint8:
        raise ValueError(f"frames are {clip.frames.dtype}{clip.frames.shape}, expected uint8{want}")
    if clip.mask.shape != (sampling.frames,) or clip.mask.dtype != bool:
        raise ValueError(f"mask is {clip.mask.dtype}{clip.mask.shape}, expected bool")
    if len(clip.indices) != int(clip.mask.sum()):
        raise ValueError(f"{len(clip.indices)} indices for {int(clip.mask.sum())} real frames")


def _discard(entry: Path, exc: Exception) -> None:
    """Delete an unreadable cache entry (it is decoded again); None, as a miss."""
    log.warning("discarding unreadable clip cache entry %s: %s", entry.name, exc)
    entry.unlink(missing_ok=True)
