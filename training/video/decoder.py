"""Sample T frames spread uniformly over a video with PyAV, resized for the model.

Short videos are decoded in order (cheapest when most frames must be decoded anyway); long
ones seek to the targets, skipping a seek whenever it would land on a keyframe already passed.
Anything PyAV cannot read becomes one error type, VideoDecodeError, whose message names the
file and what is wrong with it.

Every file is hostile until decoded: training.video.decode_limits says which containers are
opened and what one decode may cost (DecodeLimits); over a cap is a VideoDecodeError too.
"""

from __future__ import annotations

import bisect
import collections
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import av
import av.error
import numpy as np
from av.video.reformatter import VideoReformatter

from training.video.clip import Clip, SamplingConfig
from training.video.decode_limits import (
    ALLOWED_CONTAINERS,
    OPEN_OPTIONS,
    DecodeBudget,
    DecodeLimits,
    VideoDecodeError,
)
from training.video.keyframes import keyframe_targets

if TYPE_CHECKING:
    from training.video.clipcache import ClipCache

SEEK_ABOVE_S: float = 15.0
"""Videos longer than this, in seconds, are sampled by seeking; shorter ones are decoded in
order. bench/sampling.py on 2 cores: decoding in order is as fast or faster up to 10 s, seeking
is 1.0-1.5x faster at 20 s and 3-6x at 60-120 s (with 2 s keyframe intervals)."""

_AV_ERRORS = (av.error.FFmpegError, ValueError, IndexError, EOFError)
"""What PyAV raises for unreadable input; never let these escape sample_clip."""

_Grab = Callable[[av.VideoFrame], np.ndarray]


