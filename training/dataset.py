"""Labelled videos -> arrays the model trains on, and a stratified split.

Clips stay uint8 (a 16x112x112 clip is 0.6 MB; the origin guide held float64, 8x that).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from training.clipcache import ClipCache
from training.decode import decode_many
from training.sampler import VideoDecodeError
from training.sampling import SamplingConfig, stack_clips

log = logging.getLogger(__name__)


@dataclass
class ClipArrays:
    """Decoded clips with integer labels; ``sources`` names each clip's video."""

    frames: np.ndarray  # (N, T, H, W, 3) uint8
    mask: np.ndarray  # (N, T) bool
    y: np.ndarray  # (N,) int32 index into the label list
    sources: list[str]

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, idx: np.ndarray) -> ClipArrays:
        return ClipArrays(
            self.frames[idx], self.mask[idx], self.y[idx], [self.sources[i] for i in idx]
        )


def decode_labelled(
    videos: Sequence[tuple[str | os.PathLike, str]],
    labels: Sequence[str],
    sampling: SamplingConfig,
    *,
    threads: int = 2,
    progress: Callable[[int, int], None] | None = None,
    cache: ClipCache | None = None,
) -> tuple[ClipArrays, list[tuple[str, str]]]:
    """Decode (path, label) pairs. Unreadable videos are skipped and returned with the reason.

    ``cache`` (a ClipCache) spares decoding videos decoded before, e.g. by the last retrain.

    Raises:
        ValueError: a label is not in ``labels``.
    """
    index = {label: i for i, label in enumerate(labels)}
    unknown = sorted({label for _, label in videos if label not in index})
    if unknown:
        raise ValueError(f"labels {unknown} are not among the model's labels {list(labels)}")
    results = decode_many(
        [p for p, _ in videos], sampling, threads=threads, progress=progress, cache=cache
    )
    clips, ys, sources, skipped = [], [], [], []
    for (path, label), result in zip(videos, results, strict=True):
        if isinstance(result, VideoDecodeError):
            log.warning("skipping %s: %s", path, result)
            skipped.append((str(path), str(result)))
            continue
        clips.append(result)
        ys.append(index[label])
        sources.append(str(path))
    if not clips:
        empty = np.zeros((0, sampling.frames, sampling.height, sampling.width, 3), np.uint8)
        return ClipArrays(
            empty, np.zeros((0, sampling.frames), bool), np.zeros(0, np.int32), []
        ), skipped
    frames, mask = stack_clips(clips)
    return ClipArrays(frames, mask, np.asarray(ys, np.int32), sources), skipped


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


def class_weights(y: np.ndarray, num_classes: int) -> dict[int, float]:
    """'Balanced' weights: n / (k * count), so rare labels count as much as common ones."""
    counts = np.bincount(y, minlength=num_classes).astype(float)
    present = counts > 0
    weights = np.ones(num_classes)
    weights[present] = len(y) / (present.sum() * counts[present])
    return {i: float(w) for i, w in enumerate(weights)}
