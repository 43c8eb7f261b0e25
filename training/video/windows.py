"""Windowed sampling: read a video once, in order, at a fixed rate, and cut it into windows.

Why: T frames spread over a whole video place a timeline boundary no finer than its length
over 2T (19 s on a 10-minute video at T = 16). Under SamplingConfig.sample_fps > 0 a video
is read at that rate instead and cut into windows of T samples, ``stride`` apart, each a Clip
the model takes as it is; a prediction stitches the windows back (training/model/windowed.py).

Windows stream: at most T resized frames are held here, whatever the video's length. A video
shorter than one window (fewer than T samples at the rate) is sampled as without windows,
by ``sample_clip``, so short clips give exactly today's Clip. The number of windows of one
video is bounded (MAX_WINDOWS) besides the decode limits.
"""

from __future__ import annotations

import collections
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from training.video.clip import Clip, SamplingConfig
from training.video.decode_limits import DecodeBudget, DecodeLimits, VideoDecodeError
from training.video.decoder import (
    _AV_ERRORS,
    _check_file,
    _decode,
    _duration_s,
    _frame_rate,
    _grabber,
    _open,
    _video_stream,
    sample_clip,
)

MAX_WINDOWS = 20_000
"""Most windows read from one video (4 hours at 8 samples a second, 8 apart, is 14,400);
past it the video fails, its message naming MAX_VIDEO_SECONDS, the setting to lower."""


@dataclass
class WindowedVideo:
    """A video longer than one window, to be read window by window (:meth:`windows`).

    ``frame_count`` starts as the container's count (or estimate) and is the real number of
    frames decoded once :meth:`windows` has run to the end.
    """

    path: Path
    config: SamplingConfig
    limits: DecodeLimits
    fps: float
    frame_count: int
    duration_s: float

    def windows(self) -> Iterator[Clip]:
        """The video's windows in time order; see :func:`iter_windows`."""
        yield from iter_windows(self)


def sample_count(frame_count: int, fps: float, sample_fps: float) -> int:
    """How many samples a video of ``frame_count`` frames at ``fps`` gives at ``sample_fps``."""
    step = max(1.0, fps / sample_fps)
    return math.ceil(frame_count / step) if frame_count > 0 else 0


def open_video(
    path: str | os.PathLike, config: SamplingConfig, *, limits: DecodeLimits | None = None
) -> Clip | WindowedVideo:
    """What a model sampled with ``config`` reads of the video at ``path``: a Clip (no
    windows, or a video shorter than one window), else a WindowedVideo, not yet decoded.

    Raises:
        VideoDecodeError: as for ``sample_clip``.
    """
    limits = limits or DecodeLimits()
    if not config.windowed:
        return sample_clip(path, config, limits=limits)
    path = Path(path)
    _check_file(path)
    budget = DecodeBudget(path, limits)
    try:
        with _open(path, budget) as container:
            stream = _video_stream(container, path)
            rate = budget.rate = _frame_rate(stream, path)
            duration_s = _duration_s(container, stream) or 0.0
            count = stream.frames or round(duration_s * rate)
            budget.check_declared(stream.width, stream.height, count, duration_s or None)
    except VideoDecodeError:
        raise
    except _AV_ERRORS as exc:
        raise VideoDecodeError(f"{path}: cannot read the video ({exc})") from exc
    if sample_count(count, float(rate), config.sample_fps) < config.frames:
        return sample_clip(path, config, limits=limits)
    return WindowedVideo(path, config, limits, float(rate), int(count), float(duration_s))


def iter_windows(video: WindowedVideo) -> Iterator[Clip]:
    """Decode ``video`` once, in order, keep one frame per 1 / sample_fps seconds, and yield
    a Clip per window of T samples, ``stride`` samples apart; the last window ends at the
    last sample (so it may overlap its predecessor by more). Fewer than T samples in all (the
    container's count was wrong) give one zero-padded window.

    Raises:
        VideoDecodeError: unreadable, over a decode limit, or more than MAX_WINDOWS windows.
    """
    config, path = video.config, video.path
    budget = DecodeBudget(path, video.limits)
    grab = _grabber(config)
    try:
        with _open(path, budget) as container:
            stream = _video_stream(container, path)
            rate = budget.rate = _frame_rate(stream, path)
            frames = _decode(container, stream, budget)
            yield from _cut(_sampled(frames, rate, config.sample_fps, grab), video, rate)
    except VideoDecodeError:
        raise
    except _AV_ERRORS as exc:
        budget.check_time()
        raise VideoDecodeError(f"{path}: cannot read the video ({exc})") from exc


def _sampled(frames, rate: Fraction, sample_fps: float, grab) -> Iterator[tuple[int, np.ndarray]]:
    """(0-based frame index, resized image) of one frame per 1 / sample_fps seconds."""
    step = max(1.0, float(rate) / sample_fps)
    next_at = 0.0
    for index, frame in enumerate(frames):
        if index + 1e-9 >= next_at:
            yield index, grab(frame)
            next_at += step


def _cut(
    samples: Iterator[tuple[int, np.ndarray]], video: WindowedVideo, rate: Fraction
) -> Iterator[Clip]:
    """Windows of T samples from the sample stream, holding at most T of them."""
    t, stride = video.config.frames, video.config.stride
    buffer: collections.deque[tuple[int, np.ndarray]] = collections.deque(maxlen=t)
    taken = emitted_at = windows = 0
    for index, image in samples:
        buffer.append((index, image))
        taken += 1
        video.frame_count = max(video.frame_count, index + 1)
        if len(buffer) == t and (taken - t) % stride == 0:
            windows += 1
            if windows > MAX_WINDOWS:
                raise VideoDecodeError(
                    f"{video.path}: more than {MAX_WINDOWS} windows; the video is too long "
                    "for windowed sampling (lower MAX_VIDEO_SECONDS to refuse it sooner)"
                )
            emitted_at = taken
            yield _window(buffer, video, rate)
    if taken == 0:
        raise VideoDecodeError(f"{video.path}: the video stream has no decodable frames")
    if emitted_at != taken:  # the tail after the last full stride, or a short video
        yield _window(buffer, video, rate)


def _window(
    buffer: collections.deque[tuple[int, np.ndarray]], video: WindowedVideo, rate: Fraction
) -> Clip:
    config = video.config
    frames = np.zeros((config.frames, config.height, config.width, 3), np.uint8)
    frames[: len(buffer)] = [image for _, image in buffer]
    mask = np.zeros(config.frames, bool)
    mask[: len(buffer)] = True
    return Clip(
        frames,
        mask,
        [index for index, _ in buffer],
        float(rate),
        video.frame_count,
        video.duration_s,
    )