def frame_indices(frame_count: int, frames: int) -> list[int]:
    """The centre frame of each of ``frames`` equal segments, or every frame if there are fewer.

    Args:
        frame_count: number of frames in the video.
        frames: how many frames to sample (T).

    Returns:
        Strictly increasing 0-based frame numbers, ``min(frame_count, frames)`` of them.
    """
    if frame_count <= frames:
        return list(range(max(frame_count, 0)))
    return [(2 * i + 1) * frame_count // (2 * frames) for i in range(frames)]


def sample_clip(
    path: str | os.PathLike,
    config: SamplingConfig,
    *,
    seek_above_s: float = SEEK_ABOVE_S,
    limits: DecodeLimits | None = None,
) -> Clip:
    """Read ``config.frames`` frames spread over the video at ``path``, as ``config.sample_mode``.

    Args:
        path: a local video file.
        config: how many frames, and the size to resize them to (RGB uint8).
        seek_above_s: videos longer than this (in seconds) are sampled by seeking.
        limits: caps on size, length and time (default: DecodeLimits()).

    Returns:
        The Clip, zero-padded (mask False) after the last frame when the video is shorter
        than ``config.frames`` frames.

    Raises:
        VideoDecodeError: the file is missing, empty, not a media file, truncated or corrupt,
            has no video stream, or no frame of it can be decoded; or it is not in an allowed
            container, or is over a cap of ``limits``.
    """
    path = Path(path)
    _check_file(path)
    budget = DecodeBudget(path, limits or DecodeLimits())
    grab = _grabber(config)
    try:
        with _open(path, budget) as container:
            stream = _video_stream(container, path)
            rate = budget.rate = _frame_rate(stream, path)
            duration_s = _duration_s(container, stream)
            count = stream.frames or (round(duration_s * rate) if duration_s else 0)
            budget.check_declared(stream.width, stream.height, count, duration_s)
            targets = frame_indices(count, config.frames)
            if duration_s and duration_s > seek_above_s:
                if config.keyframe:  # SAMPLE_MODE=keyframe: training/video/keyframes.py
                    targets = keyframe_targets(container, stream, targets, rate, budget)
                images = _read_by_seeking(container, stream, targets, rate, grab, budget)
                decoded = None
            else:
                images, decoded = _read_in_order(container, stream, targets, grab, budget)
        if not targets or len(images) < len(targets):
            # The stream ended before the last target: the frame-count estimate was too high
            # (or missing). Rare, as most containers store the count: sample again from the
            # real one, counting it first if seeking fell short.
            if decoded is None:
                decoded = _read_in_order_from(budget, [], grab)[1]
            if decoded == 0:
                raise VideoDecodeError(f"{path}: the video stream has no decodable frames")
            count, duration_s = decoded, decoded / float(rate)
            targets = frame_indices(count, config.frames)
            images = _read_in_order_from(budget, targets, grab)[0]
    except VideoDecodeError:
        raise
    except _AV_ERRORS as exc:
        budget.check_time()  # PyAV's own timeout (set when opening) ends in an error too
        raise VideoDecodeError(f"{path}: cannot read the video ({exc})") from exc
    return _to_clip(images, targets[: len(images)], config, rate, count, duration_s)


def _grabber(config: SamplingConfig) -> _Grab:
    """Frame to RGB array of the model's size, with one reformatter per call of sample_clip:
    reusing it is 3x faster (docs/design.md)."""
    reformatter = VideoReformatter()

    def grab(frame: av.VideoFrame) -> np.ndarray:
        rgb = reformatter.reformat(frame, width=config.width, height=config.height, format="rgb24")
        return rgb.to_ndarray()

    return grab


def _check_file(path: Path) -> None:
    """Name the two commonest problems plainly before FFmpeg reports them as 'invalid data'."""
    if not path.exists():
        raise VideoDecodeError(f"{path}: no such video file")
    if not path.is_file():
        raise VideoDecodeError(f"{path}: not a regular file")
    if path.stat().st_size == 0:
        raise VideoDecodeError(f"{path}: the video file is empty (0 bytes)")


def _open(path: Path, budget: DecodeBudget) -> av.container.InputContainer:
    """Open a local file, and only as a file (an absolute path: no ``concat:`` or ``http:``
    read as a protocol), in an allowed container; PyAV's timeout bounds each read."""
    try:
        container = av.open(
            str(path.absolute()), container_options=OPEN_OPTIONS, timeout=budget.left_s()
        )
    except av.error.ArgumentError as exc:  # EINVAL: what FFmpeg's format_whitelist answers
        budget.check_time()
        allowed = "; ".join(ALLOWED_CONTAINERS)
        raise VideoDecodeError(
            f"{path}: its container format is not on the allow-list (allowed: {allowed})"
        ) from exc
    except _AV_ERRORS as exc:
        budget.check_time()
        try:
            with path.open("rb") as f:
                head = f.read(12)
        except OSError:
            head = b""
        if head[4:8] == b"ftyp":  # an MP4/MOV whose index (moov box) is missing or cut off
            why = "an MP4/MOV file FFmpeg cannot read: truncated, not fully written or corrupt"
        else:
            why = "not a media file FFmpeg can read, or its container is corrupt"
        raise VideoDecodeError(f"{path}: {why} ({exc})") from exc
    name = container.format.name
    if name not in ALLOWED_CONTAINERS:  # should FFmpeg's format_whitelist ever let one through
        container.close()
        raise VideoDecodeError(f"{path}: its container format {name!r} is not on the allow-list")
    return container


def _video_stream(container: av.container.InputContainer, path: Path) -> av.VideoStream:
    if not container.streams.video:
        kinds = ", ".join(s.type for s in container.streams) or "none"
        raise VideoDecodeError(f"{path}: no video stream (streams: {kinds})")
    return container.streams.video[0]


def _frame_rate(stream: av.VideoStream, path: Path) -> Fraction:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate:
        raise VideoDecodeError(f"{path}: the video stream has no frame rate")
    return Fraction(rate.numerator, rate.denominator)


def _duration_s(container: av.container.InputContainer, stream: av.VideoStream) -> float | None:
    """The stream's duration, else the container's (which may include longer audio)."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / av.time_base
    return None


def _decode(
    container: av.container.InputContainer,
    stream: av.VideoStream,
    budget: DecodeBudget,
    kept: int = 0,
) -> Iterator[av.VideoFrame]:
    """Frames in presentation order, each checked against the budget; PyAV errors become
    VideoDecodeError.

    ``kept`` (frames already taken by an earlier pass) tells a stream with no decodable frame
    from one that breaks partway.
    """
    decoded = 0
    path = budget.path
    try:
        for frame in container.decode(stream):
            decoded += 1
            budget.check_frame(frame.width, frame.height, decoded)
            yield frame
    except VideoDecodeError:  # a ValueError too: over a limit is not a broken file
        raise
    except _AV_ERRORS as exc:
        budget.check_time()
        if decoded == kept == 0:
            why = "the video stream has no decodable frames"
        else:
            why = "decoding failed partway: the file is truncated or corrupt"
        raise VideoDecodeError(f"{path}: {why} ({exc})") from exc


def _read_in_order(
    container: av.container.InputContainer,
    stream: av.VideoStream,
    targets: list[int],
    grab: _Grab,
    budget: DecodeBudget,
) -> tuple[list[np.ndarray], int]:
    """Decode from the start, keeping the frames numbered in ``targets``.

    Returns the kept images and how many frames were decoded. Stops after the last target, so
    when fewer images than targets come back the stream ended and that number is the real
    frame count.
    """
    wanted = set(targets)
    images: list[np.ndarray] = []
    decoded = 0
    for frame in _decode(container, stream, budget):
        if decoded in wanted:
            images.append(grab(frame))
        decoded += 1
        if len(images) == len(targets) > 0:
            break
    return images, decoded


def _read_in_order_from(
    budget: DecodeBudget, targets: list[int], grab: _Grab
) -> tuple[list[np.ndarray], int]:
    """_read_in_order on a freshly opened file: no seeking back, which not every format allows."""
    with _open(budget.path, budget) as container:
        return _read_in_order(container, container.streams.video[0], targets, grab, budget)


def _read_by_seeking(
    container: av.container.InputContainer,
    stream: av.VideoStream,
    targets: list[int],
    rate: Fraction,
    grab: _Grab,
    budget: DecodeBudget,
) -> list[np.ndarray]:
    """Seek to each target's timestamp and keep the first frame at or after it.

    Seeks only when the container's index has a keyframe between the last decoded frame and
    the target: otherwise the seek would land on a keyframe already behind us and decode the
    same frames again (the real clips here have one keyframe per 3-5 s or per file, and
    seeking for every target made them up to 10x slower than decoding in order).

    Returns fewer images than targets when a target lies past the end of the stream (the
    frame-count estimate was too high) or frames carry no timestamps; the caller then decodes
    in order instead. A target equal to the one before (keyframe sampling) repeats its image.
    """
    start = stream.start_time or 0
    frame_pts = 1 / (rate * stream.time_base)  # one frame's duration in stream time-base units
    # Index timestamps are decode times: near enough to presentation times for this choice.
    # PyAV 18 exposes the index; without it (older PyAV, or no index) every target seeks.
    keyframes = [e.timestamp for e in getattr(stream, "index_entries", ()) if e.is_keyframe]
    images: list[np.ndarray] = []
    frames: Iterator[av.VideoFrame] | None = None  # the decoding in progress
    last_pts = start
    for index in targets:
        if images and targets[len(images) - 1] == index:  # a keyframe shared by two targets
            images.append(images[-1])
            continue
        target = start + round(index * frame_pts)
        behind = bisect.bisect_right(keyframes, target)  # keyframes at or before the target
        if frames is None or not keyframes or (behind and keyframes[behind - 1] > last_pts):
            budget.check_time()
            container.seek(target, backward=True, any_frame=False, stream=stream)
            frames = _decode(container, stream, budget, kept=len(images))
        for frame in frames:
            if frame.pts is None:
                return images
            last_pts = frame.pts
            if frame.pts >= target - frame_pts / 2:  # tolerate rounded timestamps
                images.append(grab(frame))
                break
        else:
            return images
    return images


def _to_clip(
    images: list[np.ndarray],
    indices: list[int],
    config: SamplingConfig,
    rate: Fraction,
    frame_count: int,
    duration_s: float | None,
) -> Clip:
    frames = np.zeros((config.frames, config.height, config.width, 3), np.uint8)
    frames[: len(images)] = images
    mask = np.zeros(config.frames, bool)
    mask[: len(images)] = True
    return Clip(
        frames=frames,
        mask=mask,
        indices=list(indices),
        fps=float(rate),
        frame_count=frame_count,
        duration_s=duration_s if duration_s else frame_count / float(rate),
    )


def decode_many(
    paths: Sequence[str | os.PathLike],
    sampling: SamplingConfig,
    *,
    threads: int = 2,
    progress: Callable[[int, int], None] | None = None,
    cache: ClipCache | None = None,
    limits: DecodeLimits | None = None,
) -> list[Clip | VideoDecodeError]:
    """Sample every video; returns a Clip or the VideoDecodeError for each path, in order.

    ``progress(done, total)`` is called after each video, from the calling thread. With a
    ``cache``, clips decoded before (same file content and sampling) are read from it and
    new ones are added; its ``hits``/``misses`` say how many were decoded. ``limits``
    default to the cache's, else to DecodeLimits().
    """
    results: list[Clip | VideoDecodeError] = []
    for result in iter_decoded(paths, sampling, threads=threads, cache=cache, limits=limits):
        results.append(result)
        if progress:
            progress(len(results), len(paths))
    return results


def iter_decoded(
    paths: Sequence[str | os.PathLike],
    sampling: SamplingConfig,
    *,
    threads: int = 2,
    cache: ClipCache | None = None,
    limits: DecodeLimits | None = None,
) -> Iterator[Clip | VideoDecodeError]:
    """What :func:`decode_many` returns, one at a time and in order, decoding at most
    ``4 * threads`` videos ahead of the consumer: memory stays bounded however many there are
    (a training run writes each clip to a file as it comes, training/learn/clip_file.py)."""

    def one(path: str | os.PathLike) -> Clip | VideoDecodeError:
        try:
            if cache is not None:
                return cache.sample(path, sampling, limits=limits)
            return sample_clip(path, sampling, limits=limits)
        except VideoDecodeError as exc:
            return exc

    if threads <= 1 or len(paths) <= 1:
        yield from map(one, paths)
        return
    ahead = 4 * threads
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="decode")
    pending: collections.deque[Future] = collections.deque()
    try:
        for path in paths:
            pending.append(pool.submit(one, path))
            if len(pending) >= ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:  # a consumer that stops early does not wait for the decodes queued ahead
        pool.shutdown(wait=True, cancel_futures=True)
