"""Labelled videos -> arrays the model trains on, and the train/test/validation splits.

Clips stay uint8 (a 16x112x112 clip is 0.6 MB; the origin guide held float64, 8x that).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from training.labelstudio.timeline import DEFAULT_FRAME_RATE, IGNORE, Segment, frame_targets
from training.learn.clip_file import ClipFile, ClipFileWriter
from training.video.clip import Clip, SamplingConfig
from training.video.clipcache import ClipCache, file_sha256
from training.video.decoder import VideoDecodeError, iter_decoded

if TYPE_CHECKING:
    from training.learn.config import TrainConfig

log = logging.getLogger(__name__)


NO_CLASS = -1
"""``ClipArrays.y`` of a clip without a class (annotated on the timeline only)."""


@dataclass(frozen=True)
class LabelledVideo:
    """A video and what an annotator said of it: its class (<Choices>), its segments
    (<TimelineLabels>, in Label Studio's 1-based frame numbering at ``frame_rate``), or both.

    ``segments`` None means "not annotated on the timeline" (its frames do not count), an
    empty tuple "annotated, and nothing happens".
    """

    path: str | os.PathLike
    label: str | None = None
    segments: tuple[Segment, ...] | None = None
    frame_rate: float = DEFAULT_FRAME_RATE


@dataclass
class ClipArrays:
    """Decoded clips with integer labels; ``sources`` names each clip's video and ``keys``
    its stable identity for splitting (a task id, a content hash; default the source).

    ``y`` is NO_CLASS for a clip without a class; ``frame_y`` (for timeline models) holds
    per-frame targets, IGNORE where a frame does not count (training/labelstudio/timeline.py).
    """

    frames: np.ndarray | ClipFile  # (N, T, H, W, 3) uint8, in memory or in a file
    mask: np.ndarray  # (N, T) bool
    y: np.ndarray  # (N,) int32 index into the label list, or NO_CLASS
    sources: list[str]
    keys: list[str] = field(default_factory=list)
    frame_y: np.ndarray | None = None  # (N, T) int32

    def __post_init__(self) -> None:
        if not self.keys:
            self.keys = list(self.sources)

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, idx: np.ndarray | Sequence[int]) -> ClipArrays:
        """The clips ``idx``; those of a ClipFile stay in the file (nothing is read)."""
        frames = self.frames
        return ClipArrays(
            frames.rows(idx) if isinstance(frames, ClipFile) else frames[idx],
            self.mask[idx],
            self.y[idx],
            [self.sources[i] for i in idx],
            [self.keys[i] for i in idx],
            self.frame_y[idx] if self.frame_y is not None else None,
        )

    @property
    def has_class(self) -> np.ndarray:
        """(N,) bool: which clips have a class."""
        return self.y != NO_CLASS


def content_keys(paths: Sequence[str | os.PathLike]) -> list[str]:
    """A split key per video file: ``sha256:<hex>`` of its content, so the same video keeps
    its split wherever the data set is moved (a file that cannot be read keys by its path;
    decoding will skip it anyway)."""
    keys = []
    for path in paths:
        try:
            keys.append(f"sha256:{file_sha256(path)}")
        except OSError:
            keys.append(f"path:{os.fspath(path)}")
    return keys


def as_labelled_video(item: LabelledVideo | tuple) -> LabelledVideo:
    """A LabelledVideo from itself or from a ``(path, label)`` pair (manifests, benches)."""
    if isinstance(item, LabelledVideo):
        return item
    path, label = item
    return LabelledVideo(path, label)


def decode_labelled(
    videos: Sequence[LabelledVideo | tuple[str | os.PathLike, str]],
    labels: Sequence[str],
    sampling: SamplingConfig,
    *,
    threads: int = 2,
    progress: Callable[[int, int], None] | None = None,
    cache: ClipCache | None = None,
    keys: Sequence[str] | None = None,
    timeline_labels: Sequence[str] = (),
    clips_file: str | os.PathLike | None = None,
) -> tuple[ClipArrays, list[tuple[str, str]]]:
    """Decode labelled videos. Unreadable videos are skipped and returned with the reason.

    ``videos`` are LabelledVideo items or ``(path, label)`` pairs. ``cache`` (a ClipCache)
    spares decoding videos decoded before. ``keys`` (one per video) are carried into the
    result's ``keys``. With ``timeline_labels``, frames get targets from segments (``frame_y``).
    With ``clips_file``, frames are written there as they are decoded and ``frames`` is a
    ClipFile (training/learn/clip_file.py): memory does not grow with the number of clips.

    Raises:
        ValueError: a label is not in ``labels``, or ``keys`` is not one per video.
    """
    items = [as_labelled_video(v) for v in videos]
    if keys is not None and len(keys) != len(items):
        raise ValueError(f"{len(keys)} keys for {len(items)} videos")
    index = _class_index(items, labels)
    decoded = iter_decoded([v.path for v in items], sampling, threads=threads, cache=cache)
    clip_shape = (sampling.frames, sampling.height, sampling.width, 3)
    writer = ClipFileWriter(clips_file, clip_shape) if clips_file is not None else None
    frames, masks, ys, frame_ys, sources, kept_keys, skipped = [], [], [], [], [], [], []
    for n, (video, result) in enumerate(zip(items, decoded, strict=True)):
        if progress:
            progress(n + 1, len(items))
        if isinstance(result, VideoDecodeError):
            log.warning("skipping %s: %s", video.path, result)
            skipped.append((str(video.path), str(result)))
            continue
        if writer is not None:
            writer.append(result.frames)
        else:
            frames.append(result.frames)
        masks.append(result.mask)
        ys.append(index[video.label] if video.label is not None else NO_CLASS)
        if timeline_labels:
            frame_ys.append(_frame_targets(video, result, timeline_labels, sampling))
        sources.append(str(video.path))
        kept_keys.append(str(keys[n]) if keys is not None else str(video.path))
    stored = writer.close() if writer is not None else None
    if not masks:
        return _no_clips(sampling, timeline=bool(timeline_labels)), skipped
    parts = (frames, masks, ys, frame_ys if timeline_labels else None, sources, kept_keys)
    return stacked_arrays(stored, *parts), skipped


def stacked_arrays(
    stored: ClipFile | None,
    frames: list[np.ndarray],
    masks: list[np.ndarray],
    ys: list[int],
    frame_ys: list[np.ndarray] | None,
    sources: list[str],
    keys: list[str],
) -> ClipArrays:
    """ClipArrays from per-clip lists (``stored``: the frames already written to a file)."""
    return ClipArrays(
        stored if stored is not None else np.stack(frames).astype(np.uint8, copy=False),
        np.stack(masks).astype(bool, copy=False),
        np.asarray(ys, np.int32),
        sources,
        keys,
        np.stack(frame_ys).astype(np.int32) if frame_ys is not None else None,
    )


def _frame_targets(
    video: LabelledVideo, clip: Clip, timeline_labels: Sequence[str], sampling: SamplingConfig
) -> np.ndarray:
    """The targets of the clip's sampled frames, from the video's timeline segments."""
    return frame_targets(
        video.segments, timeline_labels, clip.indices, clip.fps, video.frame_rate, sampling.frames
    )


def _class_index(items: Sequence[LabelledVideo], labels: Sequence[str]) -> dict[str, int]:
    """Each label's class index.

    Raises:
        ValueError: a video's label is not in ``labels``.
    """
    index = {label: i for i, label in enumerate(labels)}
    unknown = sorted({v.label for v in items if v.label is not None and v.label not in index})
    if unknown:
        raise ValueError(f"labels {unknown} are not among the model's labels {list(labels)}")
    return index


def _no_clips(sampling: SamplingConfig, *, timeline: bool) -> ClipArrays:
    """Arrays of the right shapes holding no clip (every video was unreadable)."""
    t = sampling.frames
    empty = np.zeros((0, t, sampling.height, sampling.width, 3), np.uint8)
    frame_y = np.full((0, t), IGNORE, np.int32) if timeline else None
    return ClipArrays(empty, np.zeros((0, t), bool), np.zeros(0, np.int32), [], frame_y=frame_y)


def stratified_split(y: np.ndarray, fractions: Sequence[float], seed: int = 0) -> list[np.ndarray]:
    """Split indices into len(fractions)+1 parts, each class spread in proportion.

    Every part after the first gets ``round(fraction * class count)`` of each class, but at
    least one per class when that class has 3 or more examples; the first part keeps the rest.
    """
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in range(len(fractions) + 1)]
    for cls in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == cls))
        start = 0
        for p, fraction in enumerate(fractions, start=1):
            take = int(round(fraction * len(idx)))
            if take == 0 and len(idx) >= 3:
                take = 1
            parts[p].extend(idx[start : start + take].tolist())
            start += take
        parts[0].extend(idx[start:].tolist())
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def stable_fraction(key: str, salt: str = "") -> float:
    """A number in [0, 1) fixed by ``key`` alone (SHA-256), the same on every machine and run."""
    digest = hashlib.sha256(f"{salt}{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def stable_split(
    keys: Sequence[str], y: np.ndarray, fractions: Sequence[float]
) -> list[np.ndarray]:
    """Split indices like :func:`stratified_split`, but decided by each item's ``key``.

    Why: the quality gate scores a new version and the current one on this run's test part,
    which must not hold clips the current version trained on. Here an item's part depends
    on the rank of a hash of its key (a Label Studio task id, a file's content hash) among
    its class: the lowest-ranked ``round(f * n)`` items form the first held-out part, the
    next the second, the rest train. As the data set grows, items mostly keep their part;
    a boundary item can move into a held-out part, so the gate also leaves out clips the
    current version trained on (``split.json`` in each version).

    Small classes: a class with ``len(fractions) + 1`` (3 for test and validation) or more
    items gets at least one item in every part whose fraction is above zero; a class with
    fewer items goes to training whole.

    Args:
        keys: one stable string per item, aligned with ``y``.
        y: integer class per item.
        fractions: the share of each held-out part, e.g. ``(test, val)``.

    Returns:
        ``len(fractions) + 1`` sorted index arrays: training first, then one per fraction.

    Raises:
        ValueError: ``keys`` and ``y`` differ in length, or the fractions exceed 1.
    """
    y = np.asarray(y)
    if len(keys) != len(y):
        raise ValueError(f"{len(keys)} keys for {len(y)} labels")
    if any(f < 0 for f in fractions) or sum(fractions) > 1:
        raise ValueError(f"fractions {list(fractions)} must be >= 0 and sum to at most 1")
    parts: list[list[int]] = [[] for _ in range(len(fractions) + 1)]
    for cls in np.unique(y):
        idx = np.flatnonzero(y == cls).tolist()
        if len(idx) < len(fractions) + 1:
            parts[0].extend(idx)
            continue
        where = _split_class([str(keys[i]) for i in idx], fractions)
        for i, part in zip(idx, where, strict=True):
            parts[part].append(i)
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def grouped_split(
    keys: Sequence[str], y: np.ndarray, fractions: Sequence[float]
) -> list[np.ndarray]:
    """:func:`stable_split` of the distinct keys, each key's items kept together: the windows
    of one video (training/learn/windowed_data.py) never straddle training and held-out.
    With one item per key it is stable_split itself."""
    first: dict[str, int] = {}
    for i, key in enumerate(keys):
        first.setdefault(str(key), i)
    unique = list(first)
    parts = stable_split(unique, np.asarray(y)[[first[k] for k in unique]], fractions)
    part_of = {unique[j]: p for p, idx in enumerate(parts) for j in idx}
    where = np.asarray([part_of[str(k)] for k in keys], np.int64)
    return [np.flatnonzero(where == p).astype(np.int64) for p in range(len(parts))]


def held_out_split(
    keys: Sequence[str], y: np.ndarray, train_config: TrainConfig
) -> list[np.ndarray]:
    """A run's split into training, test and validation indices: :func:`grouped_split` with
    the shares ``train_config`` holds out for this many labelled videos (distinct keys; none
    under TRAIN_ALL_BELOW, ``TrainConfig.split_fractions``). What publishing and the benches
    that simulate the product split by."""
    videos = len({str(k) for k in keys})
    return grouped_split(keys, y, train_config.split_fractions(videos))


def _split_class(keys: list[str], fractions: Sequence[float]) -> list[int]:
    """The part of each item of one class (see :func:`stable_split`); 0 is training.

    Items are ranked by their key's hash; the first ``round(f * n)`` (at least one) go to the
    first held-out part, the next to the second, the rest to training. Exact proportions,
    even for small classes, and an item's rank among the others never changes.
    """
    order = sorted(range(len(keys)), key=lambda i: stable_fraction(keys[i]))
    where = [0] * len(keys)
    start = 0
    for part, fraction in enumerate(fractions, start=1):
        take = max(1, round(fraction * len(keys))) if fraction > 0 else 0
        take = min(take, len(keys) - start - 1)  # keep at least one to train on
        for i in order[start : start + take]:
            where[i] = part
        start += take
    return where


def class_weights(y: np.ndarray, num_classes: int) -> dict[int, float]:
    """'Balanced' weights: n / (k * count), so rare labels count as much as common ones.

    Values outside 0..num_classes-1 (NO_CLASS, IGNORE) are not counted.
    """
    y = np.asarray(y)
    y = y[(y >= 0) & (y < num_classes)]
    counts = np.bincount(y, minlength=num_classes).astype(float)
    present = counts > 0
    weights = np.ones(num_classes)
    weights[present] = len(y) / (present.sum() * counts[present])
    return {i: float(w) for i, w in enumerate(weights)}
