"""Training clips under windowed sampling: each labelled video gives many windows.

Why: a long video annotated on the timeline holds many segments; under SAMPLE_FPS the model
is trained on what it will predict from, windows of T samples at the fixed rate
(training/video/windows.py). Each video is decoded once (into the clip cache when there is
one). Every window covering a labelled frame is kept, and background windows (no region)
only up to BACKGROUND_SHARE of those, spread evenly between them, so a mostly idle video
does not drown its segments; per-frame loss weights balance the labels further
(training/learn/pipeline.py). Windows keep their video's split key: the held-out split stays
by video (training/learn/dataset.py ``grouped_split``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence

import numpy as np

from training.labelstudio.timeline import NO_LABEL
from training.learn.clip_file import ClipFileWriter
from training.learn.dataset import (
    NO_CLASS,
    ClipArrays,
    LabelledVideo,
    _class_index,
    _frame_targets,
    _no_clips,
    as_labelled_video,
    stacked_arrays,
)
from training.video.clip import Clip, SamplingConfig
from training.video.clipcache import ClipCache
from training.video.decoder import VideoDecodeError
from training.video.windows import WindowedVideo, open_video

log = logging.getLogger(__name__)

BACKGROUND_SHARE = 0.5
"""Background-only windows kept per window with a labelled frame, at most (at least one)."""


def select_windows(targets: Sequence[np.ndarray]) -> list[int]:
    """The windows to train on, by their per-frame targets (see the module's docstring).

    Windows whose frames all do not count (a video not annotated on the timeline) are all
    kept: they still carry the video's class.
    """
    labelled = [i for i, t in enumerate(targets) if (t > NO_LABEL).any()]
    background = [i for i, t in enumerate(targets) if (t == NO_LABEL).any() and i not in labelled]
    ignored = [i for i, t in enumerate(targets) if not (t >= NO_LABEL).any()]
    room = max(1, int(BACKGROUND_SHARE * len(labelled)))
    if len(background) > room:
        picks = np.linspace(0, len(background) - 1, room).round().astype(int)
        background = [background[k] for k in sorted(set(picks.tolist()))]
    return sorted(labelled + background + ignored)


def video_windows(
    path: str | os.PathLike, sampling: SamplingConfig, cache: ClipCache | None
) -> list[Clip]:
    """Every window of one video, decoded once (from or into ``cache``)."""
    if cache is not None:
        return cache.windows(path, sampling)
    opened = open_video(path, sampling)
    return list(opened.windows()) if isinstance(opened, WindowedVideo) else [opened]


def decode_windowed(
    videos: Sequence[LabelledVideo | tuple[str | os.PathLike, str]],
    labels: Sequence[str],
    sampling: SamplingConfig,
    *,
    threads: int = 1,
    progress: Callable[[int, int], None] | None = None,
    cache: ClipCache | None = None,
    keys: Sequence[str] | None = None,
    timeline_labels: Sequence[str] = (),
    clips_file: str | os.PathLike | None = None,
) -> tuple[ClipArrays, list[tuple[str, str]]]:
    """training/learn/dataset.py ``decode_labelled`` under windowed sampling: one item per
    kept window, each with its video's class, source and key. Videos are decoded one at a
    time (``threads`` is accepted for the same signature): each is a long sequential read."""
    items = [as_labelled_video(v) for v in videos]
    if keys is not None and len(keys) != len(items):
        raise ValueError(f"{len(keys)} keys for {len(items)} videos")
    index = _class_index(items, labels)
    shape = (sampling.frames, sampling.height, sampling.width, 3)
    writer = ClipFileWriter(clips_file, shape) if clips_file is not None else None
    frames, masks, ys, frame_ys, sources, kept_keys, skipped = [], [], [], [], [], [], []
    for n, video in enumerate(items):
        if progress:
            progress(n + 1, len(items))
        try:
            windows = video_windows(video.path, sampling, cache)
        except VideoDecodeError as exc:
            log.warning("skipping %s: %s", video.path, exc)
            skipped.append((str(video.path), str(exc)))
            continue
        targets = [_frame_targets(video, w, timeline_labels, sampling) for w in windows]
        for k in select_windows(targets) if timeline_labels else range(len(windows)):
            (writer.append if writer is not None else frames.append)(windows[k].frames)
            masks.append(windows[k].mask)
            ys.append(index[video.label] if video.label is not None else NO_CLASS)
            frame_ys.append(targets[k])
            sources.append(str(video.path))
            kept_keys.append(str(keys[n]) if keys is not None else str(video.path))
    stored = writer.close() if writer is not None else None
    if not masks:
        return _no_clips(sampling, timeline=bool(timeline_labels)), skipped
    parts = (frames, masks, ys, frame_ys if timeline_labels else None, sources, kept_keys)
    return stacked_arrays(stored, *parts), skipped
